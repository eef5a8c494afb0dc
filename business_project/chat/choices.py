from django.db import models


class MessageRole(models.TextChoices):
    USER = "user", "User"
    ASSISTANT = "assistant", "Assistant"
    SYSTEM = "system", "System"


class MessageStatus(models.TextChoices):
    """An assistant message is ``streaming`` while generated, then ends in exactly one other status."""

    STREAMING = "streaming", "Streaming"
    COMPLETE = "complete", "Complete"
    STOPPED = "stopped", "Stopped by the user"
    ERROR = "error", "Failed"


class UsageOutcome(models.TextChoices):
    PENDING = "pending", "In progress"
    COMPLETE = "complete", "Complete"
    STOPPED = "stopped", "Stopped by the user"
    ERROR = "error", "Failed"
    NO_PROVIDER = "no_provider", "No provider available"
    INTERRUPTED = "interrupted", "Interrupted (server stopped)"


class EventType(models.TextChoices):
    """Server events of the chat protocol (docs/chat-protocol.md, schema/chat-events.schema.json)."""

    MESSAGE_START = "message_start"
    DELTA = "delta"
    MESSAGE_END = "message_end"
    ERROR = "error"
    HEARTBEAT = "heartbeat"


class FrameType(models.TextChoices):
    """Client frames of the websocket protocol."""

    SEND = "send"
    STOP = "stop"
    REGENERATE = "regenerate"
    RESUME = "resume"


class StopReason(models.TextChoices):
    """Why a message ended (``message_end.stop_reason``). Providers' own reasons pass through as well."""

    STOP = "stop", "The model finished"
    LENGTH = "length", "The token limit was reached"
    STOPPED = "stopped", "Stopped by the user"
    ERROR = "error", "Failed (see the error event)"
    INTERRUPTED = "interrupted", "The server stopped while generating"
