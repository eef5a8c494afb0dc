from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from shared_contracts.version import CONTRACT_VERSION
from slm_project import __version__
from slm_project.system.api.serializers import MetaOutputSerializer

API_VERSION = "v1"


class MetaView(APIView):
    """Which SLM answers and which contract it speaks.

    Public on purpose: clients check compatibility before they hold a token, and it reveals nothing
    beyond versions.
    """

    authentication_classes: list = []
    permission_classes = [AllowAny]

    @extend_schema(responses=MetaOutputSerializer, operation_id="meta_retrieve")
    def get(self, request):
        data = {
            "service": "slm",
            "version": __version__,
            "contract_version": CONTRACT_VERSION,
            "api_version": API_VERSION,
            "server_time": timezone.now(),
        }
        return Response(MetaOutputSerializer(data).data)
