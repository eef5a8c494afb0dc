"""The browser worker: a small HTTP service that loads pages in Debian's Chromium (driven by Playwright)
for the AI stack, on hosts an operator allowed.

- ``GET /health``: the browser is connected, and its version.
- ``POST /v1/navigate {"url"}``: HTTP status, final URL and title of the page.
- ``POST /v1/text {"url"}``: the page's visible text (capped at ``max_text_chars``).
- ``POST /v1/screenshot {"url"}``: a PNG of the viewport.

Only ``http``/``https`` URLs whose host is on the allowlist of the config file are loaded; every request the
page makes (sub-resources, frames, redirects) is held to the same allowlist. One browser serves the
process, each request gets a fresh browser context (no cookies or storage shared between requests), at
most ``max_concurrency`` at a time. Errors are one JSON shape, ``{"code", "message", "fields"}`` (like
``shared_contracts.schemas.common.ErrorBody``): 400 ``bad_request``, 403 ``host_not_allowed``,
504 ``timeout``, 502 ``navigation_failed``, 503 ``busy`` / ``browser_unavailable``.

Run: ``python -m workers.browser_worker --config /etc/autobot/browser-worker.json`` (the ``browser_worker``
Ansible role writes the file and runs it as the ``autobot-browser-worker`` service).
"""
