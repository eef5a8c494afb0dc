"""The wire protocols without a server: stream parsers fed arbitrary byte boundaries, request bodies,
URLs and the scrubbing of error texts."""

from __future__ import annotations

import json

import httpx
import pytest

from business_project.llm import clients
from business_project.llm.clients import NdjsonParser, ProtocolError, RawEnd, ServerReportedError, SseParser
from business_project.llm.events import TextDelta
from tests.business.llm.conftest import run


def feed_in_pieces(parser, data: bytes, size: int) -> list:
    events = []
    for start in range(0, len(data), size):
        events += parser.feed(data[start : start + size])
    return events + parser.finish()


def sse(*chunks: dict, done: bool = True) -> bytes:
    body = b"".join(b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n" for chunk in chunks)
    return body + (b"data: [DONE]\n\n" if done else b"")


def delta(text: str | None = None, finish: str | None = None) -> dict:
    return {"choices": [{"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}]}


USAGE = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}
OPENAI_BODY = sse(delta(None), delta("Hé"), delta("llo ✓"), delta(finish="stop"), USAGE)


@pytest.mark.parametrize("size", [1, 2, 7, 64, 10_000])
def test_sse_survives_any_byte_boundary(size):
    events = feed_in_pieces(SseParser(), OPENAI_BODY, size)

    assert events == [TextDelta("Hé"), TextDelta("llo ✓"), RawEnd("stop", 9, 2)]


def test_sse_ignores_comments_event_names_and_data_after_done():
    body = (
        b": keep-alive\nevent: message\nid: 1\nretry: 10\n" + sse(delta("a")) + b"data: garbage after done\n"
    )
    assert feed_in_pieces(SseParser(), body, 5) == [TextDelta("a"), RawEnd("stop", None, None)]


def test_sse_without_done_ends_on_its_finish_reason():
    events = feed_in_pieces(SseParser(), sse(delta("a"), delta(finish="length"), done=False), 3)
    assert events == [TextDelta("a"), RawEnd("length", None, None)]


def test_sse_cut_off_before_its_end_is_a_protocol_error():
    parser = SseParser()
    assert parser.feed(sse(delta("a"), done=False)) == [TextDelta("a")]
    with pytest.raises(ProtocolError, match=r"\[DONE\]"):
        parser.finish()


@pytest.mark.parametrize(
    "body",
    [
        b"<html>Bad gateway</html>\n",
        b"data: not json\n\n",
        b"data: [1, 2]\n\n",
        b'data: {"hello": "world"}\n\n',
        b'data: {"choices": ["x"]}\n\n',
        b'data: {"choices": [{"delta": {"content": 5}}]}\n\n',
    ],
)
def test_sse_garbage_is_a_protocol_error(body):
    with pytest.raises(ProtocolError):
        SseParser().feed(body)


@pytest.mark.parametrize("parser_class", [SseParser, NdjsonParser])
def test_chunks_orjson_refuses_are_read_as_json_reads_them_and_made_utf8(parser_class):
    # A lone surrogate escaped in the text, and a NaN where no one reads a number: json takes both.
    text, extra = "a\\ud800b", '"logprob": NaN'
    if parser_class is SseParser:
        body = f'data: {{"choices": [{{"delta": {{"content": "{text}"}}, {extra}}}]}}\n\ndata: [DONE]\n\n'
    else:
        body = f'{{"message": {{"content": "{text}"}}, {extra}, "done": false}}\n{{"done": true}}\n'
    events = feed_in_pieces(parser_class(), body.encode(), 10_000)

    # The half of a surrogate pair is no text a websocket frame or a database row can hold.
    assert events[0] == TextDelta("a\ufffdb")
    assert type(events[-1]) is RawEnd


def test_an_sse_error_chunk_is_reported():
    with pytest.raises(ServerReportedError, match="model overloaded"):
        SseParser().feed(b'data: {"error": {"message": "model overloaded"}}\n\n')


def test_a_line_without_an_end_is_refused_past_a_megabyte():
    parser = SseParser()
    with pytest.raises(ProtocolError, match="1 MiB"):
        parser.feed(b"data: " + b"x" * (clients.MAX_LINE_BYTES + 1))


OLLAMA_BODY = b"".join(
    json.dumps(line).encode() + b"\n"
    for line in [
        {"message": {"role": "assistant", "content": "Hi"}, "done": False},
        {"message": {"role": "assistant", "content": ""}, "done": False},
        {"message": {"role": "assistant", "content": " you"}, "done": False},
        {
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "stop",
            "prompt_eval_count": 4,
            "eval_count": 2,
        },
    ]
)


@pytest.mark.parametrize("size", [1, 3, 50, 10_000])
def test_ndjson_survives_any_byte_boundary(size):
    events = feed_in_pieces(NdjsonParser(), OLLAMA_BODY, size)
    assert events == [TextDelta("Hi"), TextDelta(" you"), RawEnd("stop", 4, 2)]


@pytest.mark.parametrize(
    "body",
    [
        b"<html>\n",
        b"[1]\n",
        b'{"status": "ok"}\n',
        b'{"message": "text"}\n',
        b'{"message": {"content": 1}}\n',
    ],
)
def test_ndjson_garbage_is_a_protocol_error(body):
    with pytest.raises(ProtocolError):
        NdjsonParser().feed(body)


def test_ndjson_cut_off_before_done_is_a_protocol_error():
    parser = NdjsonParser()
    parser.feed(OLLAMA_BODY.split(b"\n")[0] + b"\n")
    with pytest.raises(ProtocolError, match="done"):
        parser.finish()


def test_an_ollama_error_line_is_reported():
    with pytest.raises(ServerReportedError, match="model 'x' not found"):
        NdjsonParser().feed(b'{"error": "model \'x\' not found"}\n')


# --------------------------------------------------------------------------------------------------
# Requests and URLs


@pytest.mark.parametrize(
    ("kind", "base", "chat", "models"),
    [
        ("openai", "http://h:8080", "http://h:8080/v1/chat/completions", "http://h:8080/v1/models"),
        ("openai", "https://api.example.com/v1/", "https://api.example.com/v1/chat/completions", None),
        ("openai", "http://h/openai/v1", "http://h/openai/v1/chat/completions", "http://h/openai/v1/models"),
        ("ollama", "http://h:11434/", "http://h:11434/api/chat", "http://h:11434/api/tags"),
    ],
)
def test_endpoint_urls(kind, base, chat, models):
    assert clients.chat_url(kind, base) == chat
    if models:
        assert clients.models_url(kind, base) == models


def test_an_ollama_body_maps_parameters_to_options():
    body = clients.chat_body(
        kind="ollama",
        model="llama3",
        messages=[{"role": "user", "content": "x"}],
        params={
            "max_tokens": 5,
            "temperature": 0,
            "keep_alive": "5m",
            "options": {"num_ctx": 1024},
            "stream": False,
        },
        context_window=8192,
    )
    assert body == {
        "model": "llama3",
        "messages": [{"role": "user", "content": "x"}],
        "stream": True,
        "keep_alive": "5m",
        "options": {"num_predict": 5, "temperature": 0, "num_ctx": 1024},
    }


def test_scrub_removes_url_credentials_and_secrets_and_cuts_long_text():
    text = clients.scrub("failed http://user:pa55@host:1/v1 with key sk-123 " + "x" * 500, ["sk-123"])
    assert "pa55" not in text
    assert "user" not in text
    assert "sk-123" not in text
    assert "http://***@host:1/v1" in text
    assert len(text) <= 300


def test_an_http_error_body_is_read_into_a_scrubbed_reason():
    async def go():
        response = httpx.Response(
            401,
            json={"error": {"message": "Incorrect API key provided: sk-live-abc"}},
            request=httpx.Request("GET", "http://h"),
        )
        return await clients.read_error(response, ["sk-live-abc"])

    assert run(go) == "HTTP 401: Incorrect API key provided: ***"
