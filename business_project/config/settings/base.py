"""Business settings shared by every environment. Values come from the environment (``config/env.py``);
with none set, everything runs on one machine without servers: SQLite and the filesystem broker under
``var/business``, a local-memory cache and an in-memory channel layer."""

from business_project.config.env import VAR_DIR, env
from business_project.config.settings.integrations.accounts import *  # noqa: F403 - settings are module globals
from business_project.config.settings.integrations.cache import *  # noqa: F403
from business_project.config.settings.integrations.celery import *  # noqa: F403
from business_project.config.settings.integrations.channels import *  # noqa: F403
from business_project.config.settings.integrations.chat import *  # noqa: F403
from business_project.config.settings.integrations.database import *  # noqa: F403
from business_project.config.settings.integrations.llm import *  # noqa: F403
from business_project.config.settings.integrations.logging import *  # noqa: F403
from business_project.config.settings.integrations.rest import *  # noqa: F403
from business_project.config.settings.integrations.schedule import *  # noqa: F403
from business_project.config.settings.integrations.slm import *  # noqa: F403
from business_project.config.settings.integrations.vault import *  # noqa: F403
from service_kit.env import persistent_secret_key
from service_kit.integrations import django_core_settings

SECRET_KEY = env.str("SECRET_KEY", default="") or persistent_secret_key(VAR_DIR / "secret_key")
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    # daphne is not used as the server (uvicorn is); channels needs only its own app.
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "django_celery_results",
    "service_kit",
    "business_project.accounts",
    "business_project.system",
    "business_project.llm",
    "business_project.chat",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "service_kit.request_id.RequestIdMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "business_project.config.urls"
WSGI_APPLICATION = "business_project.config.wsgi.application"
ASGI_APPLICATION = "business_project.config.asgi.application"

globals().update(django_core_settings(var_dir=VAR_DIR, cookie_prefix="autobot"))
