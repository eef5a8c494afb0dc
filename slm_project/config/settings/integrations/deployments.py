"""Deployments: where the Ansible tree is, the URL node agents report to, where runs keep their files."""

from slm_project.config.env import BASE_DIR, VAR_DIR, env

DEPLOYMENTS_ANSIBLE_DIR = BASE_DIR / "ansible"
# The SLM as the nodes reach it (the slm_agent role writes it into each agent's config).
DEPLOYMENTS_SLM_URL = env.str("PUBLIC_URL", default="")
# Each run's private data dir (key file, inventory, extra vars; removed after the run) is made here;
# empty: the system temp dir. Point it at a tmpfs to keep key material off disks.
DEPLOYMENTS_WORK_DIR = env.str("DEPLOYMENTS_WORK_DIR", default="")

# The reconciler (deployments/reconcile.py). A drift is fixed by a deployment where the policy says so:
# globally, and per role ("redis=true,llm=false") over the global value.
DEPLOYMENTS_AUTO_REMEDIATE_DRIFT = env.bool("DEPLOYMENTS_AUTO_REMEDIATE_DRIFT", default=False)
DEPLOYMENTS_AUTO_REMEDIATE_DRIFT_ROLES = {
    role: value.strip().lower() in ("1", "true", "yes", "on")
    for role, value in env.dict("DEPLOYMENTS_AUTO_REMEDIATE_DRIFT_ROLES", default={}).items()
}
# Check-mode runs (--check --diff) of every online node's roles, this often (a beat entry).
DEPLOYMENTS_CHECK_RUN_INTERVAL_SECONDS = env.int("DEPLOYMENTS_CHECK_RUN_INTERVAL_SECONDS", default=24 * 3600)
# The remediator (deployments/remediation.py): restarts of a failed service, at most this many until it
# runs again, the wait after the first one doubling after each.
DEPLOYMENTS_REMEDIATION_MAX_ATTEMPTS = env.int("DEPLOYMENTS_REMEDIATION_MAX_ATTEMPTS", default=3)
DEPLOYMENTS_REMEDIATION_COOLDOWN_SECONDS = env.int("DEPLOYMENTS_REMEDIATION_COOLDOWN_SECONDS", default=120)
# Retention (deployments/retention.py): the events of runs that ended longer ago are deleted, this many
# rows per statement.
DEPLOYMENTS_EVENT_RETENTION_DAYS = env.int("DEPLOYMENTS_EVENT_RETENTION_DAYS", default=30)
DEPLOYMENTS_EVENT_DELETE_BATCH = env.int("DEPLOYMENTS_EVENT_DELETE_BATCH", default=5000)
# Application bundles (deployments/bundles.py: wheels + sources of a role's Python service, built here
# once per content hash and copied to the nodes, which then need no package index).
DEPLOYMENTS_BUNDLE_DIR = env.str("DEPLOYMENTS_BUNDLE_DIR", default=str(VAR_DIR / "bundles"))
