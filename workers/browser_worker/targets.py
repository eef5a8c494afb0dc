"""Which URLs the worker loads: ``http``/``https`` only, on a host of the allowlist. The same check runs
on the URL a client sends and on every request the page makes (``browser.py``)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from workers.browser_worker.errors import BadRequest, HostNotAllowed

SCHEMES = frozenset({"http", "https"})
MAX_URL_LENGTH = 2048


@dataclass(frozen=True)
class Target:
    url: str
    host: str


def normalize_host(host: str) -> str:
    """A host name as it is compared: lower case, no trailing dot, IDNA (punycode) for non-ASCII names,
    addresses in their canonical form. Raises ``ValueError`` for something that is not a host."""
    host = host.strip().rstrip(".").lower()
    if not host:
        raise ValueError("an empty host")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(f"{host!r} is not a valid host name") from None
    if any(not (part and all(c.isalnum() or c == "-" for c in part)) for part in ascii_host.split(".")):
        raise ValueError(f"{host!r} is not a valid host name")
    return ascii_host


def normalize_allowed_host(entry: str) -> str:
    """An allowlist entry: a host (``normalize_host``) or ``*.`` followed by one."""
    if entry.startswith("*."):
        return "*." + normalize_host(entry[2:])
    return normalize_host(entry)


def host_allowed(host: str, allowed_hosts: tuple[str, ...]) -> bool:
    for entry in allowed_hosts:
        if entry.startswith("*."):
            if host.endswith(entry[1:]):
                return True
        elif host == entry:
            return True
    return False


def url_allowed(url: str, allowed_hosts: tuple[str, ...]) -> bool:
    """Whether the page may request ``url`` (any malformed URL is not)."""
    try:
        parts = urlsplit(url)
        return (
            parts.scheme in SCHEMES
            and parts.hostname is not None
            and host_allowed(normalize_host(parts.hostname), allowed_hosts)
        )
    except ValueError:
        return False


def target_from(value: object, allowed_hosts: tuple[str, ...]) -> Target:
    """The client's ``url``, checked: 400 for anything that is not an absolute http(s) URL with a host
    (or that carries credentials), 403 for a host outside the allowlist."""
    if not isinstance(value, str) or not value:
        raise BadRequest("url must be a non-empty string", fields={"url": ["a non-empty string is required"]})
    if len(value) > MAX_URL_LENGTH or any(ord(c) < 33 for c in value):
        raise BadRequest("url is too long or holds blanks", fields={"url": ["not a valid URL"]})
    try:
        parts = urlsplit(value)
        hostname = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise BadRequest("url is not a valid URL", fields={"url": ["not a valid URL"]}) from None
    if parts.scheme not in SCHEMES:
        raise BadRequest("only http(s) URLs are loaded", fields={"url": ["the scheme must be http(s)"]})
    if not hostname:
        raise BadRequest("url has no host", fields={"url": ["not a valid URL"]})
    if parts.username is not None or parts.password is not None:
        raise BadRequest("url must not carry credentials", fields={"url": ["credentials are not allowed"]})
    try:
        host = normalize_host(hostname)
    except ValueError as exc:
        raise BadRequest(str(exc), fields={"url": ["not a valid host"]}) from None
    if not host_allowed(host, allowed_hosts):
        raise HostNotAllowed(f"{host} is not on this worker's allowlist")
    return Target(url=value, host=host)
