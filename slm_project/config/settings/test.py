"""Settings for the SLM test suite. Real PostgreSQL and Redis when their URLs are set (CI sets them:
``AUTOBOT_SLM_TEST_DATABASE_URL``, ``AUTOBOT_SLM_TEST_REDIS_URL``); SQLite and local parts otherwise."""

import os
from pathlib import Path

# Test runs write under var/test, never into the files of a `make run` installation.
os.environ.setdefault("SLM_VAR_DIR", str(Path(__file__).resolve().parents[3] / "var" / "test"))

from service_kit.integrations import (
    cache_settings,
    celery_settings,
    database_settings,
    testing_settings,
)
from slm_project.config.env import BASE_DIR, VAR_DIR, env
from slm_project.config.settings.base import *  # noqa: F403

TEST_DATABASE_URL = env.str("AUTOBOT_SLM_TEST_DATABASE_URL", default="")
TEST_REDIS_URL = env.str("AUTOBOT_SLM_TEST_REDIS_URL", default="")

if TEST_DATABASE_URL:
    globals().update(database_settings(env.database("AUTOBOT_SLM_TEST_DATABASE_URL", default="")))
else:
    # Threads of a test (a Celery worker, an ASGI server) write beside the test: a file in WAL mode
    # waits for the lock, where SQLite's shared in-memory database fails at once ("table is locked").
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-database.sqlite3")}  # noqa: F405
globals().update(cache_settings(redis_url=TEST_REDIS_URL, key_prefix="slm-test"))
globals().update(celery_settings(broker_url=TEST_REDIS_URL, var_dir=VAR_DIR))

globals().update(testing_settings(static_root=STATIC_ROOT))  # noqa: F405

# Bundles are named by a hash of their content, so every test run may share one cache of them: a bundle
# is built once (pip wheel), not once per run.
DEPLOYMENTS_BUNDLE_DIR = str(BASE_DIR / "var" / "cache" / "bundles")
