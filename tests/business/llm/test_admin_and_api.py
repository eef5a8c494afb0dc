"""Providers in the admin and the API: the API key is write-only — never on a page, in an API response,
a log line or an error — and the picker's list costs a fixed number of queries."""

from __future__ import annotations

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from business_project.llm.chain import provider_config
from business_project.llm.models import Provider, ProviderHealthCheck, ProviderModel
from business_project.llm.services import open_stream, provider_health_check_run
from tests.business.llm.conftest import run
from tests.slm.secret_scan import assert_absent, canary

pytestmark = pytest.mark.django_db

ADD_URL = reverse("admin:llm_provider_add")


def _errors(response) -> str:
    """The error messages of a re-rendered admin form (for an assertion's message)."""
    return " | ".join(
        re.findall(r'<ul class="errorlist[^"]*"[^>]*>(.*?)</ul>', response.content.decode(), re.S)
    )


def form_data(**fields) -> dict:
    data = {
        "name": "remote",
        "kind": "openai",
        "base_url": "http://127.0.0.1:9/v1",
        "enabled": "on",
        "priority": "100",
        "default_params": "{}",
        "connect_timeout": "5",
        "first_token_timeout": "60",
        "read_timeout": "60",
        "api_key": "",
        "models-TOTAL_FORMS": "1",
        "models-INITIAL_FORMS": "0",
        "models-MIN_NUM_FORMS": "0",
        "models-MAX_NUM_FORMS": "1000",
        "models-0-name": "gpt-x",
        "models-0-display_name": "",
        "models-0-context_window": "8192",
        "models-0-default_params": "{}",
        "models-0-enabled": "on",
        "models-0-is_default": "on",
    }
    data.update(fields)
    return data


def test_a_provider_added_in_the_admin_has_its_key_sealed_and_never_shown(admin_client, llm_logs):
    secret = canary()

    response = admin_client.post(ADD_URL, form_data(api_key=secret))

    assert response.status_code == 302, _errors(response)
    provider = Provider.objects.get(name="remote")
    assert provider_config(provider).api_key == secret
    assert provider.models.get().context_window == 8192
    change = admin_client.get(reverse("admin:llm_provider_change", args=[provider.pk]))
    listing = admin_client.get(reverse("admin:llm_provider_changelist"))
    for page in (change, listing):
        assert page.status_code == 200
        assert_absent(secret, page.content, "an admin page")
    assert b"sealed under master key k1" in change.content
    assert b'name="api_key"' in change.content
    assert_absent(secret, llm_logs.text.encode(), "the logs")


def test_a_failed_submit_does_not_echo_the_key(admin_client):
    secret = canary()

    response = admin_client.post(ADD_URL, form_data(api_key=secret, base_url="not a url"))

    assert response.status_code == 200
    assert b"Enter a valid URL" in response.content
    assert_absent(secret, response.content, "the re-rendered form")
    assert not Provider.objects.exists()


def test_saving_without_a_key_keeps_it_and_clearing_removes_it(admin_client):
    secret = canary()
    admin_client.post(ADD_URL, form_data(api_key=secret))
    provider = Provider.objects.get(name="remote")
    model = provider.models.get()
    change_url = reverse("admin:llm_provider_change", args=[provider.pk])
    inline = {
        "models-TOTAL_FORMS": "1",
        "models-INITIAL_FORMS": "1",
        "models-0-id": str(model.pk),
        "models-0-provider": str(provider.pk),
    }

    response = admin_client.post(change_url, form_data(priority="5", **inline))
    assert response.status_code == 302
    provider.refresh_from_db()
    assert provider.priority == 5
    assert provider_config(provider).api_key == secret

    admin_client.post(change_url, form_data(clear_api_key="on", **inline))
    provider.refresh_from_db()
    assert not provider.has_api_key


def test_a_key_with_spaces_is_a_form_error_not_a_crash(admin_client):
    response = admin_client.post(ADD_URL, form_data(api_key="sk-one two"))

    assert response.status_code == 200
    assert b"one word" in response.content
    assert b"sk-one two" not in response.content


def test_making_a_provider_the_default_takes_the_flag_from_the_previous_one(admin_client):
    Provider.objects.create(name="old", base_url="http://127.0.0.1:9", is_default=True)

    response = admin_client.post(ADD_URL, form_data(is_default="on"))

    assert response.status_code == 302, _errors(response)
    assert list(Provider.objects.filter(is_default=True).values_list("name", flat=True)) == ["remote"]


def test_the_probe_action_records_a_check(admin_client, scripted_llm):
    provider = scripted_llm.register_provider()

    response = admin_client.post(
        reverse("admin:llm_provider_changelist"),
        {"action": "probe_now", "_selected_action": [str(provider.pk)]},
        follow=True,
    )

    assert response.status_code == 200
    assert ProviderHealthCheck.objects.filter(provider=provider, ok=True).count() == 1
    assert b"ok in" in response.content


# --------------------------------------------------------------------------------------------------
# API


def test_the_provider_list_for_the_picker_has_models_and_status_but_no_url_or_key(client, admin_user):
    secret = canary()
    from business_project.llm.services import provider_save

    for index in range(3):
        provider = provider_save(
            provider=Provider(name=f"p{index}", base_url=f"http://10.0.0.{index}:8080", priority=index),
            api_key=secret,
        )
        ProviderModel.objects.create(provider=provider, name="m", is_default=True, context_window=2048)
        ProviderModel.objects.create(provider=provider, name="hidden", enabled=False)
    client.force_login(admin_user)

    with CaptureQueriesContext(connection) as queries:
        response = client.get("/api/llm/providers/")

    assert response.status_code == 200
    body = response.json()
    assert [entry["name"] for entry in body] == ["p0", "p1", "p2"]
    assert body[0]["models"] == [
        {"name": "m", "display_name": "m", "context_window": 2048, "is_default": True}
    ]
    assert body[0]["status"] == "unknown"
    assert "base_url" not in body[0]
    assert_absent(secret, response.content, "the API response")
    assert b"10.0.0." not in response.content
    # Session and user, then providers and their models: not one query per provider.
    assert len([q for q in queries.captured_queries if "llm_" in q["sql"]]) == 2


def test_the_provider_list_needs_a_login(client):
    assert client.get("/api/llm/providers/").status_code == 403


def test_the_health_history_is_for_staff(client, admin_client, django_user_model, scripted_llm):
    provider = scripted_llm.register_provider()
    provider_health_check_run()
    url = f"/api/llm/providers/{provider.pk}/health/"

    response = admin_client.get(url)
    assert response.status_code == 200
    [check] = response.json()
    assert check["ok"] is True
    assert check["models_seen"] == ["scripted-model"]

    member = django_user_model.objects.create_user(username="member", password="member-password-1")
    client.force_login(member)
    assert client.get(url).status_code == 403
    assert (
        admin_client.get("/api/llm/providers/00000000-0000-0000-0000-000000000000/health/").status_code == 404
    )


# --------------------------------------------------------------------------------------------------
# Logs and errors


def test_the_key_is_in_no_log_line_or_error_of_a_failing_stream(scripted_llm_factory, llm_logs):
    secret = canary()
    failing, working = scripted_llm_factory(), scripted_llm_factory()
    failing.register_provider(name="a", is_default=True, api_key=secret)
    working.register_provider(name="b", api_key=secret)
    failing.script(status=401)
    working.script(tokens=["x", "y"], drop_after=1)

    async def go():
        stream = await open_stream(messages=[{"role": "user", "content": "hi"}])
        attempts = stream.attempts
        try:
            async for _ in stream:
                pass
        except Exception as exc:
            return attempts, exc
        return attempts, None

    attempts, error = run(go)

    assert error is not None
    assert failing.requests[0].headers["authorization"] == f"Bearer {secret}"  # it was really used
    text = " ".join([llm_logs.text, str(error), repr(error), *(attempt.describe() for attempt in attempts)])
    assert_absent(secret, text.encode(), "logs and errors")
    assert_absent(
        secret, str(Provider.objects.values_list("last_error", flat=True)[::1]).encode(), "last_error"
    )
