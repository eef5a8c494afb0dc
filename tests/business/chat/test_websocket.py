"""``/ws/chat/`` over a real socket (uvicorn in the test process, the ``websockets`` client) against the
scripted OpenAI-compatible server: ordering, exactly one message_end, stop, regenerate, resume after a
disconnect, failover before the first token, quotas, privacy between users, bad frames."""

import asyncio
import time
import uuid

import pytest

from business_project.chat.choices import MessageStatus, UsageOutcome
from business_project.chat.models import Conversation, Message, UsageRecord
from tests.business.chat.factories import make_user, session_cookie
from tests.business.chat.wire import open_chat, seqs, text_of

TOKENS = ["The", " quick", " brown", " fox", " jumps"]


def run(scenario):
    return asyncio.run(scenario())


def test_an_answer_streams_in_seq_order_with_exactly_one_end(asgi_server, provider, alice, alice_cookie):
    provider.script(tokens=TOKENS, token_delay=0.01)

    async def scenario():
        chat = await open_chat(asgi_server, cookie=alice_cookie)
        await chat.send({"type": "send", "content": "Tell me about foxes", "client_ref": "r1"})
        start = await chat.event()
        events = [start, *await chat.until_end(start["message_id"])]
        await asyncio.sleep(0.2)  # anything after message_end would arrive now
        extra = [e for e in chat.received if e["type"] != "heartbeat" and e not in events]
        await chat.close()
        return events, extra

    events, extra = run(scenario)
    start, end = events[0], events[-1]
    assert start["type"] == "message_start"
    assert start["client_ref"] == "r1"
    assert seqs(events) == list(range(1, len(events) + 1))
    assert [e["type"] for e in events] == ["message_start"] + ["delta"] * len(TOKENS) + ["message_end"]
    assert [e for e in events if e["type"] == "message_end"] == [end]
    assert extra == []
    assert text_of(events) == "".join(TOKENS)
    assert end["status"] == "complete"
    assert end["stop_reason"] == "stop"
    assert end["provider"] == "scripted"
    assert end["usage"] == {"prompt_tokens": 7, "completion_tokens": len(TOKENS), "estimated": False}

    answer = Message.objects.get(pk=start["message_id"])
    assert answer.content == "".join(TOKENS)
    assert answer.status == MessageStatus.COMPLETE
    assert answer.last_seq == end["seq"]
    assert answer.parent.content == "Tell me about foxes"
    conversation = Conversation.objects.get(pk=start["conversation_id"])
    assert conversation.owner == alice
    assert conversation.title == "Tell me about foxes"
    usage = UsageRecord.objects.get(message=answer)
    assert (usage.outcome, usage.prompt_tokens, usage.completion_tokens) == (UsageOutcome.COMPLETE, 7, 5)
    assert usage.time_to_first_token_ms is not None
    assert usage.total_ms >= usage.time_to_first_token_ms
    # The model got the question.
    assert provider.chat_requests()[-1].json["messages"][-1] == {
        "role": "user",
        "content": "Tell me about foxes",
    }


def test_the_conversation_goes_on_and_the_model_gets_the_history(asgi_server, provider, alice, alice_cookie):
    provider.script(tokens=["Four."])

    async def scenario():
        chat = await open_chat(asgi_server, cookie=alice_cookie)
        await chat.send({"type": "send", "content": "2+2?"})
        first = await chat.event()
        await chat.until_end(first["message_id"])
        await chat.send({"type": "send", "content": "And 3+3?", "conversation_id": first["conversation_id"]})
        second = await chat.event()
        await chat.until_end(second["message_id"])
        await chat.close()
        return first, second

    first, second = run(scenario)
    assert second["conversation_id"] == first["conversation_id"]
    assert provider.chat_requests()[-1].json["messages"] == [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "Four."},
        {"role": "user", "content": "And 3+3?"},
    ]
    assert list(
        Message.objects.filter(conversation_id=first["conversation_id"]).values_list("position", "role")
    ) == [(0, "user"), (1, "assistant"), (2, "user"), (3, "assistant")]


def test_stop_cancels_the_upstream_request_and_stores_the_partial_answer_once(
    asgi_server, provider, alice, alice_cookie
):
    provider.script(tokens=[f" t{i}" for i in range(100)], token_delay=0.1)

    async def scenario():
        chat = await open_chat(asgi_server, cookie=alice_cookie)
        await chat.send({"type": "send", "content": "Count slowly"})
        start = await chat.event()
        events = [start]
        while len([e for e in events if e["type"] == "delta"]) < 3:
            events.append(await chat.event())
        await chat.send({"type": "stop", "message_id": start["message_id"]})
        stop_sent = time.monotonic()
        events += await chat.until_end(start["message_id"])
        ended = time.monotonic() - stop_sent
        await chat.close()
        return events, ended

    events, ended = run(scenario)
    end = events[-1]
    assert (end["status"], end["stop_reason"]) == ("stopped", "stopped")
    assert ended < 1.0
    assert seqs(events) == list(range(1, len(events) + 1))
    disconnect = provider.wait_for_disconnect(timeout=2)
    assert disconnect.tokens_sent < 20  # the scripted server saw the client leave soon after the stop
    answer = Message.objects.get(pk=events[0]["message_id"])
    assert answer.status == MessageStatus.STOPPED
    assert answer.content == text_of(events)  # every delta sent, nothing more
    assert answer.last_seq == end["seq"]
    usage = UsageRecord.objects.get(message=answer)
    assert usage.outcome == UsageOutcome.STOPPED
    assert usage.tokens_estimated is True
    assert usage.completion_tokens == len([e for e in events if e["type"] == "delta"])


def test_stop_before_the_first_token(asgi_server, provider, alice, alice_cookie):
    provider.script(tokens=["late"], first_token_delay=5)

    async def scenario():
        chat = await open_chat(asgi_server, cookie=alice_cookie)
        await chat.send({"type": "send", "content": "Hello?"})
        start = await chat.event()
        await asyncio.sleep(0.3)
        await chat.send({"type": "stop", "message_id": start["message_id"]})
        events = [start, *await chat.until_end(start["message_id"], timeout=3)]
        await chat.close()
        return events

    events = run(scenario)
    assert [e["type"] for e in events] == ["message_start", "message_end"]
    assert events[-1]["status"] == "stopped"
    answer = Message.objects.get(pk=events[0]["message_id"])
    assert (answer.status, answer.content) == (MessageStatus.STOPPED, "")


def test_a_stop_for_a_finished_answer_changes_nothing(asgi_server, provider, alice, alice_cookie):
    async def scenario():
        chat = await open_chat(asgi_server, cookie=alice_cookie)
        await chat.send({"type": "send", "content": "Hi"})
        start = await chat.event()
        await chat.until_end(start["message_id"])
        await chat.send({"type": "stop", "message_id": start["message_id"]})
        await asyncio.sleep(0.3)
        after = [e for e in chat.received if e["type"] != "heartbeat"]
        await chat.close()
        return start, after

    start, after = run(scenario)
    assert [e["type"] for e in after].count("message_end") == 1
    assert Message.objects.get(pk=start["message_id"]).status == MessageStatus.COMPLETE


def test_regenerate_replaces_the_last_answer(asgi_server, provider, alice, alice_cookie):
    provider.script(tokens=["first"], times=1)
    provider.script(tokens=["second"])

    async def scenario():
        chat = await open_chat(asgi_server, cookie=alice_cookie)
        await chat.send({"type": "send", "content": "Pick a word"})
        first = await chat.event()
        await chat.until_end(first["message_id"])
        await chat.send({"type": "regenerate", "message_id": first["message_id"], "client_ref": "again"})
        second = await chat.event()
        events = [second, *await chat.until_end(second["message_id"])]
        # Only the last answer may be regenerated, and only once.
        await chat.send({"type": "regenerate", "message_id": first["message_id"]})
        refused = await chat.event()
        await chat.close()
        return first, events, refused

    first, events, refused = run(scenario)
    second = events[0]
    assert second["regenerates_id"] == first["message_id"]
    assert second["parent_id"] == first["parent_id"]
    assert second["client_ref"] == "again"
    assert text_of(events) == "second"
    assert (refused["type"], refused["code"]) == ("error", "not_regenerable")
    old, new = Message.objects.get(pk=first["message_id"]), Message.objects.get(pk=second["message_id"])
    assert old.superseded_at is not None
    assert (new.content, new.parent_id, new.superseded_at) == ("second", old.parent_id, None)
    # The model was asked the same question again, without the replaced answer.
    assert provider.chat_requests()[-1].json["messages"] == [{"role": "user", "content": "Pick a word"}]
    assert UsageRecord.objects.count() == 2


def test_resume_after_a_disconnect_loses_nothing_and_repeats_nothing(
    asgi_server, provider, alice, alice_cookie
):
    tokens = [f" w{i}" for i in range(30)]
    provider.script(tokens=tokens, token_delay=0.03)

    async def scenario():
        chat = await open_chat(asgi_server, cookie=alice_cookie)
        await chat.send({"type": "send", "content": "Stream"})
        start = await chat.event()
        before = [start]
        while len(before) < 5:
            before.append(await chat.event())
        await chat.close()
        await asyncio.sleep(0.4)  # the generation goes on meanwhile
        again = await open_chat(asgi_server, cookie=alice_cookie)
        await again.send(
            {"type": "resume", "message_id": start["message_id"], "after_seq": before[-1]["seq"]}
        )
        after = await again.until_end(start["message_id"])
        await again.close()
        return before, after

    before, after = run(scenario)
    everything = before + after
    assert seqs(everything) == list(range(1, len(everything) + 1))  # no gap, no duplicate
    assert after[0]["seq"] == before[-1]["seq"] + 1
    assert text_of(everything) == "".join(tokens)
    assert after[-1]["status"] == "complete"
    assert provider.disconnects == []  # the model never saw the client leave
    assert Message.objects.get(pk=before[0]["message_id"]).content == "".join(tokens)


def test_resume_after_the_end_replays_the_whole_message(asgi_server, provider, alice, alice_cookie):
    async def scenario():
        chat = await open_chat(asgi_server, cookie=alice_cookie)
        await chat.send({"type": "send", "content": "Hi"})
        start = await chat.event()
        live = [start, *await chat.until_end(start["message_id"])]
        await chat.close()
        again = await open_chat(asgi_server, cookie=alice_cookie)
        await again.send({"type": "resume", "message_id": start["message_id"], "after_seq": 0})
        replay = await again.until_end(start["message_id"])
        await again.send({"type": "resume", "message_id": start["message_id"], "after_seq": 3})
        tail = await again.until_end(start["message_id"])
        await again.close()
        return live, replay, tail

    live, replay, tail = run(scenario)
    assert replay == live
    assert tail == live[3:]


def test_a_resume_of_an_unknown_buffer_is_a_typed_error(asgi_server, provider, alice, alice_cookie, settings):
    # A message whose events are gone (expired): the client is told to read it over REST.
    conversation = Conversation.objects.create(owner=alice, title="old")
    Message.objects.create(conversation=conversation, position=0, role="user", content="q")
    answer = Message.objects.create(conversation=conversation, position=1, role="assistant", content="a")

    async def scenario():
        chat = await open_chat(asgi_server, cookie=alice_cookie)
        await chat.send({"type": "resume", "message_id": str(answer.pk), "after_seq": 0})
        event = await chat.event()
        await chat.close()
        return event

    event = run(scenario)
    assert (event["type"], event["code"], event["message_id"]) == ("error", "buffer_expired", str(answer.pk))


def test_generation_goes_on_when_the_client_leaves(asgi_server, provider, alice, alice_cookie):
    provider.script(tokens=[f" x{i}" for i in range(10)], token_delay=0.03)

    async def scenario():
        chat = await open_chat(asgi_server, cookie=alice_cookie)
        await chat.send({"type": "send", "content": "Bye"})
        start = await chat.event()
        await chat.close()
        return start

    start = run(scenario)
    deadline = time.monotonic() + 5
    while Message.objects.get(pk=start["message_id"]).status == MessageStatus.STREAMING:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    answer = Message.objects.get(pk=start["message_id"])
    assert (answer.status, answer.content) == (MessageStatus.COMPLETE, "".join(f" x{i}" for i in range(10)))


def test_failover_to_the_next_provider_before_the_first_token(
    asgi_server, scripted_llm_factory, alice, alice_cookie
):
    broken, healthy = scripted_llm_factory(), scripted_llm_factory()
    broken.register_provider(name="broken", is_default=True)
    healthy.register_provider(name="healthy", priority=10)
    broken.script(status=503)
    healthy.script(tokens=["from", " healthy"])

    async def scenario():
        chat = await open_chat(asgi_server, cookie=alice_cookie)
        await chat.send({"type": "send", "content": "Anyone?"})
        start = await chat.event()
        events = [start, *await chat.until_end(start["message_id"])]
        await chat.close()
        return events

    events = run(scenario)
    assert [e["type"] for e in events] == ["message_start", "delta", "delta", "message_end"]
    assert events[-1]["provider"] == "healthy"
    assert text_of(events) == "from healthy"
    assert len(broken.chat_requests()) == 1
    assert UsageRecord.objects.get().provider == "healthy"


def test_no_provider_available_is_an_error_event_then_the_end(asgi_server, provider, alice, alice_cookie):
    provider.script(status=500)

    async def scenario():
        chat = await open_chat(asgi_server, cookie=alice_cookie)
        await chat.send({"type": "send", "content": "Anyone?"})
        start = await chat.event()
        events = [start, *await chat.until_end(start["message_id"])]
        await chat.close()
        return events

    events = run(scenario)
    assert [e["type"] for e in events] == ["message_start", "error", "message_end"]
    assert events[1]["code"] == "llm_no_provider_available"
    assert events[1]["message_id"] == events[0]["message_id"]
    assert (events[2]["status"], events[2]["stop_reason"]) == ("error", "error")
    answer = Message.objects.get(pk=events[0]["message_id"])
    assert (answer.status, answer.error_code) == (MessageStatus.ERROR, "llm_no_provider_available")
    assert UsageRecord.objects.get().outcome == UsageOutcome.NO_PROVIDER


def test_a_stream_that_breaks_keeps_its_text_and_says_why(asgi_server, provider, alice, alice_cookie):
    provider.script(tokens=["one", " two", " three", " four"], drop_after=2)

    async def scenario():
        chat = await open_chat(asgi_server, cookie=alice_cookie)
        await chat.send({"type": "send", "content": "Go"})
        start = await chat.event()
        events = [start, *await chat.until_end(start["message_id"])]
        await chat.close()
        return events

    events = run(scenario)
    assert [e["type"] for e in events] == ["message_start", "delta", "delta", "error", "message_end"]
    assert events[3]["code"] == "llm_stream_broken"
    answer = Message.objects.get(pk=events[0]["message_id"])
    assert (answer.status, answer.content) == (MessageStatus.ERROR, "one two")


def test_over_the_requests_per_minute_quota_is_an_error_with_the_reset_time(
    asgi_server, provider, alice, alice_cookie, settings
):
    settings.CHAT_QUOTAS = {
        **settings.CHAT_QUOTAS,
        "member": {"requests_per_minute": 2, "tokens_per_day": None},
    }

    async def scenario():
        chat = await open_chat(asgi_server, cookie=alice_cookie)
        for _ in range(2):
            await chat.send({"type": "send", "content": "again"})
            start = await chat.event()
            await chat.until_end(start["message_id"])
        await chat.send({"type": "send", "content": "one more", "client_ref": "third"})
        refused = await chat.event()
        await chat.close()
        return refused

    refused = run(scenario)
    assert (refused["type"], refused["code"], refused["client_ref"]) == ("error", "quota_exceeded", "third")
    assert refused["message_id"] is None
    assert 0 < refused["retry_after"] <= 60
    assert refused["reset_at"].endswith("Z")
    assert Message.objects.filter(content="one more").count() == 0
    assert UsageRecord.objects.count() == 2
    assert len(provider.chat_requests()) == 2  # the provider was not called for the refused one


def test_over_the_daily_token_quota_nothing_is_written(asgi_server, provider, alice, alice_cookie, settings):
    settings.CHAT_QUOTAS = {
        **settings.CHAT_QUOTAS,
        "member": {"requests_per_minute": None, "tokens_per_day": 5},
    }

    async def scenario():
        chat = await open_chat(asgi_server, cookie=alice_cookie)
        await chat.send({"type": "send", "content": "first"})  # 7 + 4 tokens: over the limit after it
        start = await chat.event()
        await chat.until_end(start["message_id"])
        await chat.send({"type": "send", "content": "second"})
        refused = await chat.event()
        await chat.close()
        return refused

    refused = run(scenario)
    assert refused["code"] == "quota_exceeded"
    assert "tokens" in refused["message"]
    assert Conversation.objects.count() == 1
    assert Message.objects.count() == 2


def test_user_b_cannot_reach_user_a_s_conversations(asgi_server, provider, alice, alice_cookie, bob):
    async def as_alice():
        chat = await open_chat(asgi_server, cookie=alice_cookie)
        await chat.send({"type": "send", "content": "my secret"})
        start = await chat.event()
        await chat.until_end(start["message_id"])
        await chat.close()
        return start

    start = run(as_alice)
    bob_cookie = session_cookie(bob)

    async def as_bob():
        chat = await open_chat(asgi_server, cookie=bob_cookie)
        answers = []
        for frame in (
            {"type": "resume", "message_id": start["message_id"], "after_seq": 0},
            {"type": "stop", "message_id": start["message_id"]},
            {"type": "regenerate", "message_id": start["message_id"]},
            {"type": "send", "content": "hi", "conversation_id": start["conversation_id"]},
            {"type": "resume", "message_id": str(uuid.uuid4()), "after_seq": 0},
        ):
            await chat.send(frame)
            answers.append(await chat.event())
        await chat.close()
        return answers

    answers = run(as_bob)
    # Someone else's and a missing one look the same: not found, and no event of Alice's message.
    assert [(a["type"], a["code"]) for a in answers] == [("error", "not_found")] * 5
    assert all(a["message_id"] is None for a in answers)
    assert Message.objects.filter(conversation__owner=bob).count() == 0
    assert Message.objects.count() == 2


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("this is not json", "malformed_json"),
        (b"\x00binary", "malformed_json"),
        ('["a", "list"]', "invalid_frame"),
        ({"type": "dance"}, "unknown_frame_type"),
        ({"no": "type"}, "unknown_frame_type"),
        ({"type": "send"}, "invalid_frame"),
        ({"type": "send", "content": "   "}, "message_empty"),
        ({"type": "send", "content": "x" * 101}, "message_too_long"),
        ({"type": "send", "content": "hi", "conversation_id": "nope"}, "invalid_frame"),
        ({"type": "send", "content": "hi", "conversation_id": str(uuid.uuid4())}, "not_found"),
        ({"type": "stop", "message_id": 12}, "invalid_frame"),
        ({"type": "resume", "message_id": str(uuid.uuid4()), "after_seq": -1}, "invalid_frame"),
    ],
)
def test_a_bad_frame_is_a_typed_error_and_the_socket_stays_usable(
    asgi_server, provider, alice, alice_cookie, settings, frame, code
):
    settings.CHAT_MESSAGE_MAX_CHARS = 100

    async def scenario():
        chat = await open_chat(asgi_server, cookie=alice_cookie)
        await chat.send(frame)
        error = await chat.event()
        await chat.send({"type": "send", "content": "still there?"})
        start = await chat.event()
        events = await chat.until_end(start["message_id"])
        await chat.close()
        return error, start, events

    error, start, events = run(scenario)
    assert (error["type"], error["code"]) == ("error", code)
    assert error["message_id"] is None
    if code == "invalid_frame" and isinstance(frame, dict):
        assert error["fields"]
    assert start["type"] == "message_start"
    assert events[-1]["status"] == "complete"
    # Nothing of the bad frame was written: one question, one answer.
    assert Message.objects.count() == 2


def test_a_second_send_while_an_answer_streams_is_refused(asgi_server, provider, alice, alice_cookie):
    provider.script(tokens=["a", "b", "c"], token_delay=0.2)

    async def scenario():
        chat = await open_chat(asgi_server, cookie=alice_cookie)
        await chat.send({"type": "send", "content": "first"})
        start = await chat.event()
        await chat.send({"type": "send", "content": "second", "conversation_id": start["conversation_id"]})
        refused = None
        events = []
        while True:
            event = await chat.event()
            if event["type"] == "error" and event["message_id"] is None:
                refused = event
            else:
                events.append(event)
            if event["type"] == "message_end":
                break
        await chat.close()
        return refused, events

    refused, events = run(scenario)
    assert refused["code"] == "conversation_busy"
    assert events[-1]["status"] == "complete"
    assert Message.objects.filter(content="second").count() == 0


def test_heartbeats_keep_idle_sockets_alive(asgi_server, alice, alice_cookie, settings):
    settings.CHAT_HEARTBEAT_INTERVAL = 0.2

    async def scenario():
        chat = await open_chat(asgi_server, cookie=alice_cookie)
        event = await chat.event(timeout=3, skip_heartbeats=False)
        await chat.close()
        return event

    event = run(scenario)
    assert event["type"] == "heartbeat"
    assert (event["message_id"], event["seq"]) == (None, None)


def test_a_viewer_may_read_but_not_send(asgi_server, provider, transactional_db):
    viewer = make_user("vera", role="viewer")
    cookie = session_cookie(viewer)

    async def scenario():
        chat = await open_chat(asgi_server, cookie=cookie)
        await chat.send({"type": "send", "content": "hello"})
        event = await chat.event()
        await chat.close()
        return event

    event = run(scenario)
    assert event["code"] == "permission_denied"
    assert Message.objects.count() == 0
