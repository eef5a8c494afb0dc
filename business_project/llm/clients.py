"""The protocols of LLM servers: requests, stream parsers, health probes.

- **Ollama**: ``POST {base}/api/chat`` answers NDJSON, one JSON object per line, the last with
  ``"done": true`` and the token counts; ``GET {base}/api/tags`` lists the models (the health probe).
- **OpenAI-compatible**: ``POST {base}/v1/chat/completions`` with ``"stream": true`` answers server-sent
  events, ``data: {chunk}`` lines ended by ``data: [DONE]``; ``stream_options.include_usage`` asks for a
  last chunk with the usage. ``GET {base}/v1/models`` is the probe. ``/v1`` is added to a base URL that
  does not end with it.

Parsers are plain classes fed the body's bytes as they arrive: ``feed(chunk)`` returns the events in it
(``TextDelta`` per content chunk, one ``RawEnd``), ``finish()`` is called at the end of the body. Anything
that is not the protocol raises ``ProtocolError``; an error the server reports inside the stream raises
``ServerReportedError``. No per-chunk logging, no per-chunk allocation beyond the event itself.

The chat requests go out through ``wire.py`` (HTTP/1.1, kept-alive connections per event loop, the
answer parsed in the socket's callback); the health probes through httpx.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import httpx
import orjson
from django.conf import settings

from business_project.llm import wire
from business_project.llm.choices import ProviderKind
from business_project.llm.constants import ERROR_TEXT_MAX_LENGTH, HEALTH_MODELS_RECORDED
from business_project.llm.events import TextDelta

MAX_LINE_BYTES = 1024 * 1024  # a line this long without a newline is not a token stream
ERROR_BODY_BYTES = 4096  # of an HTTP error's body, read to say why

# Keys of the request body that belong to the protocol; parameters never override them.
_PROTOCOL_KEYS = frozenset({"model", "messages", "stream", "stream_options"})
# OpenAI-style parameter names that Ollama spells differently (its `options`).
_OLLAMA_OPTION_NAMES = {"max_tokens": "num_predict", "max_completion_tokens": "num_predict"}
# Ollama parameters that sit beside `options`, not in it.
_OLLAMA_TOP_LEVEL = frozenset({"keep_alive", "format", "think", "tools"})

_USERINFO = re.compile(r"(?<=//)[^/@\s]+@")


# --------------------------------------------------------------------------------------------------
# Errors and small types


class ProtocolError(Exception):
    """The server's answer is not the protocol: garbage, a wrong shape, or cut off before its end."""


class ServerReportedError(Exception):
    """The server reported an error inside the stream (Ollama ``{"error": …}``, an SSE error chunk)."""


class RawEnd(NamedTuple):
    """The end of a stream as the server said it; ``None`` tokens: the server reported none."""

    stop_reason: str
    prompt_tokens: int | None
    completion_tokens: int | None


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` safe to store or show: URL credentials and the given secrets removed, one line, cut."""
    text = _USERINFO.sub("***@", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = " ".join(text.split())
    if len(text) > ERROR_TEXT_MAX_LENGTH:
        text = text[: ERROR_TEXT_MAX_LENGTH - 1] + "…"
    return text


def describe_exception(exc: BaseException, secrets: Iterable[str | None] = ()) -> str:
    """A transport error as ``ConnectError: [Errno 111] Connection refused`` (scrubbed)."""
    message = str(exc)
    return scrub(f"{exc.__class__.__name__}: {message}" if message else exc.__class__.__name__, secrets)


# --------------------------------------------------------------------------------------------------
# Clients


def new_http_client() -> httpx.AsyncClient:
    """A client for the health probes (the chat requests go through ``wire.py``)."""
    limits = httpx.Limits(
        max_connections=settings.LLM_HTTP_MAX_CONNECTIONS,
        max_keepalive_connections=settings.LLM_HTTP_MAX_KEEPALIVE_CONNECTIONS,
        keepalive_expiry=30.0,
    )
    # Timeouts are set per request from the provider's settings.
    return httpx.AsyncClient(
        limits=limits, timeout=httpx.Timeout(30.0), follow_redirects=False, trust_env=False
    )


async def close_http_client() -> None:
    """Close the running loop's chat connections (tests, or a shutdown); the next request opens new ones."""
    wire.close_connections()


# --------------------------------------------------------------------------------------------------
# Requests


def _openai_root(base_url: str) -> str:
    root = base_url.rstrip("/")
    return root if root.endswith("/v1") else f"{root}/v1"


def chat_url(kind: str, base_url: str) -> str:
    if kind == ProviderKind.OLLAMA:
        return f"{base_url.rstrip('/')}/api/chat"
    return f"{_openai_root(base_url)}/chat/completions"


def models_url(kind: str, base_url: str) -> str:
    if kind == ProviderKind.OLLAMA:
        return f"{base_url.rstrip('/')}/api/tags"
    return f"{_openai_root(base_url)}/models"


def _headers(api_key: str | None, accept: str) -> dict[str, str]:
    headers = {"Accept": accept}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def chat_body(
    *,
    kind: str,
    model: str,
    messages: list[dict[str, Any]],
    params: dict[str, Any],
    context_window: int | None,
) -> dict[str, Any]:
    """The request body: ``params`` are OpenAI-style names (``temperature``, ``max_tokens`` …), mapped
    to Ollama's ``options`` for Ollama; protocol keys in them are ignored."""
    params = {key: value for key, value in params.items() if key not in _PROTOCOL_KEYS}
    if kind == ProviderKind.OLLAMA:
        options = {}
        body: dict[str, Any] = {"model": model, "messages": messages, "stream": True}
        for key, value in params.items():
            if key in _OLLAMA_TOP_LEVEL:
                body[key] = value
            elif key == "options" and isinstance(value, dict):
                options.update(value)
            else:
                options[_OLLAMA_OPTION_NAMES.get(key, key)] = value
        if context_window and "num_ctx" not in options:
            # Ollama's own default context is small; the model's window keeps long chats whole.
            options["num_ctx"] = context_window
        if options:
            body["options"] = options
        return body
    return {
        **params,
        "model": model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def chat_headers(kind: str, api_key: str | None) -> dict[str, str]:
    accept = "application/x-ndjson" if kind == ProviderKind.OLLAMA else "text/event-stream"
    return {**_headers(api_key, accept), "Content-Type": "application/json"}


async def read_error(response: httpx.Response, secrets: Iterable[str | None] = ()) -> str:
    """``HTTP 503: <the server's message>`` from an error response (its body read up to a limit)."""
    body = b""
    try:
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) >= ERROR_BODY_BYTES:
                break
    except httpx.HTTPError:
        pass
    return error_reason(response.status_code, body, secrets)


def error_reason(status: int, body: bytes, secrets: Iterable[str | None] = ()) -> str:
    """``HTTP 503: <the server's message>`` from an error answer's status and (the start of its) body."""
    message = ""
    try:
        data = json.loads(body)
    except ValueError:
        message = body[:200].decode(errors="replace")
    else:
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            message = str(error.get("message") or error)
        elif error:
            message = str(error)
        elif isinstance(data, dict) and data.get("detail"):
            message = str(data["detail"])
    return scrub(f"HTTP {status}" + (f": {message}" if message.strip() else ""), secrets)


# --------------------------------------------------------------------------------------------------
# Stream parsers


def loads(data: bytes) -> Any:
    """A streamed chunk's JSON. orjson reads one in a fifth of ``json``'s time (once per token); what it
    refuses and ``json`` accepts (NaN, a lone surrogate escaped in a string) is read by ``json``. (orjson
    reads an integer beyond 64 bits as a float, which no count of tokens is.) Raises ValueError."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def _text(content: str) -> str:
    """A chunk's text as UTF-8 can carry it: JSON may escape half of a surrogate pair alone, which no
    websocket frame or database row can hold; it becomes U+FFFD, as a browser decodes it."""
    if content.isascii():
        return content
    try:
        content.encode()
    except UnicodeEncodeError:
        return "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in content)
    return content


def _lines(parser: _LineParser, chunk: bytes) -> list[bytes]:
    buffer = parser.buffer + chunk if parser.buffer else chunk
    lines = buffer.split(b"\n")
    parser.buffer = lines.pop()
    if len(parser.buffer) > MAX_LINE_BYTES:
        raise ProtocolError("a line of more than 1 MiB")
    return lines


def _usage_count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


@dataclass
class _LineParser:
    buffer: bytes = b""
    ended: bool = False
    chunks: int = 0  # content chunks seen: the completion tokens when the server reports none


@dataclass
class NdjsonParser(_LineParser):
    """Ollama's ``/api/chat`` stream."""

    def feed(self, chunk: bytes) -> list[TextDelta | RawEnd]:
        events: list[TextDelta | RawEnd] = []
        for line in _lines(self, chunk):
            if self.ended or not line.strip():
                continue
            try:
                data = loads(line)
            except ValueError:
                raise ProtocolError("a line that is not JSON") from None
            if not isinstance(data, dict):
                raise ProtocolError("a line that is not a JSON object")
            if "error" in data:
                raise ServerReportedError(str(data["error"]))
            message = data.get("message")
            if message is not None:
                if not isinstance(message, dict):
                    raise ProtocolError("a chunk whose message is not an object")
                content = message.get("content")
                if content:
                    if not isinstance(content, str):
                        raise ProtocolError("a chunk whose content is not text")
                    self.chunks += 1
                    events.append(TextDelta(_text(content)))
            if data.get("done") is True:
                self.ended = True
                events.append(
                    RawEnd(
                        str(data.get("done_reason") or "stop"),
                        _usage_count(data.get("prompt_eval_count")),
                        _usage_count(data.get("eval_count")),
                    )
                )
            elif message is None:
                raise ProtocolError("a line that is not an Ollama chat chunk")
        return events

    def finish(self) -> list[TextDelta | RawEnd]:
        events = self.feed(b"\n") if self.buffer else []
        if not self.ended:
            raise ProtocolError("the stream ended before its last chunk (done)")
        return events


@dataclass
class SseParser(_LineParser):
    """An OpenAI-compatible ``/v1/chat/completions`` stream. Each ``data:`` line is one chunk (JSON has
    no raw new lines, so no server splits one over several lines)."""

    finish_reason: str | None = None
    usage: dict[str, Any] | None = field(default=None)

    def feed(self, chunk: bytes) -> list[TextDelta | RawEnd]:
        events: list[TextDelta | RawEnd] = []
        for line in _lines(self, chunk):
            if self.ended:
                continue
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line or line[0] == 58:  # blank line (event boundary) or ":" comment
                continue
            if line.startswith(b"data:"):
                self._data(line[6:] if line[5:6] == b" " else line[5:], events)
            elif not line.startswith((b"event:", b"id:", b"retry:")):
                raise ProtocolError("a line that is not a server-sent event")
        return events

    def _data(self, payload: bytes, events: list[TextDelta | RawEnd]) -> None:
        if payload == b"[DONE]":
            events.append(self._end())
            return
        try:
            data = loads(payload)
        except ValueError:
            raise ProtocolError("an event whose data is not JSON") from None
        if not isinstance(data, dict):
            raise ProtocolError("an event whose data is not a JSON object")
        if "error" in data:
            error = data["error"]
            raise ServerReportedError(str(error.get("message") if isinstance(error, dict) else error))
        choices = data.get("choices")
        if choices is None and "usage" not in data:
            raise ProtocolError("an event that is not a chat completion chunk")
        if choices:
            choice = choices[0] if isinstance(choices, list) else None
            if not isinstance(choice, dict):
                raise ProtocolError("a chunk whose choices are not objects")
            delta = choice.get("delta") or {}
            content = delta.get("content") if isinstance(delta, dict) else None
            if content:
                if not isinstance(content, str):
                    raise ProtocolError("a chunk whose content is not text")
                self.chunks += 1
                events.append(TextDelta(_text(content)))
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
        if isinstance(data.get("usage"), dict):
            self.usage = data["usage"]

    def _end(self) -> RawEnd:
        self.ended = True
        usage = self.usage or {}
        return RawEnd(
            self.finish_reason or "stop",
            _usage_count(usage.get("prompt_tokens")),
            _usage_count(usage.get("completion_tokens")),
        )

    def finish(self) -> list[TextDelta | RawEnd]:
        events = self.feed(b"\n") if self.buffer else []
        if self.ended:
            return events
        if self.finish_reason:
            # Some servers close after the finishing chunk without `data: [DONE]`: the answer is whole.
            return [*events, self._end()]
        raise ProtocolError("the stream ended before its last chunk ([DONE])")


def new_parser(kind: str) -> NdjsonParser | SseParser:
    return NdjsonParser() if kind == ProviderKind.OLLAMA else SseParser()


# --------------------------------------------------------------------------------------------------
# Health probes


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    latency_ms: float | None
    url: str
    status_code: int | None = None
    error: str = ""
    models: tuple[str, ...] = ()


def _model_names(kind: str, data: Any) -> list[str]:
    """The model names of a model listing; raises ``ProtocolError`` for another shape."""
    key, name_key = ("models", "name") if kind == ProviderKind.OLLAMA else ("data", "id")
    items = data.get(key) if isinstance(data, dict) else None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ProtocolError(f"the model listing has no '{key}' list")
    return [str(item.get(name_key, "")) for item in items]


async def probe(
    client: httpx.AsyncClient, *, kind: str, base_url: str, api_key: str | None, timeout: float
) -> ProbeResult:
    """A zero-token call: list the models. Never raises; a failure is a result with its reason."""
    url = models_url(kind, base_url)
    shown_url = scrub(url)
    started = time.perf_counter()
    try:
        response = await client.get(url, headers=_headers(api_key, "application/json"), timeout=timeout)
        latency_ms = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            message = await read_error(response, [api_key])
            return ProbeResult(False, latency_ms, shown_url, response.status_code, message)
        try:
            names = _model_names(kind, response.json())
        except (ValueError, ProtocolError) as exc:
            reason = str(exc) if isinstance(exc, ProtocolError) else "the answer is not JSON"
            return ProbeResult(False, latency_ms, shown_url, 200, f"garbage: {reason}")
    except httpx.HTTPError as exc:
        latency_ms = (time.perf_counter() - started) * 1000
        return ProbeResult(False, latency_ms, shown_url, None, describe_exception(exc, [api_key]))
    return ProbeResult(True, latency_ms, shown_url, 200, "", tuple(names[:HEALTH_MODELS_RECORDED]))
