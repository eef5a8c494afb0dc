"""URL paths of the SLM REST API, relative to the SLM base URL. Both sides use these constants.

Paths with a parameter are functions that make the parameter safe to put in a path: a node id must be a
UUID (anything else raises ``ValueError`` before a request is made), and a service name is
percent-encoded whole (``/``, ``?``, ``#``, ``..`` cannot leave their path segment).
"""

from __future__ import annotations

from urllib.parse import quote
from uuid import UUID

API_PREFIX = "/api/v1"
META = f"{API_PREFIX}/meta"

# --- fleet ------------------------------------------------------------------------------------------
NODES = f"{API_PREFIX}/nodes"
ROLES = f"{API_PREFIX}/roles"
SERVICES = f"{API_PREFIX}/services"
EVENTS = f"{API_PREFIX}/events"
FLEET_SUMMARY = f"{API_PREFIX}/fleet/summary"
DISCOVERY = f"{API_PREFIX}/discovery"


def node(node_id: UUID | str) -> str:
    return f"{NODES}/{node_segment(node_id)}"


def node_events(node_id: UUID | str) -> str:
    return f"{node(node_id)}/events"


def node_heartbeat(node_id: UUID | str) -> str:
    return f"{node(node_id)}/heartbeat"


def discovery_service(service: str) -> str:
    """``/api/v1/discovery/{service}`` with the name percent-encoded as one path segment."""
    if not service:
        raise ValueError("a service name is required")
    return f"{DISCOVERY}/{quote(service, safe='')}"


def node_segment(node_id: UUID | str) -> str:
    """The canonical text of a node id; ``ValueError`` for anything that is not a UUID."""
    if isinstance(node_id, UUID):
        return str(node_id)
    try:
        return str(UUID(str(node_id)))
    except ValueError:
        raise ValueError(f"a node id is a UUID, not {str(node_id)[:60]!r}") from None


# --- deployments -------------------------------------------------------------------------------------
DEPLOYMENTS = f"{API_PREFIX}/deployments"


def deployment(deployment_id: UUID | str) -> str:
    return f"{DEPLOYMENTS}/{uuid_segment(deployment_id, 'deployment')}"


def deployment_events(deployment_id: UUID | str) -> str:
    return f"{deployment(deployment_id)}/events"


def deployment_cancel(deployment_id: UUID | str) -> str:
    return f"{deployment(deployment_id)}/cancel"


def deployment_retry(deployment_id: UUID | str) -> str:
    return f"{deployment(deployment_id)}/retry"


def uuid_segment(value: UUID | str, what: str) -> str:
    """The canonical text of an id; ``ValueError`` for anything that is not a UUID."""
    if isinstance(value, UUID):
        return str(value)
    try:
        return str(UUID(str(value)))
    except ValueError:
        raise ValueError(f"a {what} id is a UUID, not {str(value)[:60]!r}") from None
