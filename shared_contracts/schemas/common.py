"""Types every part of the contract uses: the error body, pages, and the SLM's meta document."""

from __future__ import annotations

from datetime import datetime
from typing import Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

ItemT = TypeVar("ItemT")


class ContractModel(BaseModel):
    """Base of every contract schema.

    Unknown fields are ignored so that a newer minor version of the SLM (which may add fields) never
    breaks an older client; the models are frozen because they are values, not state.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)


class ErrorBody(ContractModel):
    """The one error shape of both projects' APIs.

    ``code`` is machine-readable (``not_found``, ``validation_error`` …), ``message`` is for people,
    ``fields`` maps input fields to their messages for validation errors, ``request_id`` ties the
    answer to the server's logs.
    """

    code: str
    message: str
    fields: dict[str, list[str]] = Field(default_factory=dict)
    request_id: str | None = None


class Page(ContractModel, Generic[ItemT]):
    """A page of a list endpoint (DRF page-number pagination)."""

    count: int = Field(ge=0)
    next: str | None = None
    previous: str | None = None
    results: list[ItemT]


class MetaInfo(ContractModel):
    """``GET /api/v1/meta``: who answers and which contract it speaks."""

    service: str
    version: str
    contract_version: str
    api_version: str
    server_time: datetime
