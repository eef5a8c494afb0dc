"""``open_stream`` against the scripted server: both wire formats, failover before the first token (and
never after), usage, stop (``aclose``), the chain's order and bad input."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from business_project.llm import streaming, wire
from business_project.llm.events import (
    InvalidLlmRequest,
    NoProviderAvailable,
    ProviderNotFound,
    StreamBroken,
    StreamEnd,
    TextDelta,
)
from business_project.llm.models import Provider, ProviderModel
from business_project.llm.services import open_stream
from tests.business.llm.conftest import run
from tests.fixtures.live_slm import free_port

pytestmark = pytest.mark.django_db

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]


async def collect(stream) -> list:
    return [event async for event in stream]


def stream_all(**kwargs) -> tuple:
    async def go():
        stream = await open_stream(messages=MESSAGES, **kwargs)
        return stream, await collect(stream)

    return run(go)


def texts(events) -> list[str]:
    return [event.text for event in events if isinstance(event, TextDelta)]


def assert_one_end_last(events) -> StreamEnd:
    ends = [event for event in events if isinstance(event, StreamEnd)]
    assert len(ends) == 1
    assert events[-1] is ends[0]
    return ends[0]


# --------------------------------------------------------------------------------------------------
# The two wire formats


def test_an_openai_compatible_stream_yields_the_tokens_then_one_end(scripted_llm):
    scripted_llm.script(tokens=["Hel", "lo", " there"], prompt_tokens=11)
    provider = scripted_llm.register_provider(name="oai", is_default=True)

    stream, events = stream_all()

    assert texts(events) == ["Hel", "lo", " there"]
    end = assert_one_end_last(events)
    assert end.stop_reason == "stop"
    assert (end.usage.prompt_tokens, end.usage.completion_tokens, end.usage.estimated) == (11, 3, False)
    assert end.duration >= stream.time_to_first_token > 0
    assert (stream.provider.id, stream.provider.name, stream.provider.kind) == (provider.id, "oai", "openai")
    assert stream.model == "scripted-model"
    assert stream.attempts == ()
    [request] = scripted_llm.chat_requests()
    assert request.path == "/v1/chat/completions"
    assert request.json["stream"] is True
    assert request.json["stream_options"] == {"include_usage": True}
    assert request.json["messages"] == MESSAGES
    assert request.json["model"] == "scripted-model"
    assert "authorization" not in request.headers


def test_an_ollama_stream_yields_the_tokens_then_one_end(scripted_llm):
    scripted_llm.script(tokens=["Hi", "!"], prompt_tokens=5, finish_reason="length")
    scripted_llm.register_provider(name="ollama", kind="ollama")

    stream, events = stream_all(params={"max_tokens": 2, "temperature": 0.1})

    assert texts(events) == ["Hi", "!"]
    end = assert_one_end_last(events)
    assert end.stop_reason == "length"
    assert (end.usage.prompt_tokens, end.usage.completion_tokens, end.usage.estimated) == (5, 2, False)
    [request] = scripted_llm.chat_requests()
    assert request.path == "/api/chat"
    body = request.json
    assert body["stream"] is True
    assert body["messages"] == MESSAGES
    # OpenAI-style names become Ollama options; the model's context window is sent, not a server default.
    assert body["options"] == {"num_predict": 2, "temperature": 0.1, "num_ctx": 4096}
    assert stream.provider.kind == "ollama"


@pytest.mark.parametrize("kind", ["openai", "ollama"])
def test_usage_is_counted_when_the_server_reports_none(scripted_llm, kind):
    scripted_llm.script(tokens=["a", "b", "c", "d"], usage=False)
    scripted_llm.register_provider(kind=kind)

    _, events = stream_all()

    usage = assert_one_end_last(events).usage
    assert usage.estimated is True
    assert usage.completion_tokens == 4
    assert usage.prompt_tokens > 0


def test_parameters_merge_provider_model_and_request(scripted_llm):
    provider = scripted_llm.register_provider(default_params={"temperature": 0.2, "top_p": 0.9, "seed": 1})
    ProviderModel.objects.filter(provider=provider).update(
        default_params={"temperature": 0.5, "stop": ["\n"]}
    )

    stream_all(params={"seed": 7, "model": "ignored", "stream": False})

    body = scripted_llm.chat_requests()[0].json
    assert (body["temperature"], body["top_p"], body["stop"], body["seed"]) == (0.5, 0.9, ["\n"], 7)
    assert body["model"] == "scripted-model"  # protocol keys in params are ignored
    assert body["stream"] is True


def test_an_empty_answer_ends_without_deltas(scripted_llm):
    scripted_llm.script(tokens=[])
    scripted_llm.register_provider()

    _, events = stream_all()

    assert texts(events) == []
    assert assert_one_end_last(events).usage.completion_tokens == 0


def test_the_api_key_is_sent_as_a_bearer_token(scripted_llm):
    scripted_llm.register_provider(api_key="sk-scripted-key-1234567890")

    stream_all()

    assert scripted_llm.chat_requests()[0].headers["authorization"] == "Bearer sk-scripted-key-1234567890"


# --------------------------------------------------------------------------------------------------
# Failover before the first token


def two_providers(factory, **first_fields):
    first, second = factory(), factory()
    a = first.register_provider(name="a", is_default=True, **first_fields)
    b = second.register_provider(name="b", priority=200)
    return first, second, a, b


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        ({"status": 503}, "HTTP 503: scripted failure 503"),
        ({"status": 401}, "HTTP 401"),
        ({"garbage": b"<html><body>Bad gateway</body></html>\n"}, "garbage"),
        ({"garbage": b'{"unexpected": "json"}\n'}, "garbage"),
        ({"drop_before_headers": True}, "RemoteProtocolError"),
        ({"drop_after": 0}, "RemoteProtocolError"),
        ({"first_token_delay": 3.0}, "no first token within 0.3 s"),
    ],
    ids=[
        "http-503",
        "http-401",
        "garbage-html",
        "garbage-json",
        "no-response",
        "dropped-before-token",
        "slow",
    ],
)
def test_a_failure_before_the_first_token_fails_over_and_counts(scripted_llm_factory, script, reason):
    first, second, a, b = two_providers(scripted_llm_factory, first_token_timeout=0.3)
    first.script(**script)
    second.script(tokens=["from", " b"])

    started = time.monotonic()
    stream, events = stream_all()

    assert time.monotonic() - started < 2.5
    assert stream.provider.name == "b"
    assert texts(events) == ["from", " b"]
    assert_one_end_last(events)
    [attempt] = stream.attempts
    assert (attempt.provider_name, attempt.counted) == ("a", True)
    assert reason in attempt.reason
    a.refresh_from_db()
    assert a.consecutive_failures == 1
    assert reason.split(":")[0] in a.last_error
    b.refresh_from_db()
    assert b.consecutive_failures == 0


def test_a_refused_connection_fails_over(scripted_llm):
    Provider.objects.create(name="down", base_url=f"http://127.0.0.1:{free_port()}", is_default=True)
    ProviderModel.objects.create(provider=Provider.objects.get(name="down"), name="m", is_default=True)
    scripted_llm.register_provider(name="up")

    stream, _ = stream_all()

    assert stream.provider.name == "up"
    assert "ConnectError" in stream.attempts[0].reason
    assert Provider.objects.get(name="down").consecutive_failures == 1


def test_a_malformed_request_error_fails_over_without_counting(scripted_llm_factory):
    first, _, a, _ = two_providers(scripted_llm_factory)
    first.script(status=400)

    stream, _ = stream_all()

    assert stream.provider.name == "b"
    assert stream.attempts[0].counted is False
    a.refresh_from_db()
    assert a.consecutive_failures == 0


def test_when_every_provider_fails_the_error_lists_each_attempt(scripted_llm_factory):
    first, second, _, _ = two_providers(scripted_llm_factory)
    first.script(status=500)
    second.script(garbage=b"nope\n")

    with pytest.raises(NoProviderAvailable) as excinfo:
        stream_all()

    error = excinfo.value
    assert error.status_code == 503
    assert error.get_codes() == "llm_no_provider_available"
    assert [attempt.provider_name for attempt in error.attempts] == ["a", "b"]
    assert "a (scripted-model): HTTP 500" in str(error.detail)
    assert "b (scripted-model): garbage" in str(error.detail)


def test_no_provider_at_all_is_a_typed_error():
    with pytest.raises(NoProviderAvailable, match="No LLM provider is configured"):
        stream_all()


# --------------------------------------------------------------------------------------------------
# No failover after the first token


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        ({"drop_after": 2}, "RemoteProtocolError"),
        ({"garbage_after": 2}, "garbage"),
    ],
    ids=["dropped", "garbage"],
)
def test_a_failure_after_the_first_token_breaks_the_stream_without_failover(
    scripted_llm_factory, script, reason
):
    first, second, a, _ = two_providers(scripted_llm_factory)
    first.script(tokens=["one", " two", " three", " four"], **script)

    received = []

    async def go():
        stream = await open_stream(messages=MESSAGES)
        async for event in stream:
            received.append(event)

    with pytest.raises(StreamBroken) as excinfo:
        run(go)

    assert texts(received) == ["one", " two"]
    assert not any(isinstance(event, StreamEnd) for event in received)
    error = excinfo.value
    assert (error.provider.name, error.model) == ("a", "scripted-model")
    assert reason in error.reason
    assert error.get_codes() == "llm_stream_broken"
    assert second.requests == []  # never a second provider mid-answer
    a.refresh_from_db()
    assert a.consecutive_failures == 1


def test_silence_after_the_first_token_past_the_read_timeout_breaks_the_stream(scripted_llm):
    scripted_llm.script(tokens=["a", "b"], token_delay=3.0)
    scripted_llm.register_provider(read_timeout=0.3)

    async def go():
        stream = await open_stream(messages=MESSAGES)
        return [event async for event in stream]

    started = time.monotonic()
    with pytest.raises(StreamBroken, match="ReadTimeout"):
        run(go)
    assert time.monotonic() - started < 2.0


# --------------------------------------------------------------------------------------------------
# Stop


def test_aclose_cancels_the_upstream_request_at_once(scripted_llm):
    scripted_llm.script(tokens=[f"t{i} " for i in range(50)], token_delay=0.2)
    scripted_llm.register_provider()

    async def go():
        stream = await open_stream(messages=MESSAGES)
        first = await stream.__anext__()
        closed_at = time.monotonic()
        await stream.aclose()
        rest = [event async for event in stream]
        # Still inside the loop, its HTTP client open: only aclose() can have closed the connection.
        disconnect = await asyncio.to_thread(scripted_llm.wait_for_disconnect, 1.0)
        return first, rest, closed_at, disconnect

    first, rest, closed_at, disconnect = run(go)

    assert first == TextDelta("t0 ")
    assert rest == []  # nothing after a stop, not even an end
    assert disconnect.tokens_sent <= 2
    assert disconnect.at - closed_at < 0.25  # the server saw it before its next token was due
    assert scripted_llm.completed == 0


def test_aclose_from_another_task_ends_a_waiting_iteration(scripted_llm):
    scripted_llm.script(tokens=["a", "b", "c"], token_delay=5.0)
    scripted_llm.register_provider()

    async def go():
        stream = await open_stream(messages=MESSAGES)
        events = []

        async def consume():
            async for event in stream:
                events.append(event)

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(0.1)
        await stream.aclose()
        await asyncio.wait_for(task, 1.0)
        await asyncio.to_thread(scripted_llm.wait_for_disconnect, 1.0)
        return events

    started = time.monotonic()
    events = run(go)

    assert events == [TextDelta("a")]
    assert time.monotonic() - started < 2.0


def test_cancelling_open_stream_while_it_waits_closes_the_request(scripted_llm):
    scripted_llm.script(first_token_delay=5.0)
    scripted_llm.register_provider()

    async def go():
        task = asyncio.ensure_future(open_stream(messages=MESSAGES))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.to_thread(scripted_llm.wait_for_disconnect, 1.0)

    run(go)


def test_a_stream_used_as_a_context_manager_is_closed_on_exit(scripted_llm):
    scripted_llm.script(tokens=["x"] * 20, token_delay=0.2)
    scripted_llm.register_provider()

    async def go():
        async with await open_stream(messages=MESSAGES) as stream:
            await stream.__anext__()
        await asyncio.to_thread(scripted_llm.wait_for_disconnect, 1.0)
        return stream

    stream = run(go)
    assert stream.closed


def test_the_connection_goes_back_to_the_pool_even_when_the_caller_stops_at_the_end(scripted_llm):
    scripted_llm.register_provider()

    async def go():
        for _ in range(3):
            stream = await open_stream(messages=MESSAGES)
            async for event in stream:
                if isinstance(event, StreamEnd):
                    break
            await asyncio.sleep(0.05)

    run(go)

    assert len(scripted_llm.chat_requests()) == 3
    assert scripted_llm.connections == 1
    assert scripted_llm.disconnects == []


@pytest.mark.parametrize(("end_delay", "kept"), [(0.1, True), (2.0, False)], ids=["soon", "never"])
def test_closed_at_its_end_a_stream_waits_briefly_for_the_body_to_end_to_keep_its_connection(
    scripted_llm, monkeypatch, end_delay, kept
):
    """The end event can arrive before the body's last bytes (the chunked terminator): a stream closed
    right after its end keeps the connection if those bytes follow within ``DRAIN_SECONDS``, and drops
    it (the server sees the client go) if they do not."""
    monkeypatch.setattr(streaming, "DRAIN_SECONDS", 0.5)
    scripted_llm.script(tokens=["a", "b"], end_delay=end_delay)
    scripted_llm.register_provider()

    async def go():
        stream = await open_stream(messages=MESSAGES)
        events = [event async for event in stream]
        await stream.aclose()
        at_close = wire.pool_state()
        await asyncio.sleep(0.8)
        return events, at_close, wire.pool_state()

    events, at_close, later = run(go)

    assert texts(events) == ["a", "b"]
    assert_one_end_last(events)
    assert at_close == {"open": 1, "idle": 0}  # not closed at once
    assert later == ({"open": 1, "idle": 1} if kept else {"open": 0, "idle": 0})
    if not kept:
        scripted_llm.wait_for_disconnect(2.0)


def test_concurrent_streams_each_have_a_connection_and_give_it_back_unless_stopped(scripted_llm):
    """A stream read to its end leaves its connection idle in the pool for the next request; a stream
    stopped early closes its own (the server sees the client go); the next streams reuse the idle ones."""
    scripted_llm.script(tokens=["a", "b", "c"], token_delay=0.2)
    scripted_llm.register_provider()
    count = 40

    async def go():
        streams = await asyncio.gather(*(open_stream(messages=MESSAGES) for _ in range(count)))
        during = wire.pool_state()
        for stream in streams[:5]:
            await stream.aclose()  # stopped early
        for stream in streams[5:]:
            async for _ in stream:  # read to the end
                pass
        await asyncio.sleep(0.05)
        after = wire.pool_state()
        again = await asyncio.gather(*(open_stream(messages=MESSAGES) for _ in range(10)))
        for stream in again:
            await stream.aclose()
        return during, after

    during, after = run(go)
    assert during == {"open": count, "idle": 0}
    assert after == {"open": count - 5, "idle": count - 5}
    assert scripted_llm.connections == count  # the ten later requests went out on kept-alive connections
    assert len(scripted_llm.disconnects) >= 5


def test_a_reader_far_behind_stops_the_socket_being_read_until_it_catches_up(scripted_llm, monkeypatch):
    monkeypatch.setattr(streaming, "PENDING_LIMIT", 4)
    scripted_llm.script(tokens=[f"t{i}" for i in range(30)], token_delay=0.005)
    scripted_llm.register_provider()

    async def go():
        stream = await open_stream(messages=MESSAGES)
        await asyncio.sleep(0.5)  # every token has been sent; the reader has read none
        connection = stream._exchange.connection
        paused_while_behind = connection.reading_paused
        held = len(stream._pending)
        events = [event async for event in stream]
        await asyncio.sleep(0.05)
        return paused_while_behind, held, events, connection.reading_paused, wire.pool_state()

    paused_while_behind, held, events, paused_after, pool = run(go)

    assert paused_while_behind
    assert 5 <= held <= 10  # the limit, and what the last reads before the pause held
    assert texts(events) == [f"t{i}" for i in range(30)]
    assert_one_end_last(events)
    assert not paused_after
    assert pool == {"open": 1, "idle": 1}


# --------------------------------------------------------------------------------------------------
# Following: events handed over in the socket's callback


def follow_all(follower_factory, **script) -> tuple:
    """Open a stream and ``follow`` it with ``follower_factory(stream, events)``; the events and what
    ``follow`` raised (or None)."""

    async def go():
        stream = await open_stream(messages=MESSAGES)
        events: list = []
        try:
            await stream.follow(follower_factory(stream, events))
        except Exception as exc:
            return events, exc
        return events, None

    return run(go)


def test_a_follower_gets_every_event_in_order_where_the_bytes_arrive(scripted_llm):
    scripted_llm.script(tokens=["one", " two", " three", " four"], token_delay=0.02)
    scripted_llm.register_provider()

    def follower(stream, events):
        def on_event(event):
            # In a protocol callback no task runs; only the token read before follow() (the first, which
            # open_stream waited for) is handed over inside follow()'s own task.
            events.append((event, asyncio.current_task() is None))

        return on_event

    events, error = follow_all(follower)

    assert error is None
    assert texts([event for event, _ in events]) == ["one", " two", " three", " four"]
    assert_one_end_last([event for event, _ in events])
    assert [in_callback for _, in_callback in events] == [False, True, True, True, True]


def test_a_follower_that_asks_to_wait_gets_nothing_more_until_that_is_done(scripted_llm):
    scripted_llm.script(tokens=[f"t{i}" for i in range(6)], token_delay=0.02)
    scripted_llm.register_provider()
    released = {}

    def follower(stream, events):
        def on_event(event):
            events.append((event, time.monotonic()))
            if len(events) == 2:
                released["at"] = time.monotonic() + 0.4
                return asyncio.sleep(0.4)  # meanwhile the other tokens arrive, and wait
            return None

        return on_event

    events, error = follow_all(follower)

    assert error is None
    assert texts([event for event, _ in events]) == [f"t{i}" for i in range(6)]
    assert_one_end_last([event for event, _ in events])
    third_at = events[2][1]
    assert third_at >= released["at"] - 0.01


def test_a_follower_that_raises_closes_the_stream_and_follow_raises_it(scripted_llm):
    scripted_llm.script(tokens=[f"t{i}" for i in range(20)], token_delay=0.05)
    scripted_llm.register_provider()

    def follower(stream, events):
        def on_event(event):
            events.append(event)
            if len(events) == 3:
                raise ValueError("the reader failed")

        return on_event

    events, error = follow_all(follower)

    assert isinstance(error, ValueError)
    assert texts(events) == ["t0", "t1", "t2"]
    disconnect = scripted_llm.wait_for_disconnect(2.0)
    assert disconnect.tokens_sent < 10


def test_a_wait_that_fails_closes_the_stream_and_follow_raises_its_error(scripted_llm):
    scripted_llm.script(tokens=[f"t{i}" for i in range(20)], token_delay=0.05)
    scripted_llm.register_provider()

    async def refuse():
        await asyncio.sleep(0.01)
        raise ConnectionError("the buffer went away")

    def follower(stream, events):
        def on_event(event):
            events.append(event)
            return refuse() if len(events) == 2 else None

        return on_event

    events, error = follow_all(follower)

    assert isinstance(error, ConnectionError)
    assert texts(events) == ["t0", "t1"]
    scripted_llm.wait_for_disconnect(2.0)


def test_a_followed_stream_that_breaks_raises_stream_broken_and_counts(scripted_llm):
    scripted_llm.script(tokens=["one", " two", " three", " four"], drop_after=2, token_delay=0.02)
    provider = scripted_llm.register_provider()

    def follower(stream, events):
        return events.append

    events, error = follow_all(follower)

    assert isinstance(error, StreamBroken)
    assert "RemoteProtocolError" in error.reason
    assert texts(events) == ["one", " two"]
    assert not any(isinstance(event, StreamEnd) for event in events)
    provider.refresh_from_db()
    assert provider.consecutive_failures == 1


def test_aclose_while_followed_ends_follow_without_an_end(scripted_llm):
    scripted_llm.script(tokens=["a", "b", "c"], token_delay=5.0)
    scripted_llm.register_provider()

    async def go():
        stream = await open_stream(messages=MESSAGES)
        events: list = []
        following = asyncio.ensure_future(stream.follow(events.append))
        await asyncio.sleep(0.1)
        await stream.aclose()
        await asyncio.wait_for(following, 1.0)
        await asyncio.to_thread(scripted_llm.wait_for_disconnect, 1.0)
        return events

    started = time.monotonic()
    assert run(go) == [TextDelta("a")]
    assert time.monotonic() - started < 2.0


# --------------------------------------------------------------------------------------------------
# The chain


def test_a_requested_provider_goes_first_then_the_chain(scripted_llm_factory):
    first, second, _, b = two_providers(scripted_llm_factory)

    stream, _ = stream_all(provider_id=b.id)
    assert stream.provider.name == "b"
    assert first.requests == []

    second.script(status=503)
    stream, _ = stream_all(provider_id=str(b.id))
    assert stream.provider.name == "a"
    assert [attempt.provider_name for attempt in stream.attempts] == ["b"]


def test_an_unknown_provider_is_a_typed_404(scripted_llm):
    scripted_llm.register_provider()

    with pytest.raises(ProviderNotFound) as excinfo:
        stream_all(provider_id=uuid.uuid4())
    assert excinfo.value.status_code == 404
    with pytest.raises(ProviderNotFound):
        stream_all(provider_id="not-a-uuid")


def test_a_disabled_requested_provider_is_skipped_with_a_reason(scripted_llm_factory):
    _, _, _, b = two_providers(scripted_llm_factory)
    Provider.objects.filter(pk=b.pk).update(enabled=False)

    stream, _ = stream_all(provider_id=b.id)

    assert stream.provider.name == "a"
    assert (stream.attempts[0].provider_name, stream.attempts[0].reason) == ("b", "disabled")


def test_a_model_goes_to_the_providers_that_offer_it(scripted_llm_factory):
    first, second, _, b = two_providers(scripted_llm_factory)
    ProviderModel.objects.create(provider=b, name="special")

    stream, _ = stream_all(model="special")

    assert (stream.provider.name, stream.model) == ("b", "special")
    assert first.requests == []
    assert second.chat_requests()[0].json["model"] == "special"


def test_failover_uses_the_next_providers_own_default_model(scripted_llm_factory):
    first, _, a, _ = two_providers(scripted_llm_factory)
    ProviderModel.objects.create(provider=a, name="only-on-a")
    first.script(status=503)

    stream, _ = stream_all(model="only-on-a")

    assert (stream.provider.name, stream.model) == ("b", "scripted-model")


def test_a_provider_without_a_model_is_skipped(scripted_llm):
    Provider.objects.create(name="modelless", base_url=scripted_llm.url, is_default=True)
    scripted_llm.register_provider(name="with-model")

    stream, _ = stream_all()

    assert stream.provider.name == "with-model"
    assert stream.attempts[0].reason == "no model configured"


# --------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("messages", "params"),
    [
        ([], None),
        ("hello", None),
        ([{"role": "user"}], None),
        ([{"role": "wizard", "content": "x"}], None),
        ([{"role": "user", "content": 3}], None),
        ([{"role": "user", "content": "x"}], ["not", "a", "dict"]),
    ],
)
def test_malformed_input_is_a_typed_error_before_any_request(scripted_llm, messages, params):
    scripted_llm.register_provider()

    async def go():
        await open_stream(messages=messages, params=params)

    with pytest.raises(InvalidLlmRequest) as excinfo:
        run(go)
    assert excinfo.value.status_code == 400
    assert scripted_llm.requests == []
