"""The node lifecycle's work on the machine itself, done by playbook runs of the deployments app.

Two steps of a node's life change the machine, not only the database:

- after an **enrollment** the node must be made ready: the baseline (``common``) and the node agent
  (``slm_agent``) with the token the enrollment issued, so that it starts heartbeating without a separate
  deployment (``ansible/playbooks/enroll.yml``);
- before a **decommission** what AutoBot put on the machine must go: every AutoBot service, its
  definitions, the agent and its token, ``/opt/autobot`` and ``/etc/autobot`` (data directories only on
  request) and, last, the SLM's SSH key (``ansible/playbooks/decommission.yml``). The node becomes
  ``decommissioned`` only when that run succeeded.

Those runs are deployments (one node, an action kind ``enroll`` or ``decommission``): leased, fenced,
streamed to the run page, never overlapping another run on the node, retried after a killed worker. The
fleet app, however, sits below the deployments app: deployments import the fleet, and the
acyclic-siblings contract (pyproject.toml) forbids the reverse. So the fleet names what it needs here
(``NodePlaybooks``) and the deployments app plugs in its implementation at start-up
(``DeploymentsConfig.ready`` calls ``register``); when a run ends, the deployments app calls back into the
fleet's services (``services.node_decommission_complete``, ``services.node_event``).

Rejected alternatives: a Celery task sent by name (an operator's decommission could then neither be
refused nor name its run in the request itself, and enrollment would gain a second hop that can be lost
between the two), a Django signal (it would hide a required step of the workflow behind an optional
broadcast), and moving the decommission endpoint into the deployments app (it would split the node's API
and admin between two apps).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from slm_project.fleet.models import Node, NodeEvent


class NodePlaybooks(Protocol):
    def enrollment_succeeded(self, *, node: Node, enrollment_event: NodeEvent) -> Any:
        """Queue the run that makes the freshly enrolled ``node`` ready; returns its deployment."""

    def decommission_start(self, *, node: Node, actor: str, reason: str, purge_data: bool) -> Any:
        """Queue the cleanup run of ``node``'s decommission (or refuse with a ``Conflict``); returns its
        deployment. The implementation calls ``services.node_decommission_complete`` when it succeeds."""


_registered: list[NodePlaybooks] = []


def register(playbooks: NodePlaybooks) -> None:
    """Install the implementation (once per process; a second call replaces the first)."""
    _registered[:] = [playbooks]


def node_playbooks() -> NodePlaybooks | None:
    """The registered implementation; ``None`` when the deployments app is not installed."""
    return _registered[0] if _registered else None
