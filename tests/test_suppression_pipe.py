"""The pipe puts recipients on the suppression list (issue 6): a real pipe process per bounce."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from bouncetrack.core.config import Config
from bouncetrack.store import open_store
from bouncetrack.store.views import Suppression
from tests import mailgen
from tests.configkit import write_config
from tests.test_pipe import events, record, run_pipe

DAY = 86400.0


@pytest.fixture()
def config(tmp_path: Path) -> Config:
    return write_config(
        tmp_path,
        f"""\
            pipe: {{deadline_seconds: 8}}
            domains:
              tracked.test:
                tracking: true
                suppression: {{policy: reject, soft_bounce_limit: 3, soft_bounce_days: 7, expire_days: 30}}
              other.test:
                tracking: true
              default:
                suppression: {{soft_bounce_limit: 2, expire_days: null}}
        """,
    )


def listed(config: Config) -> list[sqlite3.Row]:
    db = sqlite3.connect(config.store_url.removeprefix("sqlite:///"))
    db.row_factory = sqlite3.Row
    return db.execute("SELECT * FROM suppressions ORDER BY id").fetchall()


def soft(verp: str, rcpt: str) -> bytes:
    return mailgen.dsn(verp, rcpt, status="5.2.2", diagnostic="smtp; 552 5.2.2 <{rcpt}>: Mailbox full")


def test_hard_bounce_lists_the_recipient_in_the_report_transaction(config: Config) -> None:
    verp, _ = record(config, "Unknown-1@Remote.test")
    before = time.time()
    proc = run_pipe(config, verp, mailgen.dsn(verp, "Unknown-1@Remote.test"))
    assert proc.returncode == 0, proc.stderr
    (event,) = events(config)
    (row,) = listed(config)
    assert (row["domain"], row["address"], row["reason"]) == ("tracked.test", "unknown-1@remote.test", "hard_bounce")
    assert row["source_event_id"] == event["event_id"]
    assert row["expires_at"] == pytest.approx(row["created_at"] + 30 * DAY)
    assert before <= row["created_at"] <= time.time()
    # The same bounce again (a Postfix retry): nothing new, nothing changed.
    assert run_pipe(config, verp, mailgen.dsn(verp, "Unknown-1@Remote.test")).returncode == 0
    assert [dict(r) for r in listed(config)] == [dict(row)]


def test_complaint_lists_the_complainer(config: Config) -> None:
    verp, _ = record(config, "complainer@isp.test")
    assert run_pipe(config, "fbl@bounce.test", mailgen.arf("fbl@bounce.test", verp, "complainer@isp.test")).returncode == 0
    (row,) = listed(config)
    assert (row["domain"], row["address"], row["reason"]) == ("tracked.test", "complainer@isp.test", "complaint")


def test_soft_bounces_list_after_the_limit_within_the_window(config: Config) -> None:
    for i in range(2):
        verp, _ = record(config, "full@remote.test")
        assert run_pipe(config, verp, soft(verp, "full@remote.test")).returncode == 0
        assert listed(config) == [], f"listed after {i + 1} soft bounce(s)"
    verp, _ = record(config, "full@remote.test")
    assert run_pipe(config, verp, soft(verp, "full@remote.test")).returncode == 0
    assert [e["hard"] for e in events(config)] == [0, 0, 0]
    (row,) = listed(config)
    assert (row["address"], row["reason"]) == ("full@remote.test", "soft_bounces")


def test_soft_bounces_outside_the_window_or_domain_do_not_count(config: Config) -> None:
    # Two old soft bounces (8 days ago) and one at another domain: the third now is alone.
    db = sqlite3.connect(config.store_url.removeprefix("sqlite:///"))
    for i in range(2):
        verp, _ = record(config, "full@remote.test")
        assert run_pipe(config, verp, soft(verp, "full@remote.test")).returncode == 0
    db.execute("UPDATE events SET received_at = received_at - 8 * 86400")
    db.commit()
    verp, _ = record(config, "full@remote.test", domain="other.test")
    assert run_pipe(config, verp, soft(verp, "full@remote.test")).returncode == 0
    verp, _ = record(config, "full@remote.test")
    assert run_pipe(config, verp, soft(verp, "full@remote.test")).returncode == 0
    assert listed(config) == []
    # other.test inherits default's limit 2 and never-expiring entries.
    verp, _ = record(config, "full@remote.test", domain="other.test")
    assert run_pipe(config, verp, soft(verp, "full@remote.test")).returncode == 0
    (row,) = listed(config)
    assert (row["domain"], row["reason"], row["expires_at"]) == ("other.test", "soft_bounces", None)


def test_unattributed_flagged_and_delays_never_list(config: Config) -> None:
    verp, _ = record(config, "someone@remote.test")
    assert run_pipe(config, verp, mailgen.dsn(verp, "forwarded-elsewhere@other.test")).returncode == 0  # flagged
    token = verp.split("+", 1)[1].split("@")[0]
    forged = verp.replace(token, ("b" if token[0] != "b" else "c") + token[1:])
    assert run_pipe(config, forged, mailgen.dsn(forged, "unknown-1@remote.test")).returncode == 0
    verp, _ = record(config, "slow@remote.test")
    delayed = mailgen.dsn(verp, "slow@remote.test", status="4.4.1", action="delayed",
                          diagnostic="smtp; 451 4.4.1 connection timed out")
    for _ in range(4):
        assert run_pipe(config, verp, delayed + b"\n" + str(_).encode()).returncode == 0
    assert listed(config) == []


def test_expired_or_removed_entry_is_put_back_by_a_new_hard_bounce(config: Config) -> None:
    store = open_store(config.store_url)
    now = time.time()
    store.add_suppressions([
        Suppression("tracked.test", "gone@remote.test", "manual", None, now - 100 * DAY, now - DAY),
    ])
    assert store.suppressions(["tracked.test"], now) == []
    verp, _ = record(config, "gone@remote.test")
    assert run_pipe(config, verp, mailgen.dsn(verp, "gone@remote.test")).returncode == 0
    (entry,) = store.suppressions(["tracked.test"], time.time())
    assert entry.reason == "hard_bounce" and entry.expires_at is not None and entry.expires_at > now + 29 * DAY
    assert entry.created_at >= now
    store.close()
