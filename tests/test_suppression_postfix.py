"""Suppression lists through the real private Postfix, the real milter and the real pipe (issue 6).

tracked.test has policy reject, untracked.test policy drop. What the SMTP client
is told and what the fake remote MX receives are the proof.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from bouncetrack.core import replies
from bouncetrack.store import open_store
from bouncetrack.store.views import Suppression
from bouncetrack.suppression.index import REFRESH_SECONDS
from tests.storeview import rows
from tests.test_milter_postfix import delivered_to

pytestmark = pytest.mark.postfix

STACK_OPTIONS = {
    "with_milter": True,
    "pipe": "real",
    "domains": {
        "tracked.test": {"tracking": True, "suppression": {"policy": "reject"}},
        "untracked.test": {"tracking": False, "suppression": {"policy": "drop"}},
    },
}


@pytest.fixture(autouse=True)
def clean(stack: Any) -> None:
    stack.reset()
    if not stack.milter_running():
        stack.start_milter()


def suppress(stack: Any, domain: str, address: str) -> None:
    store = open_store(f"sqlite:///{stack.db_path}")
    store.add_suppressions([Suppression(domain, address, "manual", None, time.time(), None)])
    store.close()
    time.sleep(REFRESH_SECONDS + 1.0)  # the milter's index follows the store at this pace


def test_reject_refuses_the_suppressed_recipient_at_rcpt_and_delivers_the_other(stack: Any) -> None:
    suppress(stack, "tracked.test", "gone-r@remote.test")
    r = stack.send("info@tracked.test", ["ok-r@remote.test", "Gone-R@remote.test"])
    assert r.rcpts["ok-r@remote.test"][0] == 250
    code, text = r.rcpts["Gone-R@remote.test"]
    assert code == int(replies.SUPPRESSED.code) and text.startswith(replies.SUPPRESSED.status), r
    assert r.accepted, r
    tx = delivered_to(stack, "ok-r@remote.test")
    assert [x.address for x in tx.rcpts] == ["ok-r@remote.test"]
    assert tx.mail_from.startswith("b+")  # still tracked
    # The tracked message's record names only the accepted recipient (once the milter's
    # journal writer has moved it into the store: issue 20).
    def recorded() -> list[Any]:
        return [x for x in rows(stack.db_path, "recipients") if x["address"].endswith("-r@remote.test")]
    stack.wait_for(lambda: bool(recorded()), 10)
    (rcpt,) = recorded()
    assert rcpt["address"] == "ok-r@remote.test"


def test_drop_removes_the_recipient_silently(stack: Any) -> None:
    suppress(stack, "untracked.test", "gone-d@remote.test")
    r = stack.send("info@untracked.test", ["ok-d@remote.test", "gone-d@remote.test"])
    assert r.rcpts == {"ok-d@remote.test": r.rcpts["ok-d@remote.test"], "gone-d@remote.test": r.rcpts["gone-d@remote.test"]}
    assert all(code == 250 for code, _ in r.rcpts.values()) and r.accepted, r
    tx = delivered_to(stack, "ok-d@remote.test")
    assert [x.address for x in tx.rcpts] == ["ok-d@remote.test"]
    stack.postfix.wait_queue_empty(30)
    assert stack.fakemx.for_rcpt("gone-d@remote.test") == []


def test_drop_of_the_only_recipient_discards_the_message(stack: Any) -> None:
    suppress(stack, "untracked.test", "gone-only@remote.test")
    r = stack.send("info@untracked.test", ["gone-only@remote.test"])
    assert r.accepted, r  # the client is told 250
    stack.postfix.wait_queue_empty(30)
    time.sleep(1)
    assert stack.fakemx.for_rcpt("gone-only@remote.test") == []
    assert "discard" in stack.postfix.log_text().lower()


def test_a_hard_bounce_through_the_pipe_suppresses_the_next_message(stack: Any) -> None:
    r = stack.send("info@tracked.test", ["unknown-loop@remote.test"])
    assert r.accepted, r
    stack.wait_for(lambda: [s for s in rows(stack.db_path, "suppressions")
                            if s["address"] == "unknown-loop@remote.test"], timeout=30)
    (entry,) = [s for s in rows(stack.db_path, "suppressions") if s["address"] == "unknown-loop@remote.test"]
    assert (entry["domain"], entry["reason"]) == ("tracked.test", "hard_bounce")
    time.sleep(REFRESH_SECONDS + 1.0)
    again = stack.send("info@tracked.test", ["unknown-loop@remote.test"])
    assert again.rcpts["unknown-loop@remote.test"][0] == 550 and not again.accepted, again
    # Another sender domain has its own list: untracked.test may still send to it.
    assert stack.send("info@untracked.test", ["unknown-loop@remote.test"]).rcpts["unknown-loop@remote.test"][0] == 250
