"""Django REST framework and the OpenAPI schema (drf-spectacular)."""

from service_kit.integrations import rest_framework_settings, spectacular_settings
from shared_contracts.version import CONTRACT_VERSION

globals().update(rest_framework_settings())
globals().update(
    spectacular_settings(
        title="AutoBot SLM API",
        description="The management layer: fleet, deployments, health, and the business layer's contract.",
        version=f"contract {CONTRACT_VERSION}",
        enum_name_overrides={
            "NodeStateEnum": "slm_project.fleet.choices.NodeState",
            "ServiceStateEnum": "slm_project.fleet.choices.ServiceState",
            "SeverityEnum": "slm_project.fleet.choices.Severity",
            "NodeRoleStatusEnum": "slm_project.fleet.choices.NodeRoleStatus",
            "RunStatusEnum": "slm_project.deployments.choices.RunStatus",
        },
    )
)
