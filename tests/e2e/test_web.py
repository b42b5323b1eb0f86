"""The web interface in a real browser: Debian's Chromium driven by Playwright.

Each page visited is saved as a screenshot under var/test-artifacts/.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiodocker
import pytest

from services.executor.images import ensure_image
from tests.e2e.conftest import ROOT, SERVE_FOREVER, Platform, service, zapp

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "var" / "test-artifacts"
# Chromium reaches for Google's hosts unless told not to: the machine's network is closed.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT = 60_000  # ms: how long an expectation on a page may take (execution start included)


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    """One headless Chromium for the session (skipped where Debian's is not installed)."""
    if shutil.which(CHROMIUM) is None:
        pytest.skip(f"{CHROMIUM} is not installed (Debian package chromium)")
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=WAIT)
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            await b.close()


async def screenshot(page: Any, name: str) -> Path:
    """Save the page as var/test-artifacts/NAME.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture(scope="session")
async def hello_image(platform: Platform) -> str:
    async with aiodocker.Docker() as docker:
        await ensure_image(docker, "zoe/hello:1", zapps_root=ROOT / "zapps")
    return "zoe/hello:1"


def password_of(user: str) -> str:
    return f"{user}-secret-password"


async def new_page(
    browser: Any, platform: Platform, user: str = "webadmin", role: str = "admin", width: int = 1200
) -> Any:
    """A page of a fresh browser context (its own cookies), signed in as ``user`` (created
    with ``role`` if new) through the sign-in page."""
    from playwright.async_api import expect

    await platform.new_user(user, role, password_of(user))
    context = await browser.new_context(
        base_url=platform.url.removesuffix("/api/v1"), viewport={"width": width, "height": 900}
    )
    context.set_default_timeout(WAIT)
    page = await context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}"))
    page.on("requestfailed", lambda r: problems.append(f"failed: {r.url} {r.failure}"))
    try:
        await page.goto("/login")
        await page.get_by_label("Username").fill(user)
        await page.get_by_label("Password").fill(password_of(user))
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.locator("#user-name")).to_have_text(user)
    except Exception:
        await screenshot(page, f"sign-in-failed-{user}")  # what the page showed instead
        raise AssertionError(f"signing in as {user} failed: {problems}") from None
    return page


async def mark(page: Any) -> None:
    """Leave a mark in the page's window: gone if the page is loaded again."""
    await page.evaluate("window.__zoeMark = 1")


async def still_marked(page: Any) -> bool:
    return bool(await page.evaluate("window.__zoeMark === 1"))


async def test_start_hello_from_the_shop_and_follow_it(
    browser: Any, platform: Platform, hello_image: str
) -> None:
    from playwright.async_api import expect

    page = await new_page(browser, platform, "webalice", "user")
    await page.goto("/shop")
    await expect(page.get_by_role("link", name="Hello")).to_be_visible()
    await screenshot(page, "shop")
    await page.get_by_role("link", name="Hello").click()
    await expect(page).to_have_url(re.compile(r"/shop/hello$"))
    # the README rendered on the server: a real table and code, no literal pipes
    await expect(page.locator("article.readme table th").first).to_have_text("name")
    await expect(page.locator("article.readme pre code").first).to_contain_text("zoe submit")
    await screenshot(page, "zapp")

    await page.get_by_label("Execution name").fill("web-hello")
    await page.get_by_label("Greeting").fill("Bonjour from the browser")
    await page.get_by_role("button", name="Start").click()
    await expect(page).to_have_url(re.compile(r"/executions/\d+$"))
    execution_id = int(page.url.rsplit("/", 1)[1])
    await mark(page)
    state = page.locator("h1 .state")
    await expect(state).to_have_text("running")
    assert await still_marked(page), "the page was reloaded to show the new state"
    await expect(page.locator("tr[data-instance=hello0] .node")).to_have_text(platform.node)
    await screenshot(page, "execution-running")

    await page.get_by_role("link", name="log").click()
    await expect(page).to_have_url(re.compile(rf"/executions/{execution_id}/logs/hello0$"))
    log = page.locator("#log")
    await expect(log).to_contain_text("Bonjour from the browser")
    await mark(page)
    # followed live: the count goes on in the open page (the service counts ~8 s)
    await expect(page.locator("#log-status")).to_contain_text("Following live")
    first = await log.text_content() or ""
    assert "hello: done" not in first, first
    await expect(log).to_contain_text("hello: done")
    await expect(page.locator("#log-status")).to_contain_text("complete")
    assert await still_marked(page)
    assert (await log.text_content() or "").startswith(first)
    await screenshot(page, "logs")

    await page.goto(f"/executions/{execution_id}")
    await expect(page.locator("h1 .state")).to_have_text("finished")
    await expect(page.locator(".timeline")).to_contain_text("ended finished")
    await page.context.close()

    # another user sees none of it
    other = await new_page(browser, platform, "webbob", "user")
    await other.goto("/executions")
    await expect(other.get_by_role("heading", name="My executions")).to_be_visible()
    await expect(other.get_by_text("No executions match.")).to_be_visible()
    await expect(other.locator(f"tr[data-id='{execution_id}']")).to_have_count(0)
    await other.goto(f"/executions/{execution_id}")
    await expect(other.get_by_role("heading", name="Execution not found")).to_be_visible()
    await other.goto(f"/executions/{execution_id}/logs/hello0")
    await expect(other.locator("#log")).to_have_text("")
    await other.context.close()


async def test_sign_in_and_out(browser: Any, platform: Platform) -> None:
    from playwright.async_api import expect

    await platform.new_user("webcarol", "user", password_of("webcarol"))
    context = await browser.new_context(base_url=platform.url.removesuffix("/api/v1"))
    context.set_default_timeout(WAIT)
    page = await context.new_page()
    # a page without a session leads to the sign-in page, and back to it after
    await page.goto("/executions?state=running&name=x")
    await expect(page).to_have_url(re.compile(r"/login\?next="))
    await page.get_by_label("Username").fill("webcarol")
    await page.get_by_label("Password").fill("wrong")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert").filter(has_text="Wrong")).to_be_visible()
    await screenshot(page, "login")
    await page.get_by_label("Password").fill(password_of("webcarol"))
    await page.get_by_role("button", name="Sign in").click()
    await expect(page).to_have_url(re.compile(r"/executions\?state=running&name=x$"))
    await expect(page.locator("#user-name")).to_have_text("webcarol")
    await expect(page.locator("#user-role")).to_have_text("user")
    await expect(page.get_by_role("link", name="Users")).to_be_hidden()  # not an admin
    assert any(c["name"] == "zoe_session" and c["httpOnly"] for c in await context.cookies())

    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(re.compile(r"/login"))
    await page.goto("/shop")
    await expect(page).to_have_url(re.compile(r"/login\?next=/shop"))
    await context.close()


async def test_terminate_with_confirmation_changes_the_state_live(
    browser: Any, platform: Platform
) -> None:
    from playwright.async_api import expect

    execution = await platform.submit(
        zapp("web-forever", service("srv", SERVE_FOREVER), will_end=False), name="web-forever"
    )
    page = await new_page(browser, platform)
    await page.goto(f"/executions/{execution['id']}")
    state = page.locator("h1 .state")
    await expect(state).to_have_text("running")
    await mark(page)

    await page.get_by_role("button", name="Terminate").click()
    dialog = page.get_by_role("dialog")
    await expect(dialog).to_contain_text("Terminate execution")
    await screenshot(page, "terminate-confirm")
    await dialog.get_by_role("button", name="Cancel").click()
    await expect(dialog).to_have_count(0)
    assert (await platform.get(execution["id"]))["state"] == "running"

    await page.get_by_role("button", name="Terminate").click()
    await page.get_by_role("dialog").get_by_role("button", name="Terminate").click()
    await expect(state).to_have_text("terminated")
    assert await still_marked(page), "the page was reloaded to show the new state"
    await expect(page.get_by_role("button", name="Terminate")).to_be_hidden()
    await expect(page.locator(".outcome")).to_contain_text("terminated")

    # submit again: the stored description as a new execution, on its own page
    await page.get_by_role("button", name="Submit again").click()
    await expect(page).not_to_have_url(re.compile(rf"/executions/{execution['id']}$"))
    await expect(page).to_have_url(re.compile(r"/executions/\d+$"))
    again = int(page.url.rsplit("/", 1)[1])
    await expect(page.locator("h1 .exec-name")).to_have_text("web-forever")
    await expect(page.locator("h1 .state")).to_have_text("running")
    await platform.acall("POST", f"/executions/{again}/terminate")
    await platform.wait_state(again, "terminated")
    await page.context.close()


async def test_lists_admin_pages_errors_and_unknown_paths(
    browser: Any, platform: Platform, hello_image: str
) -> None:
    from playwright.async_api import expect

    execution = await platform.submit(
        zapp("web-listed", service("srv", SERVE_FOREVER), will_end=False), name="web-listed"
    )
    page = await new_page(browser, platform)
    await page.goto("/executions?name=web-listed")
    row = page.locator(f"tr[data-id='{execution['id']}']")
    await expect(row.locator(".state")).to_have_text("running")
    await mark(page)
    await screenshot(page, "executions")
    await platform.acall("POST", f"/executions/{execution['id']}/terminate")
    await expect(row.locator(".state")).to_have_text("terminated")  # in place, no reload
    assert await still_marked(page)
    await page.goto("/executions?name=no-such-execution-name")
    await expect(page.get_by_text("No executions match.")).to_be_visible()

    await page.goto("/nodes")
    await expect(page.locator(f"tr[data-key='{platform.node}']")).to_contain_text("up")
    await screenshot(page, "nodes")
    # drain the node from its page (after a confirmation), then undrain it
    node = page.locator(f"tr[data-key='{platform.node}']")
    await node.get_by_role("button", name="Drain").click()
    await page.get_by_role("dialog").get_by_role("button", name="Drain").click()
    await expect(node.locator(".state")).to_have_text("drained")
    await node.get_by_role("button", name="Undrain").click()
    await expect(node.locator(".state")).to_have_text("up")

    # an execution no node can hold waits, and its page and the queue say why
    huge = await platform.submit(
        zapp("web-huge", service("srv", SERVE_FOREVER, cores=64)), name="web-huge"
    )
    await page.goto(f"/executions/{huge['id']}")
    await expect(page.locator(".waiting")).to_contain_text("could ever hold it")
    await page.goto("/queue")
    await expect(page.locator(f"tr[data-key='{huge['id']}']")).to_contain_text("Queued:")
    await screenshot(page, "queue")
    await platform.acall("POST", f"/executions/{huge['id']}/terminate")

    # an error of the start form next to its field, nothing started
    await page.goto("/shop/hello")
    await page.get_by_label("Memory reserved (GiB)").fill("-1")
    await page.get_by_role("button", name="Start").click()
    error = page.locator(".field-error[data-path='resources.hello.memory.min']")
    await expect(error).to_be_visible()
    await expect(page.get_by_label("Memory reserved (GiB)")).to_have_attribute(
        "aria-invalid", "true"
    )
    await expect(page).to_have_url(re.compile(r"/shop/hello$"))

    for path in ("/no/such/page", "/shop/no-such-zapp"):
        response = await page.goto(path)
        assert response is not None and response.status == 404
        await expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
    await screenshot(page, "not-found")
    response = await page.goto("/api/v1/no-such-route")
    assert response is not None and response.status == 404
    assert "error" in await response.json()
    await page.goto("/executions/999999999")
    await expect(page.get_by_role("heading", name="Execution not found")).to_be_visible()
    await page.context.close()


async def test_pages_hold_at_phone_width(browser: Any, platform: Platform) -> None:
    from playwright.async_api import expect

    page = await new_page(browser, platform, width=390)
    for path in ("/shop", "/shop/hello", "/executions", "/nodes"):
        await page.goto(path)
        await expect(page.locator("#nav")).to_be_visible()
        await expect(page.locator("h1").first).to_be_visible()
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{path} is wider than the phone's screen by {overflow}px"
    await screenshot(page, "phone-zapp")
    await page.context.close()


async def test_a_dropped_stream_reconnects_and_usage_is_charted(
    browser: Any, platform: Platform
) -> None:
    from playwright.async_api import expect

    execution = await platform.submit(
        zapp("web-restart", service("srv", SERVE_FOREVER), will_end=False), name="web-restart"
    )
    page = await new_page(browser, platform)
    try:
        await page.goto(f"/executions/{execution['id']}")
        await expect(page.locator("h1 .state")).to_have_text("running")
        # the usage samples, charted as they come
        await expect(page.locator("tr[data-instance=srv0] .chart svg polyline.cpu")).to_have_count(
            1
        )
        await screenshot(page, "execution-usage")
        await mark(page)
        live = page.locator("#live")
        await expect(live).to_have_text("live")

        platform["api"].stop()  # the stream drops with the api
        await expect(live).to_have_text("reconnecting…")
        platform["api"].start()
        await platform.wait_ready()
        await expect(live).to_have_text("live")

        await platform.acall("POST", f"/executions/{execution['id']}/terminate")
        await expect(page.locator("h1 .state")).to_have_text("terminated")
        assert await still_marked(page), "the page was reloaded"
    finally:
        if not platform["api"].alive:
            platform["api"].start()
            await platform.wait_ready()
        await page.context.close()
