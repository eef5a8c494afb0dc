"""Generation and the event buffer: one write at the end with checkpoints at most every 2 s, the Redis
buffer shared by processes (exactly once, in order), stops that reach another process, stale answers."""

import asyncio
import contextlib
import re
import threading
import time
import uuid
from datetime import timedelta

import psycopg
import pytest
from asgiref.sync import SyncToAsync
from django.db import connections
from django.db.backends.signals import connection_created
from django.utils import timezone

from business_project.chat import buffer as chat_buffer
from business_project.chat import realtime
from business_project.chat.buffer import (
    BufferedEvent,
    BufferExpired,
    MemoryEventBuffer,
    RedisEventBuffer,
    _LocalLog,
)
from business_project.chat.choices import MessageStatus, UsageOutcome
from business_project.chat.models import Conversation, Message, UsageRecord
from business_project.chat.services import generation_reap_stale
from tests.business.chat.wire import open_chat


class UpdateCounter:
    """Counts UPDATEs of chat messages on every database connection opened from now on (any thread):
    Django's (execute wrappers) and the event loop's own (``chat/hotpath.py``: psycopg's async execute)."""

    statement = re.compile(r'\bUPDATE\s+"?chat_message"?\s', re.IGNORECASE)

    def __init__(self, monkeypatch):
        self.updates: list[float] = []
        self.lock = threading.Lock()
        execute = psycopg.AsyncConnection.execute

        async def counted(conn, query, *args, **kwargs):
            self.count(query)
            return await execute(conn, query, *args, **kwargs)

        monkeypatch.setattr(psycopg.AsyncConnection, "execute", counted)

    def count(self, sql):
        if self.statement.search(str(sql)):
            with self.lock:
                self.updates.append(time.monotonic())

    def wrapper(self, execute, sql, params, many, context):
        self.count(sql)
        return execute(sql, params, many, context)

    def install(self, sender, connection, **kwargs):
        # The signal fires on every reconnect of a connection object, which keeps its wrappers.
        if self.wrapper not in connection.execute_wrappers:
            connection.execute_wrappers.append(self.wrapper)

    def uninstall(self):
        connection_created.disconnect(self.install)
        for alias in connections:
            for wrappers in (connections[alias].execute_wrappers,):
                if self.wrapper in wrappers:
                    wrappers.remove(self.wrapper)


def test_an_answer_is_written_once_with_checkpoints_at_most_every_two_seconds(
    asgi_server, provider, alice, alice_cookie, monkeypatch
):
    tokens = [f" t{i}" for i in range(64)]
    provider.script(tokens=tokens, token_delay=0.05)  # about 3.2 s of streaming
    counter = UpdateCounter(monkeypatch)
    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=10)
    connection_created.connect(counter.install)
    seen_mid_stream = []

    async def scenario():
        chat = await open_chat(asgi_server, cookie=alice_cookie)
        await chat.send({"type": "send", "content": "Long answer"})
        start = await chat.event()
        started = time.monotonic()
        events = await chat.until_end(start["message_id"])
        await chat.close()
        return start, events, time.monotonic() - started

    def watch():
        # What a reader of the database sees while the answer streams: the last checkpoint.
        time.sleep(2.6)
        seen_mid_stream.append(
            Message.objects.filter(role="assistant").values_list("status", "content").first()
        )
        connections.close_all()

    watcher = threading.Thread(target=watch)
    try:
        watcher.start()
        start, events, duration = asyncio.run(scenario())
        watcher.join()
    finally:
        counter.uninstall()
        SyncToAsync.single_thread_executor.submit(counter.uninstall).result(timeout=10)
    assert events[-1]["status"] == "complete"
    assert duration > 2.5
    # Checkpoints (at most one per 2 s of streaming) plus the one final write; never one per token.
    assert 2 <= len(counter.updates) <= 1 + int(duration / 2) + 1, counter.updates
    gaps = [later - earlier for earlier, later in zip(counter.updates, counter.updates[1:], strict=False)]
    assert all(gap >= 0.9 for gap in gaps[:-1]), gaps
    status, partial = seen_mid_stream[0]
    assert status == MessageStatus.STREAMING
    assert partial
    assert "".join(tokens).startswith(partial)
    assert partial != "".join(tokens)
    answer = Message.objects.get(pk=start["message_id"])
    assert answer.content == "".join(tokens)
    assert answer.last_seq == events[-1]["seq"]


# --------------------------------------------------------------------------------------------------
# The buffer


def buffered(seq, kind="delta"):
    return BufferedEvent(seq, kind, f'{{"seq":{seq}}}')


async def exercise_exactly_once(writer, reader):
    message_id = str(uuid.uuid4())
    await writer.publish(message_id, buffered(1, "message_start"))
    for seq in range(2, 6):
        await writer.publish(message_id, buffered(seq))

    async def read(after):
        return [event.seq async for event in reader.read(message_id, after)]

    live = asyncio.ensure_future(read(3))
    await asyncio.sleep(0.1)
    for seq in range(6, 9):
        await writer.publish(message_id, buffered(seq))
    await writer.publish(message_id, buffered(9, "message_end"))
    return await asyncio.wait_for(live, 5), await read(0)


def test_the_memory_buffer_replays_then_follows_live_exactly_once():
    async def scenario():
        memory = MemoryEventBuffer(ttl=60)
        return await exercise_exactly_once(memory, memory)

    after_three, everything = asyncio.run(scenario())
    assert after_three == [4, 5, 6, 7, 8, 9]
    assert everything == list(range(1, 10))


def test_the_redis_buffer_is_shared_by_processes(redis_url):
    async def scenario():
        # Two clients with their own connections stand for two ASGI processes.
        writer = RedisEventBuffer(redis_url, prefix=f"test-{uuid.uuid4().hex}", ttl=60)
        reader = RedisEventBuffer(redis_url, prefix=writer.prefix, ttl=60)
        try:
            return await exercise_exactly_once(writer, reader)
        finally:
            await writer.close()
            await reader.close()

    after_three, everything = asyncio.run(scenario())
    assert after_three == [4, 5, 6, 7, 8, 9]
    assert everything == list(range(1, 10))


def test_deltas_reach_local_readers_at_once_and_redis_in_batched_entries(redis_url):
    async def scenario():
        buffer = RedisEventBuffer(redis_url, prefix=f"test-{uuid.uuid4().hex}", ttl=60)
        remote = RedisEventBuffer(redis_url, prefix=buffer.prefix, ttl=60)  # another process
        message_id, other_id = str(uuid.uuid4()), str(uuid.uuid4())
        flushes = []  # one command (the append script) per flush
        real_append = buffer.append_script

        def counting_append(*, keys, args):
            flushes.append(len(keys))
            return real_append(keys=keys, args=args)

        buffer.append_script = counting_append
        try:
            await buffer.publish(message_id, buffered(1, "message_start"))
            reader = buffer.read(message_id, 0)
            assert (await anext(reader)).seq == 1
            assert flushes == [1]
            flushes.clear()
            # A local reader has a delta as soon as it is published, before Redis has it.
            await buffer.publish(message_id, buffered(2), wait=False)
            assert (await asyncio.wait_for(anext(reader), 0.001)).seq == 2
            assert flushes == []
            for seq in range(3, 12):
                await buffer.publish(message_id, buffered(seq), wait=False)
            await buffer.publish(message_id, buffered(12, "message_end"))
            assert 1 <= len(flushes) <= 2, flushes  # ten deltas and the end: one or two round trips
            seen = [event.seq async for event in reader]
            entries = await buffer.redis.xrange(buffer.key(message_id))
            # Another process reads every event once, from any seq, also from inside an entry.
            remote_all = [event.seq async for event in remote.read(message_id, 0)]
            remote_from_5 = [event.seq async for event in remote.read(message_id, 5)]
            # A write Redis refuses fails that message only, at its next publish; the end clears it.
            await buffer.publish(other_id, buffered(1, "message_start"))
            await buffer.redis.delete(buffer.key(other_id))
            await buffer.redis.set(buffer.key(other_id), "not a stream")
            await buffer.publish(other_id, buffered(2), wait=False)
            await buffer.publish(message_id + "x", buffered(1, "message_start"))  # flushes the queue
            with pytest.raises(Exception, match="WRONGTYPE"):
                await buffer.publish(other_id, buffered(3), wait=False)
            with pytest.raises(Exception, match="WRONGTYPE"):
                await buffer.publish(other_id, buffered(4, "message_end"))
            assert other_id not in buffer.failed
            return seen, len(entries), remote_all, remote_from_5
        finally:
            await buffer.close()
            await remote.close()

    seen, entries, remote_all, remote_from_5 = asyncio.run(scenario())
    assert seen == list(range(3, 13))
    assert entries <= 3  # message_start, then the deltas and the end in one or two entries
    assert remote_all == list(range(1, 13))
    assert remote_from_5 == list(range(6, 13))


def test_another_process_reads_each_events_text_exactly_as_published(redis_url):
    texts = [
        '{"text":"quote \\" back\\\\slash"}',
        '{"text":"line\\nbreak \\u0000 tab\\t"}',
        '{"text":"Hé ✓ 😀 \u2028 \u00a0"}',
        '{"text":"' + "x" * 20_000 + '"}',
    ]

    async def scenario():
        buffer = RedisEventBuffer(redis_url, prefix=f"test-{uuid.uuid4().hex}", ttl=60)
        remote = RedisEventBuffer(redis_url, prefix=buffer.prefix, ttl=60)
        message_id = str(uuid.uuid4())
        try:
            await buffer.publish(message_id, BufferedEvent(1, "message_start", texts[0]))
            for seq, text in enumerate(texts[1:], start=2):
                await buffer.publish(message_id, BufferedEvent(seq, "delta", text), wait=False)
            await buffer.publish(message_id, BufferedEvent(len(texts) + 1, "message_end", texts[0]))
            return [event.data async for event in remote.read(message_id, 0)]
        finally:
            await buffer.close()
            await remote.close()

    assert asyncio.run(scenario()) == [*texts, texts[0]]


def test_the_redis_buffer_expires(redis_url):
    async def scenario():
        buffer = RedisEventBuffer(redis_url, prefix=f"test-{uuid.uuid4().hex}", ttl=1)
        message_id = str(uuid.uuid4())
        await buffer.publish(message_id, buffered(1, "message_start"))
        ttl = await buffer.redis.ttl(buffer.key(message_id))
        await buffer.redis.delete(buffer.key(message_id))
        try:
            with pytest.raises(BufferExpired):
                async for _ in buffer.read(message_id, 0):
                    pass
        finally:
            await buffer.close()
        return ttl

    assert asyncio.run(scenario()) == 1


def test_the_redis_buffer_sets_a_lifetime_with_the_first_and_last_entries_and_renews_it_rarely(
    redis_url, monkeypatch
):
    async def scenario():
        buffer = RedisEventBuffer(redis_url, prefix=f"test-{uuid.uuid4().hex}", ttl=100)
        message_id = str(uuid.uuid4())
        key = buffer.key(message_id)
        ttls = []
        try:
            await buffer.publish(message_id, buffered(1, "message_start"))
            ttls.append(await buffer.redis.ttl(key))
            await buffer.redis.expire(key, 50)
            await buffer.publish(message_id, buffered(2, "delta"), wait=False)
            await buffer.publish(message_id, buffered(3, "delta"))  # waits for the flush of both
            ttls.append(await buffer.redis.ttl(key))  # not renewed by every entry
            monkeypatch.setattr(chat_buffer, "EXPIRE_RENEW_SECONDS", 0.0)
            await buffer.publish(message_id, buffered(4, "delta"))
            ttls.append(await buffer.redis.ttl(key))  # renewed once the renewal is due
            monkeypatch.undo()
            await buffer.redis.expire(key, 50)
            await buffer.publish(message_id, buffered(5, "message_end"))
            ttls.append(await buffer.redis.ttl(key))  # the last entry sets it
        finally:
            await buffer.redis.delete(key)
            await buffer.close()
        return ttls

    first, middle, renewed, last = asyncio.run(scenario())
    assert first == 100
    assert 45 <= middle <= 50
    assert renewed == 100
    assert last == 100


def test_followers_get_events_in_the_appenders_step_and_a_slow_one_never_holds_it_up():
    async def scenario():
        log = _LocalLog()
        fast, slow, gate = [], [], asyncio.Event()

        async def deliver_fast(event):
            fast.append(event.seq)

        async def deliver_slow(event):
            if event.seq == 2:
                await gate.wait()  # a client whose socket buffer is full
                await asyncio.sleep(0)
            slow.append(event.seq)

        log.append(buffered(1, "message_start"))
        following = [asyncio.ensure_future(log.follow(0, deliver_fast))]
        following.append(asyncio.ensure_future(log.follow(0, deliver_slow)))
        await asyncio.sleep(0)  # both caught up with seq 1 and follow now
        assert (fast, slow) == ([1], [1])
        for seq in range(2, 6):
            log.append(buffered(seq))
            assert fast[-1] == seq  # delivered within append, before the appender goes on
        assert slow == [1]  # waiting; the appender was not held up
        gate.set()
        log.append(buffered(6, "message_end"))
        outcomes = await asyncio.wait_for(asyncio.gather(*following), 5)
        return fast, slow, outcomes, log.followers

    fast, slow, outcomes, followers = asyncio.run(scenario())
    assert fast == slow == [1, 2, 3, 4, 5, 6]
    assert outcomes == [None, None]
    assert followers == []


def test_a_failing_or_cancelled_follower_ends_alone():
    async def scenario():
        log = _LocalLog()
        good, cancelled_sends = [], []

        async def deliver_good(event):
            good.append(event.seq)

        async def deliver_failing(event):
            if event.seq == 2:
                raise ConnectionResetError("the client went away")

        async def deliver_stuck(event):
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled_sends.append(event.seq)
                raise

        log.append(buffered(1, "message_start"))
        good_one = asyncio.ensure_future(log.follow(0, deliver_good))
        failing = asyncio.ensure_future(log.follow(0, deliver_failing))
        stuck = asyncio.ensure_future(log.follow(0, deliver_stuck))
        await asyncio.sleep(0)
        log.append(buffered(2))
        log.append(buffered(3))
        error = await asyncio.wait_for(failing, 5)
        stuck.cancel()  # the socket closed: its pending send goes too
        with contextlib.suppress(asyncio.CancelledError):
            await stuck
        await asyncio.sleep(0)
        log.append(buffered(4, "message_end"))
        return good, await asyncio.wait_for(good_one, 5), error, cancelled_sends, log.followers

    good, good_outcome, error, cancelled_sends, followers = asyncio.run(scenario())
    assert good == [1, 2, 3, 4]
    assert good_outcome is None
    assert isinstance(error, ConnectionResetError)
    assert cancelled_sends == [1]
    assert followers == []


def test_with_redis_configured_the_buffer_is_redis(settings):
    settings.CHAT_EVENT_BUFFER_REDIS_URL = ""
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": "redis://redis.invalid:6379/3"}], "prefix": "business"},
        }
    }
    assert chat_buffer.buffer_redis_url() == "redis://redis.invalid:6379/3"

    async def kind():
        return type(chat_buffer.event_buffer()).__name__

    assert asyncio.run(kind()) == "RedisEventBuffer"
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    assert chat_buffer.buffer_redis_url() == ""
    assert asyncio.run(kind()) == "MemoryEventBuffer"


def test_ci_runs_the_chat_on_the_redis_buffer():
    from django.conf import settings

    from tests.fixtures.services import in_ci

    if not in_ci():
        pytest.skip("outside CI the in-process buffer is allowed")
    assert chat_buffer.buffer_redis_url() == settings.TEST_REDIS_URL


def test_a_stop_reaches_the_process_that_generates(asgi_server, provider, alice, alice_cookie, redis_url):
    """Another process's stop arrives over the channel layer (Redis): sent here from a loop and a layer
    client that are not the server's."""
    from channels.layers import get_channel_layer

    provider.script(tokens=[f" {i}" for i in range(100)], token_delay=0.05)

    async def scenario():
        chat = await open_chat(asgi_server, cookie=alice_cookie)
        await chat.send({"type": "send", "content": "go"})
        start = await chat.event()
        await chat.event()
        await asyncio.sleep(0.2)
        layer = get_channel_layer()
        await layer.group_send(realtime.STOP_GROUP, realtime.stop_message(start["message_id"]))
        events = await chat.until_end(start["message_id"], timeout=5)
        await chat.close()
        return events

    events = asyncio.run(scenario())
    assert events[-1]["status"] == "stopped"


# --------------------------------------------------------------------------------------------------
# Answers whose generator died


@pytest.mark.django_db
def test_stale_streaming_answers_are_ended(alice):
    conversation = Conversation.objects.create(owner=alice)
    question = Message.objects.create(conversation=conversation, position=0, role="user", content="q")
    stale = Message.objects.create(
        conversation=conversation,
        position=1,
        role="assistant",
        status="streaming",
        parent=question,
        content="par",
    )
    UsageRecord.objects.create(user=alice, conversation=conversation, message=stale)
    Message.objects.filter(pk=stale.pk).update(updated_at=timezone.now() - timedelta(hours=1))
    other = Conversation.objects.create(owner=alice)
    fresh = Message.objects.create(conversation=other, position=0, role="assistant", status="streaming")
    assert generation_reap_stale() == 1
    stale.refresh_from_db()
    assert (stale.status, stale.stop_reason, stale.content) == (MessageStatus.ERROR, "interrupted", "par")
    assert UsageRecord.objects.get(message=stale).outcome == UsageOutcome.INTERRUPTED
    fresh.refresh_from_db()
    assert fresh.status == MessageStatus.STREAMING
    assert generation_reap_stale() == 0


@pytest.mark.django_db
def test_one_answer_streams_at_a_time_per_conversation(alice):
    from django.db import IntegrityError, transaction

    conversation = Conversation.objects.create(owner=alice)
    Message.objects.create(conversation=conversation, position=0, role="assistant", status="streaming")
    with pytest.raises(IntegrityError), transaction.atomic():
        Message.objects.create(conversation=conversation, position=1, role="assistant", status="streaming")
