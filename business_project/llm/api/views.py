"""``/api/llm/``: the providers and models a user may pick, and (staff) a provider's health history."""

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from business_project.llm.api.serializers import AvailableProviderSerializer, HealthCheckSerializer
from business_project.llm.models import Provider
from business_project.llm.selectors import list_available_models, provider_health_history

HEALTH_HISTORY_LIMIT = 100


class ProviderListView(APIView):
    """Enabled providers in chain order with their models and status (for the provider/model picker)."""

    @extend_schema(responses=AvailableProviderSerializer(many=True), operation_id="llm_providers_list")
    def get(self, request: Request) -> Response:
        return Response(AvailableProviderSerializer(list_available_models(), many=True).data)


class ProviderHealthView(APIView):
    """The latest health checks of one provider, newest first (staff only)."""

    permission_classes = [IsAdminUser]

    @extend_schema(responses=HealthCheckSerializer(many=True), operation_id="llm_provider_health")
    def get(self, request: Request, provider_id) -> Response:
        provider = get_object_or_404(Provider, pk=provider_id)
        checks = provider_health_history(provider=provider, limit=HEALTH_HISTORY_LIMIT)
        return Response(HealthCheckSerializer(checks, many=True).data)
