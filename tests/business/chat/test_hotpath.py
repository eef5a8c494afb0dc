"""The chat's hot path (``chat/hotpath.py``) against its reference, ``services.py``: both paths run the
same cases and must leave the same rows, return the same plan and raise the same errors. The async path
is PostgreSQL's; on SQLite only the ORM path runs."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
from datetime import timedelta

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from business_project.chat import hotpath, services
from business_project.chat.choices import MessageRole, MessageStatus, UsageOutcome
from business_project.chat.models import Conversation, Message, UsageRecord, UserQuota
from business_project.chat.quotas import QuotaExceeded
from business_project.chat.services import GenerationResult
from tests.business.chat.factories import make_user

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(params=["orm", "async"])
def path(request, settings):
    if request.param == "async" and connection.vendor != "postgresql":
        pytest.skip("the asynchronous path is PostgreSQL's")
    settings.CHAT_HOT_PATH_ASYNC = request.param == "async"
    yield request.param
    hotpath.close_connections()
    # Each asyncio.run had its own executor: the Django connections of its finished threads close when
    # they are collected (the test database cannot be dropped while they are open).
    gc.collect()


def send(user, content="Hello there", **kwargs):
    return asyncio.run(hotpath.message_send(user=user, content=content, **kwargs))


def rows_of(conversation_id) -> dict:
    """What a send left in the database, without ids and times (which differ by nature)."""
    conversation = Conversation.objects.get(pk=conversation_id)
    messages = list(
        Message.objects.filter(conversation=conversation)
        .order_by("position")
        .values(
            "position",
            "role",
            "content",
            "status",
            "stop_reason",
            "error_code",
            "provider",
            "model",
            "prompt_tokens",
            "completion_tokens",
            "time_to_first_token_ms",
            "last_seq",
            "superseded_at",
            "finished_at",
        )
    )
    parents = list(
        Message.objects.filter(conversation=conversation)
        .order_by("position")
        .values_list("parent__position", flat=True)
    )
    usage = list(
        UsageRecord.objects.filter(conversation=conversation)
        .order_by("created_at")
        .values(
            "message__position",
            "provider",
            "model",
            "prompt_tokens",
            "completion_tokens",
            "tokens_estimated",
            "outcome",
            "error_code",
            "total_ms",
            "finished_at",
        )
    )
    return {
        "conversation": (conversation.title, conversation.provider, conversation.model),
        "messages": messages,
        "parents": parents,
        "usage": usage,
    }


def plan_shape(plan) -> dict:
    shape = dataclasses.asdict(plan)
    for key in ("message_id", "conversation_id", "usage_id", "parent_id"):
        assert shape.pop(key)
    return shape


def test_the_tables_named_are_the_models_tables():
    assert {name: model._meta.db_table for name, model in hotpath.TABLES.items()} == {
        name: name for name in hotpath.TABLES
    }


@pytest.fixture
def alice():
    return make_user("alice")


def test_a_new_conversation(path, alice):
    plan = send(alice, "What is a VM?", provider="p1", model="m1", client_ref="c-1")
    assert plan_shape(plan) == {
        "user_id": str(alice.pk),
        "llm_messages": [{"role": "user", "content": "What is a VM?"}],
        "provider_id": "p1",
        "model": "m1",
        "regenerates_id": None,
        "client_ref": "c-1",
    }
    rows = rows_of(plan.conversation_id)
    assert rows["conversation"] == ("What is a VM?", "p1", "m1")
    assert rows["messages"] == [
        {
            "position": 0,
            "role": "user",
            "content": "What is a VM?",
            "status": "complete",
            "stop_reason": "",
            "error_code": "",
            "provider": "",
            "model": "",
            "prompt_tokens": None,
            "completion_tokens": None,
            "time_to_first_token_ms": None,
            "last_seq": 0,
            "superseded_at": None,
            "finished_at": None,
        },
        {
            "position": 1,
            "role": "assistant",
            "content": "",
            "status": "streaming",
            "stop_reason": "",
            "error_code": "",
            "provider": "p1",
            "model": "m1",
            "prompt_tokens": None,
            "completion_tokens": None,
            "time_to_first_token_ms": None,
            "last_seq": 0,
            "superseded_at": None,
            "finished_at": None,
        },
    ]
    assert rows["parents"] == [None, 0]
    assert rows["usage"] == [
        {
            "message__position": 1,
            "provider": "p1",
            "model": "m1",
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "tokens_estimated": False,
            "outcome": "pending",
            "error_code": "",
            "total_ms": None,
            "finished_at": None,
        }
    ]
    assert str(Message.objects.get(position=1).pk) == plan.message_id
    assert UsageRecord.objects.get().pk == plan.usage_id


def finish(plan, content="An answer.", status=MessageStatus.COMPLETE, outcome=UsageOutcome.COMPLETE):
    result = GenerationResult(
        status=status,
        outcome=outcome,
        content=content,
        stop_reason="stop",
        last_seq=7,
        provider="scripted",
        model="m1",
        prompt_tokens=11,
        completion_tokens=5,
        time_to_first_token_ms=40,
        total_ms=300,
    )
    return asyncio.run(
        hotpath.generation_finish(message_id=plan.message_id, usage_id=plan.usage_id, result=result)
    )


def test_a_later_message_carries_the_transcript_and_keeps_the_pins(path, alice, settings):
    first = send(alice, "First question", provider="p1")
    assert finish(first, "First answer") is True
    assert finish(first, "Again") is False  # written once
    second = send(alice, "Second question", conversation_id=first.conversation_id)
    assert finish(second, "", status=MessageStatus.ERROR, outcome=UsageOutcome.ERROR) is True  # left out
    settings.CHAT_SYSTEM_PROMPT = "Be brief."
    third = send(alice, "Third question", conversation_id=first.conversation_id, model="m2")
    assert third.conversation_id == first.conversation_id
    assert plan_shape(third) == {
        "user_id": str(alice.pk),
        "llm_messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "First question"},
            {"role": "assistant", "content": "First answer"},
            {"role": "user", "content": "Second question"},
            {"role": "user", "content": "Third question"},
        ],
        "provider_id": "p1",
        "model": "m2",
        "regenerates_id": None,
        "client_ref": None,
    }
    rows = rows_of(first.conversation_id)
    assert rows["conversation"] == ("First question", "p1", "m2")
    assert [(m["position"], m["role"], m["status"]) for m in rows["messages"]] == [
        (0, "user", "complete"),
        (1, "assistant", "complete"),
        (2, "user", "complete"),
        (3, "assistant", "error"),
        (4, "user", "complete"),
        (5, "assistant", "streaming"),
    ]
    assert rows["parents"] == [None, 0, None, 2, None, 4]
    first_answer = rows["messages"][1]
    assert (first_answer["content"], first_answer["last_seq"], first_answer["prompt_tokens"]) == (
        "First answer",
        7,
        11,
    )
    assert first_answer["finished_at"] is not None
    assert [u["outcome"] for u in rows["usage"]] == ["complete", "error", "pending"]
    assert rows["usage"][0]["total_ms"] == 300
    settings.CHAT_CONTEXT_MAX_MESSAGES = 2
    finish(third, "Third answer")
    fourth = send(alice, "Fourth question", conversation_id=first.conversation_id)
    assert [m["content"] for m in fourth.llm_messages] == ["Be brief.", "Third answer", "Fourth question"]


def test_checkpoints_save_streaming_answers_only(path, alice):
    streaming, done = send(alice, "One"), send(alice, "Two")
    finish(done, "Final")
    asyncio.run(
        hotpath.message_checkpoints(rows=[(streaming.message_id, "Part", 4), (done.message_id, "Late", 9)])
    )
    assert Message.objects.get(pk=streaming.message_id).content == "Part"
    assert Message.objects.get(pk=streaming.message_id).last_seq == 4
    assert Message.objects.get(pk=done.message_id).content == "Final"


def test_refusals_write_nothing(path, alice, settings):
    bob = make_user("bob")
    bobs = send(bob, "Bob's")
    counts = (Conversation.objects.count(), Message.objects.count(), UsageRecord.objects.count())
    with pytest.raises(services.ChatNotFound):
        send(alice, "Let me in", conversation_id=bobs.conversation_id)
    with pytest.raises(services.ConversationBusy):
        send(bob, "And again", conversation_id=bobs.conversation_id)
    with pytest.raises(services.MessageEmpty):
        send(alice, "   ")
    settings.CHAT_MESSAGE_MAX_CHARS = 10
    with pytest.raises(services.MessageTooLong):
        send(alice, "x" * 11)
    assert (Conversation.objects.count(), Message.objects.count(), UsageRecord.objects.count()) == counts
    assert Conversation.objects.get(pk=bobs.conversation_id).title == "Bob's"


def test_the_quota_counts_the_ledger_and_a_users_own_limits(path, alice, settings):
    settings.CHAT_QUOTAS = {"member": {"requests_per_minute": 2, "tokens_per_day": None}}
    first = send(alice, "One")
    finish(first)
    send(alice, "Two")
    with pytest.raises(QuotaExceeded) as refused:
        send(alice, "Three")
    oldest = UsageRecord.objects.order_by("created_at").first().created_at
    assert refused.value.reset_at == oldest + timedelta(minutes=1)
    assert "2 messages a minute" in str(refused.value.detail)
    # Calls older than a minute do not count; tokens of today do, against the user's own daily limit.
    UsageRecord.objects.update(created_at=timezone.now() - timedelta(minutes=2))
    UserQuota.objects.create(user=alice, tokens_per_day=16)
    with pytest.raises(QuotaExceeded) as refused:
        send(alice, "Four")
    assert "16 tokens for today" in str(refused.value.detail)
    UserQuota.objects.filter(user=alice).update(tokens_per_day=17)
    send(alice, "Five")
    assert UsageRecord.objects.count() == 3


def test_concurrent_sends_of_one_user_stay_within_the_quota(path, alice, settings):
    """Both paths at once (a REST send runs the ORM path beside a websocket's async one): the user's row
    lock lets exactly the quota through, with no deadlock."""
    settings.CHAT_QUOTAS = {"member": {"requests_per_minute": 5, "tokens_per_day": None}}

    async def both():
        async def one(i):
            try:
                if i % 2 and path == "async":
                    await hotpath.in_thread(services.message_send)(user=alice, content=f"m{i}")
                else:
                    await hotpath.message_send(user=alice, content=f"m{i}")
                return "admitted"
            except QuotaExceeded:
                return "refused"

        return await asyncio.gather(*(one(i) for i in range(12)))

    outcomes = asyncio.run(both())
    assert sorted(outcomes).count("admitted") == 5
    assert UsageRecord.objects.count() == 5
    assert Message.objects.filter(role=MessageRole.ASSISTANT).count() == 5


def test_a_pooled_connection_the_database_dropped_is_replaced(alice, settings, monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip("the asynchronous path is PostgreSQL's")
    settings.CHAT_HOT_PATH_ASYNC = True

    async def scenario():
        first = await hotpath.message_send(user=alice, content="Before the restart")
        (pool,) = [pool for pool in hotpath._pools.values() if pool.idle]
        ((pooled, _),) = pool.idle
        pid = pooled.info.backend_pid
        database = hotpath._connect_kwargs()
        async with await psycopg.AsyncConnection.connect(**database, autocommit=True) as admin:
            await admin.execute("SELECT pg_terminate_backend(%s)", [pid])  # what a database restart does
        monkeypatch.setattr(hotpath, "CHECK_IDLE_AFTER_SECONDS", 0.0)
        second = await hotpath.message_send(user=alice, content="After the restart")
        return first, second, pool.idle[0][0].info.backend_pid != pid

    try:
        first, second, replaced = asyncio.run(scenario())
    finally:
        hotpath.close_connections()
    assert replaced
    assert Message.objects.filter(pk__in=[first.message_id, second.message_id]).count() == 2
