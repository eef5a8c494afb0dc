"""Roles: members by default, admins from createsuperuser and bootstrap_admin, what each may do."""

import os
from io import StringIO
from unittest import mock

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import IntegrityError

from business_project.accounts.selectors import scopes_of
from business_project.accounts.services import user_role_set
from service_kit.errors import ServiceError

pytestmark = pytest.mark.django_db
User = get_user_model()


def test_new_users_are_members():
    user = User.objects.create_user(username="ann", password="a-long-enough-password")
    assert (user.role, user.effective_role) == ("member", "member")
    assert scopes_of(user=user) == {"chat:read", "chat:write"}


def test_createsuperuser_makes_an_admin():
    with mock.patch.dict(os.environ, {"DJANGO_SUPERUSER_PASSWORD": "a-long-enough-password"}):
        call_command(
            "createsuperuser", "--noinput", username="root", email="root@example.org", stdout=StringIO()
        )
    user = User.objects.get(username="root")
    assert (user.is_superuser, user.role, user.effective_role) == (True, "admin", "admin")


def test_bootstrap_admin_makes_the_first_admin():
    with mock.patch.dict(os.environ, {"BUSINESS_ADMIN_PASSWORD": "a-long-enough-password"}):
        call_command("bootstrap_admin", "--env-prefix", "BUSINESS_", stdout=StringIO())
    user = User.objects.get(username="admin")
    assert user.is_superuser
    assert user.effective_role == "admin"
    assert scopes_of(user=user) == {"chat:read", "chat:write"}


def test_viewers_read_only_and_inactive_users_nothing():
    viewer = User.objects.create_user(username="vi", password="a-long-enough-password", role="viewer")
    assert scopes_of(user=viewer) == {"chat:read"}
    viewer.is_active = False
    assert scopes_of(user=viewer) == frozenset()


def test_roles_are_checked_by_the_service_and_the_database():
    user = User.objects.create_user(username="bo", password="a-long-enough-password")
    with pytest.raises(ServiceError):
        user_role_set(user=user, role="overlord")
    assert user_role_set(user=user, role="viewer").role == "viewer"
    with pytest.raises(IntegrityError):
        User.objects.filter(pk=user.pk).update(role="overlord")


def test_me_reports_role_and_scopes(client):
    user = User.objects.create_user(username="cy", password="a-long-enough-password", role="viewer")
    client.force_login(user)
    body = client.get("/api/auth/me/").json()
    assert (body["username"], body["role"], body["scopes"]) == ("cy", "viewer", ["chat:read"])
