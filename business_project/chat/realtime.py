"""Generating assistant messages, and the event streams clients read them from.

A generation runs as an asyncio task of the ASGI process that admitted it, independent of any socket:
a client that disconnects does not stop it, a client that reconnects resumes it. It publishes each event
to the message's buffer (``buffer.py``: Redis in production) and nowhere else; websocket consumers
(``events_forward``) and the SSE endpoint (``events_read``) read it from the buffer, from the ``seq``
they have.

The answer is written to the database once at the end (``hotpath.generation_finish``), with a
checkpoint at most every ``CHAT_CHECKPOINT_INTERVAL`` seconds while it streams — never per token (one
transaction for all the generations of the process, ``_checkpoint_periodically``).

Stopping: ``generation_stop`` sets the stop flag of a generation running in this process, or broadcasts
the stop on the channel layer group ``chat-stop``, which every process's stop listener reads. The
generation then closes the upstream request at once (``stream.aclose()``) and stores the partial answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from channels.layers import get_channel_layer
from django.conf import settings

from business_project.chat import events, hotpath
from business_project.chat.buffer import BufferedEvent, BufferExpired, event_buffer
from business_project.chat.choices import EventType, MessageStatus, StopReason, UsageOutcome
from business_project.chat.services import GenerationPlan, GenerationResult
from business_project.llm.events import LlmError, NoProviderAvailable, StreamBroken, TextDelta
from business_project.llm.services import open_stream
from business_project.llm.streaming import estimate_prompt_tokens

logger = logging.getLogger(__name__)

STOP_MESSAGE_TYPE = "chat.generation.stop"
# How long a stopped stream may take to let go of its read before it is cancelled.
STOP_GRACE_SECONDS = 5.0

__all__ = ["BufferExpired", "events_forward", "events_read", "generation_start", "generation_stop"]


# Every process listens on one channel-layer group for stops of generations it runs (``_stop_listener``):
# a stop is rare and a broadcast costs nothing per message, where a group per message cost every answer
# a group_add, a receive and a group_discard on Redis. channels-redis drops group members after a day
# (``group_expiry``): the listener joins again well before.
STOP_GROUP = "chat-stop"
STOP_GROUP_REJOIN_SECONDS = 3600.0


def stop_message(message_id: str) -> dict[str, str]:
    return {"type": STOP_MESSAGE_TYPE, "message_id": str(message_id)}


@dataclass
class _Generation:
    plan: GenerationPlan
    loop: asyncio.AbstractEventLoop
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task | None = None
    progress: _Progress | None = None
    checkpointed_seq: int = 0


# Generations running in this process, by message id (strong references: a task nobody holds can be
# garbage-collected mid-run).
_running: dict[str, _Generation] = {}


# --------------------------------------------------------------------------------------------------
# Starting, stopping, reading


async def generation_start(plan: GenerationPlan) -> None:
    """Publish ``message_start`` and start generating. When this returns, the message's buffer exists:
    a reader may subscribe at once."""
    buffer = event_buffer()
    start = events.message_start(
        message_id=plan.message_id,
        conversation_id=plan.conversation_id,
        parent_id=plan.parent_id,
        regenerates_id=plan.regenerates_id,
        client_ref=plan.client_ref,
        provider_id=plan.provider_id,
        model=plan.model,
    )
    # Known here before a client can see message_start (and ask to stop it).
    generation = _Generation(plan=plan, loop=asyncio.get_running_loop())
    _running[plan.message_id] = generation
    _ensure_stop_listener()
    _ensure_checkpointer()
    try:
        await buffer.publish(plan.message_id, BufferedEvent(1, EventType.MESSAGE_START, events.encode(start)))
    except Exception:
        _running.pop(plan.message_id, None)
        logger.exception("chat: cannot publish to the event buffer; message %s fails", plan.message_id)
        await _finish_unstarted(plan, code="event_buffer_unavailable")
        raise
    # A fresh context: the task must not inherit the caller's (a REST request's sync thread, which ends
    # with the request, would otherwise run the generation's database calls).
    generation.task = generation.loop.create_task(
        _run(generation), name=f"chat-generation-{plan.message_id}", context=contextvars.Context()
    )


async def generation_stop(message_id: str) -> None:
    """Ask the generation of ``message_id`` to stop, wherever it runs. Stopping a message that is not
    generating any more does nothing."""
    generation = _running.get(str(message_id))
    if generation is not None:
        if generation.loop is asyncio.get_running_loop():
            generation.stop.set()
        else:
            generation.loop.call_soon_threadsafe(generation.stop.set)
        return
    layer = get_channel_layer()
    if layer is not None:
        await layer.group_send(STOP_GROUP, stop_message(message_id))


async def events_forward(message_id: str, after_seq: int, deliver) -> None:
    """Call ``deliver(event)`` (a coroutine function) for the events ``events_read`` would yield. While
    this process generates the message, each runs as the event is published, in the generation's own
    step (the buffer's ``_Follower``): one event-loop turn less per token for a websocket."""
    await event_buffer().forward(str(message_id), after_seq, deliver)


def events_read(message_id: str, after_seq: int = 0) -> AsyncIterator[BufferedEvent]:
    """The events of a message after ``after_seq``, in order, each once, live until its
    ``message_end``. Raises ``BufferExpired`` when the message's events are gone (or never were)."""
    return event_buffer().read(str(message_id), after_seq)


def running_here() -> int:
    return len(_running)


# --------------------------------------------------------------------------------------------------
# The generation task


@dataclass
class _Progress:
    seq: int = 1  # message_start is seq 1
    parts: list[str] = field(default_factory=list)
    deltas: int = 0
    first_token_at: float | None = None
    end: object | None = None  # StreamEnd
    ended: bool = False  # message_end published

    @property
    def content(self) -> str:
        return "".join(self.parts)


# The background tasks of each event loop, by name (weakly: a loop that is gone takes its tasks along).
_loop_tasks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Task]] = (
    weakref.WeakKeyDictionary()
)


def _ensure_loop_task(name: str, work) -> None:
    """Start ``work()`` as this loop's task ``name`` unless it runs already (in a fresh context: it must
    not run in the context of the request that happened to start it)."""
    loop = asyncio.get_running_loop()
    tasks = _loop_tasks.setdefault(loop, {})
    task = tasks.get(name)
    if task is None or task.done():
        tasks[name] = loop.create_task(work(), name=name, context=contextvars.Context())


def _ensure_stop_listener() -> None:
    _ensure_loop_task("chat-stop-listener", _listen_for_stops)


async def _listen_for_stops() -> None:
    """Set the stop flag of a generation of this process when any process broadcasts its stop."""
    layer = get_channel_layer()
    if layer is None:
        return
    channel = await layer.new_channel()
    joined: float | None = None
    try:
        while True:
            if joined is None or time.monotonic() - joined > STOP_GROUP_REJOIN_SECONDS:
                await layer.group_add(STOP_GROUP, channel)
                joined = time.monotonic()
            try:
                message = await asyncio.wait_for(layer.receive(channel), STOP_GROUP_REJOIN_SECONDS)
            except TimeoutError:
                continue
            if message.get("type") != STOP_MESSAGE_TYPE:
                continue
            generation = _running.get(str(message.get("message_id")))
            if generation is not None:
                generation.stop.set()
    except asyncio.CancelledError:
        raise
    except Exception:
        # Redis went away: the next generation starts a new listener.
        logger.warning("chat: the stop listener stopped", exc_info=True)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.shield(layer.group_discard(STOP_GROUP, channel))


async def _run(generation: _Generation) -> None:
    plan = generation.plan
    started = time.monotonic()
    progress = generation.progress = _Progress()
    try:
        result, error = await _generate(generation, progress, started)
        await _finish(plan, progress, result, error)
    except asyncio.CancelledError:
        # The process is shutting down: record what there is, if the database still answers.
        if not progress.ended:
            with contextlib.suppress(BaseException):
                interrupted = _result(plan, progress, started, status="interrupted")
                await asyncio.shield(_finish(plan, progress, interrupted, None))
        raise
    except Exception:
        logger.exception("chat: generation of message %s failed", plan.message_id)
        error = (events.INTERNAL_ERROR, "The answer could not be generated because of a server error.")
        if not progress.ended:
            with contextlib.suppress(Exception):
                failed = _result(plan, progress, started, status="error", code=error[0])
                await _finish(plan, progress, failed, error)
    finally:
        _running.pop(plan.message_id, None)
        event_buffer().forget(plan.message_id)


async def _generate(generation: _Generation, progress: _Progress, started: float):
    """Stream the answer into the buffer. Returns the ``GenerationResult`` and the error to publish
    (``(code, message)`` or None)."""
    plan = generation.plan
    stop = asyncio.ensure_future(generation.stop.wait())
    try:
        opening = asyncio.ensure_future(
            open_stream(messages=plan.llm_messages, provider_id=plan.provider_id, model=plan.model)
        )
        await asyncio.wait({opening, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not opening.done():
            opening.cancel()
            with contextlib.suppress(BaseException):
                await opening
            return _result(plan, progress, started, status="stopped"), None
        try:
            stream = opening.result()
        except NoProviderAvailable as exc:
            code, message = exc.default_code, str(exc.detail)
            return _result(plan, progress, started, status="no_provider", code=code), (code, message)
        except LlmError as exc:
            code, message = exc.default_code, str(exc.detail)
            return _result(plan, progress, started, status="error", code=code), (code, message)
        return await _consume(generation, stream, stop, progress, started)
    finally:
        stop.cancel()


async def _consume(
    generation: _Generation, stream, stop: asyncio.Future, progress: _Progress, started: float
):
    plan = generation.plan
    buffer = event_buffer()
    encode_delta = events.delta_encoder(plan.message_id)

    def on_event(event):
        # Called by the stream in the socket's callback, as each event arrives (LlmStream.follow).
        if type(event) is TextDelta:
            progress.seq += 1
            progress.parts.append(event.text)
            progress.deltas += 1
            if progress.first_token_at is None:
                progress.first_token_at = time.monotonic()
            delta = BufferedEvent(progress.seq, EventType.DELTA, encode_delta(progress.seq, event.text))
            # Not waiting for Redis: the next token is read while the buffer's flusher writes. A publish
            # that has to wait (the flusher is far behind) holds the stream until it is done.
            return buffer.publish_nowait(plan.message_id, delta)
        progress.end = event
        return None

    pumping = asyncio.ensure_future(stream.follow(on_event))
    stopped = False
    try:
        await asyncio.wait({pumping, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not pumping.done():
            # Stop: closing the stream cancels the upstream request and ends the following.
            stopped = True
            await stream.aclose()
            try:
                await asyncio.wait_for(asyncio.shield(pumping), STOP_GRACE_SECONDS)
            except TimeoutError:
                pumping.cancel()
        try:
            pumping.result()
        except StreamBroken as exc:
            code, message = exc.default_code, str(exc.detail)
            return _result(plan, progress, started, status="error", code=code, stream=stream), (code, message)
        except asyncio.CancelledError:
            pass
    finally:
        if not pumping.done():
            pumping.cancel()
        await stream.aclose()
    if progress.end is not None and not stopped:
        return _result(plan, progress, started, status="complete", stream=stream), None
    if stopped:
        return _result(plan, progress, started, status="stopped", stream=stream), None
    error = ("llm_stream_broken", "The stream ended without its end.")
    return _result(plan, progress, started, status="error", code=error[0], stream=stream), error


# Checkpoints: one task per event loop saves the partial answers of all its generations that have new
# text, every CHAT_CHECKPOINT_INTERVAL seconds, in one transaction: with hundreds of streams, a write (and a
# commit) per message every interval was a tenth of the process's CPU. It ends when no generation runs.
def _ensure_checkpointer() -> None:
    _ensure_loop_task("chat-checkpoints", _checkpoint_periodically)


async def _checkpoint_periodically() -> None:
    loop = asyncio.get_running_loop()
    while any(generation.loop is loop for generation in _running.values()):
        await asyncio.sleep(settings.CHAT_CHECKPOINT_INTERVAL)
        rows = []
        for generation in list(_running.values()):
            progress = generation.progress
            if generation.loop is not loop or progress is None or progress.ended:
                continue
            if progress.seq > generation.checkpointed_seq and progress.deltas:
                rows.append((generation.plan.message_id, progress.content, progress.seq))
                generation.checkpointed_seq = progress.seq
        if rows:
            try:
                await hotpath.message_checkpoints(rows=rows)
            except Exception:  # a missed checkpoint costs nothing but durability; the final write follows
                logger.warning("chat: checkpoint of %d messages failed", len(rows), exc_info=True)


# --------------------------------------------------------------------------------------------------
# The end: one write, then the last events

_OUTCOMES = {
    "complete": (MessageStatus.COMPLETE, UsageOutcome.COMPLETE),
    "stopped": (MessageStatus.STOPPED, UsageOutcome.STOPPED),
    "error": (MessageStatus.ERROR, UsageOutcome.ERROR),
    "no_provider": (MessageStatus.ERROR, UsageOutcome.NO_PROVIDER),
    "interrupted": (MessageStatus.ERROR, UsageOutcome.INTERRUPTED),
}


def _result(
    plan: GenerationPlan, progress: _Progress, started: float, *, status: str, code: str = "", stream=None
) -> GenerationResult:
    message_status, outcome = _OUTCOMES[status]
    end = progress.end if status == "complete" else None
    if end is not None:
        stop_reason = end.stop_reason or StopReason.STOP
        prompt_tokens, completion_tokens = end.usage.prompt_tokens, end.usage.completion_tokens
        estimated = end.usage.estimated
    else:
        stop_reason = {
            "stopped": StopReason.STOPPED,
            "interrupted": StopReason.INTERRUPTED,
        }.get(status, StopReason.ERROR)
        # No usage report without a StreamEnd: estimate, and say so (the quota counts these too).
        called = stream is not None or progress.deltas > 0
        prompt_tokens = estimate_prompt_tokens(plan.llm_messages) if called else 0
        completion_tokens = progress.deltas
        estimated = called
    ttft = getattr(stream, "time_to_first_token", None)
    if ttft is None and progress.first_token_at is not None:
        ttft = progress.first_token_at - started
    provider = getattr(stream, "provider", None)
    return GenerationResult(
        status=message_status,
        outcome=outcome,
        content=progress.content,
        stop_reason=str(stop_reason),
        last_seq=progress.seq,
        error_code=code or ("interrupted" if status == "interrupted" else ""),
        provider_id=str(provider.id) if provider is not None else (plan.provider_id or ""),
        provider=provider.name if provider is not None else "",
        model=(getattr(stream, "model", None) or plan.model or "")
        if stream is not None
        else (plan.model or ""),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        tokens_estimated=estimated,
        time_to_first_token_ms=round(ttft * 1000) if ttft is not None else None,
        total_ms=round((time.monotonic() - started) * 1000),
    )


async def _finish_write(plan: GenerationPlan, result: GenerationResult) -> bool:
    return await hotpath.generation_finish(message_id=plan.message_id, usage_id=plan.usage_id, result=result)


async def _finish(plan: GenerationPlan, progress: _Progress, result: GenerationResult, error) -> None:
    """Publish the error (if any), write the answer once, then publish ``message_end``: a client that
    sees ``message_end`` and reloads over REST finds the final message. ``message_end`` is published
    even when the write fails (the message then stays ``streaming`` until ``generation_reap_stale``)."""
    buffer = event_buffer()
    if error is not None:
        code, message = error
        seq = progress.seq + 1
        data = events.encode(events.error(code=code, message=message, message_id=plan.message_id, seq=seq))
        await buffer.publish(plan.message_id, BufferedEvent(seq, EventType.ERROR, data))
        progress.seq = seq
    seq = progress.seq + 1
    result = dataclasses.replace(result, last_seq=seq)
    try:
        await _finish_write(plan, result)
    except Exception:
        logger.exception("chat: the final write of message %s failed", plan.message_id)
    end = events.message_end(
        message_id=plan.message_id,
        seq=seq,
        status=result.status,
        stop_reason=result.stop_reason,
        usage={
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "estimated": result.tokens_estimated,
        },
        provider_id=result.provider_id,
        provider=result.provider,
        model=result.model,
        time_to_first_token_ms=result.time_to_first_token_ms,
        total_ms=result.total_ms,
    )
    await buffer.publish(plan.message_id, BufferedEvent(seq, EventType.MESSAGE_END, events.encode(end)))
    progress.seq = seq
    progress.ended = True


async def _finish_unstarted(plan: GenerationPlan, *, code: str) -> None:
    """The buffer refused message_start: end the message in the database only."""
    result = GenerationResult(
        status=MessageStatus.ERROR,
        outcome=UsageOutcome.ERROR,
        content="",
        stop_reason=StopReason.ERROR,
        last_seq=0,
        error_code=code,
        provider_id=plan.provider_id or "",
        model=plan.model or "",
    )
    with contextlib.suppress(Exception):
        await _finish_write(plan, result)
