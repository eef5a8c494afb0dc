# A running executor renews its lease well before it expires; a run whose lease expired has no executor.
LEASE_SECONDS = 60
LEASE_RENEW_AFTER_SECONDS = 15
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
