"""A conversation as a file: JSON (for programs) or Markdown (for people). The transcript is what the
user sees: superseded answers are left out."""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from business_project.chat import selectors
from business_project.chat.choices import MessageRole, MessageStatus
from business_project.chat.models import Conversation

EXPORT_FORMAT_VERSION = 1


def conversation_export_json(*, conversation: Conversation) -> dict[str, Any]:
    messages = selectors.message_list(conversation=conversation)
    return {
        "format": "autobot.conversation",
        "version": EXPORT_FORMAT_VERSION,
        "exported_at": timezone.now().isoformat(),
        "conversation": {
            "id": str(conversation.pk),
            "title": conversation.title,
            "provider": conversation.provider,
            "model": conversation.model,
            "created_at": conversation.created_at.isoformat(),
            "updated_at": conversation.updated_at.isoformat(),
        },
        "messages": [
            {
                "id": str(message.pk),
                "role": message.role,
                "content": message.content,
                "status": message.status,
                "stop_reason": message.stop_reason,
                "provider": message.provider,
                "model": message.model,
                "prompt_tokens": message.prompt_tokens,
                "completion_tokens": message.completion_tokens,
                "created_at": message.created_at.isoformat(),
            }
            for message in messages
        ],
    }


_HEADINGS = {MessageRole.USER: "You", MessageRole.ASSISTANT: "Assistant", MessageRole.SYSTEM: "System"}
_NOTES = {
    MessageStatus.STOPPED: "stopped before the end",
    MessageStatus.ERROR: "failed",
    MessageStatus.STREAMING: "still being generated",
}


def conversation_export_markdown(*, conversation: Conversation) -> str:
    lines = [f"# {conversation.title or 'Conversation'}", ""]
    lines.append(f"_Exported from AutoBot on {timezone.now():%Y-%m-%d %H:%M} UTC._")
    for message in selectors.message_list(conversation=conversation):
        heading = _HEADINGS.get(message.role, message.role)
        details = [d for d in (message.model, _NOTES.get(message.status)) if d]
        suffix = f" ({', '.join(details)})" if details else ""
        lines += ["", f"## {heading}{suffix}", "", message.content.rstrip() or "_(no text)_"]
    return "\n".join(lines) + "\n"


def export_filename(conversation: Conversation, extension: str) -> str:
    slug = "".join(c if c.isalnum() else "-" for c in (conversation.title or "conversation").lower())
    slug = "-".join(part for part in slug.split("-") if part)[:60] or "conversation"
    return f"{slug}.{extension}"
