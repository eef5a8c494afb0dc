"""The chat REST API: conversations, messages, export, quota; the SSE endpoint over a real server."""

import json
import time
import uuid

import pytest
import requests
from django.db import connection
from django.test.utils import CaptureQueriesContext

from business_project.chat.choices import MessageStatus
from business_project.chat.models import Conversation, Message, UsageRecord
from shared_contracts.schemas.common import ErrorBody
from tests.business.chat.factories import make_token, make_user
from tests.business.chat.wire import check_event

pytestmark = pytest.mark.django_db


def post(client, path, body=None, **extra):
    return client.post(path, json.dumps(body or {}), content_type="application/json", **extra)


def patch(client, path, body, **extra):
    return client.patch(path, json.dumps(body), content_type="application/json", **extra)


def conversation_with_messages(owner, count=2, title="Chat"):
    conversation = Conversation.objects.create(owner=owner, title=title)
    for position in range(count):
        role = "user" if position % 2 == 0 else "assistant"
        Message.objects.create(
            conversation=conversation, position=position, role=role, content=f"m{position}"
        )
    return conversation


@pytest.fixture
def user(db):
    return make_user("carol")


@pytest.fixture
def api(client, user):
    client.force_login(user)
    return client


# --- access ---------------------------------------------------------------------------------------


def test_anonymous_requests_are_refused(client):
    response = client.get("/api/conversations/")
    assert response.status_code in (401, 403)
    assert ErrorBody.model_validate(response.json()).code == "not_authenticated"


def test_a_read_only_token_reads_but_does_not_write(client, user):
    token = make_token(user, "chat:read")
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    assert client.get("/api/conversations/", **headers).status_code == 200
    response = post(client, "/api/conversations/", {"title": "x"}, **headers)
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"


def test_a_token_never_holds_more_than_its_owner_s_role(client):
    viewer = make_user("vic", role="viewer")
    token = make_token(viewer, "chat:read", "chat:write")
    response = post(client, "/api/conversations/", {"title": "x"}, HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 403


def test_a_bad_token_is_401_even_with_a_session(api):
    response = api.get("/api/conversations/", HTTP_AUTHORIZATION="Bearer abt_0123456789abcdef_nope")
    assert response.status_code == 401
    assert response.json()["code"] == "authentication_failed"
    assert "abt_0123456789abcdef_nope" not in response.content.decode()


# --- conversations --------------------------------------------------------------------------------


def test_conversation_crud(api, user):
    created = post(api, "/api/conversations/", {"title": " Plans "})
    assert created.status_code == 201
    conversation_id = created.json()["id"]
    assert created.json()["title"] == "Plans"
    assert api.get(f"/api/conversations/{conversation_id}/").json()["title"] == "Plans"
    renamed = patch(api, f"/api/conversations/{conversation_id}/", {"title": "Holiday plans", "model": "m1"})
    assert (renamed.json()["title"], renamed.json()["model"]) == ("Holiday plans", "m1")
    assert api.delete(f"/api/conversations/{conversation_id}/").status_code == 204
    assert api.get(f"/api/conversations/{conversation_id}/").status_code == 404
    assert not Conversation.objects.exists()


def test_delete_keeps_the_usage_ledger(api, user):
    conversation = conversation_with_messages(user)
    UsageRecord.objects.create(user=user, conversation=conversation, prompt_tokens=3, outcome="complete")
    api.delete(f"/api/conversations/{conversation.pk}/")
    record = UsageRecord.objects.get()
    assert (record.conversation, record.prompt_tokens) == (None, 3)


def test_the_list_is_paginated_newest_first_with_a_bounded_number_of_queries(api, user):
    for number in range(5):
        conversation_with_messages(user, title=f"c{number}")
    with CaptureQueriesContext(connection) as few:
        first = api.get("/api/conversations/", {"page_size": 2}).json()
    for number in range(20):
        conversation_with_messages(user, title=f"more{number}")
    with CaptureQueriesContext(connection) as many:
        api.get("/api/conversations/", {"page_size": 50})
    assert first["count"] == 5
    assert [c["title"] for c in first["results"]] == ["c4", "c3"]
    assert first["next"]
    assert len(many) == len(few)


def test_messages_are_listed_in_order_with_a_bounded_number_of_queries(api, user):
    conversation = conversation_with_messages(user, count=4)
    url = f"/api/conversations/{conversation.pk}/messages/"
    with CaptureQueriesContext(connection) as few:
        page = api.get(url).json()
    conversation_with_messages(user, count=1)
    for position in range(4, 40):
        Message.objects.create(conversation=conversation, position=position, role="user", content="x")
    with CaptureQueriesContext(connection) as many:
        api.get(url, {"page_size": 100})
    assert [m["content"] for m in page["results"]] == ["m0", "m1", "m2", "m3"]
    assert page["results"][1]["role"] == "assistant"
    assert len(many) == len(few)


def test_superseded_answers_are_listed_only_on_request(api, user):
    conversation = conversation_with_messages(user, count=2)
    Message.objects.filter(position=1).update(superseded_at="2026-01-01T00:00:00Z")
    url = f"/api/conversations/{conversation.pk}/messages/"
    assert [m["position"] for m in api.get(url).json()["results"]] == [0]
    assert [m["position"] for m in api.get(url, {"include_superseded": "true"}).json()["results"]] == [0, 1]


def test_user_b_never_reads_user_a_s_conversations(api, user):
    other = make_user("dave")
    theirs = conversation_with_messages(other, title="private")
    message = theirs.messages.first()
    base = f"/api/conversations/{theirs.pk}/"
    assert api.get("/api/conversations/").json()["count"] == 0
    for path in (
        base,
        base + "messages/",
        base + "export.json",
        base + "export.md",
        base + f"messages/{message.pk}/",
    ):
        response = api.get(path)
        assert response.status_code == 404, path
        assert response.json()["code"] == "not_found"
    assert patch(api, base, {"title": "mine"}).status_code == 404
    assert api.delete(base).status_code == 404
    assert post(api, base + "messages/", {"content": "hi"}).status_code == 404
    assert post(api, base + f"messages/{message.pk}/stop/").status_code == 404
    assert post(api, base + f"messages/{message.pk}/regenerate/").status_code == 404
    assert api.get(base + f"messages/{message.pk}/events/").status_code == 404
    assert Conversation.objects.get(pk=theirs.pk).title == "private"
    assert theirs.messages.count() == 2


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"content": ""}, 400, "message_empty"),
        ({"content": "  \n "}, 400, "message_empty"),
        ({"content": "x" * 51}, 413, "message_too_long"),
        ({}, 400, "validation_error"),
        ({"content": ["a"]}, 400, "validation_error"),
    ],
)
def test_bad_messages_are_refused_and_nothing_is_written(api, user, settings, body, status, code):
    settings.CHAT_MESSAGE_MAX_CHARS = 50
    conversation = Conversation.objects.create(owner=user)
    response = post(api, f"/api/conversations/{conversation.pk}/messages/", body)
    assert response.status_code == status
    assert response.json()["code"] == code
    assert not Message.objects.exists()
    assert not UsageRecord.objects.exists()


def test_over_the_quota_is_429_with_the_reset_time(api, user, settings):
    settings.CHAT_QUOTAS = {
        **settings.CHAT_QUOTAS,
        "member": {"requests_per_minute": 1, "tokens_per_day": None},
    }
    conversation = Conversation.objects.create(owner=user)
    UsageRecord.objects.create(user=user, outcome="complete")
    response = post(api, f"/api/conversations/{conversation.pk}/messages/", {"content": "hi"})
    assert response.status_code == 429
    assert response.json()["code"] == "quota_exceeded"
    assert 1 <= int(response["Retry-After"]) <= 60
    assert response["X-Quota-Reset"].endswith("Z")
    assert response["X-Quota-Reset"][:16] in response.json()["message"]
    assert not Message.objects.exists()


def test_quota_status(api, user, settings):
    settings.CHAT_QUOTAS = {
        **settings.CHAT_QUOTAS,
        "member": {"requests_per_minute": 5, "tokens_per_day": 100},
    }
    UsageRecord.objects.create(user=user, prompt_tokens=10, completion_tokens=5, outcome="complete")
    body = api.get("/api/chat/quota/").json()
    assert (body["requests_per_minute"], body["tokens_per_day"]) == (5, 100)
    assert (body["requests_last_minute"], body["tokens_today"]) == (1, 15)


def test_a_per_user_quota_overrides_the_role(user, settings):
    from business_project.chat.models import UserQuota
    from business_project.chat.quotas import quota_limits_of

    settings.CHAT_QUOTAS = {
        **settings.CHAT_QUOTAS,
        "member": {"requests_per_minute": 5, "tokens_per_day": 100},
    }
    UserQuota.objects.create(user=user, tokens_per_day=1000)
    limits = quota_limits_of(user=user)
    assert (limits.requests_per_minute, limits.tokens_per_day) == (5, 1000)


# --- export ---------------------------------------------------------------------------------------


def test_export_as_json_and_markdown(api, user):
    conversation = conversation_with_messages(user, count=2, title="Fox facts")
    Message.objects.filter(position=1).update(content="```python\nprint('fox')\n```", model="m1")
    as_json = api.get(f"/api/conversations/{conversation.pk}/export.json")
    assert as_json["Content-Disposition"] == 'attachment; filename="fox-facts.json"'
    body = json.loads(as_json.content)
    assert body["conversation"]["title"] == "Fox facts"
    assert [m["role"] for m in body["messages"]] == ["user", "assistant"]
    as_markdown = api.get(f"/api/conversations/{conversation.pk}/export.md")
    assert as_markdown["Content-Type"].startswith("text/markdown")
    text = as_markdown.content.decode()
    assert text.startswith("# Fox facts\n")
    assert "## You\n\nm0" in text
    assert "## Assistant (m1)\n\n```python\nprint('fox')\n```" in text


# --- sending, stopping and SSE over a real server ---------------------------------------------------


def sse_events(response):
    """Parse ``text/event-stream`` into (id, event, data) tuples, checking every data against the schema."""
    frames, current = [], {}
    for line in response.iter_lines(decode_unicode=True):
        if line == "":
            if "data" in current:
                data = check_event(json.loads(current["data"]))
                frames.append((current.get("id"), current.get("event"), data))
                if data["type"] == "message_end":
                    return frames
            current = {}
            continue
        name, _, value = line.partition(":")
        current[name] = value.lstrip(" ")
    return frames


@pytest.fixture
def live(asgi_server, provider, alice):
    token = make_token(alice, "chat:read", "chat:write")
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    conversation = Conversation.objects.create(owner=alice)
    return asgi_server, session, conversation


def test_send_over_rest_and_read_the_events_as_sse(live, provider):
    server, session, conversation = live
    provider.script(tokens=["S", "S", "E"], token_delay=0.02)
    sent = session.post(
        f"{server.http_url}/api/conversations/{conversation.pk}/messages/", json={"content": "hi"}
    )
    assert sent.status_code == 202, sent.text
    body = sent.json()
    with session.get(server.http_url + body["events_url"], stream=True, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Cache-Control"] == "no-cache"
        frames = sse_events(response)
    assert [event for _, event, _ in frames] == ["message_start", "delta", "delta", "delta", "message_end"]
    assert [int(seq) for seq, _, _ in frames] == [1, 2, 3, 4, 5]
    assert frames[0][2]["message_id"] == body["message_id"]
    assert frames[-1][2]["status"] == "complete"
    assert Message.objects.get(pk=body["message_id"]).content == "SSE"


def test_sse_resumes_after_last_event_id(live, provider):
    server, session, conversation = live
    sent = session.post(
        f"{server.http_url}/api/conversations/{conversation.pk}/messages/", json={"content": "hi"}
    )
    url = server.http_url + sent.json()["events_url"]
    with session.get(url, stream=True, timeout=10) as response:
        everything = sse_events(response)
    with session.get(url, stream=True, timeout=10, headers={"Last-Event-ID": "3"}) as response:
        tail = sse_events(response)
    with session.get(url, params={"after_seq": "2"}, stream=True, timeout=10) as response:
        longer = sse_events(response)
    assert tail == everything[3:]
    assert longer == everything[2:]
    bad = session.get(url, params={"after_seq": "x"}, timeout=10)
    assert bad.status_code == 400


def test_stop_over_rest(live, provider):
    server, session, conversation = live
    provider.script(tokens=[f" {i}" for i in range(100)], token_delay=0.05)
    sent = session.post(
        f"{server.http_url}/api/conversations/{conversation.pk}/messages/", json={"content": "go"}
    ).json()
    base = f"{server.http_url}/api/conversations/{conversation.pk}/messages/{sent['message_id']}/"
    time.sleep(0.3)
    stopped = session.post(base + "stop/")
    assert stopped.status_code == 202
    with session.get(base + "events/", stream=True, timeout=10) as response:
        frames = sse_events(response)
    assert frames[-1][2]["status"] == "stopped"
    provider.wait_for_disconnect(timeout=2)
    message = Message.objects.get(pk=sent["message_id"])
    assert message.status == MessageStatus.STOPPED
    assert message.content == "".join(data["text"] for _, event, data in frames if event == "delta")


def test_regenerate_over_rest(live, provider):
    server, session, conversation = live
    base = f"{server.http_url}/api/conversations/{conversation.pk}/messages/"
    first = session.post(base, json={"content": "go"}).json()
    with session.get(server.http_url + first["events_url"], stream=True, timeout=10) as response:
        sse_events(response)
    again = session.post(base + f"{first['message_id']}/regenerate/")
    assert again.status_code == 202
    assert again.json()["regenerates_id"] == first["message_id"]
    with session.get(server.http_url + again.json()["events_url"], stream=True, timeout=10) as response:
        frames = sse_events(response)
    assert frames[0][2]["regenerates_id"] == first["message_id"]
    listed = session.get(base).json()["results"]
    assert [m["id"] for m in listed] == [first["parent_id"], again.json()["message_id"]]


def test_an_unknown_message_has_no_events(live):
    server, session, conversation = live
    response = session.get(
        f"{server.http_url}/api/conversations/{conversation.pk}/messages/{uuid.uuid4()}/events/",
        headers={"Accept": "text/event-stream"},
        timeout=10,
    )
    assert response.status_code == 404
    assert response.text.startswith("event: error\ndata: ")
    assert json.loads(response.text.split("data: ", 1)[1])["code"] == "not_found"
