"""The contract-version handshake of the SLM API (``shared_contracts.version``)."""

from django.http import JsonResponse

from service_kit.errors import error_body
from shared_contracts import paths
from shared_contracts.version import CONTRACT_VERSION, CONTRACT_VERSION_HEADER, is_compatible


class ContractVersionMiddleware:
    """Refuses API requests from a client of another major contract version (400) instead of letting it
    misread our answers, and labels every API answer with the version this server speaks."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if not request.path.startswith(paths.API_PREFIX + "/"):
            return self.get_response(request)
        client_version = request.headers.get(CONTRACT_VERSION_HEADER)
        if client_version is not None and not is_compatible(client_version):
            response = JsonResponse(
                error_body(
                    code="contract_version_unsupported",
                    message=(
                        f"This SLM speaks contract {CONTRACT_VERSION};"
                        f" the client sent {client_version[:20]!r}."
                    ),
                ),
                status=400,
            )
        else:
            response = self.get_response(request)
        response[CONTRACT_VERSION_HEADER] = CONTRACT_VERSION
        return response
