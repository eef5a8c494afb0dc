"""``bootstrap_admin`` creates the first admin once; the password comes from the environment or is
generated and shown once."""

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

pytestmark = pytest.mark.django_db


def run(**kwargs) -> str:
    out = io.StringIO()
    call_command("bootstrap_admin", stdout=out, **kwargs)
    return out.getvalue()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("ADMIN_PASSWORD", "TST_ADMIN_PASSWORD", "ADMIN_USERNAME", "TST_ADMIN_USERNAME"):
        monkeypatch.delenv(name, raising=False)


def test_the_password_from_the_environment_is_used_and_not_printed(monkeypatch):
    monkeypatch.setenv("TST_ADMIN_PASSWORD", "a-very-long-operator-pass")
    monkeypatch.setenv("ADMIN_USERNAME", "root-ops")
    output = run(env_prefix="TST_")
    user = get_user_model().objects.get(username="root-ops")
    assert user.is_superuser
    assert user.is_staff
    assert user.check_password("a-very-long-operator-pass")
    assert "a-very-long-operator-pass" not in output


def test_a_generated_password_is_printed_once_and_works():
    output = run()
    password = output.strip().rsplit(" ", 1)[-1]
    assert get_user_model().objects.get(username="admin").check_password(password)
    second = run()
    assert "nothing to do" in second
    assert password not in second
    assert get_user_model().objects.count() == 1


def test_a_weak_password_is_refused_and_nothing_is_created(monkeypatch):
    monkeypatch.setenv("ADMIN_PASSWORD", "123")
    with pytest.raises(CommandError, match="too weak"):
        run()
    assert not get_user_model().objects.exists()
