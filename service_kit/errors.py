"""The one error shape of both APIs, and the exceptions that produce it.

Every error leaves as ``shared_contracts.schemas.common.ErrorBody``: DRF exceptions through
``api_exception_handler``, everything Django answers outside DRF (unknown routes, crashes) through the
``handler404``/``handler500``… views below. Never an HTML debug page, never a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from service_kit.request_id import current_request_id
from shared_contracts.schemas.common import ErrorBody

logger = logging.getLogger(__name__)


class ServiceError(exceptions.APIException):
    """Base of each project's domain errors: a status, a machine code and a message for people."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "error"
    default_detail = "The request could not be served."


class Conflict(ServiceError):
    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"
    default_detail = "The request conflicts with the current state."


def error_body(*, code: str, message: str, fields: Mapping[str, list[str]] | None = None) -> dict[str, Any]:
    return ErrorBody(
        code=code, message=message, fields=dict(fields or {}), request_id=current_request_id.get()
    ).model_dump(mode="json")


def _flatten(detail: Any) -> list[str]:
    if isinstance(detail, list):
        return [message for item in detail for message in _flatten(item)]
    if isinstance(detail, dict):
        return [f"{key}: {message}" for key, value in detail.items() for message in _flatten(value)]
    return [str(detail)]


def _field_errors(detail: Any) -> dict[str, list[str]]:
    if isinstance(detail, dict):
        return {str(field): _flatten(value) for field, value in detail.items()}
    return {"non_field_errors": _flatten(detail)}


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        # Not an API exception: Django's handler500 logs it and answers in our shape.
        return None
    assert isinstance(exc, exceptions.APIException)  # noqa: S101 - guaranteed by DRF when it answered
    if isinstance(exc, exceptions.ValidationError):
        body = error_body(
            code="validation_error", message="The input is not valid.", fields=_field_errors(exc.detail)
        )
    else:
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else exc.default_code
        message = " ".join(_flatten(exc.detail))
        body = error_body(code=str(code), message=message)
    response.data = body
    return response


def _json_error(status_code: int, code: str, message: str) -> JsonResponse:
    return JsonResponse(error_body(code=code, message=message), status=status_code)


def bad_request(request, exception=None):
    return _json_error(400, "bad_request", "The request is malformed.")


def permission_denied(request, exception=None):
    return _json_error(403, "permission_denied", "You do not have permission to do this.")


def page_not_found(request, exception=None):
    return _json_error(404, "not_found", f"No route matches {request.path!r}.")


def server_error(request):
    # Django has already logged the exception with its traceback; the client gets none of it.
    return _json_error(500, "server_error", "The server failed to answer; the request id is in the logs.")
