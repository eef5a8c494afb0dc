"""The only module that imports Playwright: one Chromium (Debian's, at ``config.chromium``; ``playwright
install`` is never run) driven from one event-loop thread, a fresh browser context per request.

HTTP handler threads call the blocking methods (``navigate``, ``text``, ``screenshot``, ``health``); each
runs a coroutine on the loop and waits for it with the request's deadline. A slot semaphore caps the
pages open at once. A browser that crashed or was closed is launched again by the next request.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit

from playwright.async_api import Browser as PlaywrightBrowser
from playwright.async_api import BrowserContext, Page, Playwright, Route, WebSocketRoute, async_playwright
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import TimeoutError as PlaywrightTimeoutError

from workers.browser_worker.config import Config
from workers.browser_worker.errors import (
    BrowserUnavailable,
    Busy,
    HostNotAllowed,
    NavigationFailed,
    NavigationTimeout,
    WorkerError,
)
from workers.browser_worker.targets import Target, url_allowed

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Chromium flags beside Playwright's own. /dev/shm is small or missing in containers and on the isolated
# test host; /tmp serves instead. WebRTC would reach other hosts over UDP, outside the routes.
CHROMIUM_ARGS = ("--disable-dev-shm-usage", "--force-webrtc-ip-handling-policy=disable_non_proxied_udp")
SOCKET_SCHEMES = re.compile(r"^ws(s?):")
ANY_URL = re.compile(r".*")
LAUNCH_TIMEOUT_SECONDS = 30.0


@dataclass
class PageVisit:
    """What a request learned about a page: the main response's status (``None`` when the page did not
    come from the network), where it ended after redirects, its title, the requests the allowlist
    stopped."""

    status: int | None
    final_url: str
    title: str
    blocked: list[str] = field(default_factory=list)


class Browser:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._slots = threading.BoundedSemaphore(config.max_concurrency)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="browser-loop", daemon=True)
        self._playwright: Playwright | None = None
        self._browser: PlaywrightBrowser | None = None
        self._launching: asyncio.Lock | None = None

    # ----------------------------------------------------------------------------------------------
    # Life cycle (from the main thread)

    def start(self) -> None:
        """Start the loop and launch the browser (raises ``BrowserUnavailable`` when it cannot start)."""
        self._thread.start()
        self._call(self._connected_browser(), timeout=LAUNCH_TIMEOUT_SECONDS, on_timeout=BrowserUnavailable)

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            self._call(self._close(), timeout=LAUNCH_TIMEOUT_SECONDS, on_timeout=BrowserUnavailable)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    async def _close(self) -> None:
        if self._browser is not None:
            with contextlib.suppress(PlaywrightError):  # already gone
                await self._browser.close()
            self._browser = None
        if self._playwright is not None:
            await self._playwright.stop()
            self._playwright = None

    # ----------------------------------------------------------------------------------------------
    # Requests (from HTTP handler threads)

    def health(self) -> dict[str, Any]:
        browser = self._call(
            self._connected_browser(), timeout=LAUNCH_TIMEOUT_SECONDS, on_timeout=BrowserUnavailable
        )
        return {"connected": browser.is_connected(), "version": browser.version}

    def navigate(self, target: Target) -> PageVisit:
        return self._with_page(target, lambda page, visit: _nothing())

    def text(self, target: Target) -> tuple[PageVisit, str, bool]:
        """The visible text (``innerText`` of the body: what CSS shows) and whether it was cut."""
        texts: list[str] = []

        async def read(page: Page, visit: PageVisit) -> None:
            texts.append(await page.evaluate("() => document.body ? document.body.innerText : ''"))

        visit = self._with_page(target, read)
        text = texts[0]
        limit = self.config.max_text_chars
        return visit, text[:limit], len(text) > limit

    def screenshot(self, target: Target) -> tuple[PageVisit, bytes]:
        images: list[bytes] = []

        async def shoot(page: Page, visit: PageVisit) -> None:
            timeout_ms = self.config.navigation_timeout_seconds * 1000
            images.append(await page.screenshot(type="png", timeout=timeout_ms))

        visit = self._with_page(target, shoot)
        return visit, images[0]

    def _with_page(self, target: Target, action: Callable[[Page, PageVisit], Awaitable[None]]) -> PageVisit:
        if not self._slots.acquire(timeout=self.config.queue_timeout_seconds):
            raise Busy(
                f"all {self.config.max_concurrency} browser slots stayed busy for "
                f"{self.config.queue_timeout_seconds:g} s"
            )
        try:
            return self._call(
                self._visit(target, action),
                timeout=self.config.request_timeout_seconds,
                on_timeout=NavigationTimeout,
            )
        finally:
            self._slots.release()

    def _call(self, coroutine: Awaitable[T], *, timeout: float, on_timeout: type[WorkerError]) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)  # type: ignore[arg-type]
        try:
            return future.result(timeout=timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()  # on the loop: the coroutine's finally closes the request's context
            raise on_timeout(f"the browser did not finish within {timeout:g} s") from None

    # ----------------------------------------------------------------------------------------------
    # On the loop

    async def _connected_browser(self) -> PlaywrightBrowser:
        if self._launching is None:
            self._launching = asyncio.Lock()
        async with self._launching:
            if self._browser is not None and self._browser.is_connected():
                return self._browser
            try:
                if self._playwright is None:
                    self._playwright = await async_playwright().start()
                if self._browser is not None:
                    logger.warning("the browser was disconnected; launching it again")
                self._browser = await self._playwright.chromium.launch(
                    executable_path=self.config.chromium,
                    args=list(CHROMIUM_ARGS),
                    timeout=LAUNCH_TIMEOUT_SECONDS * 1000,
                )
            except PlaywrightError as exc:
                self._browser = None
                raise BrowserUnavailable(f"Chromium did not start: {_first_line(exc)}") from None
            logger.info("Chromium %s is running", self._browser.version)
            return self._browser

    async def _new_context(self) -> BrowserContext:
        browser = await self._connected_browser()
        options: dict[str, Any] = {
            "viewport": {"width": self.config.viewport_width, "height": self.config.viewport_height},
            "accept_downloads": False,
            # Service workers could answer (and fetch) outside the routes below.
            "service_workers": "block",
        }
        if self.config.user_agent:
            options["user_agent"] = self.config.user_agent
        try:
            return await browser.new_context(**options)
        except PlaywrightError as exc:
            raise BrowserUnavailable(f"no browser context: {_first_line(exc)}") from None

    async def _visit(self, target: Target, action: Callable[[Page, PageVisit], Awaitable[None]]) -> PageVisit:
        allowed = self.config.allowed_hosts
        blocked: list[str] = []

        async def guard(route: Route) -> None:
            # Every request of the page goes through here, so a page on an allowed host can make the
            # browser reach no other host. Chromium follows redirects without asking the route again, so
            # each request is made here without following them (route.fetch), and a redirect reaches the
            # browser only when its target is allowed (the browser's next request comes back here).
            url = route.request.url
            if not url_allowed(url, allowed):
                blocked.append(url)
                await route.abort("blockedbyclient")
                return
            try:
                # A little longer than the navigation's own timeout, which then ends the request as 504.
                response = await route.fetch(max_redirects=0, timeout=timeout_ms + 1000)
            except PlaywrightError:
                await route.abort("failed")
                return
            location = response.headers.get("location")
            if 300 <= response.status < 400 and location:
                next_url = urljoin(url, location)
                if not url_allowed(next_url, allowed):
                    blocked.append(next_url)
                    await route.abort("blockedbyclient")
                    return
            await route.fulfill(response=response)

        timeout_ms = self.config.navigation_timeout_seconds * 1000

        async def guard_socket(socket: WebSocketRoute) -> None:
            # WebSockets bypass the routes above; they get the same allowlist.
            if url_allowed(SOCKET_SCHEMES.sub(r"http\1:", socket.url, count=1), allowed):
                socket.connect_to_server()
            else:
                blocked.append(socket.url)
                await socket.close(code=1008, reason="host not allowed")

        context = await self._new_context()
        try:
            await context.route("**/*", guard)
            await context.route_web_socket(ANY_URL, guard_socket)
            page = await context.new_page()
            page.set_default_timeout(timeout_ms)
            try:
                response = await page.goto(target.url, wait_until="load", timeout=timeout_ms)
            except PlaywrightTimeoutError:
                raise NavigationTimeout(
                    f"{target.url} did not load within {self.config.navigation_timeout_seconds:g} s"
                ) from None
            except PlaywrightError as exc:
                if blocked and "ERR_BLOCKED_BY_CLIENT" in str(exc):
                    raise HostNotAllowed(
                        f"the page went to {_host_of(blocked[0])}, which is not on this worker's allowlist"
                    ) from None
                raise NavigationFailed(f"{target.url} could not be loaded: {_first_line(exc)}") from None
            if not url_allowed(page.url, allowed):
                raise HostNotAllowed(f"the page ended at {page.url}, which is not on this worker's allowlist")
            visit = PageVisit(
                status=response.status if response is not None else None,
                final_url=page.url,
                title=await page.title(),
                blocked=blocked,
            )
            try:
                await action(page, visit)
            except PlaywrightTimeoutError:
                raise NavigationTimeout(f"reading {target.url} took too long") from None
            return visit
        finally:
            with contextlib.suppress(PlaywrightError):  # the browser went away with it
                await context.close()


async def _nothing() -> None:
    return None


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _host_of(url: str) -> str:
    return urlsplit(url).hostname or url
