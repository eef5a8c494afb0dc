"""Personal API tokens: hashed, scoped, shown once, expiring and revocable; for REST and websockets."""

import json
import logging
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from business_project.accounts.models import ApiToken
from business_project.accounts.services import TokenRejected, api_token_authenticate, api_token_create
from service_kit.errors import Conflict, ServiceError
from tests.business.chat.factories import make_user

pytestmark = pytest.mark.django_db


@pytest.fixture
def user():
    return make_user("tia")


def test_only_a_hash_of_the_token_is_stored(user):
    row, token = api_token_create(user=user, name="cli", scopes=["chat:read"])
    assert token.startswith("abt_")
    stored = ApiToken.objects.filter(pk=row.pk).values().get()
    assert token not in json.dumps(stored, default=str)
    assert len(stored["token_hash"]) == 64
    assert api_token_authenticate(raw_token=token) == (user, row)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"revoked_at": timezone.now()}, "revoked"),
        ({"expires_at": timezone.now() - timedelta(seconds=1)}, "expired"),
    ],
)
def test_revoked_and_expired_tokens_are_refused(user, change, reason):
    row, token = api_token_create(user=user, name="cli", scopes=["chat:read"])
    ApiToken.objects.filter(pk=row.pk).update(**change)
    with pytest.raises(TokenRejected, match=reason):
        api_token_authenticate(raw_token=token)


def test_tokens_of_inactive_users_and_wrong_secrets_are_refused(user):
    _, token = api_token_create(user=user, name="cli", scopes=["chat:read"])
    with pytest.raises(TokenRejected):
        api_token_authenticate(raw_token=token[:-2] + "xx")
    with pytest.raises(TokenRejected):
        api_token_authenticate(raw_token="abt_nothing")
    user.is_active = False
    user.save()
    with pytest.raises(TokenRejected, match="inactive"):
        api_token_authenticate(raw_token=token)


def test_bad_token_requests_are_refused(user):
    with pytest.raises(ServiceError):
        api_token_create(user=user, name="x", scopes=["root"])
    with pytest.raises(ServiceError):
        api_token_create(user=user, name="x", scopes=[])
    with pytest.raises(ServiceError):
        api_token_create(user=user, name="x", scopes=["chat:read"], expires_at=timezone.now())
    api_token_create(user=user, name="x", scopes=["chat:read"])
    with pytest.raises(Conflict):
        api_token_create(user=user, name="x", scopes=["chat:read"])


def test_the_command_prints_the_token_once_as_the_last_line(user):
    out, err = StringIO(), StringIO()
    call_command(
        "create_api_token",
        "--user",
        "tia",
        "--name",
        "cli",
        "--scope",
        "chat:read",
        "--expires-in-days",
        "30",
        stdout=out,
        stderr=err,
    )
    token = out.getvalue().strip()
    assert token.startswith("abt_")
    assert "\n" not in token
    assert token not in err.getvalue()
    row = ApiToken.objects.get()
    assert row.scopes == ["chat:read"]
    assert timedelta(days=29) < row.expires_at - timezone.now() <= timedelta(days=30)
    with pytest.raises(CommandError, match="No user"):
        call_command("create_api_token", "--user", "nobody", "--name", "x", "--scope", "chat:read")
    call_command("revoke_api_token", "--user", "tia", "--name", "cli", stdout=StringIO())
    with pytest.raises(TokenRejected):
        api_token_authenticate(raw_token=token)


def test_the_token_api_shows_the_secret_once_and_revokes(client, user, caplog):
    client.force_login(user)
    with caplog.at_level(logging.DEBUG):
        created = client.post(
            "/api/auth/tokens/",
            json.dumps({"name": "script", "scopes": ["chat:read"], "expires_in_days": 7}),
            content_type="application/json",
        )
    assert created.status_code == 201
    token = created.json()["token"]
    assert created["Cache-Control"] == "no-store"
    assert token not in caplog.text
    listed = client.get("/api/auth/tokens/")
    assert token not in listed.content.decode()
    assert [t["name"] for t in listed.json()] == ["script"]
    token_id = created.json()["id"]
    # Tokens cannot manage tokens: a leaked one cannot make itself a permanent successor.
    as_token = client.get("/api/auth/tokens/", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert as_token.status_code == 403
    assert client.get("/api/auth/me/", HTTP_AUTHORIZATION=f"Bearer {token}").json()["scopes"] == ["chat:read"]
    assert client.delete(f"/api/auth/tokens/{token_id}/").status_code == 200
    assert client.get("/api/auth/me/", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 401


def test_another_user_s_token_cannot_be_revoked(client, user):
    other = make_user("uma")
    row, _ = api_token_create(user=other, name="theirs", scopes=["chat:read"])
    client.force_login(user)
    assert client.delete(f"/api/auth/tokens/{row.pk}/").status_code == 404
    row.refresh_from_db()
    assert row.revoked_at is None


def test_the_tokens_page_needs_a_session(client, user):
    assert client.get("/accounts/tokens/").status_code == 302
    client.force_login(user)
    page = client.get("/accounts/tokens/")
    assert page.status_code == 200
    assert b"Personal API tokens" in page.content


def test_the_token_list_needs_a_bounded_number_of_queries(client, user):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client.force_login(user)
    api_token_create(user=user, name="one", scopes=["chat:read"])
    with CaptureQueriesContext(connection) as few:
        client.get("/api/auth/tokens/")
    for number in range(10):
        api_token_create(user=user, name=f"more{number}", scopes=["chat:read"])
    with CaptureQueriesContext(connection) as many:
        assert len(client.get("/api/auth/tokens/").json()) == 11
    assert len(many) == len(few)
