from rest_framework import serializers

from business_project.chat.choices import MessageRole, MessageStatus
from business_project.chat.models import Conversation, Message


class ConversationOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = Conversation
        fields = ["id", "title", "provider", "model", "created_at", "updated_at"]


class ConversationCreateInputSerializer(serializers.Serializer):
    title = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    provider = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
    model = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")


class ConversationUpdateInputSerializer(serializers.Serializer):
    title = serializers.CharField(max_length=200, required=False, allow_blank=True)
    provider = serializers.CharField(max_length=100, required=False, allow_blank=True)
    model = serializers.CharField(max_length=200, required=False, allow_blank=True)


class MessageOutputSerializer(serializers.ModelSerializer):
    role = serializers.ChoiceField(choices=MessageRole.choices)
    status = serializers.ChoiceField(choices=MessageStatus.choices)

    class Meta:
        model = Message
        fields = [
            "id",
            "conversation_id",
            "position",
            "role",
            "content",
            "status",
            "stop_reason",
            "error_code",
            "parent_id",
            "superseded_at",
            "provider",
            "model",
            "prompt_tokens",
            "completion_tokens",
            "time_to_first_token_ms",
            "last_seq",
            "created_at",
            "finished_at",
        ]


class MessageSendInputSerializer(serializers.Serializer):
    # Empty and too long are the service's to refuse (message_empty, message_too_long), as on the socket.
    content = serializers.CharField(allow_blank=True, trim_whitespace=False)
    provider = serializers.CharField(max_length=100, required=False, allow_null=True, allow_blank=True)
    model = serializers.CharField(max_length=200, required=False, allow_null=True, allow_blank=True)


class GenerationOutputSerializer(serializers.Serializer):
    """An answer being generated: read its events at ``events_url`` (SSE) or over the websocket."""

    message_id = serializers.UUIDField()
    conversation_id = serializers.UUIDField()
    parent_id = serializers.UUIDField()
    regenerates_id = serializers.UUIDField(allow_null=True)
    events_url = serializers.CharField()


class QuotaOutputSerializer(serializers.Serializer):
    requests_per_minute = serializers.IntegerField(allow_null=True, help_text="null: unlimited")
    tokens_per_day = serializers.IntegerField(allow_null=True, help_text="null: unlimited")
    requests_last_minute = serializers.IntegerField()
    tokens_today = serializers.IntegerField()
    requests_reset_at = serializers.DateTimeField(allow_null=True)
    tokens_reset_at = serializers.DateTimeField()
