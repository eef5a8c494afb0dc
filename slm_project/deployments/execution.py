"""Executing a deployment run (the Celery task calls ``run_execute`` with the run id).

Stages: claim the run (``services.deployment_run_claim``; a second delivery or worker is refused at
once), build what Ansible needs from the database and the vault (``playbook_run_for``), run it through
the adapter (``runners.ansible``) while a ``RunWatch`` stores event batches, renews the lease and polls
for a cancel request, then end the run with Ansible's outcome. Every write after the claim is fenced: an
executor that lost its lease stops Ansible and writes nothing more.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

from django.conf import settings

from slm_project.deployments import selectors, services
from slm_project.deployments.choices import RunStatus
from slm_project.deployments.constants import CANCEL_POLL_SECONDS, LEASE_RENEW_AFTER_SECONDS
from slm_project.deployments.models import DeploymentRun
from slm_project.deployments.runners import ansible
from slm_project.fleet.choices import RoleName
from slm_project.fleet.enrollment import slm_identity
from slm_project.fleet.registry import ROLES
from slm_project.security.services import credential_reveal

logger = logging.getLogger(__name__)


class RunSetupFailed(Exception):
    """The run cannot start (a missing token, key or setting); the message is shown to operators."""


def executor_name(task_id: str = "") -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{task_id}"


# --------------------------------------------------------------------------------------------------
# What Ansible gets


def _agent_services(node: Any) -> list[dict[str, Any]]:
    services: list[dict[str, Any]] = []
    for node_role in node.node_roles.select_related("role"):
        definition = ROLES.get(node_role.role.name)
        if definition is None:
            continue
        for index, name in enumerate(definition.services):
            item: dict[str, Any] = {"name": name}
            if index < len(definition.ports):
                item["port"] = definition.ports[index]
            services.append(item)
    return services


def playbook_run_for(run: DeploymentRun) -> ansible.PlaybookRun:
    deployment = run.deployment
    roles = list(deployment.roles)
    playbooks = {ROLES[name].playbook for name in roles}
    if len(playbooks) != 1:
        raise RunSetupFailed(f"the roles {roles} are deployed by different playbooks: {sorted(playbooks)}")
    groups = tuple(ROLES[name].ansible_role for name in roles)
    secret_extra_vars = {
        variable: services.vault_variable(role=name, variable=variable)
        for name in roles
        for variable in ROLES[name].vault_variables
    }
    hosts = []
    for node in deployment.nodes.select_related("agent_token_credential").order_by("name"):
        if not node.host_key:
            raise RunSetupFailed(f"{node.name} has no pinned host key")
        variables: dict[str, Any] = {"slm_node_id": str(node.pk)}
        secret_variables: dict[str, str] = {}
        if RoleName.SLM_AGENT in roles:
            if node.agent_token_credential is None:
                raise RunSetupFailed(f"{node.name} has no agent token (enroll it first)")
            if not settings.DEPLOYMENTS_SLM_URL:
                raise RunSetupFailed("SLM_PUBLIC_URL is not set: agents would not know where to report")
            variables["slm_url"] = settings.DEPLOYMENTS_SLM_URL
            variables["slm_agent_services"] = _agent_services(node)
            secret_variables["slm_agent_token"] = credential_reveal(
                credential=node.agent_token_credential
            ).decode()
        hosts.append(
            ansible.TargetHost(
                name=node.name,
                address=node.address,
                port=node.ssh_port,
                user=node.ssh_user,
                host_key=f"{node.host_key_type} {node.host_key}",
                groups=groups,
                variables=variables,
                secret_variables=secret_variables,
            )
        )
    return ansible.PlaybookRun(
        ident=str(run.pk),
        playbook=playbooks.pop(),
        hosts=tuple(hosts),
        private_key=credential_reveal(credential=slm_identity().credential),
        ansible_dir=services.ansible_dir(),
        timeout_seconds=run.timeout_seconds,
        extra_vars=dict(deployment.extra_vars),
        secret_extra_vars=secret_extra_vars,
    )


# --------------------------------------------------------------------------------------------------
# While Ansible runs


class RunWatch:
    """The executor's side of a running playbook: stores event batches, renews the lease, polls for a
    cancel request. Called from ansible-runner's loop; an error here stops the run instead of raising
    through ansible-runner."""

    def __init__(self, lease: services.Lease) -> None:
        self.lease = lease
        self.emitted = 0
        self.stop_reason = ""
        self.lease_lost = False
        self.failure = ""
        self.last_poll = self.last_renew = time.monotonic()

    def store(self, records: list[dict[str, Any]]) -> None:
        if self.lease_lost:
            return
        self.emitted += len(records)
        try:
            services.deployment_events_store(lease=self.lease, records=records, emitted=self.emitted)
            self.last_renew = time.monotonic()
        except services.LeaseLost:
            self._lost()
        except Exception:
            logger.exception("run %s: storing events failed", self.lease.run_id)
            self.failure = self.failure or "storing the run's events failed; see the SLM worker log"

    def should_cancel(self) -> bool:
        if self.stop_reason or self.lease_lost or self.failure:
            return True
        now = time.monotonic()
        if now - self.last_poll < CANCEL_POLL_SECONDS:
            return False
        self.last_poll = now
        try:
            if now - self.last_renew >= LEASE_RENEW_AFTER_SECONDS:
                services.deployment_run_renew(lease=self.lease)
                self.last_renew = now
            if selectors.run_cancel_requested(run_id=self.lease.run_id):
                self.stop_reason = "canceled"
        except services.LeaseLost:
            self._lost()
        return bool(self.stop_reason or self.lease_lost)

    def _lost(self) -> None:
        if not self.lease_lost:
            logger.warning(
                "run %s: lease lost (token %s); stopping Ansible", self.lease.run_id, self.lease.token
            )
        self.lease_lost = True


# --------------------------------------------------------------------------------------------------
# The whole run


def run_execute(*, run_id: Any, owner: str) -> str:
    """Claim and execute one run; returns its final status (raises ``RunNotClaimable`` if not ours)."""
    lease = services.deployment_run_claim(run_id=run_id, owner=owner)
    run = DeploymentRun.objects.select_related("deployment").get(pk=run_id)
    try:
        spec = playbook_run_for(run)
    except RunSetupFailed as exc:
        return services.deployment_run_finish(lease=lease, status=RunStatus.FAILED, reason=str(exc)).status
    watch = RunWatch(lease)
    work_dir = Path(settings.DEPLOYMENTS_WORK_DIR) if settings.DEPLOYMENTS_WORK_DIR else None
    try:
        outcome = ansible.run_playbook(
            spec, on_events=watch.store, should_cancel=watch.should_cancel, base_dir=work_dir
        )
    except Exception:
        logger.exception("run %s crashed", run_id)
        if watch.lease_lost:
            return RunStatus.LOST
        return _finish(
            lease, RunStatus.FAILED, "internal error while running Ansible; see the SLM worker log"
        )
    if watch.lease_lost:
        return RunStatus.LOST
    if watch.failure:
        status, reason = RunStatus.FAILED, watch.failure
    else:
        status = services.STATUS_OF_OUTCOME.get(outcome.status, RunStatus.FAILED)
        reason = _reason(status, outcome, run)
    return _finish(
        lease, status, reason, rc=outcome.rc, host_stats=outcome.host_stats, emitted=outcome.events_emitted
    )


def _reason(status: str, outcome: ansible.RunOutcome, run: DeploymentRun) -> str:
    if status == RunStatus.CANCELED:
        canceled = DeploymentRun.objects.only("cancel_requested_by").get(pk=run.pk)
        return f"canceled by {canceled.cancel_requested_by or 'an operator'}"
    if status == RunStatus.TIMED_OUT:
        return f"stopped after {run.timeout_seconds} s"
    failed = sorted(
        host for host, stats in outcome.host_stats.items() if stats["failed"] or stats["unreachable"]
    )
    if status == RunStatus.FAILED:
        return f"failed on {', '.join(failed)}" if failed else f"ansible-playbook exited with {outcome.rc}"
    return ""


def _finish(lease: services.Lease, status: str, reason: str, **fields: Any) -> str:
    try:
        return services.deployment_run_finish(lease=lease, status=status, reason=reason, **fields).status
    except services.LeaseLost:
        logger.warning("run %s: lease lost before the end was written", lease.run_id)
        return RunStatus.LOST
