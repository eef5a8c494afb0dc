from rest_framework import serializers


class MetaOutputSerializer(serializers.Serializer):
    """Field for field ``shared_contracts.schemas.common.MetaInfo`` (a contract test holds them equal)."""

    service = serializers.CharField()
    version = serializers.CharField()
    contract_version = serializers.CharField()
    api_version = serializers.CharField()
    server_time = serializers.DateTimeField()
