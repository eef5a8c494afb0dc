"""The Credential admin: the secret is write-only, and every change goes through the services."""

from __future__ import annotations

import base64
import secrets

import pytest

from slm_project.security.choices import CredentialKind
from slm_project.security.models import Credential
from slm_project.security.services import credential_reveal, credential_store

pytestmark = pytest.mark.django_db

LIST_URL = "/admin/security/credential/"
ADD_URL = "/admin/security/credential/add/"


def change_url(credential: Credential) -> str:
    return f"/admin/security/credential/{credential.pk}/change/"


def assert_nothing_sealed_in(html: str, credential: Credential, secret: str) -> None:
    for value in (secret.encode(), bytes(credential.ciphertext), bytes(credential.wrapped_data_key)):
        for encoded in (value, base64.b64encode(value), value.hex().encode()):
            assert encoded.decode(errors="replace") not in html


def test_the_change_page_never_shows_the_secret(admin_client):
    secret = f"canary-{secrets.token_urlsafe(24)}"
    credential = credential_store(
        kind=CredentialKind.SSH_PASSWORD,
        name="canary",
        secret=secret,
        public_metadata={"note": "shown"},
    )

    html = admin_client.get(change_url(credential)).content.decode()

    assert 'type="password" name="secret"' in html
    assert 'name="secret" value=' not in html
    for shown in ("canary", "shown", "k1"):  # the page does show the credential, minus its secret
        assert shown in html
    assert_nothing_sealed_in(html, credential, secret)


def test_the_list_shows_names_kinds_and_key_ids(admin_client):
    credential_store(kind=CredentialKind.API_TOKEN, name="grafana token", secret="t0ken-value")

    html = admin_client.get(LIST_URL).content.decode()

    assert "grafana token" in html
    assert "API token" in html
    assert "k1" in html
    assert "t0ken-value" not in html


def test_adding_a_credential_seals_the_secret(admin_client):
    response = admin_client.post(
        ADD_URL, {"name": "deploy", "kind": CredentialKind.SSH_PRIVATE_KEY, "secret": "key\n"}
    )

    assert response.status_code == 302, response.content.decode()
    credential = Credential.objects.get(name="deploy")
    assert credential_reveal(credential=credential) == b"key\n"
    assert response["Location"].endswith(LIST_URL) or str(credential.pk) in response["Location"]


def test_adding_needs_a_secret(admin_client):
    response = admin_client.post(ADD_URL, {"name": "deploy", "kind": CredentialKind.SSH_PASSWORD})

    assert response.status_code == 200
    assert "A new credential needs its secret." in response.content.decode()
    assert not Credential.objects.exists()


def test_a_rejected_form_does_not_echo_the_secret(admin_client):
    response = admin_client.post(
        ADD_URL, {"name": "", "kind": CredentialKind.SSH_PASSWORD, "secret": "typed-secret-value"}
    )

    assert response.status_code == 200
    assert "typed-secret-value" not in response.content.decode()
    assert not Credential.objects.exists()


def test_a_new_secret_replaces_the_old_one_and_an_empty_field_keeps_it(admin_client):
    credential = credential_store(kind=CredentialKind.SSH_PASSWORD, name="root", secret="old-password")
    ciphertext = bytes(credential.ciphertext)

    response = admin_client.post(change_url(credential), {"name": "root on db-1", "secret": ""})
    assert response.status_code == 302, response.content.decode()
    credential.refresh_from_db()
    assert credential.name == "root on db-1"
    assert bytes(credential.ciphertext) == ciphertext

    response = admin_client.post(change_url(credential), {"name": "root on db-1", "secret": "new-password"})
    assert response.status_code == 302, response.content.decode()
    credential.refresh_from_db()
    assert credential_reveal(credential=credential) == b"new-password"
    assert credential.kind == CredentialKind.SSH_PASSWORD


def test_deleting_through_the_admin(admin_client):
    credential = credential_store(kind=CredentialKind.GENERIC, name="old", secret="x")

    response = admin_client.post(f"/admin/security/credential/{credential.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert not Credential.objects.exists()
