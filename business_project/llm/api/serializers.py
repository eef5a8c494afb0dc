"""Output shapes of the LLM API. Nothing here has a field for a URL, a key or its ciphertext."""

from rest_framework import serializers

from business_project.llm.choices import ProviderKind, ProviderStatus


class AvailableModelSerializer(serializers.Serializer):
    name = serializers.CharField()
    display_name = serializers.CharField()
    context_window = serializers.IntegerField(allow_null=True)
    is_default = serializers.BooleanField()


class AvailableProviderSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    kind = serializers.ChoiceField(choices=ProviderKind.choices)
    is_default = serializers.BooleanField()
    status = serializers.ChoiceField(choices=ProviderStatus.choices)
    last_checked_at = serializers.DateTimeField(allow_null=True)
    models = AvailableModelSerializer(many=True)


class HealthCheckSerializer(serializers.Serializer):
    checked_at = serializers.DateTimeField()
    ok = serializers.BooleanField()
    latency_ms = serializers.FloatField(allow_null=True)
    status_code = serializers.IntegerField(allow_null=True)
    error = serializers.CharField()
    models_seen = serializers.ListField(child=serializers.CharField())
