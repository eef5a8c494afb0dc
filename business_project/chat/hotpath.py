"""The database work of the chat's hot path, from the event loop: admitting a ``send``, checkpoints and
the final write of an answer.

On PostgreSQL each runs on an asynchronous connection of the loop's own small pool (psycopg in pipeline
mode): the statements of a step go to the server together, so an admission is two round trips (read and
lock, then write and commit) and a final write one, with no thread and no GIL taken from the loop. Run
in worker threads through the ORM, the same work cost ~30 ms of added time to first token at 200
streams (threads waiting for the GIL beside a busy loop; docs/BENCHMARKS.md, ``chat_stream``) and
slowed every token relayed meanwhile.

Everything else, and SQLite (development), uses ``services.py`` in a thread: the functions there are the
reference. Each function here takes the same locks in the same order, makes the same checks in the same
order (so the same error wins), and writes the same rows; ``tests/business/chat/test_hotpath.py`` runs
both against the same cases. Transactions here commit with ``synchronous_commit`` off (as the SLM's
heartbeats do; docs/ARCHITECTURE.md says what that trades): a PostgreSQL crash may lose the last
fraction of a second of admissions and final writes, never half of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
import uuid
import weakref
from collections.abc import AsyncIterator

import psycopg
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connections
from django.utils import timezone

from business_project.chat import selectors, services
from business_project.chat.choices import MessageRole, MessageStatus, UsageOutcome
from business_project.chat.models import Conversation, Message, UsageRecord, UserQuota
from business_project.chat.quotas import quota_check, quota_limits_of, usage_window
from business_project.chat.services import (
    ChatNotFound,
    ConversationBusy,
    GenerationPlan,
    GenerationResult,
    message_content_clean,
    title_from,
)

# The ORM path: a worker thread of the loop's pool, each with its own connection (not asgiref's one
# thread: the database waits of many sockets overlap).
in_thread = functools.partial(database_sync_to_async, thread_sensitive=False)

# Connections of one event loop's pool. Admissions take two round trips and final writes one, so a few
# connections serve hundreds of streams; more would only queue inside PostgreSQL on the user's row lock.
POOL_SIZE = 8
# A pooled connection idle longer than this is checked (one round trip) before it is used.
CHECK_IDLE_AFTER_SECONDS = 10.0


def on_postgresql() -> bool:
    return connections["default"].vendor == "postgresql" and settings.CHAT_HOT_PATH_ASYNC


# --------------------------------------------------------------------------------------------------
# The entry points (each picks the path)


async def message_send(**request) -> GenerationPlan:
    """``services.message_send``, with the same keyword arguments."""
    if not on_postgresql():
        return await in_thread(services.message_send)(**request)
    async with _connection() as conn:
        return await _send(conn, **request)


async def message_checkpoints(*, rows: list[tuple[str, str, int]]) -> None:
    if not on_postgresql():
        await in_thread(services.message_checkpoints)(rows=rows)
        return
    ids, contents, seqs = zip(*rows, strict=True)
    async with _connection() as conn, _write(conn):
        await conn.execute(
            "UPDATE chat_message AS m SET content = v.content, last_seq = v.last_seq, updated_at = %s"
            " FROM unnest(%s::uuid[], %s::text[], %s::integer[]) AS v(id, content, last_seq)"
            " WHERE m.id = v.id AND m.status = %s",
            [timezone.now(), list(ids), list(contents), list(seqs), MessageStatus.STREAMING],
        )


async def generation_finish(*, message_id: str, usage_id: int, result: GenerationResult) -> bool:
    if not on_postgresql():
        return await in_thread(services.generation_finish)(
            message_id=message_id, usage_id=usage_id, result=result
        )
    now = timezone.now()
    provider = result.provider or result.provider_id
    async with _connection() as conn:
        async with _write(conn):
            written = await conn.execute(
                "WITH m AS (UPDATE chat_message SET content = %(content)s, status = %(status)s,"
                " stop_reason = %(stop_reason)s, error_code = %(error_code)s, provider = %(provider)s,"
                " model = %(model)s, prompt_tokens = %(prompt)s, completion_tokens = %(completion)s,"
                " time_to_first_token_ms = %(ttft)s, last_seq = %(last_seq)s, updated_at = %(now)s,"
                " finished_at = %(now)s WHERE id = %(id)s AND status = %(streaming)s"
                " RETURNING conversation_id),"
                " c AS (UPDATE chat_conversation SET updated_at = %(now)s"
                " WHERE id IN (SELECT conversation_id FROM m))"
                " SELECT count(*) FROM m",
                {
                    "content": result.content,
                    "status": result.status,
                    "stop_reason": result.stop_reason,
                    "error_code": result.error_code,
                    "provider": provider,
                    "model": result.model,
                    "prompt": result.prompt_tokens,
                    "completion": result.completion_tokens,
                    "ttft": result.time_to_first_token_ms,
                    "last_seq": result.last_seq,
                    "now": now,
                    "id": message_id,
                    "streaming": MessageStatus.STREAMING,
                },
            )
            await conn.execute(
                "UPDATE chat_usagerecord SET provider = %s, model = %s, prompt_tokens = %s,"
                " completion_tokens = %s, tokens_estimated = %s, time_to_first_token_ms = %s, total_ms = %s,"
                " outcome = %s, error_code = %s, finished_at = %s WHERE id = %s AND outcome = %s",
                [
                    provider,
                    result.model,
                    result.prompt_tokens,
                    result.completion_tokens,
                    result.tokens_estimated,
                    result.time_to_first_token_ms,
                    result.total_ms,
                    result.outcome,
                    result.error_code,
                    now,
                    usage_id,
                    UsageOutcome.PENDING,
                ],
            )
        (count,) = await written.fetchone()
    return bool(count)


# --------------------------------------------------------------------------------------------------
# Admission (``services.message_send``)


# The tables the statements name (a test holds them equal to the models' ``db_table``).
TABLES = {
    "chat_conversation": Conversation,
    "chat_message": Message,
    "chat_usagerecord": UsageRecord,
    "chat_userquota": UserQuota,
    "accounts_user": get_user_model(),
}


@contextlib.asynccontextmanager
async def _write(conn: psycopg.AsyncConnection) -> AsyncIterator[None]:
    """One transaction in pipeline mode (its statements go out together; a fetch waits for what came
    before it), committed without waiting for the WAL flush (see the module's docstring)."""
    async with conn.pipeline(), conn.transaction():
        await conn.execute("SET LOCAL synchronous_commit TO off")
        yield


async def _send(
    conn, *, user, content, conversation_id=None, provider=None, model=None, client_ref=None
) -> GenerationPlan:
    content = message_content_clean(content)
    now = timezone.now()
    window = usage_window(now)
    new_conversation = conversation_id is None
    try:
        async with _write(conn):
            # First round trip: every lock and read, in the order services.message_send takes them (the
            # conversation, then the user), so the two paths cannot deadlock each other.
            if not new_conversation:
                found = await conn.execute(
                    "SELECT title, provider, model FROM chat_conversation"
                    " WHERE id = %s AND owner_id = %s FOR UPDATE",
                    [conversation_id, user.pk],
                )
                turns = await conn.execute(
                    "SELECT max(position), bool_or(status = %s) FROM chat_message WHERE conversation_id = %s",
                    [MessageStatus.STREAMING, conversation_id],
                )
                transcript = await conn.execute(
                    "SELECT role, content FROM chat_message WHERE conversation_id = %s"
                    " AND superseded_at IS NULL AND NOT (role = %s AND status = ANY(%s)) AND content <> ''"
                    " ORDER BY position DESC LIMIT %s",
                    [
                        conversation_id,
                        MessageRole.ASSISTANT,
                        [MessageStatus.ERROR, MessageStatus.STREAMING],
                        max(settings.CHAT_CONTEXT_MAX_MESSAGES - 1, 0),  # the new question comes last
                    ],
                )
            # The user's row lock serializes their admissions (as services._admit's does); the ledger is
            # read by the next statement, whose snapshot is taken once the lock is held.
            own = await conn.execute(
                "SELECT q.user_id IS NOT NULL, q.requests_per_minute, q.tokens_per_day"
                " FROM accounts_user AS u LEFT JOIN chat_userquota AS q ON q.user_id = u.id"
                " WHERE u.id = %s FOR NO KEY UPDATE OF u",
                [user.pk],
            )
            usage = await conn.execute(
                "SELECT count(*) FILTER (WHERE created_at > %(minute_ago)s),"
                " min(created_at) FILTER (WHERE created_at > %(minute_ago)s),"
                " sum(prompt_tokens + completion_tokens) FILTER (WHERE created_at >= %(day_start)s)"
                " FROM chat_usagerecord WHERE user_id = %(user)s AND created_at >= %(since)s",
                {
                    "minute_ago": window.minute_ago,
                    "day_start": window.day_start,
                    "since": window.since,
                    "user": user.pk,
                },
            )
            # The first fetch is the pipeline's sync point. The checks raise before anything is written,
            # and leaving the transaction with an error rolls it back.
            if new_conversation:
                conversation_id = uuid.uuid4()
                title, position, kept = title_from(content), 0, [(MessageRole.USER, content)]
            else:
                row = await found.fetchone()
                if row is None:
                    raise ChatNotFound("No such conversation.")
                title, old_provider, old_model = row
                last, busy = await turns.fetchone()
                if busy:
                    raise ConversationBusy()
                title = title or title_from(content)
                provider = old_provider if provider is None else provider
                model = old_model if model is None else model
                position = 0 if last is None else last + 1
                limit = settings.CHAT_CONTEXT_MAX_MESSAGES
                earlier = list(reversed(await transcript.fetchall()))
                kept = [*earlier, (MessageRole.USER, content)][-limit:] if limit > 0 else []
            has_own, rpm, per_day = await own.fetchone()
            count, oldest, tokens = await usage.fetchone()
            own_quota = UserQuota(user_id=user.pk, requests_per_minute=rpm, tokens_per_day=per_day)
            limits = quota_limits_of(user=user, own=own_quota if has_own else None)
            quota_check(window.status(limits=limits, count=count, oldest=oldest, tokens=tokens), now=now)

            # Second round trip: the writes and the commit.
            provider, model = provider or "", model or ""
            if new_conversation:
                await conn.execute(
                    "INSERT INTO chat_conversation (id, owner_id, title, provider, model, created_at,"
                    " updated_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    [conversation_id, user.pk, title, provider, model, now, now],
                )
            else:
                await conn.execute(
                    "UPDATE chat_conversation SET title = %s, provider = %s, model = %s, updated_at = %s"
                    " WHERE id = %s",
                    [title, provider, model, now, conversation_id],
                )
            question_id, answer_id = uuid.uuid4(), uuid.uuid4()
            await conn.execute(
                "INSERT INTO chat_message (id, conversation_id, position, role, content, status, stop_reason,"
                " error_code, parent_id, provider, model, last_seq, created_at, updated_at) VALUES"
                " (%s, %s, %s, %s, %s, %s, '', '', NULL, '', '', 0, %s, %s),"
                " (%s, %s, %s, %s, '', %s, '', '', %s, %s, %s, 0, %s, %s)",
                [
                    *(question_id, conversation_id, position, MessageRole.USER, content),
                    *(MessageStatus.COMPLETE, now, now),
                    *(answer_id, conversation_id, position + 1, MessageRole.ASSISTANT),
                    *(MessageStatus.STREAMING, question_id, provider, model, now, now),
                ],
            )
            ledger = await conn.execute(
                "INSERT INTO chat_usagerecord (user_id, conversation_id, message_id, provider, model,"
                " prompt_tokens, completion_tokens, tokens_estimated, outcome, error_code, created_at)"
                " VALUES (%s, %s, %s, %s, %s, 0, 0, false, %s, '', %s) RETURNING id",
                [user.pk, conversation_id, answer_id, provider, model, UsageOutcome.PENDING, now],
            )
    except psycopg.errors.UniqueViolation:  # another answer started in between (one streams at a time)
        raise ConversationBusy() from None
    (usage_id,) = await ledger.fetchone()
    return GenerationPlan(
        message_id=str(answer_id),
        conversation_id=str(conversation_id),
        user_id=str(user.pk),
        usage_id=usage_id,
        parent_id=str(question_id),
        llm_messages=selectors.llm_context_of(kept),
        provider_id=provider or None,
        model=model or None,
        client_ref=client_ref,
    )


# --------------------------------------------------------------------------------------------------
# The loop's connections


class _Pool:
    """At most ``size`` connections of one event loop, kept open between uses. A connection that
    failed, or was left inside a transaction, is closed rather than reused. One that sat idle longer than
    ``CHECK_IDLE_AFTER_SECONDS`` is checked first (as Django's ``CONN_HEALTH_CHECKS``): after a database
    restart a stale connection is replaced instead of failing a user's frame."""

    def __init__(self, size: int) -> None:
        self.slots = asyncio.Semaphore(size)
        self.idle: list[tuple[psycopg.AsyncConnection, float]] = []  # with the time it went idle

    async def take(self) -> psycopg.AsyncConnection:
        while self.idle:
            conn, idle_since = self.idle.pop()
            if conn.closed or conn.broken:
                continue
            if time.monotonic() - idle_since < CHECK_IDLE_AFTER_SECONDS:
                return conn
            try:
                await conn.execute("SELECT 1")
            except psycopg.Error:
                await conn.close()
                continue
            return conn
        return await psycopg.AsyncConnection.connect(**_connect_kwargs(), autocommit=True)

    def give_back(self, conn: psycopg.AsyncConnection) -> bool:
        status = conn.info.transaction_status
        if conn.closed or conn.broken or status != psycopg.pq.TransactionStatus.IDLE:
            return False
        self.idle.append((conn, time.monotonic()))
        return True

    def close_all(self) -> None:
        """Close the idle connections (synchronously: the loop may be gone)."""
        while self.idle:
            self.idle.pop()[0].pgconn.finish()


_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pool] = weakref.WeakKeyDictionary()


@contextlib.asynccontextmanager
async def _connection() -> AsyncIterator[psycopg.AsyncConnection]:
    loop = asyncio.get_running_loop()
    pool = _pools.get(loop)
    if pool is None:
        pool = _pools[loop] = _Pool(POOL_SIZE)
    async with pool.slots:
        conn = await pool.take()
        try:
            yield conn
        finally:
            if not pool.give_back(conn):
                await conn.close()


def close_connections() -> None:
    """Close every loop's idle connections (tests: a database in use cannot be dropped)."""
    for pool in list(_pools.values()):
        pool.close_all()


def _connect_kwargs() -> dict:
    """The connection settings of Django's ``default`` database (the test database's name under
    tests), without Django's own options."""
    config = connections["default"].settings_dict
    kwargs = {
        key: value
        for key, value in (config.get("OPTIONS") or {}).items()
        if key not in {"isolation_level", "pool", "server_side_binding", "assume_role"}
    }
    for key, name in (("NAME", "dbname"), ("USER", "user"), ("PASSWORD", "password"), ("HOST", "host")):
        if config.get(key):
            kwargs[name] = config[key]
    if config.get("PORT"):
        kwargs["port"] = int(config["PORT"])
    return kwargs
