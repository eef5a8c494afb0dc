from rest_framework import serializers

from business_project.accounts.choices import Role, Scope
from business_project.accounts.models import ApiToken


class MeOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    username = serializers.CharField()
    email = serializers.EmailField(allow_blank=True)
    role = serializers.ChoiceField(source="effective_role", choices=Role.choices)
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=Scope.choices))


class ApiTokenOutputSerializer(serializers.ModelSerializer):
    """A token as listed: never its secret, which is not stored."""

    scopes = serializers.ListField(child=serializers.ChoiceField(choices=Scope.choices))

    class Meta:
        model = ApiToken
        fields = ["id", "name", "scopes", "expires_at", "revoked_at", "last_used_at", "created_at"]


class ApiTokenCreatedOutputSerializer(ApiTokenOutputSerializer):
    token = serializers.CharField(help_text="The secret; shown in this answer only.")

    class Meta(ApiTokenOutputSerializer.Meta):
        fields = [*ApiTokenOutputSerializer.Meta.fields, "token"]


class ApiTokenCreateInputSerializer(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=Scope.choices), min_length=1)
    expires_in_days = serializers.IntegerField(min_value=1, max_value=3650, required=False, allow_null=True)
