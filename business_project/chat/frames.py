"""Client frames of the websocket protocol: their fields, checked before anything is done with them.

The same rules as ``schema/chat-frames.schema.json`` (the contract tests keep the two equal).
"""

from __future__ import annotations

from rest_framework import serializers

CLIENT_REF_MAX_LENGTH = 100


class StrictUUIDField(serializers.UUIDField):
    """A UUID as a string only (DRF's own also takes an integer and makes a UUID of it)."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid", value=data)
        return super().to_internal_value(data)


class FrameSerializer(serializers.Serializer):
    type = serializers.CharField()
    client_ref = serializers.CharField(
        required=False,
        allow_null=True,
        max_length=CLIENT_REF_MAX_LENGTH,
        help_text="Echoed in the events it causes.",
    )


class SendFrameSerializer(FrameSerializer):
    conversation_id = StrictUUIDField(required=False, allow_null=True)
    # Emptiness and length are the service's to judge (message_empty, message_too_long), as for REST.
    content = serializers.CharField(allow_blank=True, trim_whitespace=False)
    provider = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=100)
    model = serializers.CharField(required=False, allow_null=True, allow_blank=True, max_length=200)


class MessageFrameSerializer(FrameSerializer):
    message_id = StrictUUIDField()


class ResumeFrameSerializer(MessageFrameSerializer):
    after_seq = serializers.IntegerField(min_value=0, default=0)


FRAME_SERIALIZERS = {
    "send": SendFrameSerializer,
    "stop": MessageFrameSerializer,
    "regenerate": MessageFrameSerializer,
    "resume": ResumeFrameSerializer,
}
