"""``/api/auth/``: who am I, and my personal API tokens (create shows the secret once; revoke)."""

from __future__ import annotations

from datetime import timedelta

from django.http import Http404
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from business_project.accounts import selectors, services
from business_project.accounts.api import serializers as s
from business_project.accounts.authentication import AUTHENTICATION_CLASSES, HasScope
from business_project.accounts.choices import Scope


class MeView(APIView):
    authentication_classes = AUTHENTICATION_CLASSES
    permission_classes = [HasScope]
    required_scopes = {"GET": Scope.CHAT_READ}

    @extend_schema(responses=s.MeOutputSerializer)
    def get(self, request):
        user = request.user
        me = {
            "id": user.pk,
            "username": user.username,
            "email": user.email,
            "effective_role": user.effective_role,
            "scopes": sorted(selectors.scopes_of(user=user, token=request.auth)),
        }
        return Response(s.MeOutputSerializer(me).data)


class SessionOnlyView(APIView):
    """Token management needs the user's session: a token cannot mint or revoke tokens, so a leaked
    token cannot make itself permanent."""

    authentication_classes = AUTHENTICATION_CLASSES
    permission_classes = [HasScope]
    required_scopes = {"GET": Scope.CHAT_READ, "POST": Scope.CHAT_READ, "DELETE": Scope.CHAT_READ}

    def check_permissions(self, request):
        super().check_permissions(request)
        if request.auth is not None:
            self.permission_denied(request, message="API tokens are managed with a signed-in session.")


class ApiTokenListView(SessionOnlyView):
    @extend_schema(responses=s.ApiTokenOutputSerializer(many=True))
    def get(self, request):
        tokens = selectors.api_token_list(user=request.user)
        return Response(s.ApiTokenOutputSerializer(tokens, many=True).data)

    @extend_schema(
        request=s.ApiTokenCreateInputSerializer, responses={201: s.ApiTokenCreatedOutputSerializer}
    )
    def post(self, request):
        data = s.ApiTokenCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        days = data.validated_data.get("expires_in_days")
        row, token = services.api_token_create(
            user=request.user,
            name=data.validated_data["name"],
            scopes=data.validated_data["scopes"],
            expires_at=timezone.now() + timedelta(days=days) if days else None,
        )
        row.token = token
        response = Response(s.ApiTokenCreatedOutputSerializer(row).data, status=status.HTTP_201_CREATED)
        response["Cache-Control"] = "no-store"
        return response


class ApiTokenDetailView(SessionOnlyView):
    @extend_schema(request=None, responses=s.ApiTokenOutputSerializer)
    def delete(self, request, token_id):
        row = selectors.api_token_get(user=request.user, token_id=token_id)
        if row is None:
            raise Http404
        return Response(s.ApiTokenOutputSerializer(services.api_token_revoke(token=row)).data)
