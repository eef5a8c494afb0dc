"""Deployments REST API (``/api/v1/deployments``): thin views that translate input, call one service or
selector, and translate output.

A create carries an idempotency key (the ``Idempotency-Key`` header or the ``idempotency_key`` field):
the first request with a key answers 201, every later one 200 with the same deployment. Events are
paged by their counter, not by page number, so a client tails a running deployment with
``?after=<next_after>`` and never misses or repeats an event.
"""

from __future__ import annotations

import uuid

from django.http import Http404
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import generics, mixins, status
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from service_kit.pagination import PageNumberPagination
from slm_project.access.authentication import ApiClientAuthentication, HasScope, actor_of
from slm_project.deployments import selectors, services
from slm_project.deployments.api import serializers as s
from slm_project.deployments.choices import FINISHED, RunStatus
from slm_project.deployments.models import Deployment
from slm_project.fleet.registry import ROLES

READ, WRITE = "deployments:read", "deployments:write"
IDEMPOTENCY_HEADER = "Idempotency-Key"


class DeploymentsView(APIView):
    authentication_classes = [ApiClientAuthentication, *APIView.authentication_classes]
    permission_classes = [HasScope]
    required_scopes: dict[str, str] = {"GET": READ, "POST": WRITE}

    def deployment(self, deployment_id) -> Deployment:
        deployment = selectors.deployment_detail(deployment_id=deployment_id)
        if deployment is None:
            raise Http404(f"There is no deployment {deployment_id}.")
        return deployment


def _list_param(request, name: str) -> list[str]:
    return [value for raw in request.query_params.getlist(name) for value in raw.split(",") if value]


def _detail(deployment_id) -> dict:
    return s.DeploymentDetailOutputSerializer(selectors.deployment_detail(deployment_id=deployment_id)).data


class DeploymentListView(DeploymentsView, mixins.ListModelMixin, generics.GenericAPIView):
    serializer_class = s.DeploymentOutputSerializer
    pagination_class = PageNumberPagination

    def get_queryset(self):
        request = self.request
        statuses = _list_param(request, "status")
        unknown = sorted(set(statuses) - set(RunStatus.values))
        if unknown:
            raise ValidationError({"status": [f"Unknown statuses: {', '.join(unknown)}."]})
        roles = _list_param(request, "role")
        unknown = sorted(set(roles) - ROLES.keys())
        if unknown:
            raise ValidationError({"role": [f"Unknown roles: {', '.join(unknown)}."]})
        node_id = None
        if request.query_params.get("node"):
            try:
                node_id = uuid.UUID(request.query_params["node"])
            except ValueError:
                raise ValidationError({"node": ["Give a node id (a UUID)."]}) from None
        ordering = request.query_params.get("ordering", "-created_at")
        if ordering not in selectors.DEPLOYMENT_ORDERINGS:
            raise ValidationError(
                {"ordering": [f"Use one of: {', '.join(sorted(selectors.DEPLOYMENT_ORDERINGS))}."]}
            )
        return selectors.deployment_search(statuses=statuses, node_id=node_id, roles=roles, ordering=ordering)

    @extend_schema(
        parameters=[
            OpenApiParameter("status", str, many=True, enum=RunStatus.values),
            OpenApiParameter("node", str, description="a node id"),
            OpenApiParameter("role", str, many=True),
            OpenApiParameter("ordering", str, enum=sorted(selectors.DEPLOYMENT_ORDERINGS)),
        ],
    )
    def get(self, request, *args, **kwargs):
        return self.list(request, *args, **kwargs)

    @extend_schema(
        request=s.DeploymentCreateInputSerializer,
        parameters=[
            OpenApiParameter(
                IDEMPOTENCY_HEADER,
                str,
                OpenApiParameter.HEADER,
                description="Makes the request safe to repeat; the same as the idempotency_key field.",
            )
        ],
        responses={
            201: s.DeploymentDetailOutputSerializer,
            200: OpenApiResponse(
                s.DeploymentDetailOutputSerializer, description="The deployment made before with this key."
            ),
        },
    )
    def post(self, request):
        data = s.DeploymentCreateInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        key = values["idempotency_key"]
        header_key = request.headers.get(IDEMPOTENCY_HEADER, "").strip()
        if header_key and key and header_key != key:
            raise ValidationError(
                {"idempotency_key": [f"The field and the {IDEMPOTENCY_HEADER} header name different keys."]}
            )
        if len(header_key) > s.IDEMPOTENCY_KEY_MAX_LENGTH:
            raise ValidationError(
                {"idempotency_key": [f"At most {s.IDEMPOTENCY_KEY_MAX_LENGTH} characters."]}
            )
        deployment, created = services.deployment_request(
            node_ids=values["nodes"],
            roles=values["roles"],
            strategy=values["strategy"],
            strategy_options=values["strategy_options"],
            extra_vars=values["extra_vars"],
            idempotency_key=key or header_key,
            requested_by=actor_of(request),
        )
        code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
        return Response(_detail(deployment.pk), status=code)


class DeploymentDetailView(DeploymentsView):
    @extend_schema(responses=s.DeploymentDetailOutputSerializer)
    def get(self, request, deployment_id):
        return Response(s.DeploymentDetailOutputSerializer(self.deployment(deployment_id)).data)


class DeploymentEventsView(DeploymentsView):
    """One run's events after a counter, in counter order (latest run unless ``attempt`` is given)."""

    @extend_schema(
        parameters=[
            OpenApiParameter("after", int, description="the last counter seen (0 for the start)"),
            OpenApiParameter("limit", int, description=f"at most {s.EVENTS_PAGE_MAX}"),
            OpenApiParameter("attempt", int, description="a run's attempt number; the latest by default"),
        ],
        responses=s.DeploymentEventPageOutputSerializer,
    )
    def get(self, request, deployment_id):
        query = s.DeploymentEventsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        after, limit = query.validated_data["after"], query.validated_data["limit"]
        deployment = Deployment.objects.filter(pk=deployment_id).first()
        if deployment is None:
            raise Http404(f"There is no deployment {deployment_id}.")
        # The run is read before its events: when it says finished, every event is stored already.
        run = selectors.deployment_run(deployment=deployment, attempt=query.validated_data.get("attempt"))
        if run is None:
            raise Http404(f"Deployment {deployment_id} has no attempt {query.validated_data.get('attempt')}.")
        events = list(selectors.run_events(run=run, after=after, limit=limit + 1))
        has_more = len(events) > limit
        events = events[:limit]
        page = {
            "deployment_id": deployment.pk,
            "run_id": run.pk,
            "attempt": run.attempt,
            "run_status": run.status,
            "finished": run.status in FINISHED,
            "after": after,
            "next_after": events[-1].counter if events else after,
            "has_more": has_more,
            "events_emitted": run.events_emitted,
            "events_stored": run.events_stored,
            "results": events,
        }
        return Response(s.DeploymentEventPageOutputSerializer(page).data)


class DeploymentCancelView(DeploymentsView):
    @extend_schema(request=None, responses=s.DeploymentDetailOutputSerializer)
    def post(self, request, deployment_id):
        services.deployment_cancel(deployment=self.deployment(deployment_id), actor=actor_of(request))
        return Response(_detail(deployment_id))


class DeploymentRetryView(DeploymentsView):
    @extend_schema(request=None, responses={201: s.DeploymentDetailOutputSerializer})
    def post(self, request, deployment_id):
        services.deployment_retry(deployment=self.deployment(deployment_id), actor=actor_of(request))
        return Response(_detail(deployment_id), status=status.HTTP_201_CREATED)
