"""Input and output serializers of the deployments API. Output serializers match
``shared_contracts.schemas.deployments`` field for field (tests/contracts hold them equal)."""

from rest_framework import serializers

from slm_project.deployments.choices import RunStatus, Strategy
from slm_project.deployments.constants import IDEMPOTENCY_KEY_MAX_LENGTH

EVENTS_PAGE_DEFAULT = 200
EVENTS_PAGE_MAX = 1000
# One request names at most this many nodes (a fleet is tens to hundreds of machines).
NODES_PER_REQUEST_MAX = 500

# --- output ---------------------------------------------------------------------------------------


class DeploymentTargetSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()


class HostCountsSerializer(serializers.Serializer):
    ok = serializers.IntegerField(default=0)
    changed = serializers.IntegerField(default=0)
    failed = serializers.IntegerField(default=0)
    unreachable = serializers.IntegerField(default=0)
    skipped = serializers.IntegerField(default=0)
    rescued = serializers.IntegerField(default=0)
    ignored = serializers.IntegerField(default=0)


class DeploymentRunOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    deployment_id = serializers.UUIDField()
    attempt = serializers.IntegerField()
    status = serializers.ChoiceField(choices=RunStatus.choices)
    status_reason = serializers.CharField()
    rc = serializers.IntegerField(allow_null=True)
    host_stats = serializers.DictField(child=HostCountsSerializer())
    events_emitted = serializers.IntegerField()
    events_stored = serializers.IntegerField()
    timeout_seconds = serializers.IntegerField()
    cancel_requested_at = serializers.DateTimeField(allow_null=True)
    cancel_requested_by = serializers.CharField()
    queued_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)


class DeploymentOutputSerializer(serializers.Serializer):
    """``nodes`` and ``attempts`` come from ``selectors.deployment_search`` (prefetched, annotated)."""

    id = serializers.UUIDField()
    nodes = DeploymentTargetSerializer(many=True)
    roles = serializers.ListField(child=serializers.CharField())
    strategy = serializers.CharField()
    strategy_options = serializers.SerializerMethodField()
    extra_vars = serializers.DictField()
    requested_by = serializers.CharField()
    idempotency_key = serializers.CharField()
    status = serializers.ChoiceField(choices=RunStatus.choices)
    attempts = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def get_strategy_options(self, deployment) -> dict[str, int]:
        options = {"batch_size": deployment.batch_size, "batch_percent": deployment.batch_percent}
        return {name: value for name, value in options.items() if value is not None}


class DeploymentDetailOutputSerializer(DeploymentOutputSerializer):
    runs = DeploymentRunOutputSerializer(many=True)


class DeploymentEventOutputSerializer(serializers.Serializer):
    counter = serializers.IntegerField()
    uuid = serializers.UUIDField()
    parent_uuid = serializers.UUIDField(allow_null=True)
    event = serializers.CharField()
    host = serializers.CharField()
    play = serializers.CharField()
    task = serializers.CharField()
    changed = serializers.BooleanField()
    failed = serializers.BooleanField()
    duration = serializers.FloatField(allow_null=True)
    stdout = serializers.CharField()
    result = serializers.DictField()
    created_at = serializers.DateTimeField()


class DeploymentEventPageOutputSerializer(serializers.Serializer):
    deployment_id = serializers.UUIDField()
    run_id = serializers.UUIDField()
    attempt = serializers.IntegerField()
    run_status = serializers.ChoiceField(choices=RunStatus.choices)
    finished = serializers.BooleanField()
    after = serializers.IntegerField()
    next_after = serializers.IntegerField()
    has_more = serializers.BooleanField()
    events_emitted = serializers.IntegerField()
    events_stored = serializers.IntegerField()
    results = DeploymentEventOutputSerializer(many=True)


# --- input ----------------------------------------------------------------------------------------


class DeploymentCreateInputSerializer(serializers.Serializer):
    """Shapes only; what the names mean (known roles and nodes, the roles' variable allowlists, the
    nodes' states) is judged by ``services.deployment_create``."""

    nodes = serializers.ListField(
        child=serializers.UUIDField(), min_length=1, max_length=NODES_PER_REQUEST_MAX
    )
    roles = serializers.ListField(child=serializers.CharField(max_length=100), min_length=1, max_length=50)
    strategy = serializers.CharField(max_length=20, default=Strategy.ALL_AT_ONCE)
    strategy_options = serializers.DictField(default=dict)
    extra_vars = serializers.DictField(default=dict)
    idempotency_key = serializers.CharField(
        max_length=IDEMPOTENCY_KEY_MAX_LENGTH, required=False, allow_blank=True, default=""
    )


class DeploymentEventsQuerySerializer(serializers.Serializer):
    after = serializers.IntegerField(min_value=0, default=0)
    limit = serializers.IntegerField(min_value=1, max_value=EVENTS_PAGE_MAX, default=EVENTS_PAGE_DEFAULT)
    attempt = serializers.IntegerField(min_value=1, required=False)
