"""The one canonical registry of VM roles: their services, ports, health probe, dependencies and the
Ansible role that deploys them. The ``Role`` table mirrors it (``role_registry_sync`` after every
migrate), so nodes can reference roles by foreign key while the definition stays reviewed code."""

from __future__ import annotations

from dataclasses import dataclass, field

from slm_project.fleet.choices import RoleName


@dataclass(frozen=True)
class RoleDefinition:
    name: str
    description: str
    services: tuple[str, ...]
    ports: tuple[int, ...]
    health_probe: dict[str, object]
    depends_on: tuple[str, ...] = ()
    playbook: str = "deploy.yml"
    # Services of this role the business layer may find through discovery, with their protocol.
    discoverable: dict[str, str] = field(default_factory=dict)
    # The Ansible role that deploys it (``ansible/roles/<ansible_role>``); a role whose directory does not
    # exist yet cannot be deployed. ``variables``: the extra vars an operator may set for a deployment
    # (anything else is refused). ``vault_variables``: vars the SLM fills from its vault at run time.
    ansible_role: str = ""
    variables: tuple[str, ...] = ()
    vault_variables: tuple[str, ...] = ()


ROLES: dict[str, RoleDefinition] = {
    role.name: role
    for role in (
        RoleDefinition(
            name=RoleName.SLM_AGENT,
            description="The node agent: heartbeats, service states and role reports to the SLM.",
            services=("autobot-agent",),
            ports=(),
            health_probe={"type": "heartbeat", "max_age_seconds": 90},
            ansible_role="slm_agent",
            variables=("slm_agent_interval_seconds",),
        ),
        RoleDefinition(
            name=RoleName.REDIS,
            description="Redis: broker, cache and channel layer of the business layer.",
            services=("redis-server",),
            ports=(6379,),
            health_probe={"type": "tcp", "port": 6379},
            depends_on=(RoleName.SLM_AGENT,),
            discoverable={"redis-server": "redis"},
            ansible_role="redis",
            variables=("redis_maxmemory", "redis_maxmemory_policy", "redis_appendonly"),
            vault_variables=("redis_password",),
        ),
        RoleDefinition(
            name=RoleName.LLM,
            description="Ollama serving local language models.",
            services=("ollama",),
            ports=(11434,),
            health_probe={"type": "http", "port": 11434, "path": "/api/tags"},
            depends_on=(RoleName.SLM_AGENT,),
            discoverable={"ollama": "http"},
            ansible_role="llm",
        ),
        RoleDefinition(
            name=RoleName.AI_STACK,
            description="The AI stack service (agents, vector store, TTS).",
            services=("autobot-ai-stack",),
            ports=(8080,),
            health_probe={"type": "http", "port": 8080, "path": "/health"},
            depends_on=(RoleName.SLM_AGENT, RoleName.REDIS),
            discoverable={"autobot-ai-stack": "http"},
            ansible_role="ai_stack",
        ),
        RoleDefinition(
            name=RoleName.NPU_WORKER,
            description="Embedding and inference worker on an NPU/accelerator host.",
            services=("autobot-npu-worker",),
            ports=(8081,),
            health_probe={"type": "http", "port": 8081, "path": "/health"},
            depends_on=(RoleName.SLM_AGENT,),
            discoverable={"autobot-npu-worker": "http"},
            ansible_role="npu_worker",
        ),
        RoleDefinition(
            name=RoleName.BROWSER_WORKER,
            description="Headless browser automation worker (Playwright).",
            services=("autobot-browser-worker",),
            ports=(3000,),
            health_probe={"type": "http", "port": 3000, "path": "/health"},
            depends_on=(RoleName.SLM_AGENT,),
            discoverable={"autobot-browser-worker": "http"},
            ansible_role="browser_worker",
        ),
        RoleDefinition(
            name=RoleName.BACKEND,
            description="The business layer: ASGI web and Celery worker/beat.",
            services=("autobot-business-web", "autobot-business-worker", "autobot-business-beat"),
            ports=(8000,),
            health_probe={"type": "http", "port": 8000, "path": "/healthz"},
            depends_on=(RoleName.SLM_AGENT, RoleName.REDIS, RoleName.AI_STACK),
            discoverable={"autobot-business-web": "http"},
            ansible_role="backend",
        ),
        RoleDefinition(
            name=RoleName.FRONTEND,
            description="nginx serving the business web app and proxying to the backend.",
            services=("nginx",),
            ports=(80, 443),
            health_probe={"type": "http", "port": 80, "path": "/"},
            depends_on=(RoleName.SLM_AGENT, RoleName.BACKEND),
            discoverable={"nginx": "http"},
            ansible_role="frontend",
        ),
    )
}


def dependency_order(names: list[str] | tuple[str, ...]) -> list[str]:
    """``names`` ordered so that every role comes after the roles it depends on (stable otherwise)."""
    ordered: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in ordered:
            return
        if name in visiting:
            raise ValueError(f"role dependency cycle through {name!r}")
        visiting.add(name)
        for dependency in ROLES[name].depends_on:
            if dependency in names:
                visit(dependency)
        visiting.discard(name)
        ordered.append(name)

    for name in names:
        visit(name)
    return ordered
