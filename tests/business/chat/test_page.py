"""The chat page in headless Chromium (Debian's ``chromium``, driven by Playwright): sign in, send a
message and watch the answer stream in, stop a second answer. A screenshot is kept as a test artifact
(``var/test-artifacts/chat-page.png``)."""

from pathlib import Path

import pytest

from business_project.chat.choices import MessageStatus
from business_project.chat.models import Message
from tests.business.chat.factories import PASSWORD
from tests.fixtures.services import in_ci

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[3] / "var" / "test-artifacts"

FIRST_ANSWER = [
    "Here is ",
    "some **bold** text",
    " and code:\n\n",
    "```python\n",
    "print('fox')\n",
    "```\n",
    "Done.",
]


@pytest.fixture
def chromium_path() -> str:
    if not CHROMIUM.exists():
        if in_ci():
            pytest.fail("Debian's chromium is missing; .ci/run installs it")
        pytest.skip("install Debian's chromium to run the browser test")
    pytest.importorskip("playwright")
    return str(CHROMIUM)


def test_sign_in_send_watch_it_stream_and_stop_a_second_answer(asgi_server, provider, alice, chromium_path):
    from playwright.sync_api import expect, sync_playwright

    provider.script(tokens=FIRST_ANSWER, first_token_delay=0.3, token_delay=0.25)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    # No database access from here until the browser is closed: Playwright's sync API runs an event loop
    # in this thread, and Django refuses synchronous queries there.
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path)
        page = browser.new_page(viewport={"width": 1280, "height": 820})
        try:
            page.goto(f"{asgi_server.http_url}/chat/")
            expect(page).to_have_url(f"{asgi_server.http_url}/accounts/login/?next=/chat/")
            page.screenshot(path=str(ARTIFACTS / "login-page.png"))
            page.fill("#id_username", "alice")
            page.fill("#id_password", PASSWORD)
            page.click("button[type=submit]")
            expect(page).to_have_url(f"{asgi_server.http_url}/chat/")
            expect(page.locator("#connection")).to_have_attribute("data-state", "online")

            page.fill("#input", "Show me some Python")
            page.keyboard.press("Enter")
            first = page.locator(".message.assistant").first
            # Streaming: part of the text is on the page while the answer is not finished.
            page.wait_for_function(
                """() => {
                    const m = document.querySelector('.message.assistant');
                    if (!m || m.dataset.status !== 'streaming') return false;
                    return m.querySelector('.content').textContent.includes('Here is');
                }""",
                timeout=10_000,
            )
            assert "Done." not in first.locator(".content").text_content()
            expect(page.locator("#stop")).to_be_visible()
            expect(first).to_have_attribute("data-status", "complete", timeout=10_000)
            expect(first.locator(".content strong")).to_have_text("bold")
            expect(first.locator(".content .code pre")).to_have_text("print('fox')")
            expect(first.locator(".content")).to_contain_text("Done.")
            expect(page.locator("#chat-title")).to_have_text("Show me some Python")
            expect(page.locator(".conversation.active .title")).to_have_text("Show me some Python")

            provider.script(tokens=[f" word{i}" for i in range(200)], first_token_delay=0.2, token_delay=0.15)
            page.fill("#input", "Now write a very long essay")
            page.click("#send")
            second = page.locator(".message.assistant").nth(1)
            expect(second.locator(".content")).to_contain_text("word2", timeout=10_000)
            page.click("#stop")
            expect(second).to_have_attribute("data-status", "stopped", timeout=5_000)
            expect(second.locator(".note")).to_have_text("Stopped")
            expect(page.locator("#send")).to_be_visible()
            expect(second.locator('[data-action="regenerate"]')).to_be_visible()
            shown = second.locator(".content").text_content()
            page.screenshot(path=str(ARTIFACTS / "chat-page.png"), full_page=True)
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "chat-page-failure.png"), full_page=True)
            raise
        finally:
            browser.close()

    answers = list(Message.objects.filter(role="assistant").order_by("position"))
    assert [a.status for a in answers] == [MessageStatus.COMPLETE, MessageStatus.STOPPED]
    assert answers[0].content == "".join(FIRST_ANSWER)
    assert answers[1].content.strip()
    assert answers[1].content.strip() in shown
    assert (ARTIFACTS / "chat-page.png").stat().st_size > 10_000


def test_the_tokens_page_shows_a_new_token_once_and_revokes_it(asgi_server, alice, chromium_path):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path)
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.on("dialog", lambda dialog: dialog.accept())
        try:
            page.goto(f"{asgi_server.http_url}/accounts/login/?next=/accounts/tokens/")
            page.fill("#id_username", "alice")
            page.fill("#id_password", PASSWORD)
            page.click("button[type=submit]")
            expect(page).to_have_url(f"{asgi_server.http_url}/accounts/tokens/")
            page.fill("#token-name", "laptop")
            page.check("input[value='chat:write']")
            page.fill("#token-expiry", "30")
            page.click("#token-form button[type=submit]")
            expect(page.locator("#token-value")).to_contain_text("abt_")
            token = page.locator("#token-value").text_content()
            row = page.locator("#token-table tbody tr")
            expect(row).to_have_count(1)
            expect(row.locator("td").first).to_have_text("laptop")
            expect(row).to_contain_text("active")
            assert token not in row.text_content()
            page.screenshot(path=str(ARTIFACTS / "tokens-page.png"), full_page=True)
            row.locator("button").click()
            expect(row).to_contain_text("revoked")
        finally:
            browser.close()

    from business_project.accounts.models import ApiToken

    stored = ApiToken.objects.get()
    assert (stored.name, sorted(stored.scopes)) == ("laptop", ["chat:read", "chat:write"])
    assert stored.revoked_at is not None
