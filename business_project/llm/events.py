"""What a token stream yields and raises (see ``business_project.llm.services.open_stream``).

Plain, slotted dataclasses: one ``TextDelta`` is made per token chunk, so they stay as cheap as a tuple.
The errors are ``service_kit`` ``ServiceError`` subclasses: an API view may let them through and the
client gets the project's one error shape with the code below.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from rest_framework import status

from service_kit.errors import ServiceError

# --------------------------------------------------------------------------------------------------
# Events


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the answer, in order; never empty."""

    text: str


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one call. ``estimated`` when the server reported none and they were counted here
    (completion: one per streamed chunk; prompt: about four characters per token)."""

    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last event of a stream, exactly once: why the model stopped (``stop``, ``length``,
    ``content_filter`` … as the server said), the usage, and ``duration``: seconds from
    ``open_stream`` to the end, failed attempts included."""

    stop_reason: str
    usage: Usage
    duration: float


StreamEvent = TextDelta | StreamEnd


@dataclass(frozen=True, slots=True)
class ProviderRef:
    """Which provider serves a stream (for the ledger and the UI)."""

    id: uuid.UUID
    name: str
    kind: str


@dataclass(frozen=True, slots=True)
class Attempt:
    """One provider tried before the first token, and why it was given up. ``counted``: the failure
    was recorded on the provider's circuit breaker (a request the server refused as malformed is not
    the provider's fault and is not counted)."""

    provider_id: uuid.UUID | None
    provider_name: str
    model: str | None
    reason: str
    counted: bool

    def describe(self) -> str:
        model = f" ({self.model})" if self.model else ""
        return f"{self.provider_name}{model}: {self.reason}"


# --------------------------------------------------------------------------------------------------
# Errors


class LlmError(ServiceError):
    """Base of the LLM errors. Messages name providers, models and reasons; never a key or a URL's
    credentials."""

    status_code = status.HTTP_502_BAD_GATEWAY
    default_code = "llm_error"
    default_detail = "The language model failed."


class InvalidLlmRequest(LlmError):
    """The messages or parameters are not a valid request (caught before any provider is asked)."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "llm_invalid_request"
    default_detail = "The request to the language model is not valid."


class ProviderNotFound(LlmError):
    status_code = status.HTTP_404_NOT_FOUND
    default_code = "llm_provider_not_found"
    default_detail = "No such LLM provider."


class NoProviderAvailable(LlmError):
    """Every provider of the chain failed, was skipped (breaker open, disabled, no model, no URL), or
    the chain is empty. ``attempts`` lists each provider with its reason, in chain order."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "llm_no_provider_available"
    default_detail = "No language model provider is available."

    def __init__(self, attempts: list[Attempt] | tuple[Attempt, ...]) -> None:
        self.attempts = tuple(attempts)
        if self.attempts:
            detail = "No LLM provider could answer: " + "; ".join(a.describe() for a in self.attempts)
        else:
            detail = "No LLM provider is configured (add one in the admin)."
        super().__init__(detail)


class StreamBroken(LlmError):
    """The stream failed after its first token (connection dropped, garbage, silence past the read
    timeout). There is no failover mid-answer: the text received so far is the caller's to keep."""

    default_code = "llm_stream_broken"
    default_detail = "The language model's stream broke off."

    def __init__(self, *, provider: ProviderRef, model: str, reason: str) -> None:
        self.provider = provider
        self.model = model
        self.reason = reason
        super().__init__(f"The stream from {provider.name} ({model}) broke off: {reason}")
