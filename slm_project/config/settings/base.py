"""SLM settings shared by every environment. Values come from the environment (``config/env.py``); with
none set, everything runs on one machine without servers: SQLite and the filesystem broker under
``var/slm``, a local-memory cache."""

from service_kit.env import persistent_secret_key
from service_kit.integrations import django_core_settings
from slm_project.config.env import VAR_DIR, env
from slm_project.config.settings.integrations.cache import *  # noqa: F403 - settings are module globals
from slm_project.config.settings.integrations.celery import *  # noqa: F403
from slm_project.config.settings.integrations.database import *  # noqa: F403
from slm_project.config.settings.integrations.deployments import *  # noqa: F403
from slm_project.config.settings.integrations.logging import *  # noqa: F403
from slm_project.config.settings.integrations.rest import *  # noqa: F403
from slm_project.config.settings.integrations.schedule import *  # noqa: F403
from slm_project.config.settings.integrations.vault import *  # noqa: F403

SECRET_KEY = env.str("SECRET_KEY", default="") or persistent_secret_key(VAR_DIR / "secret_key")
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    # The ops portal's theme; it must come before django.contrib.admin to override its templates.
    "unfold",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "django_celery_results",
    "service_kit",
    "slm_project.accounts",
    "slm_project.system",
    "slm_project.security",
    "slm_project.access",
    "slm_project.fleet",
    "slm_project.deployments",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "service_kit.request_id.RequestIdMiddleware",
    "slm_project.common.middleware.ContractVersionMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "slm_project.config.urls"
WSGI_APPLICATION = "slm_project.config.wsgi.application"

globals().update(django_core_settings(var_dir=VAR_DIR, cookie_prefix="slm"))

# Operators sign in at /admin/login/; without a "next" they belong on the fleet overview.
LOGIN_URL = "admin:login"
LOGIN_REDIRECT_URL = "admin:index"

UNFOLD = {
    "SITE_TITLE": "AutoBot SLM",
    "SITE_HEADER": "AutoBot SLM — operations",
    "SITE_SYMBOL": "dns",
    # The admin index is the fleet overview; the sidebar leads with the fleet, then every other app.
    "DASHBOARD_CALLBACK": "slm_project.fleet.dashboard.dashboard_callback",
    "SIDEBAR": {
        "show_search": True,
        "show_all_applications": True,
        "navigation": "slm_project.fleet.dashboard.sidebar_navigation",
    },
}
