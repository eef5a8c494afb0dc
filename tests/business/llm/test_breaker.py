"""The circuit breaker: failures in a row open it for the cooldown, an open one is skipped without a
request, a trial after the cooldown closes it (success) or opens it again (failure)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from business_project.llm.events import NoProviderAvailable
from business_project.llm.models import Provider
from business_project.llm.services import open_stream, provider_record_failure, provider_record_success
from tests.business.llm.conftest import run

pytestmark = pytest.mark.django_db

MESSAGES = [{"role": "user", "content": "hi"}]


def stream_once():
    async def go():
        stream = await open_stream(messages=MESSAGES)
        events = [event async for event in stream]
        return stream, events

    return run(go)


def test_failures_in_a_row_open_the_breaker_for_the_cooldown(settings):
    settings.LLM_BREAKER_FAILURE_THRESHOLD = 3
    settings.LLM_BREAKER_COOLDOWN_SECONDS = 60
    provider = Provider.objects.create(name="p", base_url="http://127.0.0.1:9")

    for _ in range(2):
        provider_record_failure(provider_id=provider.id, error="HTTP 503")
    provider.refresh_from_db()
    assert (provider.consecutive_failures, provider.breaker_opened_until) == (2, None)

    before = timezone.now()
    provider_record_failure(provider_id=provider.id, error="HTTP 503")
    provider.refresh_from_db()
    assert provider.consecutive_failures == 3
    assert (
        before + timedelta(seconds=59)
        < provider.breaker_opened_until
        <= timezone.now() + timedelta(seconds=60)
    )
    assert provider.last_error == "HTTP 503"


def test_a_success_clears_the_count_and_closes_the_breaker():
    provider = Provider.objects.create(
        name="p",
        base_url="http://127.0.0.1:9",
        consecutive_failures=5,
        breaker_opened_until=timezone.now() + timedelta(seconds=30),
    )

    provider_record_success(provider_id=provider.id)

    provider.refresh_from_db()
    assert (provider.consecutive_failures, provider.breaker_opened_until) == (0, None)


def test_an_open_breaker_is_skipped_without_a_request(scripted_llm_factory, settings):
    settings.LLM_BREAKER_FAILURE_THRESHOLD = 2
    first, second = scripted_llm_factory(), scripted_llm_factory()
    a = first.register_provider(name="a", is_default=True)
    second.register_provider(name="b", priority=200)
    first.script(status=503)

    stream_once()
    stream_once()  # the second failure opens a's breaker
    a.refresh_from_db()
    assert a.breaker_opened_until is not None
    assert len(first.chat_requests()) == 2

    first.script(tokens=["back"])  # a has recovered, but its breaker is open until the cooldown ends
    stream, _ = stream_once()

    assert stream.provider.name == "b"
    assert stream.attempts[0].reason.startswith("circuit open until")
    assert stream.attempts[0].counted is False
    assert len(first.chat_requests()) == 2  # no request went to a


def test_after_the_cooldown_a_successful_trial_closes_the_breaker(scripted_llm):
    provider = scripted_llm.register_provider(name="a")
    Provider.objects.filter(pk=provider.pk).update(
        consecutive_failures=3, breaker_opened_until=timezone.now() - timedelta(seconds=1)
    )

    stream, _ = stream_once()

    assert stream.provider.name == "a"
    provider.refresh_from_db()
    assert (provider.consecutive_failures, provider.breaker_opened_until) == (0, None)


def test_after_the_cooldown_a_failed_trial_opens_the_breaker_again(scripted_llm, settings):
    settings.LLM_BREAKER_COOLDOWN_SECONDS = 45
    provider = scripted_llm.register_provider(name="a")
    Provider.objects.filter(pk=provider.pk).update(
        consecutive_failures=3, breaker_opened_until=timezone.now() - timedelta(seconds=1)
    )
    scripted_llm.script(status=502)

    with pytest.raises(NoProviderAvailable, match="HTTP 502"):
        stream_once()

    provider.refresh_from_db()
    assert provider.consecutive_failures == 4
    assert provider.breaker_opened_until > timezone.now() + timedelta(seconds=40)


def test_a_broken_stream_counts_on_the_breaker(scripted_llm, settings):
    settings.LLM_BREAKER_FAILURE_THRESHOLD = 1
    provider = scripted_llm.register_provider(name="a")
    scripted_llm.script(tokens=["a", "b", "c"], drop_after=1)

    from business_project.llm.events import StreamBroken

    with pytest.raises(StreamBroken):
        stream_once()

    provider.refresh_from_db()
    assert provider.consecutive_failures == 1
    assert provider.breaker_opened_until is not None
