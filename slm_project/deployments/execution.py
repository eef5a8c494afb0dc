"""Executing a deployment run (the Celery task calls ``run_execute`` with the run id).

Stages: clear what a killed worker of this host left behind (``orphans_clear``), claim the run
(``services.deployment_run_claim``; a second delivery or worker is refused at once, a run whose nodes are
busy or that the maintenance policy holds back stays queued), then each step of the run's plan
(``strategies``): build what Ansible needs from the database and the vault (``playbook_run_for``), run it
through the adapter (``runners.ansible``) while a ``RunWatch`` stores event batches, renews the lease and
polls for a cancel request, check the health of a rolling batch (``health.yml``), and end the run with the
first failing step or success. Every write after the claim is fenced: an executor that lost its lease
stops Ansible and writes nothing more.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction

from slm_project.deployments import actions, bundles, selectors, services
from slm_project.deployments.choices import RunStatus
from slm_project.deployments.constants import (
    CANCEL_POLL_SECONDS,
    HEALTH_PROBE_TIMEOUT_SECONDS,
    LEASE_RENEW_AFTER_SECONDS,
)
from slm_project.deployments.models import DeploymentRun
from slm_project.deployments.runners import ansible
from slm_project.fleet.choices import RoleName
from slm_project.fleet.enrollment import slm_identity
from slm_project.fleet.registry import ROLES, vault_variable_source
from slm_project.security.services import credential_reveal

logger = logging.getLogger(__name__)

HEALTH_PLAYBOOK = "health.yml"
WORK_DIR_NAME_LENGTH = 6
INTERNAL_ERROR = "internal error while running Ansible; see the SLM worker log"


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


def playbook_run_for(
    run: DeploymentRun,
    *,
    roles: list[str] | None = None,
    node_ids: list[Any] | None = None,
    timeout_seconds: int | None = None,
    ident: str = "",
    bundle_files: dict[str, str] | None = None,
) -> ansible.PlaybookRun:
    """The playbook run of ``roles`` on ``node_ids`` (a step of the run; by default all of both).
    ``bundle_files``: the built bundles of the roles (``bundles_for``), by bundle name."""
    deployment = run.deployment
    roles = list(roles if roles is not None else deployment.roles)
    playbooks = {ROLES[name].playbook for name in roles}
    if len(playbooks) != 1:
        raise RunSetupFailed(f"the roles {roles} are deployed by different playbooks: {sorted(playbooks)}")
    groups = tuple(ROLES[name].ansible_role for name in roles)
    secret_extra_vars: dict[str, str] = {}
    for name in roles:
        for entry in ROLES[name].vault_variables:
            owner, variable = vault_variable_source(name, entry)
            secret_extra_vars[variable] = services.vault_variable(role=owner, variable=variable)
    allowed = {variable for name in roles for variable in ROLES[name].variables}
    extra_vars = {name: value for name, value in deployment.extra_vars.items() if name in allowed}
    needed = {ROLES[name].bundle for name in roles if ROLES[name].bundle}
    if needed and bundle_files is not None:
        missing = sorted(needed - bundle_files.keys())
        if missing:
            raise RunSetupFailed(f"the bundles {missing} were not built")
        extra_vars["autobot_bundles"] = {name: bundle_files[name] for name in sorted(needed)}
    nodes = deployment.nodes.select_related("agent_token_credential").order_by("name")
    if node_ids is not None:
        nodes = nodes.filter(pk__in=node_ids)
    hosts = []
    # A run that installs nothing (a service action, a decommission) does not hand the agent its token.
    agent = RoleName.SLM_AGENT in roles and not actions.installs_nothing(deployment=deployment)
    for node in nodes:
        variables: dict[str, Any] = {"slm_node_id": str(node.pk)}
        secret_variables: dict[str, str] = {}
        if agent:
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
            _target_host(node, groups=groups, variables=variables, secret_variables=secret_variables)
        )
    return ansible.PlaybookRun(
        ident=ident or str(run.pk),
        playbook=playbooks.pop(),
        hosts=tuple(hosts),
        private_key=credential_reveal(credential=slm_identity().credential),
        ansible_dir=services.ansible_dir(),
        timeout_seconds=timeout_seconds or run.timeout_seconds,
        extra_vars=extra_vars,
        secret_extra_vars=secret_extra_vars,
    )


def bundles_for(roles: list[str], *, keep_alive: Any = None) -> dict[str, str]:
    """The bundle files of ``roles``, built first where missing (``bundles.ensure``)."""
    names = sorted({ROLES[name].bundle for name in roles if ROLES[name].bundle})
    return {name: str(bundles.ensure(name, keep_alive=keep_alive)) for name in names}


def _target_host(node: Any, **fields: Any) -> ansible.TargetHost:
    if not node.host_key:
        raise RunSetupFailed(f"{node.name} has no pinned host key")
    return ansible.TargetHost(
        name=node.name,
        address=node.address,
        port=node.ssh_port,
        user=node.ssh_user,
        host_key=f"{node.host_key_type} {node.host_key}",
        **fields,
    )


def health_probes(roles: list[str]) -> list[dict[str, Any]]:
    """The registry's probes of ``roles`` that health.yml checks on a node (``tcp`` and ``http``; an
    agent's ``heartbeat`` is checked by its own role, which fails when the agent does not stay up)."""
    probes = []
    for name in roles:
        probe = ROLES[name].health_probe
        if probe.get("type") in ("tcp", "http"):
            probes.append({"role": name, **probe})
    return probes


def health_check_run_for(
    run: DeploymentRun, *, roles: list[str], node_ids: list[Any], ident: str
) -> ansible.PlaybookRun | None:
    """health.yml on ``node_ids`` with the probes of ``roles``; ``None`` when they have none."""
    probes = health_probes(roles)
    if not probes:
        return None
    nodes = run.deployment.nodes.filter(pk__in=node_ids).order_by("name")
    return ansible.PlaybookRun(
        ident=ident,
        playbook=HEALTH_PLAYBOOK,
        hosts=tuple(_target_host(node, groups=(), variables={"slm_health_probes": probes}) for node in nodes),
        private_key=credential_reveal(credential=slm_identity().credential),
        ansible_dir=services.ansible_dir(),
        timeout_seconds=HEALTH_PROBE_TIMEOUT_SECONDS * (len(probes) + 1) + 60,
        extra_vars={"slm_health_timeout": HEALTH_PROBE_TIMEOUT_SECONDS},
    )


# --------------------------------------------------------------------------------------------------
# While Ansible runs


class RunWatch:
    """The executor's side of a running playbook: stores event batches, renews the lease, polls for a
    cancel request, and notes ``ansible-playbook``'s process group on the run row. Called from
    ansible-runner's loop; an error here stops the run instead of raising through ansible-runner.

    A run of several steps runs several playbooks; each one's events are numbered from 1 by Ansible, so
    they are stored after the previous ones (``begin_playbook``): the run's counters stay 1, 2, 3 …
    """

    def __init__(self, lease: services.Lease, work_dir: Path | None = None) -> None:
        self.lease = lease
        self.work_dir = work_dir
        self.emitted = 0
        self.offset = 0
        self.last_counter = 0
        self.stop_reason = ""
        self.lease_lost = False
        self.failure = ""
        self.pgid_recorded = work_dir is None
        self.last_poll = self.last_renew = time.monotonic()

    def begin_playbook(self) -> None:
        self.offset = self.last_counter
        self.pgid_recorded = self.work_dir is None

    def store(self, records: list[dict[str, Any]]) -> None:
        if self.lease_lost:
            return
        if self.offset:
            records = [record | {"counter": record["counter"] + self.offset} for record in records]
        self.emitted += len(records)
        self.last_counter = max([self.last_counter, *(record["counter"] for record in records)])
        try:
            services.deployment_events_store(lease=self.lease, records=records, emitted=self.emitted)
            actions.run_diffs_store(lease=self.lease, records=records)  # check-mode runs only
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
            if not self.pgid_recorded:
                self._record_process_group()
            if now - self.last_renew >= LEASE_RENEW_AFTER_SECONDS:
                services.deployment_run_renew(lease=self.lease)
                self.last_renew = now
            if selectors.run_cancel_requested(run_id=self.lease.run_id):
                self.stop_reason = "canceled"
        except services.LeaseLost:
            self._lost()
        return bool(self.stop_reason or self.lease_lost)

    def _record_process_group(self) -> None:
        # ansible-runner starts ansible-playbook through pexpect on a new pty, in a session (and process
        # group) of its own: the group leader is the one process of the run whose pid is its group id.
        for pid in ansible.processes_using(self.work_dir):
            with contextlib.suppress(OSError):
                if os.getpgid(pid) == pid:
                    services.deployment_run_process_group_record(lease=self.lease, pgid=pid)
                    self.pgid_recorded = True
                    return

    def _lost(self) -> None:
        if not self.lease_lost:
            logger.warning(
                "run %s: lease lost (token %s); stopping Ansible", self.lease.run_id, self.lease.token
            )
        self.lease_lost = True


# --------------------------------------------------------------------------------------------------
# The whole run


def run_work_dir(run_id: Any) -> Path:
    """The directory of one run's files (the adapter's private data dirs go inside). Its name is short:
    the SSH control sockets inside (``<private dir>/cp/<40 hex>.<16 random>``) must stay under 108 bytes,
    which leaves about 40 for ``DEPLOYMENTS_WORK_DIR``."""
    base = Path(settings.DEPLOYMENTS_WORK_DIR or tempfile.gettempdir())
    return base / uuid.UUID(str(run_id)).hex[:WORK_DIR_NAME_LENGTH]


def run_execute(*, run_id: Any, owner: str) -> str:
    """Claim and execute one run; returns its final status (raises ``RunNotClaimable`` if not ours, or
    ``RunWaiting`` if it may not start yet)."""
    host = socket.gethostname()
    orphans_clear(host=host)
    work_dir = run_work_dir(run_id)
    lease = services.deployment_run_claim(
        run_id=run_id, owner=owner, host=host, pid=os.getpid(), work_dir=str(work_dir)
    )
    run = DeploymentRun.objects.select_related("deployment").get(pk=run_id)
    work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        status = _run_steps(run, lease, work_dir)
    finally:
        ansible.remove_private_data_dir(work_dir)
    if status == RunStatus.LOST:
        # Reaped while this executor was only stalled: the adapter has stopped its Ansible and the files
        # are gone, so the nodes are free now rather than at the reaper's next round.
        services.deployment_run_orphans_cleared(run_id=run_id)
    return status


def _run_steps(run: DeploymentRun, lease: services.Lease, work_dir: Path) -> str:
    """Each step of the run's plan in turn (one for ``all_at_once``); the first that fails ends the run."""
    watch = RunWatch(lease, work_dir)
    steps: list[dict[str, Any]] = [dict(step) for step in run.steps]
    deadline = time.monotonic() + run.timeout_seconds
    host_stats: dict[str, dict[str, int]] = {}
    outcome: ansible.RunOutcome | None = None

    def keep_alive() -> None:  # while a bundle builds: renew the lease, honour a cancel request
        if watch.should_cancel():
            raise bundles.BuildStopped

    # A service action (service.yml) or a decommission installs nothing: it needs no bundle.
    installs_nothing = actions.installs_nothing(deployment=run.deployment)
    try:
        bundle_files = (
            {} if installs_nothing else bundles_for(list(run.deployment.roles), keep_alive=keep_alive)
        )
    except bundles.BuildStopped:
        if watch.lease_lost:
            return RunStatus.LOST
        return _finish(lease, RunStatus.CANCELED, _canceled_reason(run), watch)
    except bundles.BundleError as exc:
        return _finish(lease, RunStatus.FAILED, str(exc), watch)
    for index, step in enumerate(steps):
        label = _step_label(steps, index)
        remaining = int(deadline - time.monotonic())
        if remaining <= 0:
            return _finish(lease, RunStatus.TIMED_OUT, f"{label}stopped after {run.timeout_seconds} s", watch)
        try:
            spec = playbook_run_for(
                run,
                roles=step["roles"],
                node_ids=step["node_ids"],
                timeout_seconds=remaining,
                ident=f"{run.pk}-{index + 1}" if len(steps) > 1 else str(run.pk),
                bundle_files=bundle_files,
            )
            spec = actions.playbook_run_with_action(spec, deployment=run.deployment)
        except RunSetupFailed as exc:
            return _finish(lease, RunStatus.FAILED, f"{label}{exc}", watch)
        try:
            services.deployment_step_start(lease=lease, steps=steps, index=index)
        except services.LeaseLost:
            return RunStatus.LOST
        outcome = _play(spec, watch, work_dir)
        if outcome is None:
            return (
                RunStatus.LOST
                if watch.lease_lost
                else _finish(lease, RunStatus.FAILED, INTERNAL_ERROR, watch)
            )
        _add_stats(host_stats, outcome.host_stats)
        if watch.lease_lost:
            return RunStatus.LOST
        if watch.failure:
            status, reason = RunStatus.FAILED, watch.failure
        else:
            status = services.STATUS_OF_OUTCOME.get(outcome.status, RunStatus.FAILED)
            reason = _reason(status, outcome, run)
        failed_hosts = _failed_hosts(outcome)
        if status == RunStatus.SUCCEEDED and step["health_check"]:
            status, reason, failed_hosts = _health_check(run, step, index, watch, work_dir, deadline)
            if watch.lease_lost:
                return RunStatus.LOST
        try:
            services.deployment_step_finish(
                lease=lease, steps=steps, index=index, status=status, reason=reason, failed_nodes=failed_hosts
            )
        except services.LeaseLost:
            return RunStatus.LOST
        if status != RunStatus.SUCCEEDED:
            later = len(steps) - index - 1
            untouched = f"; {later} later step{'s' if later > 1 else ''} not started" if later else ""
            return _finish(
                lease, status, f"{label}{reason}{untouched}", watch, rc=outcome.rc, host_stats=host_stats
            )
    return _finish(
        lease, RunStatus.SUCCEEDED, "", watch, rc=outcome.rc if outcome else None, host_stats=host_stats
    )


def _play(spec: ansible.PlaybookRun, watch: RunWatch, work_dir: Path) -> ansible.RunOutcome | None:
    """One playbook through the adapter; ``None`` when the adapter crashed (logged)."""
    watch.begin_playbook()
    try:
        return ansible.run_playbook(
            spec, on_events=watch.store, should_cancel=watch.should_cancel, base_dir=work_dir
        )
    except Exception:
        logger.exception("run %s crashed", watch.lease.run_id)
        return None


def _health_check(
    run: DeploymentRun, step: dict[str, Any], index: int, watch: RunWatch, work_dir: Path, deadline: float
) -> tuple[str, str, list[str]]:
    """health.yml after a batch: ``(status, reason, failed hosts)``."""
    try:
        spec = health_check_run_for(
            run, roles=step["roles"], node_ids=step["node_ids"], ident=f"{run.pk}-{index + 1}-health"
        )
    except RunSetupFailed as exc:
        return RunStatus.FAILED, f"health check: {exc}", []
    if spec is None:
        return RunStatus.SUCCEEDED, "", []
    outcome = _play(spec, watch, work_dir)
    if outcome is None:
        return RunStatus.FAILED, INTERNAL_ERROR, []
    status = services.STATUS_OF_OUTCOME.get(outcome.status, RunStatus.FAILED)
    if status == RunStatus.SUCCEEDED:
        return status, "", []
    if status != RunStatus.FAILED:
        return status, _reason(status, outcome, run), []
    failed = _failed_hosts(outcome)
    where = f" on {', '.join(failed)}" if failed else f" (ansible-playbook exited with {outcome.rc})"
    return RunStatus.FAILED, f"health check failed{where}", failed


def _step_label(steps: list[dict[str, Any]], index: int) -> str:
    return f"{steps[index]['name']}: " if len(steps) > 1 else ""


def _failed_hosts(outcome: ansible.RunOutcome) -> list[str]:
    return sorted(
        host for host, stats in outcome.host_stats.items() if stats["failed"] or stats["unreachable"]
    )


def _add_stats(total: dict[str, dict[str, int]], stats: dict[str, dict[str, int]]) -> None:
    for host, counts in stats.items():
        into = total.setdefault(host, dict.fromkeys(counts, 0))
        for name, value in counts.items():
            into[name] = into.get(name, 0) + value


def _reason(status: str, outcome: ansible.RunOutcome, run: DeploymentRun) -> str:
    if status == RunStatus.CANCELED:
        return _canceled_reason(run)
    if status == RunStatus.TIMED_OUT:
        return f"stopped after {run.timeout_seconds} s"
    failed = _failed_hosts(outcome)
    if status == RunStatus.FAILED:
        return f"failed on {', '.join(failed)}" if failed else f"ansible-playbook exited with {outcome.rc}"
    return ""


def _canceled_reason(run: DeploymentRun) -> str:
    canceled = DeploymentRun.objects.only("cancel_requested_by").get(pk=run.pk)
    return f"canceled by {canceled.cancel_requested_by or 'an operator'}"


def _finish(lease: services.Lease, status: str, reason: str, watch: RunWatch, **fields: Any) -> str:
    # The end and its follow-up commit together: whoever sees the run ended (an operator, the API, a
    # test) sees its node decommissioned too, and a worker dying in between cannot leave one without
    # the other.
    try:
        with transaction.atomic():
            run = services.deployment_run_finish(
                lease=lease, status=status, reason=reason, emitted=watch.emitted, **fields
            )
            _action_run_ended(run)
    except services.LeaseLost:
        logger.warning("run %s: lease lost before the end was written", lease.run_id)
        return RunStatus.LOST
    return run.status


def _action_run_ended(run: DeploymentRun) -> None:
    """The node lifecycle's follow-up (a decommissioned node, an event); the run has ended either way
    (the follow-up runs in a savepoint: its failure does not undo the end)."""
    try:
        with transaction.atomic():
            actions.action_run_ended(run=run)
    except Exception:
        logger.exception("run %s: the follow-up of its end failed", run.pk)


# --------------------------------------------------------------------------------------------------
# After a killed worker
#
# ansible-runner runs ansible-playbook on a pty in a session of its own, with SIGHUP ignored. When the
# worker is killed (kill -9, OOM, a lost machine), nothing stops it: the orphaned ansible-playbook, its
# forked workers and their SSH clients go on deploying, reparented to init, and the run's private data
# dir (SSH key, inventory with secrets) stays on disk. The run row says where: ``executor_host``,
# ``work_dir`` and ``ansible_pgid``. The reaper (beat) and every executor, on that host, kill those
# processes and delete the directory, and only then free the run's nodes, so the next attempt never
# overlaps the orphan. A host that does not do so within ORPHAN_CLEANUP_GRACE_SECONDS is taken to be
# gone (its processes with it) and the nodes are freed anyway (``services.deployment_node_locks_expire``).


def orphans_clear(*, host: str) -> int:
    """Kill what lost runs of this host left running and delete their files; how many runs were cleared."""
    cleared = 0
    for run in selectors.runs_with_orphans(host=host):
        directory = Path(run.work_dir)
        if run.ansible_pgid and _leads_run(run.ansible_pgid, directory):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(run.ansible_pgid, signal.SIGKILL)
        # Whatever left the group (the SSH control master daemonizes) still names the directory.
        ansible.kill_leftover_processes(directory)
        ansible.remove_private_data_dir(directory)
        logger.warning("deployment run %s: killed its orphaned processes, removed %s", run.pk, directory)
        services.deployment_run_orphans_cleared(run_id=run.pk)
        cleared += 1
    return cleared


def _leads_run(pid: int, directory: Path) -> bool:
    """Whether ``pid`` is still the run's process (not a recycled pid): its command line names the dir."""
    try:
        return str(directory).encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def runs_reap() -> dict[str, int]:
    """The reaper's round: lost runs ended and retried, this host's orphans cleared, stale locks freed."""
    reaped = services.deployment_runs_reap(follow_up=_action_run_ended)
    cleared = orphans_clear(host=socket.gethostname())
    freed = services.deployment_node_locks_expire()
    return {"lost": len(reaped), "orphans_cleared": cleared, "locks_freed": freed}
