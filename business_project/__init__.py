"""The business layer of AutoBot: chat, agents, knowledge base, workflows, analytics, LLM providers, users."""

# Imported here so that `celery -A business_project` finds the app and @shared_task binds to it.
from business_project.config.celery_app import app as celery_app

__version__ = "0.1.0"
__all__ = ["__version__", "celery_app"]
