"""The SLM: AutoBot's management layer (fleet, SSH, Ansible deployments, health, backups, TLS, secrets)."""

# Imported here so that `celery -A slm_project` finds the app and @shared_task binds to it.
from slm_project.config.celery_app import app as celery_app

__version__ = "0.1.0"
__all__ = ["__version__", "celery_app"]
