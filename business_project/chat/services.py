"""Writes of the chat: conversations, messages, the usage ledger.

Generation itself (calling the model, streaming events) is ``realtime.py``; it calls the functions here
at its start (``message_send``, ``message_regenerate``: validate, check the quota, write the rows in one
transaction), at most every ``CHAT_CHECKPOINT_INTERVAL`` seconds (``message_checkpoints``) and once at its
end (``generation_finish``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Exists, Max, OuterRef, Subquery
from django.utils import timezone
from rest_framework import status

from business_project.chat import selectors
from business_project.chat.choices import MessageRole, MessageStatus, StopReason, UsageOutcome
from business_project.chat.models import Conversation, Message, UsageRecord, UserQuota
from business_project.chat.quotas import quota_admit
from service_kit.errors import Conflict, ServiceError

TITLE_LENGTH = 80


class ChatNotFound(ServiceError):
    status_code = status.HTTP_404_NOT_FOUND
    default_code = "not_found"
    default_detail = "No such conversation or message."


class MessageEmpty(ServiceError):
    default_code = "message_empty"
    default_detail = "The message is empty."


class MessageTooLong(ServiceError):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "message_too_long"


class ConversationBusy(Conflict):
    default_code = "conversation_busy"
    default_detail = "An answer is still being generated in this conversation; stop it or wait for it."


class NotRegenerable(Conflict):
    default_code = "not_regenerable"


@dataclass(frozen=True)
class GenerationPlan:
    """What ``realtime`` needs to generate one assistant message (all plain values)."""

    message_id: str
    conversation_id: str
    user_id: str
    usage_id: int
    parent_id: str
    llm_messages: list[dict[str, str]] = field(repr=False)
    provider_id: str | None
    model: str | None
    regenerates_id: str | None = None
    client_ref: str | None = None


# --------------------------------------------------------------------------------------------------
# Conversations


def conversation_create(*, owner, title: str = "", provider: str = "", model: str = "") -> Conversation:
    return Conversation.objects.create(owner=owner, title=title.strip(), provider=provider, model=model)


def conversation_update(*, conversation: Conversation, **changes) -> Conversation:
    allowed = {"title", "provider", "model"}
    unknown = set(changes) - allowed
    if unknown:
        raise ValueError(f"conversation_update cannot change {sorted(unknown)}")
    for name, value in changes.items():
        setattr(conversation, name, (value or "").strip())
    conversation.save(update_fields=[*changes, "updated_at"])
    return conversation


def conversation_delete(*, conversation: Conversation) -> None:
    """Delete a conversation and its messages. A generation still running for it finds its rows gone at
    its final write and only publishes its end."""
    conversation.delete()


def title_from(content: str) -> str:
    line = " ".join(content.split())
    return line if len(line) <= TITLE_LENGTH else line[: TITLE_LENGTH - 1].rstrip() + "…"


# --------------------------------------------------------------------------------------------------
# Sending and regenerating


def message_content_clean(content) -> str:
    if not isinstance(content, str) or not content.strip():
        raise MessageEmpty()
    if len(content) > settings.CHAT_MESSAGE_MAX_CHARS:
        raise MessageTooLong(
            f"The message has {len(content)} characters;"
            f" at most {settings.CHAT_MESSAGE_MAX_CHARS} are accepted."
        )
    return content


def _next_position(conversation: Conversation) -> int:
    last = Message.objects.filter(conversation=conversation).aggregate(last=Max("position"))["last"]
    return 0 if last is None else last + 1


def _admit(user) -> None:
    """Lock the user's row and check their quota (``QuotaExceeded``). One admission at a time per user
    (the row lock), so that two sends at once cannot both slip under the quota. The same statement reads
    the user's own limits, if they have any. The lock is ``FOR NO KEY UPDATE``: a plain ``FOR UPDATE``
    conflicts with the key-share lock an insert referencing the user (a conversation, a ledger row) takes,
    so two admissions of one user could deadlock."""
    own = UserQuota.objects.filter(user=OuterRef("pk"))
    locked = (
        get_user_model()
        .objects.select_for_update(no_key=True)
        .filter(pk=user.pk)
        .annotate(
            has_own=Exists(own),
            own_rpm=Subquery(own.values("requests_per_minute")),
            own_tpd=Subquery(own.values("tokens_per_day")),
        )
        .values_list("has_own", "own_rpm", "own_tpd")
        .get()
    )
    has_own, rpm, per_day = locked
    quota_admit(
        user=user,
        own=UserQuota(user_id=user.pk, requests_per_minute=rpm, tokens_per_day=per_day) if has_own else None,
    )


def _usage_create(*, user, conversation: Conversation, answer: Message) -> UsageRecord:
    return UsageRecord.objects.create(
        user=user,
        conversation=conversation,
        message=answer,
        provider=conversation.provider,
        model=conversation.model,
    )


def _start_answer(
    *, user, conversation: Conversation, parent: Message, position: int
) -> tuple[Message, UsageRecord]:
    if Message.objects.filter(conversation=conversation, status=MessageStatus.STREAMING).exists():
        raise ConversationBusy()
    _admit(user)
    try:
        with transaction.atomic():
            answer = Message.objects.create(
                conversation=conversation,
                position=position,
                role=MessageRole.ASSISTANT,
                status=MessageStatus.STREAMING,
                parent=parent,
                provider=conversation.provider,
                model=conversation.model,
            )
    except IntegrityError:  # another request started an answer in between (one streams at a time)
        raise ConversationBusy() from None
    return answer, _usage_create(user=user, conversation=conversation, answer=answer)


def _plan(
    *, user, conversation, answer, usage, parent, regenerates=None, client_ref=None, context=None
) -> GenerationPlan:
    return GenerationPlan(
        message_id=str(answer.pk),
        conversation_id=str(conversation.pk),
        user_id=str(user.pk),
        usage_id=usage.pk,
        parent_id=str(parent.pk),
        llm_messages=context
        if context is not None
        else selectors.llm_context(conversation=conversation, up_to_position=parent.position),
        provider_id=conversation.provider or None,
        model=conversation.model or None,
        regenerates_id=str(regenerates.pk) if regenerates else None,
        client_ref=client_ref,
    )


@transaction.atomic
def message_send(
    *,
    user,
    content,
    conversation_id=None,
    provider: str | None = None,
    model: str | None = None,
    client_ref: str | None = None,
) -> GenerationPlan:
    """Store the user's message and an empty assistant answer (``streaming``) and admit one LLM call to
    the ledger. Every check comes first; on any refusal nothing is written."""
    content = message_content_clean(content)
    new_conversation = conversation_id is None
    if new_conversation:
        conversation = Conversation(owner=user, title=title_from(content))
    else:
        conversation = Conversation.objects.select_for_update().filter(owner=user, pk=conversation_id).first()
        if conversation is None:
            raise ChatNotFound("No such conversation.")
        if not conversation.title:
            conversation.title = title_from(content)
    if provider is not None:
        conversation.provider = provider
    if model is not None:
        conversation.model = model
    conversation.save()
    if new_conversation:
        # A new conversation starts empty: no position, context or busy answer to look up, and the
        # question and the answer go in with one statement after the quota allows them.
        _admit(user)
        question = Message(conversation=conversation, position=0, role=MessageRole.USER, content=content)
        answer = Message(
            conversation=conversation,
            position=1,
            role=MessageRole.ASSISTANT,
            status=MessageStatus.STREAMING,
            parent=question,
            provider=conversation.provider,
            model=conversation.model,
        )
        Message.objects.bulk_create([question, answer])
        usage = _usage_create(user=user, conversation=conversation, answer=answer)
        context = selectors.llm_context_of([(MessageRole.USER, content)])
    else:
        position = _next_position(conversation)
        if Message.objects.filter(conversation=conversation, status=MessageStatus.STREAMING).exists():
            raise ConversationBusy()
        question = Message.objects.create(
            conversation=conversation, position=position, role=MessageRole.USER, content=content
        )
        answer, usage = _start_answer(
            user=user, conversation=conversation, parent=question, position=position + 1
        )
        context = None  # read by _plan
    return _plan(
        user=user,
        conversation=conversation,
        answer=answer,
        usage=usage,
        parent=question,
        client_ref=client_ref,
        context=context,
    )


@transaction.atomic
def message_regenerate(*, user, message_id, client_ref: str | None = None) -> GenerationPlan:
    """Answer the same question again: the last answer of a conversation is superseded by a new one."""
    old = selectors.message_get(owner=user, message_id=message_id)
    if old is None:
        raise ChatNotFound("No such message.")
    conversation = Conversation.objects.select_for_update().get(pk=old.conversation_id)
    old.refresh_from_db()
    if old.role != MessageRole.ASSISTANT or old.parent_id is None:
        raise NotRegenerable("Only an answer of the assistant can be regenerated.")
    if old.status == MessageStatus.STREAMING:
        raise NotRegenerable("This answer is still being generated; stop it first.")
    if old.superseded_at is not None:
        raise NotRegenerable("This answer was regenerated already.")
    last = selectors.message_list(conversation=conversation).order_by("-position").first()
    if last is None or last.pk != old.pk:
        raise NotRegenerable("Only the last answer of a conversation can be regenerated.")
    position = _next_position(conversation)
    answer, usage = _start_answer(user=user, conversation=conversation, parent=old.parent, position=position)
    old.superseded_at = timezone.now()
    old.save(update_fields=["superseded_at", "updated_at"])
    conversation.save(update_fields=["updated_at"])
    return _plan(
        user=user,
        conversation=conversation,
        answer=answer,
        usage=usage,
        parent=old.parent,
        regenerates=old,
        client_ref=client_ref,
    )


# --------------------------------------------------------------------------------------------------
# During and after generation


@transaction.atomic
def message_checkpoints(*, rows: list[tuple[str, str, int]]) -> None:
    """Save the partial answers ``(message id, content, last seq)`` of streaming messages, in one
    transaction (at most every CHAT_CHECKPOINT_INTERVAL s). A message that has ended meanwhile keeps its
    final answer."""
    now = timezone.now()
    for message_id, content, last_seq in rows:
        Message.objects.filter(pk=message_id, status=MessageStatus.STREAMING).update(
            content=content, last_seq=last_seq, updated_at=now
        )


@dataclass(frozen=True)
class GenerationResult:
    status: str  # MessageStatus, not streaming
    outcome: str  # UsageOutcome
    content: str
    stop_reason: str
    last_seq: int
    error_code: str = ""
    provider_id: str = ""
    provider: str = ""
    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_estimated: bool = False
    time_to_first_token_ms: int | None = None
    total_ms: int | None = None


@transaction.atomic
def generation_finish(*, message_id: str, usage_id: int, result: GenerationResult) -> bool:
    """The one final write of an answer and its ledger row. False when the message was not streaming
    any more (deleted with its conversation, or already finished)."""
    now = timezone.now()
    written = Message.objects.filter(pk=message_id, status=MessageStatus.STREAMING).update(
        content=result.content,
        status=result.status,
        stop_reason=result.stop_reason,
        error_code=result.error_code,
        provider=result.provider or result.provider_id,
        model=result.model,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        time_to_first_token_ms=result.time_to_first_token_ms,
        last_seq=result.last_seq,
        updated_at=now,
        finished_at=now,
    )
    UsageRecord.objects.filter(pk=usage_id, outcome=UsageOutcome.PENDING).update(
        provider=result.provider or result.provider_id,
        model=result.model,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        tokens_estimated=result.tokens_estimated,
        time_to_first_token_ms=result.time_to_first_token_ms,
        total_ms=result.total_ms,
        outcome=result.outcome,
        error_code=result.error_code,
        finished_at=now,
    )
    if written:
        Conversation.objects.filter(messages__pk=message_id).update(updated_at=now)
    return bool(written)


@transaction.atomic
def generation_reap_stale(*, older_than: timedelta | None = None) -> int:
    """End answers left ``streaming`` by a generator that died (a killed web process): no write for
    longer than ``CHAT_STALE_STREAM_AFTER`` seconds. Their partial text stays. Returns how many."""
    cutoff = timezone.now() - (older_than or timedelta(seconds=settings.CHAT_STALE_STREAM_AFTER))
    stale = list(
        Message.objects.filter(status=MessageStatus.STREAMING, updated_at__lt=cutoff).values_list(
            "pk", flat=True
        )
    )
    if not stale:
        return 0
    now = timezone.now()
    Message.objects.filter(pk__in=stale, status=MessageStatus.STREAMING).update(
        status=MessageStatus.ERROR,
        stop_reason=StopReason.INTERRUPTED,
        error_code="interrupted",
        updated_at=now,
        finished_at=now,
    )
    UsageRecord.objects.filter(message_id__in=stale, outcome=UsageOutcome.PENDING).update(
        outcome=UsageOutcome.INTERRUPTED, error_code="interrupted", finished_at=now
    )
    return len(stale)
