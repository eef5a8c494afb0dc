"""Business production settings: the values below must come from the environment, or start-up stops naming
what is missing or malformed."""

from django.core.exceptions import ImproperlyConfigured

from business_project.config.env import env

env.require("SECRET_KEY", "DATABASE_URL", "REDIS_URL", "ALLOWED_HOSTS", "SLM_API_URL", "SLM_API_TOKEN")

from business_project.config.settings.base import *  # noqa: E402, F403

if DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":  # noqa: F405
    raise ImproperlyConfigured(f"{env.names_for('DATABASE_URL')} must be a postgres:// URL in production")
if DEBUG:  # noqa: F405
    raise ImproperlyConfigured(f"{env.names_for('DEBUG')} must be off in production")
if len(SECRET_KEY) < 32:  # noqa: F405
    raise ImproperlyConfigured(f"{env.names_for('SECRET_KEY')} must be at least 32 characters")

# Behind a TLS-terminating proxy that sets X-Forwarded-Proto.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
SESSION_COOKIE_SECURE = env.bool("SECURE_COOKIES", default=True)
CSRF_COOKIE_SECURE = env.bool("SECURE_COOKIES", default=True)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
