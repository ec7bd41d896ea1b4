"""Forgetting one address (issue 16): the store contract on SQLite and PostgreSQL, the
milter's index learning of it, ``bouncetrack forget`` and ``DELETE /v1/addresses/{address}``.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bouncetrack.api.app import create_app
from bouncetrack.ops.forget import forget
from bouncetrack.store import open_store
from bouncetrack.store.base import REASON_FORGOTTEN, REASON_MANUAL, OutboxJob, RecipientRecord
from bouncetrack.store.views import ForgetCounts, Suppression
from bouncetrack.suppression import FORGOTTEN_PREFIX, forgotten_address, key_hash
from bouncetrack.suppression.index import SuppressionIndex
from bouncetrack.core.tokens import hash_api_token
from tests.configkit import write_config
from tests.test_store_backends import make_event, make_message
from tests.test_store_backends import new_url, pg_cluster, store, url  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]
NOW = 100_000.0
GONE = "gone@x.test"


def seed(store: Any) -> dict[str, str]:
    """Events, raw reports, jobs, suppressions and recipient rows about GONE and others."""
    msg = replace(make_message(7, n_rcpts=0), recipients=(
        RecipientRecord("Gone@X.test", "rfc822;Gone@X.test", None),
        RecipientRecord("alias@x.test", f"rfc822;{GONE}", None),  # aliased: named by its ORCPT
        RecipientRecord("stay@x.test", "rfc822;stay@x.test", None),
    ))
    store.record_message(msg)
    ids: dict[str, str] = {}
    shapes: dict[str, dict[str, Any]] = {
        "recipient": {"recipient": "Gone@X.test", "reported_recipient": None},
        "reported": {"recipient": "alias@x.test", "reported_recipient": GONE},
        "stay": {"recipient": "stay@x.test", "reported_recipient": "stay@x.test"},
        "other_domain": {"recipient": GONE, "domain": "other.test"},
    }
    for name, over in shapes.items():
        e = make_event(dedupe_key=name, received_at=NOW - 10, **over)
        jobs = [OutboxJob(event_id=e.event_id, channel="webhook", target="https://hook", created_at=NOW - 10)]
        assert store.store_report([e], f"raw report about {name}".encode(), jobs, name).stored
        ids[name] = e.event_id
    store.add_suppressions([
        Suppression("example.com", GONE, REASON_MANUAL, None, NOW - 5, None),
        Suppression("other.test", GONE, REASON_MANUAL, None, NOW - 5, None),
        Suppression("example.com", "stay@x.test", REASON_MANUAL, None, NOW - 5, None),
    ])
    return ids


def test_forget_contract_on_both_backends(store: Any) -> None:
    ids = seed(store)
    index = SuppressionIndex()
    index.load(store, NOW)
    assert index.contains("example.com", GONE) and index.contains("other.test", GONE)

    counts = forget(store, GONE, ["example.com"], NOW)
    assert counts == ForgetCounts(events=2, outbox_jobs=2, raw_reports=2, suppressions=1, recipients=2)
    assert store.event(ids["recipient"]) is None and store.event(ids["reported"]) is None
    assert store.event(ids["stay"]) is not None and store.event(ids["other_domain"]) is not None
    assert store.raw_report(ids["stay"]) == b"raw report about stay"
    assert sorted(j.event_id for j in store.jobs(limit=10)) == sorted([ids["stay"], ids["other_domain"]])
    message = store.message_by_token_id(7)
    assert [r.address for r in message.recipients] == ["stay@x.test"]
    # the suppression entry: a tombstone under a pseudonym, and the milter's index learns of it
    rows = store.suppressions(["example.com"], NOW, include_inactive=True)
    assert sorted(s.address for s in rows) == sorted([forgotten_address("example.com", GONE), "stay@x.test"])
    tomb = next(s for s in rows if s.address.startswith(FORGOTTEN_PREFIX))
    assert tomb.reason == REASON_FORGOTTEN and tomb.removed_at == NOW and GONE not in repr(tomb)
    index.refresh(store, NOW + 1)
    assert not index.contains("example.com", GONE)
    assert index.contains("other.test", GONE) and index.contains("example.com", "stay@x.test")

    # everywhere (the CLI's scope), then nothing is left; forgetting again finds nothing
    assert forget(store, GONE, None, NOW + 2) == ForgetCounts(events=1, outbox_jobs=1, raw_reports=1,
                                                               suppressions=1, recipients=0)
    index.refresh(store, NOW + 3)
    assert not index.contains("other.test", GONE)
    assert forget(store, GONE, None, NOW + 4) == ForgetCounts()  # nothing names it any more
    assert all(GONE not in s.address for s in store.suppressions(None, NOW + 5, include_inactive=True))

    # listed again later, and forgotten again: the old tombstone makes way for the new one
    store.add_suppressions([Suppression("example.com", GONE, REASON_MANUAL, None, NOW + 6, None)])
    index.refresh(store, NOW + 6)
    assert index.contains("example.com", GONE)
    forget(store, GONE, ["example.com"], NOW + 7)
    index.refresh(store, NOW + 7)
    assert not index.contains("example.com", GONE)
    assert forget(store, GONE, [], NOW + 8) == ForgetCounts()  # an empty scope forgets nothing


def test_pseudonym_carries_the_index_key() -> None:
    alias = forgotten_address("example.com", GONE)
    assert GONE not in alias and int(alias.removeprefix(FORGOTTEN_PREFIX), 16) == key_hash("example.com", GONE)


TOKEN = "tok-forget"


def test_cli_and_api(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"""\
        domains:
          example.com: {{api_tokens: ["{hash_api_token(TOKEN)}"]}}
          other.test: {{}}
        """)
    store = open_store(config.store_url)
    try:
        seed(store)
    finally:
        store.close()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with TestClient(create_app(config)) as c:
        r = c.delete("/v1/addresses/Gone@X.test", headers=auth)
        assert r.status_code == 200, r.text
        assert r.json() == {"address": GONE, "domains": ["example.com"], "deleted": {
            "events": 2, "outbox_jobs": 2, "raw_reports": 2, "suppressions": 1, "recipients": 2}}
        r = c.delete("/v1/addresses/gone@x.test", params={"domain": "other.test"}, headers=auth)
        assert r.status_code == 403 and r.json()["parameter"] == "domain"
        r = c.delete("/v1/addresses/not-an-address", headers=auth)
        assert r.status_code == 400 and r.json()["parameter"] == "address"
        assert c.delete("/v1/addresses/gone@x.test").status_code == 401
    proc = subprocess.run([sys.executable, "-m", "bouncetrack", "forget", "GONE@x.test", "--config", str(config.path)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["deleted\tevents\t1", "deleted\toutbox_jobs\t1", "deleted\traw_reports\t1",
                                        "deleted\tsuppressions\t1", "deleted\trecipients\t0"]
    bad = subprocess.run([sys.executable, "-m", "bouncetrack", "forget", "nope", "--config", str(config.path)],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert bad.returncode == 1 and "nope" in bad.stderr


@pytest.fixture(autouse=True)
def _pythonpath(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
