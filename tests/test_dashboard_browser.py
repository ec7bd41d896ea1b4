"""The dashboard in Debian's headless Chromium, with numbers produced through the real pipe.

Mail goes through the private Postfix with the milter (VERP rewriting) to the fake MX,
which rejects ``unknown-*`` (550 5.1.1) and answers ``full-*`` with 452 4.2.2; with
``maximal_queue_lifetime=0`` Postfix bounces the latter after one attempt. The bounces
reach the real ``bouncetrack pipe``, which stores the events. Then the API is served by
uvicorn on a loopback port on the stack's configuration, and Playwright drives
``/usr/bin/chromium``: log in through the form, read the overview's numbers, filter the
event list, open an event. Screenshots go to ``artifacts/`` (gitignored).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import CHECKOUT, harness_unavailable

pytestmark = pytest.mark.postfix

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = CHECKOUT / "artifacts"

HARD = ["unknown-1@remote.test", "unknown-2@remote.test", "unknown-3@remote.test"]
SOFT = ["full-1@remote.test"]
DELIVERED = ["ok-1@remote.test", "ok-2@remote.test"]


def _skip_reason() -> str | None:
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is missing (Debian package chromium; scripts/bootstrap installs it)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (test extra)"
    return harness_unavailable()


def _events(db: Path) -> list[sqlite3.Row]:
    if not db.exists():
        return []
    conn = sqlite3.connect(db, timeout=30)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute("SELECT * FROM events WHERE domain = 'tracked.test' ORDER BY id").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def produced() -> Iterator[dict[str, Any]]:
    """A stack that produced 3 hard bounces, 1 soft bounce and 2 deliveries; the API on its config."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    import uvicorn

    from bouncetrack.api.app import create_app
    from bouncetrack.core.config_loader import load_config
    from bouncetrack.harness.stack import Stack
    from bouncetrack.core.tokens import hash_api_token, new_api_token

    token = new_api_token()
    stack = Stack(
        with_milter=True,
        pipe="real",
        maximal_queue_lifetime="0",  # a 4xx bounces after one attempt: a soft bounce
        bounce_queue_lifetime="0",
        domains={
            "tracked.test": {
                "tracking": True,
                "api_tokens": [hash_api_token(token)],
                # Nothing listens there and no worker runs: the jobs wait in the outbox.
                "webhook": {"url": "http://127.0.0.1:9/hook", "secret": "whsec_dGVzdHNlY3JldHRlc3RzZWNyZXQ="},
            }
        },
    )
    with stack:
        for rcpt in HARD + SOFT + DELIVERED:
            assert stack.send("info@tracked.test", [rcpt]).accepted, stack.logs()
        expected = set(HARD + SOFT)
        try:
            stack.wait_for(lambda: expected <= {e["recipient"] for e in _events(stack.db_path)}, 60)
        except TimeoutError:
            pytest.fail("bounces did not reach the store:\n" + stack.logs())
        events = _events(stack.db_path)

        config = load_config(stack.config_path)
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(config), host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        try:
            yield {"base": f"http://127.0.0.1:{port}", "token": token, "events": events, "config": config}
        finally:
            server.should_exit = True
            thread.join(10)


@pytest.fixture(scope="module")
def browser(produced: dict[str, Any]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def test_pipe_produced_the_expected_events(produced: dict[str, Any]) -> None:
    by_rcpt = {e["recipient"]: e for e in produced["events"]}
    for rcpt in HARD:
        assert (by_rcpt[rcpt]["type"], by_rcpt[rcpt]["hard"], by_rcpt[rcpt]["token_status"]) == ("bounce", 1, "valid")
    (soft,) = SOFT
    assert (by_rcpt[soft]["type"], by_rcpt[soft]["hard"]) == ("bounce", 0)
    assert not set(DELIVERED) & set(by_rcpt)


def test_login_overview_filter_event_and_replay_in_chromium(produced: dict[str, Any], browser: Any) -> None:
    from bouncetrack.store import open_store

    base = produced["base"]
    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    try:
        # Not logged in: the dashboard sends us to the form.
        page.goto(base + "/dashboard")
        assert "/login" in page.url
        page.fill("#token", "not-a-token")
        page.click("button[type=submit]")
        assert page.locator(".error").inner_text() == "That token is not valid."
        errors.clear()  # the refused login's 401 is logged as a failed resource
        page.fill("#token", produced["token"])
        page.click("button[type=submit]")
        page.wait_for_url(base + "/dashboard")
        cookie = next(c for c in context.cookies() if c["name"] == "bt_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
        assert produced["token"] not in cookie["value"]

        # The numbers the pipe produced: 6 messages sent, 3 hard + 1 soft bounces.
        def big(card: str) -> str:
            return str(page.locator(f"#{card} .big").inner_text()).strip()

        assert big("stat-sent") == str(len(HARD + SOFT + DELIVERED))
        assert big("stat-bounced") == "4"
        assert page.locator("#stat-hard").inner_text() == "3"
        assert page.locator("#stat-soft").inner_text() == "1"
        assert big("stat-bounce-rate") == f"{4 / 6 * 100:.2f} %"
        assert page.locator("svg.chart g.bar[data-total='4']").count() == 1  # today's bar
        assert page.locator("#top-domains").inner_text().count("remote.test") == 1
        page.screenshot(path=str(ARTIFACTS / "dashboard-overview.png"), full_page=True)

        # Filter the event list: hard bounces, then one recipient.
        page.click("nav >> text=Events")
        page.wait_for_url(base + "/events")
        assert page.locator("#event-list tbody tr").count() == 4
        page.select_option("select[name=type]", "bounce")
        page.select_option("select[name=severity]", "hard")
        page.click("#event-filters button[type=submit]")
        page.wait_for_url("**/events?*severity=hard*")
        rows = page.locator("#event-list tbody tr")
        assert rows.count() == 3
        assert sorted(rows.locator("td.recipient").all_inner_texts()) == HARD
        assert all("5.1.1" in t for t in rows.locator("td.diag").all_inner_texts())
        page.fill("input[name=q]", "UNKNOWN-2")
        page.click("#event-filters button[type=submit]")
        page.wait_for_url("**q=UNKNOWN-2*")
        assert page.locator("#event-list tbody tr").count() == 1
        page.screenshot(path=str(ARTIFACTS / "dashboard-events.png"), full_page=True)

        # Open the event: classified fields and the raw report from the pipe.
        page.click("#event-list tbody tr td.when a")
        page.wait_for_url("**/events/*")
        fields = page.locator("#event-fields").inner_text()
        assert "unknown-2@remote.test" in fields and "5.1.1" in fields and "hard" in fields
        raw = page.locator("#raw-report").inner_text()
        assert "unknown-2@remote.test" in raw and "Final-Recipient" in raw
        page.screenshot(path=str(ARTIFACTS / "dashboard-event.png"), full_page=True)

        # The outbox: the worker gave up on one webhook job (dead-lettered); replay it.
        store = open_store(produced["config"].store_url)
        try:
            hard1 = next(e["event_id"] for e in produced["events"] if e["recipient"] == HARD[0])
            (job,) = [j for j in store.jobs() if j.event_id == hard1]
            assert job.id is not None
            store.job_failed(job.id, time.time(), "HTTP 503 from the receiver", None)
            page.click("nav >> text=Outbox")
            page.wait_for_url(base + "/outbox")
            dead = page.locator("#outbox-dead tbody tr")
            assert dead.count() == 1 and HARD[0] in dead.inner_text()
            assert page.locator("#outbox-pending tbody tr").count() == 3  # the other bounces' jobs
            page.screenshot(path=str(ARTIFACTS / "dashboard-outbox.png"), full_page=True)
            dead.locator("button", has_text="Replay").click()
            page.wait_for_url(f"**/outbox?replayed={job.id}")
            assert f"Job {job.id} is pending again" in page.locator(".notice").inner_text()
            assert page.locator("#outbox-dead tbody tr").count() == 0
            replayed = next(j for j in store.jobs() if j.id == job.id)
            assert (replayed.state, replayed.attempts) == ("pending", 0)
        finally:
            store.close()

        page.click("text=Log out")
        page.wait_for_url("**/login")
        page.goto(base + "/events")
        assert "/login" in page.url
        assert not errors, errors  # e.g. a CSP violation or a missing asset
    finally:
        context.close()
