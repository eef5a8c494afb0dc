"""The REST contract between the SLM (management layer) and the business layer.

Pure Python on purpose: no Django, DRF, Celery or SSH libraries, so that any client of the SLM can
install it alone. Import-linter enforces this (see pyproject.toml).
"""

from shared_contracts.version import CONTRACT_VERSION, CONTRACT_VERSION_HEADER

__all__ = ["CONTRACT_VERSION", "CONTRACT_VERSION_HEADER"]
