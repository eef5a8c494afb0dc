"""The worker's errors: each carries its HTTP status and machine-readable code (the JSON error body)."""

from __future__ import annotations

from collections.abc import Mapping


class WorkerError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, fields: Mapping[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = dict(fields or {})

    def body(self) -> dict[str, object]:
        return {"code": self.code, "message": self.message, "fields": self.fields}


class BadRequest(WorkerError):
    status = 400
    code = "bad_request"


class NotFound(WorkerError):
    status = 404
    code = "not_found"


class MethodNotAllowed(WorkerError):
    status = 405
    code = "method_not_allowed"


class PayloadTooLarge(WorkerError):
    status = 413
    code = "payload_too_large"


class HostNotAllowed(WorkerError):
    """The URL's host (or the host a page redirected to) is not on the allowlist."""

    status = 403
    code = "host_not_allowed"


class NavigationFailed(WorkerError):
    """The page could not be loaded (name not resolved, connection refused, TLS error …)."""

    status = 502
    code = "navigation_failed"


class Busy(WorkerError):
    """Every browser slot stayed taken for the whole queue timeout."""

    status = 503
    code = "busy"


class BrowserUnavailable(WorkerError):
    status = 503
    code = "browser_unavailable"


class NavigationTimeout(WorkerError):
    status = 504
    code = "timeout"
