# A running executor renews its lease well before it expires; a run whose lease expired has no executor.
# With the reaper every REAP_INTERVAL_SECONDS, a killed worker's run is ``lost`` at most
# LEASE_SECONDS + REAP_INTERVAL_SECONDS (45 s) after the worker's last renewal.
LEASE_SECONDS = 30
LEASE_RENEW_AFTER_SECONDS = 10
REAP_INTERVAL_SECONDS = 15
# A lost run is tried again (a new attempt) until this many attempts were made; then the deployment fails.
RUN_MAX_ATTEMPTS = 3
# A lost run keeps its nodes locked until the worker host it ran on has killed its orphaned Ansible
# processes; a host that has not done so after this long is taken to be gone (its processes with it).
ORPHAN_CLEANUP_GRACE_SECONDS = 120
# A run that may not start yet (its nodes are busy, the maintenance policy says wait) is sent again after
# this long (a policy may name a later time; it is asked again no later than the second figure).
NODE_BUSY_RETRY_SECONDS = 3
POLICY_RETRY_MAX_SECONDS = 300
# Rolling deployments: the health check after each batch gives each probe this long.
HEALTH_PROBE_TIMEOUT_SECONDS = 10
# How often the executor looks at the run row for a cancel request.
CANCEL_POLL_SECONDS = 0.5
# Events are written in batches: at most this many, at most this long after the first one buffered.
EVENT_BATCH_SIZE = 500
EVENT_FLUSH_SECONDS = 0.5
# What an event keeps of Ansible's output and result.
EVENT_STDOUT_MAX_CHARS = 4000
EVENT_RESULT_MAX_BYTES = 16_000
# A run is stopped after this long (a deployment may override it).
RUN_TIMEOUT_SECONDS = 30 * 60
# An operator's extra var: a plain value of bounded size.
EXTRA_VAR_MAX_CHARS = 200
IDEMPOTENCY_KEY_MAX_LENGTH = 100
