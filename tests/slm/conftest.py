import pytest


@pytest.fixture(scope="session", autouse=True)
def _empty_broker():
    """Tasks queued by earlier test runs must not reach this run's workers."""
    from slm_project import celery_app

    celery_app.control.purge()
