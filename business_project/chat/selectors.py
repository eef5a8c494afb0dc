"""Reads of the chat. Every read is scoped to its owner: another user's conversation or message is
simply not found (the same answer as one that does not exist)."""

from __future__ import annotations

from django.conf import settings
from django.db.models import QuerySet

from business_project.chat.choices import MessageRole, MessageStatus
from business_project.chat.models import Conversation, Message


def conversation_list(*, owner) -> QuerySet[Conversation]:
    return Conversation.objects.filter(owner=owner).order_by("-updated_at", "-created_at")


def conversation_get(*, owner, conversation_id) -> Conversation | None:
    return Conversation.objects.filter(owner=owner, pk=conversation_id).first()


def message_list(*, conversation: Conversation, include_superseded: bool = False) -> QuerySet[Message]:
    messages = Message.objects.filter(conversation=conversation)
    if not include_superseded:
        messages = messages.filter(superseded_at__isnull=True)
    return messages.order_by("position")


def message_get(*, owner, message_id, conversation_id=None) -> Message | None:
    messages = Message.objects.select_related("conversation").filter(pk=message_id, conversation__owner=owner)
    if conversation_id is not None:
        messages = messages.filter(conversation_id=conversation_id)
    return messages.first()


def llm_context(*, conversation: Conversation, up_to_position: int) -> list[dict[str, str]]:
    """The messages a model gets for the answer after ``up_to_position``: the system prompt, then the
    transcript (superseded and failed answers left out), the last ``CHAT_CONTEXT_MAX_MESSAGES`` of it."""
    rows = (
        Message.objects.filter(
            conversation=conversation, position__lte=up_to_position, superseded_at__isnull=True
        )
        .exclude(role=MessageRole.ASSISTANT, status__in=[MessageStatus.ERROR, MessageStatus.STREAMING])
        .exclude(content="")
        .order_by("-position")
        .values_list("role", "content")[: settings.CHAT_CONTEXT_MAX_MESSAGES]
    )
    return llm_context_of(reversed(rows))


def llm_context_of(transcript) -> list[dict[str, str]]:
    """The messages a model gets for ``transcript`` ((role, content) pairs, oldest first)."""
    messages = [{"role": role, "content": content} for role, content in transcript]
    if settings.CHAT_SYSTEM_PROMPT:
        messages.insert(0, {"role": MessageRole.SYSTEM.value, "content": settings.CHAT_SYSTEM_PROMPT})
    return messages
