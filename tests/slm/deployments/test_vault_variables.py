"""Vault variables of a run: a role's own (``role:<role>:<variable>`` in the vault) and another role's,
named ``other-role:variable`` in the registry (the backend's ``redis:redis_password`` is the password
the redis role set on its server)."""

from __future__ import annotations

import pytest

from slm_project.deployments import execution, services
from slm_project.fleet.registry import ROLES, vault_variable_source
from slm_project.security.models import Credential
from tests.slm.deployments.factories import make_online_node


def test_every_vault_variable_of_the_registry_names_a_real_source():
    for name, role in ROLES.items():
        for entry in role.vault_variables:
            owner, variable = vault_variable_source(name, entry)
            assert owner in ROLES
            assert variable in ROLES[owner].vault_variables
    assert vault_variable_source("backend", "redis:redis_password") == ("redis", "redis_password")
    assert vault_variable_source("backend", "backend_secret_key") == ("backend", "backend_secret_key")


@pytest.mark.parametrize(
    "entry", ["redis:no_such_variable", "no-such-role:redis_password", "llm:redis_password"]
)
def test_a_reference_to_no_vault_variable_of_a_role_is_refused(entry):
    with pytest.raises(ValueError, match="names no vault variable of a role"):
        vault_variable_source("backend", entry)


@pytest.mark.django_db
@pytest.mark.parametrize("roles", [["backend"], ["redis", "backend"]])
def test_the_backend_gets_the_redis_roles_password_and_secrets_of_its_own(roles):
    node = make_online_node()
    deployment = services.deployment_create(node_ids=[node.pk], roles=roles, requested_by="user:ops")
    spec = execution.playbook_run_for(
        deployment.runs.get(), bundle_files={"backend": "/b/backend-0a-py3.11.tar"}
    )

    redis_password = services.vault_variable(role="redis", variable="redis_password")
    assert spec.secret_extra_vars == {
        "redis_password": redis_password,
        "backend_secret_key": services.vault_variable(role="backend", variable="backend_secret_key"),
        "backend_master_key": services.vault_variable(role="backend", variable="backend_master_key"),
    }
    # One Redis password in the vault, kept by its owner; the backend's own secrets are distinct values.
    assert not Credential.objects.filter(name="role:backend:redis_password").exists()
    assert Credential.objects.filter(name="role:redis:redis_password").count() == 1
    assert len(set(spec.secret_extra_vars.values())) == 3
    # Secrets travel only as secret extra vars (a 0600 file), and are redacted from events.
    assert not set(spec.secret_extra_vars) & set(spec.extra_vars)
    assert redis_password in spec.secrets()
    assert spec.extra_vars["autobot_bundles"] == {"backend": "/b/backend-0a-py3.11.tar"}
