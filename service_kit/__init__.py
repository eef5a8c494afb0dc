"""Plumbing both Django deployables share: environment reading, settings builders for each integration,
request ids, the one API error shape, pagination, health/readiness probes and the first-admin command.

It holds no domain code and imports neither project (import-linter enforces both directions), so each
deployable ships it as a library, like ``shared_contracts``.
"""
