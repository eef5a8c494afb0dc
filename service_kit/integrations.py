"""Settings builders, one per integration. Each takes explicit values (read from the environment by the
project's ``config/settings/integrations/*`` modules) and returns Django setting names and values.

No builder branches on a "mode": what a setting points at (SQLite or PostgreSQL, the filesystem broker or
Redis) follows from the URLs it is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Channel layer: redis-py 8 runs out of connections above ~100 concurrent sockets with the defaults.
CHANNEL_LAYER_MAX_CONNECTIONS = 1000
CHANNEL_LAYER_CAPACITY = 1500
# redis-py 8 gives every read a 5 s timeout by default, blocking commands included; channels_redis
# blocks in BZPOPMIN for 5 s (brpop_timeout), so the read timed out about as often as Redis answered,
# and the consumer whose task was reading died with its websocket. Longer than any block, with room for
# a busy event loop.
CHANNEL_LAYER_SOCKET_TIMEOUT = 30
SQLITE_BUSY_TIMEOUT_SECONDS = 20


def database_settings(config: dict[str, Any], *, conn_max_age: int = 60) -> dict[str, Any]:
    """``DATABASES`` from a parsed database URL.

    SQLite is shared by the web process, workers and beat: WAL lets readers run beside one writer, the
    busy timeout waits for the lock instead of failing, and IMMEDIATE transactions take the write lock
    up front so two writers never deadlock on a lock upgrade ("database is locked").
    """
    config = dict(config)
    if config["ENGINE"] == "django.db.backends.sqlite3":
        Path(config["NAME"]).parent.mkdir(parents=True, exist_ok=True)
        config["OPTIONS"] = {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": SQLITE_BUSY_TIMEOUT_SECONDS,
            **config.get("OPTIONS", {}),
        }
        config["CONN_MAX_AGE"] = 0
    else:
        config.setdefault("CONN_MAX_AGE", conn_max_age)
        config["CONN_HEALTH_CHECKS"] = True
    return {"DATABASES": {"default": config}}


def cache_settings(*, redis_url: str, key_prefix: str) -> dict[str, Any]:
    if redis_url:
        backend: dict[str, Any] = {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": redis_url,
            "KEY_PREFIX": key_prefix,
            "TIMEOUT": 300,
        }
    else:
        backend = {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": key_prefix}
    return {"CACHES": {"default": backend}}


def celery_settings(*, broker_url: str, var_dir: Path, default_queue: str = "default") -> dict[str, Any]:
    """Celery, read by ``app.config_from_object(settings, namespace="CELERY")``.

    Without a broker URL the kombu filesystem transport under ``var_dir`` is used: no server needed,
    and it supports the fanout exchanges workers use for remote control.
    """
    settings: dict[str, Any] = {
        "CELERY_BROKER_URL": broker_url or "filesystem://",
        "CELERY_RESULT_BACKEND": "django-db",
        "CELERY_RESULT_EXTENDED": True,
        "CELERY_TASK_SERIALIZER": "json",
        "CELERY_RESULT_SERIALIZER": "json",
        "CELERY_ACCEPT_CONTENT": ["json"],
        "CELERY_TIMEZONE": "UTC",
        "CELERY_ENABLE_UTC": True,
        # A task that hangs must not hold a worker slot forever; long jobs set their own limits.
        "CELERY_TASK_SOFT_TIME_LIMIT": 25 * 60,
        "CELERY_TASK_TIME_LIMIT": 30 * 60,
        # Ack after the task ran, one message at a time: a killed worker's task is delivered again
        # (tasks are idempotent by rule) instead of lost.
        "CELERY_TASK_ACKS_LATE": True,
        "CELERY_TASK_REJECT_ON_WORKER_LOST": True,
        "CELERY_WORKER_PREFETCH_MULTIPLIER": 1,
        "CELERY_TASK_DEFAULT_QUEUE": default_queue,
        "CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP": True,
        "CELERY_BEAT_SCHEDULER": "django_celery_beat.schedulers:DatabaseScheduler",
        "CELERY_WORKER_HIJACK_ROOT_LOGGER": False,
    }
    if settings["CELERY_BROKER_URL"].startswith("filesystem://"):
        broker_dir = var_dir / "broker"
        for sub in ("queue", "processed", "control"):
            (broker_dir / sub).mkdir(parents=True, exist_ok=True)
        settings["CELERY_BROKER_TRANSPORT_OPTIONS"] = {
            "data_folder_in": str(broker_dir / "queue"),
            "data_folder_out": str(broker_dir / "queue"),
            "processed_folder": str(broker_dir / "processed"),
            "control_folder": str(broker_dir / "control"),
            "store_processed": False,
        }
    elif settings["CELERY_BROKER_URL"].startswith(("redis://", "rediss://")):
        # Longer than the hard time limit, or Redis re-delivers a task that is still running.
        settings["CELERY_BROKER_TRANSPORT_OPTIONS"] = {"visibility_timeout": 35 * 60}
    return settings


def channel_layer_settings(*, redis_url: str, prefix: str) -> dict[str, Any]:
    if redis_url:
        layer: dict[str, Any] = {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [
                    {
                        "address": redis_url,
                        "max_connections": CHANNEL_LAYER_MAX_CONNECTIONS,
                        "socket_timeout": CHANNEL_LAYER_SOCKET_TIMEOUT,
                    }
                ],
                "capacity": CHANNEL_LAYER_CAPACITY,
                "prefix": prefix,
            },
        }
    else:
        layer = {"BACKEND": "channels.layers.InMemoryChannelLayer"}
    return {"CHANNEL_LAYERS": {"default": layer}}


def rest_framework_settings() -> dict[str, Any]:
    return {
        "REST_FRAMEWORK": {
            "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
            "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
            "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
            "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.SessionAuthentication"],
            # Deny by default: an endpoint that forgets its permissions is closed, not open.
            "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
            "DEFAULT_PAGINATION_CLASS": "service_kit.pagination.PageNumberPagination",
            "PAGE_SIZE": 50,
            "EXCEPTION_HANDLER": "service_kit.errors.api_exception_handler",
            "UNAUTHENTICATED_USER": None,
        }
    }


def spectacular_settings(
    *, title: str, description: str, version: str, enum_name_overrides: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "SPECTACULAR_SETTINGS": {
            "TITLE": title,
            "DESCRIPTION": description,
            "VERSION": version,
            "SERVE_INCLUDE_SCHEMA": False,
            # Swagger UI and Redoc from the sidecar package's static files: no CDN.
            "SWAGGER_UI_DIST": "SIDECAR",
            "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
            "REDOC_DIST": "SIDECAR",
            "COMPONENT_SPLIT_REQUEST": True,
            # Stable component names for shared enums instead of drf-spectacular's hashed ones.
            "ENUM_NAME_OVERRIDES": enum_name_overrides or {},
        }
    }


def logging_settings(*, level: str) -> dict[str, Any]:
    return {
        "LOGGING": {
            "version": 1,
            "disable_existing_loggers": False,
            "filters": {"request_id": {"()": "service_kit.request_id.RequestIdLogFilter"}},
            "formatters": {
                "plain": {
                    "format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s",
                }
            },
            "handlers": {
                "console": {
                    "class": "logging.StreamHandler",
                    "formatter": "plain",
                    "filters": ["request_id"],
                }
            },
            "root": {"handlers": ["console"], "level": level},
            "loggers": {
                "django": {"level": level, "propagate": True},
                # One line per request is the access log's job (gunicorn/uvicorn), not Django's.
                "django.server": {"level": "WARNING", "propagate": True},
                # httpx logs a line per request with its URL: noise per LLM call, and a URL may carry
                # credentials. Its warnings still show.
                "httpx": {"level": "WARNING", "propagate": True},
            },
        }
    }


def django_core_settings(*, var_dir: Path, cookie_prefix: str) -> dict[str, Any]:
    """What both projects configure alike: templates, passwords, i18n, static files, cookies."""
    return {
        "TEMPLATES": [
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "DIRS": [],
                "APP_DIRS": True,
                "OPTIONS": {
                    "context_processors": [
                        "django.template.context_processors.request",
                        "django.contrib.auth.context_processors.auth",
                        "django.contrib.messages.context_processors.messages",
                    ],
                },
            },
        ],
        "AUTH_USER_MODEL": "accounts.User",
        "AUTH_PASSWORD_VALIDATORS": [
            {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
            {
                "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
                "OPTIONS": {"min_length": 12},
            },
            {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
            {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
        ],
        # Both deployables may run on one host (make run): cookies do not separate ports, names must.
        "SESSION_COOKIE_NAME": f"{cookie_prefix}_session",
        "CSRF_COOKIE_NAME": f"{cookie_prefix}_csrftoken",
        "SESSION_COOKIE_HTTPONLY": True,
        "LANGUAGE_CODE": "en-us",
        "TIME_ZONE": "UTC",
        "USE_I18N": True,
        "USE_TZ": True,
        "STATIC_URL": "static/",
        "STATIC_ROOT": var_dir / "static",
        "STORAGES": {
            "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
            "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
        },
        "DEFAULT_AUTO_FIELD": "django.db.models.BigAutoField",
    }


def production_settings(env, *, current: dict[str, Any]) -> dict[str, Any]:
    """Checks the production values ``current`` (the settings so far) holds, naming the variable of each
    problem, and returns the hardening that production adds (behind a TLS-terminating proxy)."""
    from django.core.exceptions import ImproperlyConfigured

    if current["DATABASES"]["default"]["ENGINE"] != "django.db.backends.postgresql":
        raise ImproperlyConfigured(f"{env.names_for('DATABASE_URL')} must be a postgres:// URL in production")
    if current["DEBUG"]:
        raise ImproperlyConfigured(f"{env.names_for('DEBUG')} must be off in production")
    if len(current["SECRET_KEY"]) < 32:
        raise ImproperlyConfigured(f"{env.names_for('SECRET_KEY')} must be at least 32 characters")
    secure_cookies = env.bool("SECURE_COOKIES", default=True)
    return {
        "SECURE_PROXY_SSL_HEADER": ("HTTP_X_FORWARDED_PROTO", "https"),
        "SECURE_SSL_REDIRECT": env.bool("SECURE_SSL_REDIRECT", default=False),
        "SESSION_COOKIE_SECURE": secure_cookies,
        "CSRF_COOKIE_SECURE": secure_cookies,
        "SECURE_HSTS_SECONDS": env.int("SECURE_HSTS_SECONDS", default=0),
        "SECURE_CONTENT_TYPE_NOSNIFF": True,
        "X_FRAME_OPTIONS": "DENY",
        "STORAGES": {
            "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
            "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
        },
    }


def testing_settings(*, static_root: Path) -> dict[str, Any]:
    """What the test suites change: a fast hasher, static files served from the finders."""
    # WhiteNoise warns on every request when the static root is missing.
    static_root.mkdir(parents=True, exist_ok=True)
    return {
        "PASSWORD_HASHERS": ["django.contrib.auth.hashers.MD5PasswordHasher"],  # speed; never outside tests
        "STORAGES": {
            "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
            "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
        },
        "WHITENOISE_USE_FINDERS": True,
    }
