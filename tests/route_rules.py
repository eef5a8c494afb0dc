"""What each URL map may hold (DESIGN.md: the business layer holds no infrastructure code or routes).

Shared by the SLM and business route tests: both walk their resolver with ``route_paths``.
"""

from __future__ import annotations

import re

from django.urls import URLPattern, URLResolver

# Anything about machines belongs to the SLM. Matched as whole path segments or word parts.
INFRASTRUCTURE_WORDS = (
    "infrastructure",
    "infra",
    "fleet",
    "node",
    "nodes",
    "vm",
    "vms",
    "machine",
    "machines",
    "monitoring",
    "ssh",
    "ansible",
    "deploy",
    "deployment",
    "deployments",
    "playbook",
    "slm",
    "hosts",
    "npu",
    "backup",
    "backups",
    "replication",
    "maintenance",
    "certificate",
    "certificates",
    "tls",
    "terminal",
    "tools",
    "inventory",
)

# Business features never live in the SLM.
BUSINESS_FEATURE_WORDS = ("chat", "conversation", "knowledge", "workflow", "automation", "analytics")

# The only first segments the business URL map may use.
BUSINESS_ROUTE_PREFIXES = (
    "healthz",
    "readyz",
    "api/schema/",
    "api/docs/",
    "api/auth/",
    "api/chat/",
    "api/conversations/",
    "api/knowledge/",
    "api/workflows/",
    "api/automation/",
    "api/analytics/",
    "api/agents/",
    "api/llm/",
    "api/users/",
    "admin/",
    "accounts/",
    "chat/",
    "knowledge/",
    "workflows/",
    "analytics/",
    "static/",
    "ws/healthz/",
    "ws/chat/",
)


def _pattern_text(pattern) -> str:
    text = str(pattern.pattern)
    return text.lstrip("^").replace("\\Z", "").replace("$", "")


def route_paths(resolver: URLResolver, prefix: str = "") -> list[str]:
    """Every route of a resolver as its full path pattern, depth first."""
    paths: list[str] = []
    for entry in resolver.url_patterns:
        text = prefix + _pattern_text(entry)
        if isinstance(entry, URLResolver):
            paths.extend(route_paths(entry, text))
        elif isinstance(entry, URLPattern):
            paths.append(text)
    return paths


def routes_matching(paths: list[str], words: tuple[str, ...]) -> list[str]:
    """The paths containing one of ``words`` as a path segment or a ``-``/``_``-separated part."""
    found = []
    for path in paths:
        parts = {part for part in re.split(r"[/_\-.<>:()?^$\\]+", path.lower()) if part}
        if parts & set(words):
            found.append(path)
    return found


# Whole paths allowed besides the prefixes: the business home page (a redirect to the chat).
BUSINESS_EXACT_ROUTES = ("",)


def routes_outside(paths: list[str], prefixes: tuple[str, ...], exact: tuple[str, ...] = ()) -> list[str]:
    return [path for path in paths if path not in exact and not path.startswith(prefixes)]
