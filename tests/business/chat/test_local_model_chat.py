"""The whole chat path with the real embedded model: a user's websocket ``send`` → the consumer → the
generation → llama.cpp's server (started as ``make run`` starts it, registered as ``make run`` registers
it) → events on the socket → the stored answer and its ledger row. The model is a tiny base model: the
assertions are about structure, never about the text."""

import asyncio
from io import StringIO

from django.core.management import call_command

from business_project.chat.choices import MessageStatus, UsageOutcome
from business_project.chat.models import Message, UsageRecord
from business_project.llm.chain import invalidate_chain
from business_project.llm.models import ProviderModel
from tests.business.chat.wire import open_chat, seqs, text_of

ANSWER_TIMEOUT_SECONDS = 120  # the first answer of a cold model on a busy 2-core machine


def test_a_real_answer_streams_over_the_websocket_and_is_stored_once(
    asgi_server, local_llm_server, alice, alice_cookie
):
    call_command("ensure_default_provider", base_url=local_llm_server, stdout=StringIO())
    # A short answer keeps the test quick; the model's default parameters are the place for it.
    ProviderModel.objects.filter(provider__name="local").update(default_params={"max_tokens": 24})
    invalidate_chain()

    async def scenario():
        chat = await open_chat(asgi_server, cookie=alice_cookie)
        await chat.send({"type": "send", "content": "Hello! Name three colours."})
        start = await chat.event(timeout=ANSWER_TIMEOUT_SECONDS)
        events = [start, *await chat.until_end(start["message_id"], timeout=ANSWER_TIMEOUT_SECONDS)]
        await chat.close()
        return events

    events = asyncio.run(scenario())
    start, end = events[0], events[-1]
    deltas = [event for event in events if event["type"] == "delta"]
    assert start["type"] == "message_start"
    assert end["type"] == "message_end"
    assert [event["type"] for event in events].count("message_end") == 1
    assert seqs(events) == list(range(1, len(events) + 1))
    assert len(deltas) >= 1
    assert end["status"] == "complete"
    assert end["stop_reason"] in {"stop", "length"}
    assert end["provider"] == "local"
    assert end["usage"]["completion_tokens"] > 0

    answer = Message.objects.get(pk=start["message_id"])
    assert answer.status == MessageStatus.COMPLETE
    assert answer.content == text_of(events)
    assert answer.content.strip()
    ledger = UsageRecord.objects.get(message=answer)
    assert ledger.outcome == UsageOutcome.COMPLETE
    assert ledger.completion_tokens == end["usage"]["completion_tokens"]
