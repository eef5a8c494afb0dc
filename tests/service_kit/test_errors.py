"""Every error leaves in one shape (``shared_contracts.schemas.common.ErrorBody``)."""

import pytest
from django.http import Http404
from django.test import override_settings
from django.urls import path
from rest_framework import exceptions, serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from service_kit.errors import Conflict
from shared_contracts.schemas.common import ErrorBody


class _InputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=5)
    port = serializers.IntegerField(min_value=1)


class _EchoView(APIView):
    permission_classes = [AllowAny]
    authentication_classes: list = []

    def post(self, request):
        serializer = _InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        return Response(serializer.validated_data)


class _ConflictView(APIView):
    permission_classes = [AllowAny]
    authentication_classes: list = []

    def get(self, request):
        raise Conflict("The node is draining.")


class _MissingView(APIView):
    permission_classes = [AllowAny]
    authentication_classes: list = []

    def get(self, request):
        raise Http404("no such node")


class _PrivateView(APIView):
    def get(self, request):
        return Response({})


def _crash(request):
    raise RuntimeError("database password is hunter2")


urlpatterns = [
    path("api/echo", _EchoView.as_view()),
    path("api/conflict", _ConflictView.as_view()),
    path("api/missing", _MissingView.as_view()),
    path("api/private", _PrivateView.as_view()),
    path("crash", _crash),
]

handler404 = "service_kit.errors.page_not_found"
handler500 = "service_kit.errors.server_error"

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]


def _error(response) -> ErrorBody:
    assert response["Content-Type"] == "application/json"
    body = ErrorBody.model_validate(response.json())
    assert body.request_id == response["X-Request-ID"]
    return body


def test_validation_errors_name_each_field(client):
    response = client.post("/api/echo", {"name": "too long", "port": 0}, content_type="application/json")
    assert response.status_code == 400
    body = _error(response)
    assert body.code == "validation_error"
    assert set(body.fields) == {"name", "port"}
    assert all(isinstance(message, str) for messages in body.fields.values() for message in messages)


def test_malformed_json_is_a_400_in_the_same_shape(client):
    response = client.post("/api/echo", "{not json", content_type="application/json")
    assert response.status_code == 400
    assert _error(response).code == "parse_error"


def test_domain_errors_keep_their_status_and_code(client):
    response = client.get("/api/conflict")
    assert response.status_code == 409
    body = _error(response)
    assert (body.code, body.message) == ("conflict", "The node is draining.")


def test_django_404_inside_an_api_view_is_mapped(client):
    response = client.get("/api/missing")
    assert response.status_code == 404
    assert _error(response).code == "not_found"


def test_endpoints_are_closed_unless_they_open_themselves(client):
    response = client.get("/api/private")
    assert response.status_code == 403
    assert _error(response).code == "not_authenticated"


def test_a_crash_answers_500_without_the_exception_text(client):
    client.raise_request_exception = False
    with override_settings(DEBUG=False):
        response = client.get("/crash")
    assert response.status_code == 500
    body = _error(response)
    assert body.code == "server_error"
    assert "hunter2" not in response.content.decode()


def test_method_not_allowed_is_in_the_shape(client):
    response = client.delete("/api/echo")
    assert response.status_code == 405
    assert _error(response).code == "method_not_allowed"


def test_handler_flattens_nested_details():
    from service_kit.errors import api_exception_handler

    response = api_exception_handler(
        exceptions.ValidationError({"targets": [{"port": ["bad"]}], "non_field_errors": ["clash"]}), {}
    )
    assert response.data["fields"] == {"targets": ["port: bad"], "non_field_errors": ["clash"]}
