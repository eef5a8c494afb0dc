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
    # (anything else is refused). ``vault_variables``: vars the SLM fills from its vault at run time; a
    # ``role:variable`` entry is another role's (``vault_variable_source``).
    ansible_role: str = ""
    variables: tuple[str, ...] = ()
    vault_variables: tuple[str, ...] = ()
    # The application bundle its Ansible role installs (``deployments/bundles.py``); the executor builds
    # it when needed and passes its path as ``autobot_bundles[<name>]``.
    bundle: str = ""


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
            # One service name whichever engine serves (ansible/roles/llm/defaults/main.yml): the agent,
            # the remediator and discovery need not know the engine. Both answer /v1 (OpenAI-compatible).
            description="An LLM server on 11434: Ollama, or llama.cpp's server (llm_engine).",
            services=("ollama",),
            ports=(11434,),
            health_probe={"type": "http", "port": 11434, "path": "/v1/models"},
            depends_on=(RoleName.SLM_AGENT,),
            discoverable={"ollama": "http"},
            ansible_role="llm",
            variables=(
                "llm_engine",
                "llm_models",
                "llm_ollama_archive_url",
                "llm_ollama_archive_checksum",
                "llm_ollama_archive_path",
                "llm_llama_cpp_model_path",
                "llm_llama_cpp_model_alias",
                "llm_llama_cpp_chat_format",
                "llm_llama_cpp_context_window",
            ),
            # Built for either engine (the executor knows roles, not their variables); only llama_cpp
            # installs it. Built once per content hash and cached.
            bundle="llm",
        ),
        RoleDefinition(
            name=RoleName.AI_STACK,
            description="The AI stack service: a vector store and speech synthesis (espeak-ng).",
            services=("autobot-ai-stack",),
            ports=(8080,),
            health_probe={"type": "http", "port": 8080, "path": "/health"},
            depends_on=(RoleName.SLM_AGENT, RoleName.REDIS),
            discoverable={"autobot-ai-stack": "http"},
            ansible_role="ai_stack",
            variables=(
                "ai_stack_tts_voices",
                "ai_stack_tts_default_voice",
                "ai_stack_max_points_per_request",
            ),
            bundle="ai_stack",
        ),
        RoleDefinition(
            name=RoleName.NPU_WORKER,
            description="The embedding worker: all-MiniLM-L6-v2 sentence embeddings (OpenAI-compatible API).",
            services=("autobot-npu-worker",),
            ports=(8081,),
            health_probe={"type": "http", "port": 8081, "path": "/health"},
            depends_on=(RoleName.SLM_AGENT,),
            discoverable={"autobot-npu-worker": "http"},
            ansible_role="npu_worker",
            variables=("npu_worker_threads", "npu_worker_max_batch", "npu_worker_max_tokens"),
            bundle="npu_worker",
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
            variables=(
                "browser_worker_allowed_hosts",
                "browser_worker_max_concurrency",
                "browser_worker_navigation_timeout_seconds",
                "browser_worker_max_text_chars",
            ),
            bundle="browser_worker",
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
            variables=(
                "backend_redis_host",
                "backend_redis_port",
                "backend_redis_db",
                "backend_web_workers",
                "backend_worker_concurrency",
                "backend_allowed_hosts",
                "backend_csrf_trusted_origins",
                "backend_slm_api_url",
                "backend_log_level",
            ),
            # The Redis password is the redis role's (the Redis the backend uses).
            vault_variables=("backend_secret_key", "backend_master_key", "redis:redis_password"),
            bundle="backend",
        ),
        RoleDefinition(
            name=RoleName.FRONTEND,
            description="nginx serving the business web app and proxying to the backend.",
            services=("nginx",),
            ports=(80, 443),
            # "/" redirects to the chat; /healthz is proxied to the backend (nginx and the app both answer).
            health_probe={"type": "http", "port": 80, "path": "/healthz"},
            depends_on=(RoleName.SLM_AGENT, RoleName.BACKEND),
            discoverable={"nginx": "http"},
            ansible_role="frontend",
            variables=(
                "frontend_backend_upstreams",
                "frontend_server_name",
                "frontend_client_max_body_size",
                "frontend_stream_timeout_seconds",
            ),
            # Its static files are collected from the backend release.
            bundle="backend",
        ),
    )
}


def vault_variable_source(role: str, entry: str) -> tuple[str, str]:
    """``(owner role, variable)`` of an entry of ``role``'s ``vault_variables``: a plain name is the role's
    own; ``other-role:variable`` is a vault variable of the other role, so both get the same value (the
    backend's ``redis:redis_password`` is the password the redis role set on its server)."""
    owner, _, variable = entry.rpartition(":")
    if not owner:
        return role, variable
    if owner not in ROLES or variable not in ROLES[owner].vault_variables:
        raise ValueError(f"{role}: {entry!r} names no vault variable of a role")
    return owner, variable


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
