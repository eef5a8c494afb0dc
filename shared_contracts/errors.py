"""The typed error hierarchy of the contract.

The SLM answers every error with one JSON body (``schemas.common.ErrorBody``) and a status code;
``SlmClient`` turns that back into one of these exceptions, so callers catch meaning, not numbers.
"""

from __future__ import annotations

from collections.abc import Mapping


class ContractError(Exception):
    """Base of every error the contract client raises."""

    code = "error"
    status: int | None = None

    def __init__(
        self,
        message: str = "",
        *,
        code: str | None = None,
        status: int | None = None,
        fields: Mapping[str, list[str]] | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message or self.__class__.__name__)
        self.message = message or self.__class__.__name__
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.fields: dict[str, list[str]] = dict(fields or {})
        self.request_id = request_id

    def __str__(self) -> str:
        where = f" [request {self.request_id}]" if self.request_id else ""
        return f"{self.code}: {self.message}{where}"


class SlmUnavailable(ContractError):
    """The SLM could not be reached or did not answer in time (after the allowed retries)."""

    code = "slm_unavailable"


class ContractMismatch(ContractError):
    """The peer speaks another major contract version, or its answer does not match the schema."""

    code = "contract_mismatch"


class RequestRejected(ContractError):
    """The SLM answered with a 4xx status. Subclasses name the common cases."""

    code = "request_rejected"


class BadRequest(RequestRejected):
    code = "bad_request"
    status = 400


class ValidationFailed(BadRequest):
    """400 with field errors: ``fields`` maps each field to its messages."""

    code = "validation_error"


class AuthenticationFailed(RequestRejected):
    code = "not_authenticated"
    status = 401


class PermissionDenied(RequestRejected):
    code = "permission_denied"
    status = 403


class NotFound(RequestRejected):
    code = "not_found"
    status = 404


class Conflict(RequestRejected):
    code = "conflict"
    status = 409


class RateLimited(RequestRejected):
    """429: ``retry_after`` is the number of seconds the SLM asked us to wait, when it said."""

    code = "rate_limited"
    status = 429

    def __init__(self, message: str = "", *, retry_after: float | None = None, **kwargs) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(ContractError):
    """The SLM failed with a 5xx status (after the allowed retries)."""

    code = "server_error"


STATUS_ERRORS: dict[int, type[RequestRejected]] = {
    400: BadRequest,
    401: AuthenticationFailed,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    429: RateLimited,
}
