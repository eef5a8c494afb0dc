HEARTBEAT_INTERVAL_SECONDS = 30
# Raw samples are kept this long; older ones survive only in the 5-minute and hourly rollups.
RAW_SAMPLE_RETENTION_HOURS = 24
ROLLUP_5M_RETENTION_DAYS = 14
ROLLUP_1H_RETENTION_DAYS = 400
AGENT_TOKEN_PREFIX = "nat_"  # noqa: S105 - a public marker of the token kind, not a secret
