"""The ops portal (Django admin): the fleet overview, the node list and detail, and the node actions.

Everything runs through the real services against the real database, logged in as a superuser; the
actions are posted like the pages post them (with CSRF enforced by a client that checks it).
"""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from shared_contracts.schemas.fleet import Heartbeat
from slm_project.fleet import services
from slm_project.fleet.choices import EventKind, NodeState, Trigger
from slm_project.fleet.models import Node, NodeEvent, NodeStateTransition
from slm_project.fleet.states import node_transition
from slm_project.security import vault
from slm_project.security.models import Credential

pytestmark = pytest.mark.django_db

ADMIN_ACTOR = "user:admin"
PENDING_KEY = (
    "ssh-ed25519",
    "AAAAC3NzaC1lZDI1NTE5AAAAIPendingKeyOfTheNodeForTests0000000000",
    "SHA256:presentedKey123",
)

# Paths through the state machine to put a node where a test needs it (real transitions, recorded).
PATHS = {
    NodeState.PENDING: [],
    NodeState.ENROLLING: [NodeState.ENROLLING],
    NodeState.ONLINE: [NodeState.ENROLLING, NodeState.ONLINE],
    NodeState.DEGRADED: [NodeState.ENROLLING, NodeState.ONLINE, NodeState.DEGRADED],
    NodeState.ERROR: [NodeState.ENROLLING, NodeState.ERROR],
    NodeState.DRAINING: [NodeState.ENROLLING, NodeState.ONLINE, NodeState.DRAINING],
    NodeState.MAINTENANCE: [NodeState.ENROLLING, NodeState.ONLINE, NodeState.DRAINING, NodeState.MAINTENANCE],
}


@pytest.fixture(autouse=True)
def master_keys(settings):
    """The vault seals bootstrap passwords with a key from settings, never the installation's key file."""
    settings.VAULT_MASTER_KEYS = vault.generate_master_key_entry("k1")
    settings.VAULT_MASTER_KEY_ID = ""


@pytest.fixture
def operator(admin_user) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    return client


def make_node(name: str, state: str = NodeState.PENDING, *, roles: list[str] | None = None, **fields) -> Node:
    node = services.node_create(
        name=name,
        address=fields.pop("address", "192.0.2.10"),
        roles=roles or [],
        actor="user:setup",
        **fields,
    )
    for step in PATHS[state]:
        reason = "test host unreachable" if step == NodeState.ERROR else ""
        node = node_transition(node=node, to_state=step, trigger=Trigger.SYSTEM, actor="setup", reason=reason)
    return Node.objects.get(pk=node.pk)


def send_heartbeats(node: Node, samples: list[tuple[float, float]]) -> None:
    """Heartbeats as the agent sends them (validated by the contract), one every 30 s up to now."""
    now = timezone.now()
    for index, (cpu, memory) in enumerate(samples):
        payload = Heartbeat.model_validate(
            {
                "sequence": index + 1,
                "sent_at": now - timedelta(seconds=30 * (len(samples) - index)),
                "agent_version": "1.4.2",
                "cpu_percent": cpu,
                "memory_percent": memory,
                "disk_percent": 50.0,
                "load_1m": 0.2,
                "load_5m": 0.2,
                "load_15m": 0.2,
                "uptime_seconds": 3600 + index * 30,
                "services": [{"name": "ollama", "state": "running", "port": 11434, "protocol": "tcp"}],
                "roles": [{"role": "llm", "running": True, "version": "0.5.1"}],
            }
        )
        services.heartbeat_ingest(node=Node.objects.get(pk=node.pk), heartbeat=payload.model_dump())


def csrf_post(client: Client, url: str, data: dict | None = None, *, follow: bool = True):
    """POST like a browser: GET the page first for its CSRF cookie, then send the token with the form."""
    client.get(url)
    token = client.cookies[django_settings.CSRF_COOKIE_NAME].value
    return client.post(url, {**(data or {}), "csrfmiddlewaretoken": token}, follow=follow)


def action_url(node: Node, action: str) -> str:
    return reverse(f"admin:fleet_node_{action}", args=[node.pk])


def page_messages(response) -> list[str]:
    return [str(message) for message in response.context["messages"]] if response.context else []


def transitions(node: Node) -> list[tuple[str, str, str]]:
    return list(
        NodeStateTransition.objects.filter(node=node)
        .order_by("created_at", "id")
        .values_list("from_state", "to_state", "actor")
    )


# --------------------------------------------------------------------------------------------------
# Fleet overview


def test_overview_shows_counts_attention_sparklines_and_the_host_key_banner(operator):
    web = make_node("web-1", NodeState.ONLINE, roles=["backend"])
    send_heartbeats(web, [(10.0, 40.0), (20.0, 42.0), (35.5, 44.0)])
    broken = make_node("gpu-1", NodeState.ERROR, roles=["llm"])
    make_node("new-1")
    services.node_host_key_mismatch(
        node=web, presented_fingerprint="SHA256:someoneElsesKey", actor="enrollment"
    )

    response = operator.get(reverse("admin:index"))

    assert response.status_code == 200
    content = response.content.decode()
    counts = {item["state"]: item["count"] for item in response.context["states"]}
    assert counts[NodeState.ONLINE] == 1
    assert counts[NodeState.ERROR] == 1
    assert counts[NodeState.PENDING] == 1
    assert counts[NodeState.DECOMMISSIONED] == 0
    assert re.search(r'data-state="online"[^>]*>\s*<span[^>]*data-count>1<', content)

    attention = content[content.index('id="fleet-attention"') :]
    attention = attention[: attention.index("</table>")]
    assert reverse("admin:fleet_node_change", args=[broken.pk]) in attention
    assert "test host unreachable" in attention
    assert reverse("admin:fleet_node_change", args=[web.pk]) in attention
    assert "new-1" not in attention

    banner = content[content.index('id="host-key-alert"') :]
    assert "SHA256:someoneElsesKey" in banner[: banner.index("</section>")]

    series = json.loads(
        re.search(r'<script id="fleet-sparklines" type="application/json">(.*?)</script>', content).group(1)
    )
    assert series[str(web.pk)]["cpu"] == [10.0, 20.0, 35.5]
    assert series[str(web.pk)]["mem"] == [40.0, 42.0, 44.0]
    assert f'data-series="{web.pk}"' in content

    assert "node.created" in content[content.index('id="fleet-recent-events"') :]


def test_acknowledging_the_host_key_event_takes_the_banner_down(operator):
    node = make_node("web-1", NodeState.ONLINE)
    event = services.node_host_key_mismatch(
        node=node, presented_fingerprint="SHA256:other", actor="enrollment"
    )

    response = csrf_post(
        operator,
        reverse("admin:fleet_nodeevent_acknowledge", args=[event.pk]),
        {"next": reverse("admin:index")},
    )

    assert response.status_code == 200
    assert 'id="host-key-alert"' not in response.content.decode()
    event.refresh_from_db()
    assert event.acknowledged_by == ADMIN_ACTOR
    assert event.acknowledged_at is not None


def test_the_overview_takes_the_same_number_of_queries_for_3_and_30_nodes(operator):
    def overview_queries(count: int, start: int) -> int:
        for index in range(start, start + count):
            node = make_node(f"n-{index}", NodeState.ONLINE if index % 3 else NodeState.ERROR, roles=["llm"])
            send_heartbeats(node, [(5.0, 10.0), (6.0, 11.0)])
            services.node_host_key_mismatch(node=node, presented_fingerprint="SHA256:x", actor="enrollment")
        with CaptureQueriesContext(connection) as queries:
            assert operator.get(reverse("admin:index")).status_code == 200
        return len(queries)

    small = overview_queries(3, 0)
    large = overview_queries(27, 100)
    assert small == large


# --------------------------------------------------------------------------------------------------
# Node list


def test_the_node_list_shows_badges_roles_and_heartbeat_age(operator):
    node = make_node("web-1", NodeState.ONLINE, roles=["backend", "redis"])
    send_heartbeats(node, [(1.0, 2.0)])
    make_node("old-1", NodeState.ERROR)

    response = operator.get(reverse("admin:fleet_node_changelist"))

    content = response.content.decode()
    assert response.status_code == 200
    assert "bg-green-100" in content  # online
    assert "bg-red-100" in content  # error
    assert "backend" in content
    assert "redis" in content
    assert "s ago" in content
    assert "1.4.2" in content


def test_the_node_list_takes_the_same_number_of_queries_for_3_and_30_nodes(operator):
    def list_queries(count: int, start: int) -> int:
        for index in range(start, start + count):
            make_node(f"n-{index}", NodeState.ONLINE, roles=["llm", "backend"])
        with CaptureQueriesContext(connection) as queries:
            response = operator.get(reverse("admin:fleet_node_changelist"))
        assert response.status_code == 200
        return len(queries)

    small = list_queries(3, 0)
    large = list_queries(27, 100)
    assert small == large


def test_the_node_list_filters_by_state_and_role_and_searches(operator):
    make_node("web-1", NodeState.ONLINE, roles=["backend"], address="10.0.0.5")
    make_node("gpu-1", NodeState.ERROR, roles=["llm"], address="10.0.0.9")
    url = reverse("admin:fleet_node_changelist")

    def names(query: str) -> set[str]:
        response = operator.get(url + query)
        assert response.status_code == 200
        return {node.name for node in response.context["cl"].result_list}

    assert names("?state__exact=error") == {"gpu-1"}
    assert names("?role=backend") == {"web-1"}
    assert names("?q=10.0.0.9") == {"gpu-1"}
    assert names("?q=web") == {"web-1"}


# --------------------------------------------------------------------------------------------------
# Node detail


def test_the_change_page_never_shows_the_agent_token_its_hash_or_a_bootstrap_password(
    operator, django_capture_on_commit_callbacks
):
    node = make_node("web-1", roles=["llm"])
    token = services.node_agent_token_issue(node=node, actor="user:setup")
    password = "Bootstrap-Secret-4711"
    with django_capture_on_commit_callbacks():
        response = csrf_post(
            operator,
            action_url(node, "enroll"),
            {"password": password, "host_key_fingerprint": "SHA256:suppliedUpFront"},
        )
    assert response.status_code == 200
    node.refresh_from_db()
    assert node.bootstrap_credential_id is not None  # the password is sealed in the vault...

    content = operator.get(reverse("admin:fleet_node_change", args=[node.pk])).content.decode()

    assert token not in content
    assert node.agent_token_hash
    assert node.agent_token_hash not in content
    assert password not in content  # ...and never shown
    for field in ("agent_token_hash", "bootstrap_credential", "agent_token_credential", "services_digest"):
        assert f'name="{field}"' not in content
    assert Credential.objects.get(pk=node.bootstrap_credential_id).name not in content


def test_the_change_page_shows_facts_roles_services_host_keys_timeline_and_transitions(operator):
    node = make_node("web-1", NodeState.ONLINE, roles=["llm"])
    send_heartbeats(node, [(30.0, 60.0)])
    services.node_host_key_capture(
        node=node,
        key_type=PENDING_KEY[0],
        key_base64=PENDING_KEY[1],
        fingerprint=PENDING_KEY[2],
        actor="user:x",
    )

    response = operator.get(reverse("admin:fleet_node_change", args=[node.pk]))

    content = response.content.decode()
    assert response.status_code == 200
    assert PENDING_KEY[2] in content  # awaiting acceptance
    assert "ollama" in content  # a service the agent reported
    assert "0.5.1" in content  # the role's actual version
    timeline = content[content.index('id="node-timeline"') :]
    kinds = re.findall(r'<span class="fleet-mono">([a-z_.]+)</span>', timeline)
    assert kinds[0] == EventKind.HOST_KEY_CAPTURED  # most recent first
    assert kinds[-1] == EventKind.CREATED
    assert "enrolling" in content[content.index('id="node-transitions"') :]
    assert json.loads(
        re.search(r'<script id="node-chart" type="application/json">(.*?)</script>', content).group(1)
    )[str(node.pk)]["cpu"] == [30.0]
    # The actions the state allows, and not the others.
    assert action_url(node, "drain") in content
    assert action_url(node, "accept_host_key") in content
    assert action_url(node, "enroll") not in content


def test_the_connection_fields_cannot_change_once_a_key_is_pinned(operator):
    node = make_node("web-1")
    services.node_host_key_capture(
        node=node,
        key_type=PENDING_KEY[0],
        key_base64=PENDING_KEY[1],
        fingerprint=PENDING_KEY[2],
        actor="user:x",
    )
    services.node_host_key_accept(node=node, fingerprint=PENDING_KEY[2], actor="user:x")

    response = csrf_post(
        operator, reverse("admin:fleet_node_change", args=[node.pk]), _change_form(address="192.0.2.99")
    )

    assert "pinned host key" in " ".join(page_messages(response))
    node.refresh_from_db()
    assert node.address == "192.0.2.10"


def test_editing_a_node_goes_through_the_service(operator):
    node = make_node("web-1")

    response = csrf_post(
        operator,
        reverse("admin:fleet_node_change", args=[node.pk]),
        _change_form(address="192.0.2.20", roles=["llm", "redis"], labels='{"rack": "r1"}'),
    )

    assert response.status_code == 200
    assert not [m for m in page_messages(response) if "error" in m.lower()]
    node.refresh_from_db()
    assert node.address == "192.0.2.20"
    assert node.labels == {"rack": "r1"}
    assert sorted(node.node_roles.values_list("role__name", flat=True)) == ["llm", "redis"]


def test_registering_a_node_calls_node_create(operator):
    response = csrf_post(
        operator,
        reverse("admin:fleet_node_add"),
        {**_change_form(address="192.0.2.30", roles=["backend"]), "name": "api-7"},
    )

    assert response.status_code == 200
    node = Node.objects.get(name="api-7")
    assert node.state == NodeState.PENDING
    assert list(node.node_roles.values_list("role__name", flat=True)) == ["backend"]
    assert NodeEvent.objects.get(node=node, kind=EventKind.CREATED).actor == ADMIN_ACTOR


def test_a_bad_address_is_a_form_error(operator):
    node = make_node("web-1")

    response = csrf_post(
        operator, reverse("admin:fleet_node_change", args=[node.pk]), _change_form(address="not an address!")
    )

    assert "Enter an IP address or a DNS name." in response.content.decode()
    node.refresh_from_db()
    assert node.address == "192.0.2.10"


def _change_form(*, address: str, roles: list[str] | None = None, labels: str = "{}") -> dict:
    return {
        "address": address,
        "ssh_port": "22",
        "ssh_user": "autobot",
        "labels": labels,
        "roles": roles or [],
        # The read-only inlines still post their (empty) management forms.
        "node_roles-TOTAL_FORMS": "0",
        "node_roles-INITIAL_FORMS": "0",
        "services-TOTAL_FORMS": "0",
        "services-INITIAL_FORMS": "0",
        "_save": "Save",
    }


def test_a_decommissioned_node_is_view_only(operator):
    node = make_node("old-1", NodeState.ONLINE, roles=["backend"])
    services.node_decommission(node=node, confirm_name="old-1", actor="user:setup")

    content = operator.get(reverse("admin:fleet_node_change", args=[node.pk])).content.decode()

    assert 'name="_save"' not in content
    assert 'name="address"' not in content
    for action in ("drain", "resume", "enroll", "decommission", "test_connection"):
        assert action_url(node, action) not in content
    assert "backend" in content


def test_an_unknown_node_id_redirects_instead_of_failing(operator):
    for url in (
        reverse("admin:fleet_node_change", args=["not-a-uuid"]),
        reverse("admin:fleet_node_drain", args=["not-a-uuid"]),
        reverse("admin:fleet_node_change", args=["2b1e1f4e-0000-4000-8000-000000000000"]),
    ):
        assert operator.get(url).status_code == 302


# --------------------------------------------------------------------------------------------------
# Actions


def test_drain_resume_and_decommission_are_recorded_with_the_admin_as_actor(operator):
    node = make_node("web-1", NodeState.ONLINE)
    before = len(transitions(node))

    response = csrf_post(operator, action_url(node, "drain"), {"reason": "kernel update"})
    assert response.status_code == 200
    node.refresh_from_db()
    assert node.state == NodeState.DRAINING
    assert transitions(node)[-1] == (NodeState.ONLINE, NodeState.DRAINING, ADMIN_ACTOR)
    assert NodeStateTransition.objects.filter(node=node).first().reason == "kernel update"
    assert any("draining" in message for message in page_messages(response))

    csrf_post(operator, action_url(node, "resume"))
    node.refresh_from_db()
    assert node.state == NodeState.ONLINE
    assert transitions(node)[before + 1 :] == [
        (NodeState.DRAINING, NodeState.MAINTENANCE, ADMIN_ACTOR),
        (NodeState.MAINTENANCE, NodeState.RECOVERING, ADMIN_ACTOR),
        (NodeState.RECOVERING, NodeState.ONLINE, ADMIN_ACTOR),
    ]

    csrf_post(operator, action_url(node, "decommission"), {"confirm_name": "web-1", "reason": "retired"})
    node.refresh_from_db()
    assert node.state == NodeState.DECOMMISSIONED
    assert transitions(node)[-1] == (NodeState.ONLINE, NodeState.DECOMMISSIONED, ADMIN_ACTOR)


def test_decommission_with_the_wrong_name_changes_nothing(operator):
    node = make_node("web-1", NodeState.ONLINE)
    before = transitions(node)

    response = csrf_post(operator, action_url(node, "decommission"), {"confirm_name": "web-2"})

    assert response.status_code == 200
    assert "Type the node's name (web-1) to confirm." in " ".join(page_messages(response))
    node.refresh_from_db()
    assert node.state == NodeState.ONLINE
    assert transitions(node) == before


def test_an_invalid_transition_shows_the_allowed_targets(operator):
    node = make_node("new-1")

    response = csrf_post(operator, action_url(node, "drain"))

    assert response.status_code == 200
    errors = " ".join(page_messages(response))
    assert "cannot go from pending to draining" in errors
    assert "allowed: decommissioned, enrolling" in errors
    assert "allowed: decommissioned, enrolling" in response.content.decode()
    node.refresh_from_db()
    assert node.state == NodeState.PENDING


def test_the_enroll_form_never_renders_a_password_back(operator, django_capture_on_commit_callbacks):
    node = make_node("web-1", NodeState.ONLINE)
    url = action_url(node, "enroll")
    form = operator.get(url).content.decode()
    password_input = re.search(r'<input[^>]*name="password"[^>]*>', form).group(0)
    assert 'type="password"' in password_input
    assert "value=" not in password_input

    # Refused (an online node is not enrolled again): the page comes back, without the password.
    response = csrf_post(operator, url, {"password": "Typed-Secret-123", "host_key_fingerprint": "SHA256:x"})
    assert "only pending or failed nodes can be enrolled" in " ".join(page_messages(response))
    assert "Typed-Secret-123" not in response.content.decode()
    node.refresh_from_db()
    assert node.state == NodeState.ONLINE

    # Accepted: the node moves to enrolling and the task is queued when the transaction commits.
    pending = make_node("web-2")
    with django_capture_on_commit_callbacks() as callbacks:
        response = csrf_post(
            operator,
            action_url(pending, "enroll"),
            {"password": "Typed-Secret-123", "host_key_fingerprint": "SHA256:suppliedUpFront"},
        )
    assert "Typed-Secret-123" not in response.content.decode()
    pending.refresh_from_db()
    assert pending.state == NodeState.ENROLLING
    assert pending.supplied_host_key_fingerprint == "SHA256:suppliedUpFront"
    assert transitions(pending)[-1] == (NodeState.PENDING, NodeState.ENROLLING, ADMIN_ACTOR)
    assert len(callbacks) == 1


def test_test_connection_queues_a_task(operator, django_capture_on_commit_callbacks):
    node = make_node("web-1")

    with django_capture_on_commit_callbacks() as callbacks:
        response = csrf_post(operator, action_url(node, "test_connection"))

    assert response.status_code == 200
    assert any("Connection test of web-1 queued" in message for message in page_messages(response))
    assert len(callbacks) == 1
    node.refresh_from_db()
    assert node.state == NodeState.PENDING


def test_accepting_a_host_key_with_the_wrong_fingerprint_changes_nothing(operator):
    node = make_node("web-1")
    services.node_host_key_capture(
        node=node,
        key_type=PENDING_KEY[0],
        key_base64=PENDING_KEY[1],
        fingerprint=PENDING_KEY[2],
        actor="user:x",
    )
    url = action_url(node, "accept_host_key")
    assert PENDING_KEY[2] in operator.get(url).content.decode()  # the page shows what to compare

    response = csrf_post(operator, url, {"fingerprint": "SHA256:notTheOne"})

    assert "not the fingerprint of the key the node presented" in " ".join(page_messages(response))
    node.refresh_from_db()
    assert node.host_key == ""
    assert node.pending_host_key_fingerprint == PENDING_KEY[2]

    csrf_post(operator, url, {"fingerprint": PENDING_KEY[2]})
    node.refresh_from_db()
    assert node.host_key_fingerprint == PENDING_KEY[2]
    assert NodeEvent.objects.get(node=node, kind=EventKind.HOST_KEY_ACCEPTED).actor == ADMIN_ACTOR


def test_actions_refuse_get_requests_to_change_anything(operator):
    node = make_node("web-1", NodeState.ONLINE)

    response = operator.get(action_url(node, "drain"))

    assert response.status_code == 200
    assert 'method="post"' in response.content.decode()
    node.refresh_from_db()
    assert node.state == NodeState.ONLINE


def test_posting_an_action_without_the_csrf_token_is_refused(operator):
    node = make_node("web-1", NodeState.ONLINE)

    response = operator.post(action_url(node, "drain"), {"reason": "no token"})

    assert response.status_code == 403
    node.refresh_from_db()
    assert node.state == NodeState.ONLINE


def test_an_operator_who_may_only_view_cannot_run_actions(django_user_model):
    viewer = django_user_model.objects.create_user(username="viewer", password="a-long-enough-password")
    viewer.is_staff = True
    viewer.save()
    viewer.user_permissions.add(Permission.objects.get(codename="view_node"))
    client = Client()
    client.force_login(viewer)
    node = make_node("web-1", NodeState.ONLINE)

    page = client.get(reverse("admin:fleet_node_change", args=[node.pk]))
    assert page.status_code == 200
    assert action_url(node, "drain") not in page.content.decode()
    assert client.post(action_url(node, "drain")).status_code == 403
    node.refresh_from_db()
    assert node.state == NodeState.ONLINE


def test_bulk_drain_reports_each_refusal_and_drains_the_rest(operator):
    online = make_node("web-1", NodeState.ONLINE)
    pending = make_node("new-1")

    response = csrf_post(
        operator,
        reverse("admin:fleet_node_changelist"),
        {"action": "drain_selected", "_selected_action": [str(online.pk), str(pending.pk)], "index": "0"},
    )

    messages = " ".join(page_messages(response))
    assert "web-1: draining." in messages
    assert "new-1 cannot go from pending to draining" in messages
    online.refresh_from_db()
    pending.refresh_from_db()
    assert (online.state, pending.state) == (NodeState.DRAINING, NodeState.PENDING)
    assert transitions(online)[-1][2] == ADMIN_ACTOR


# --------------------------------------------------------------------------------------------------
# Events and roles


def test_events_filter_by_attention_and_bulk_acknowledge(operator):
    node = make_node("gpu-1", NodeState.ERROR)
    open_events = list(NodeEvent.objects.filter(node=node, needs_attention=True))
    assert open_events  # entering error needs attention
    url = reverse("admin:fleet_nodeevent_changelist")

    listed = operator.get(url + "?attention=open").context["cl"].result_list
    assert {event.pk for event in listed} == {event.pk for event in open_events}

    csrf_post(
        operator,
        url,
        {
            "action": "acknowledge_selected",
            "_selected_action": [str(e.pk) for e in open_events],
            "index": "0",
        },
    )

    assert not NodeEvent.objects.filter(node=node, needs_attention=True, acknowledged_at=None).exists()
    assert set(
        NodeEvent.objects.filter(pk__in=[e.pk for e in open_events]).values_list("acknowledged_by", flat=True)
    ) == {ADMIN_ACTOR}


def test_the_node_page_links_to_that_node_s_events(operator):
    node = make_node("web-1", NodeState.ONLINE)
    make_node("web-2", NodeState.ONLINE)
    content = operator.get(reverse("admin:fleet_node_change", args=[node.pk])).content.decode()
    events_url = re.search(r'href="([^"]*nodeevent/\?node__id__exact=[^"]+)"', content).group(1)

    listed = operator.get(events_url.replace("&amp;", "&")).context["cl"].result_list

    assert {event.node_id for event in listed} == {node.pk}
    assert len(listed) == NodeEvent.objects.filter(node=node).count()


def test_roles_are_read_only(operator):
    response = operator.get(reverse("admin:fleet_role_changelist"))

    assert response.status_code == 200
    assert "ai-stack" in response.content.decode()
    assert operator.get(reverse("admin:fleet_role_add")).status_code == 403
