"""Conversations, their messages, and the usage ledger of LLM calls.

The server is the only writer of messages: clients send text and receive events; nothing a client sends
is ever merged into a transcript.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q

from business_project.chat.choices import MessageRole, MessageStatus, UsageOutcome


class Conversation(models.Model):
    """A chat between one user and the assistant. Only its owner reads or changes it.

    ``provider`` and ``model`` pin the LLM provider (an id of the ``llm`` registry) and model; blank means
    the default provider chain, with failover. Deleting a conversation deletes its messages; the usage
    ledger keeps its rows (their conversation becomes null).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    title = models.CharField(max_length=200, blank=True)
    provider = models.CharField(max_length=100, blank=True)
    model = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at", "-created_at"]
        indexes = [models.Index(fields=["owner", "-updated_at"], name="chat_conv_owner_updated")]

    def __str__(self) -> str:
        return self.title or str(self.id)


class Message(models.Model):
    """One turn of a conversation, ordered by ``position``.

    An assistant message answers its ``parent`` (a user message). It is created ``streaming`` and written
    a final time when generation ends — complete, stopped (with the partial answer) or error — with at
    most a checkpoint every ``CHAT_CHECKPOINT_INTERVAL`` seconds in between, never a write per token.
    ``last_seq`` is the sequence number of its last event (its ``message_end`` once finished).
    A regenerated answer is ``superseded`` by the new one: kept, but out of the transcript.
    At most one message per conversation streams at a time (a partial unique index).
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="messages")
    position = models.PositiveIntegerField()
    role = models.CharField(max_length=16, choices=MessageRole.choices)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=MessageStatus.choices, default=MessageStatus.COMPLETE)
    stop_reason = models.CharField(max_length=32, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="answers"
    )
    superseded_at = models.DateTimeField(null=True, blank=True)
    provider = models.CharField(max_length=100, blank=True)
    model = models.CharField(max_length=200, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    time_to_first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    last_seq = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["conversation", "position"]
        constraints = [
            models.UniqueConstraint(fields=["conversation", "position"], name="chat_message_position_unique"),
            models.UniqueConstraint(
                fields=["conversation"],
                condition=Q(status=MessageStatus.STREAMING),
                name="chat_message_one_streaming_per_conversation",
            ),
            models.CheckConstraint(condition=Q(role__in=MessageRole.values), name="chat_message_role_valid"),
            models.CheckConstraint(
                condition=Q(status__in=MessageStatus.values), name="chat_message_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(role=MessageRole.ASSISTANT) | Q(status=MessageStatus.COMPLETE),
                name="chat_message_only_answers_stream_or_fail",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.role} #{self.position} of {self.conversation_id}"


class UsageRecord(models.Model):
    """The usage ledger: one row per LLM call.

    Written when the call is admitted (outcome ``pending``, so that calls in flight count against the
    requests-per-minute quota) and completed once when it ends. Tokens come from the provider's usage
    report; when a stream ends without one (stopped, broken) they are estimated and marked so.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    conversation = models.ForeignKey(
        Conversation, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    message = models.ForeignKey(Message, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    provider = models.CharField(max_length=100, blank=True)
    model = models.CharField(max_length=200, blank=True)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    tokens_estimated = models.BooleanField(default=False)
    time_to_first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    total_ms = models.PositiveIntegerField(null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=UsageOutcome.choices, default=UsageOutcome.PENDING)
    error_code = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "created_at"], name="chat_usage_user_created")]
        constraints = [
            models.CheckConstraint(
                condition=Q(outcome__in=UsageOutcome.values), name="chat_usage_outcome_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} {self.provider}/{self.model} {self.outcome}"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class UserQuota(models.Model):
    """A user's own limits, replacing their role's (``CHAT_QUOTAS``) where set; null keeps the role's."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, primary_key=True, on_delete=models.CASCADE, related_name="chat_quota"
    )
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_day = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["user"]

    def __str__(self) -> str:
        return f"quota of {self.user}"
