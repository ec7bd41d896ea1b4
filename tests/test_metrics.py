"""Prometheus metrics (issue 5): /metrics of the API, the milter's own port, the alert rules.

Reports go through the real pipe (a new process per bounce, as Postfix runs it);
the API's /metrics is scraped with FastAPI's TestClient and parsed with
prometheus_client's own parser. "Restarting" is a new app instance on the same
store: the counts must not move.
"""

from __future__ import annotations

import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import Milter
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.journal_helpers import drain, journal_shared
from bouncetrack.api.app import create_app
from bouncetrack.core.config import Config, ConfigError
from bouncetrack.core.config_loader import load_config
from bouncetrack.bounce_pipe import client
from bouncetrack.bounce_pipe.client import NO_SERVER, SERVER_LOST
from bouncetrack.bounce_pipe import tempfail as pipe_tempfail
from bouncetrack.metrics import pipe_fallback
from bouncetrack.milter.metrics import build_registry, serve
from bouncetrack.milter.app import Runtime, Shared, make_factory
from bouncetrack.store import open_store
from bouncetrack.store import migrations
from bouncetrack.core.tokens import load_keyring
from tests import mailgen
from tests.configkit import write_config
from tests.test_milter_policy import make_config
from tests.test_milter_testctx import feed
from tests.test_pipe import record, run_pipe

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "conf" / "prometheus" / "alerts.yml"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture()
def config(tmp_path: Path) -> Config:
    return write_config(
        tmp_path,
        f"""\
            pipe: {{deadline_seconds: 8}}
            domains:
              tracked.test:
                tracking: true
                forward: bounces@tracked.test
                webhook: {{url: "http://127.0.0.1:9/hook", secret: whsec_c2VjcmV0}}
              other.test:
                tracking: true
              default:
                tracking: true
        """,
    )


def cache_dir(config: Config) -> Path:
    return config.path.parent / "cache"  # where tests.test_pipe.run_pipe points the pipe


def scrape_text(config: Config, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("BOUNCETRACK_CACHE_DIR", str(cache_dir(config)))
    with TestClient(create_app(config)) as client:  # a new app: a "restarted" API
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text: str = response.text
    return text


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def family_total(samples: Samples, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def forged(verp: str) -> str:
    local, _, domain = verp.partition("@")
    last = local[-1]
    return f"{local[:-1]}{'a' if last != 'a' else 'b'}@{domain}"  # the MAC no longer matches


def test_pipe_counts_reach_metrics_and_survive_a_restart(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A hard bounce, then the same bounce again (Postfix retry): stored + duplicate.
    verp, _ = record(config, "unknown-1@remote.test")
    hard = mailgen.dsn(verp, "unknown-1@remote.test", original_recipient="unknown-1@remote.test")
    assert run_pipe(config, verp, hard).returncode == 0
    assert run_pipe(config, verp, hard).returncode == 0
    # A soft bounce for another configured domain.
    verp2, _ = record(config, "full@remote.test", domain="other.test")
    soft = mailgen.dsn(
        verp2, "full@remote.test", status="4.2.2", action="delayed",
        diagnostic="smtp; 452 4.2.2 <{rcpt}>: Mailbox full",
    )
    assert run_pipe(config, verp2, soft).returncode == 0
    # A domain the config does not list (tracked by the default policy): label "other".
    verp3, _ = record(config, "gone@remote.test", domain="unlisted.test")
    assert run_pipe(config, verp3, mailgen.dsn(verp3, "gone@remote.test")).returncode == 0
    # A forged token: stored unattributed (domain "none").
    bad = forged(verp)
    assert run_pipe(config, bad, mailgen.dsn(bad, "someone@remote.test")).returncode == 0
    # A spam complaint at the feedback address.
    verp4, _ = record(config, "complainer@isp.test")
    assert run_pipe(config, "fbl@bounce.test", mailgen.arf("fbl@bounce.test", verp4, "complainer@isp.test")).returncode == 0
    # A run that cannot even read its configuration: exit 75, logged as a tempfail.
    tempfail = subprocess.run(
        [sys.executable, "-m", "bouncetrack.bounce_pipe", "--config", str(config.path.parent / "missing.yaml"), verp, ""],
        input=hard, capture_output=True, cwd=ROOT, timeout=60,
        env={**os.environ, "BOUNCETRACK_CACHE_DIR": str(cache_dir(config))},
    )
    assert tempfail.returncode == 75, tempfail.stderr
    # The pipe client found no pipe server once and ran the full pipe (test_pipe_server.py
    # proves the client writes this; here, that /metrics shows it).
    note_fallback_in(cache_dir(config), NO_SERVER)

    first = scrape_text(config, monkeypatch)
    s = parse(first)
    assert value(s, "bouncetrack_store_up") == 1
    assert value(s, "bouncetrack_messages_tracked_total", domain="tracked.test") == 2
    assert value(s, "bouncetrack_messages_tracked_total", domain="other.test") == 1
    assert value(s, "bouncetrack_messages_tracked_total", domain="other") == 1
    assert "unlisted.test" not in first and "remote.test" not in first  # no recipients, no unlisted domains
    ev = "bouncetrack_events_total"
    assert value(s, ev, domain="tracked.test", type="bounce", reason="userunknown", severity="hard") == 1
    assert family_total(s, ev, domain="other.test", type="delay", severity="soft") == 1
    assert family_total(s, ev, domain="other", type="bounce") == 1
    assert family_total(s, ev, domain="none") == 1  # the forged one
    assert family_total(s, ev) == 5
    assert value(s, "bouncetrack_complaints_total", domain="tracked.test", feedback_type="abuse") == 1
    assert family_total(s, ev, domain="tracked.test", type="complaint", reason="feedback") == 1
    assert value(s, "bouncetrack_event_tokens_total", token_status="forged") == 1
    assert value(s, "bouncetrack_event_tokens_total", token_status="valid") == 4
    assert value(s, "bouncetrack_event_tokens_total", token_status="expired") == 0  # present at 0
    runs = "bouncetrack_pipe_runs_total"
    assert value(s, runs, outcome="stored") == 5
    assert value(s, runs, outcome="duplicate") == 1
    assert value(s, runs, outcome="tempfail") == 1
    hist = "bouncetrack_pipe_duration_seconds"
    for outcome, n in (("stored", 5), ("duplicate", 1), ("tempfail", 1)):
        assert value(s, f"{hist}_count", outcome=outcome) == n
        assert value(s, f"{hist}_bucket", outcome=outcome, le="+Inf") == n
        assert 0 < value(s, f"{hist}_sum", outcome=outcome) < 60
    assert value(s, "bouncetrack_pipe_fallbacks_total", reason="no-server") == 1
    assert value(s, "bouncetrack_pipe_fallbacks_total", reason="server-lost") == 0  # present at 0
    # The webhook and SMTP jobs of the two tracked.test reports (hard bounce, complaint).
    assert value(s, "bouncetrack_outbox_jobs", state="pending") == 4
    assert value(s, "bouncetrack_deliveries_total", channel="webhook", outcome="delivered") == 0

    # "Restart": a new app instance reads the same counts (process metrics aside).
    again = parse(scrape_text(config, monkeypatch))
    bt = {k: v for k, v in s.items() if k[0].startswith("bouncetrack_") and "age_seconds" not in k[0]}
    assert {k: v for k, v in again.items() if k in bt} == bt


def test_outbox_depth_age_and_delivery_outcomes(config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(3):
        verp, _ = record(config, f"u{i}@remote.test")
        assert run_pipe(config, verp, mailgen.dsn(verp, f"u{i}@remote.test")).returncode == 0
    store = open_store(config.store_url)
    now = time.time()
    jobs = {(j.event_id, j.channel): j for j in store.claim_jobs(now, 10, 60)}
    assert len(jobs) == 6
    (first, second, third) = sorted({e for e, _ in jobs})
    store.job_delivered(jobs[(first, "webhook")].id or 0, now)
    store.job_delivered(jobs[(first, "smtp")].id or 0, now)
    store.job_failed(jobs[(second, "webhook")].id or 0, now, "HTTP 503", now + 30)  # retry
    store.job_failed(jobs[(second, "smtp")].id or 0, now, "refused", None)  # dead
    store.close()
    db = sqlite3.connect(config.store_url.removeprefix("sqlite:///"))
    db.execute("UPDATE outbox SET created_at = ? WHERE event_id = ?", (now - 7200, third))
    db.commit()
    db.close()

    s = parse(scrape_text(config, monkeypatch))
    d = "bouncetrack_deliveries_total"
    assert value(s, d, channel="webhook", outcome="delivered") == 1
    assert value(s, d, channel="smtp", outcome="delivered") == 1
    assert value(s, d, channel="webhook", outcome="retry") == 1
    assert value(s, d, channel="smtp", outcome="dead") == 1
    assert value(s, d, channel="smtp", outcome="retry") == 0
    assert value(s, "bouncetrack_outbox_jobs", state="pending") == 3
    assert value(s, "bouncetrack_outbox_jobs", state="dead") == 1
    assert value(s, "bouncetrack_outbox_leased_jobs") == 2  # third's jobs, still leased
    assert 7200 <= value(s, "bouncetrack_outbox_oldest_pending_age_seconds") < 7300

    # A replayed dead job delivered later counts as one more delivery; nothing goes down.
    store = open_store(config.store_url)
    dead_id = jobs[(second, "smtp")].id or 0
    assert store.replay_job(dead_id, now)
    store.job_delivered(dead_id, now)
    store.close()
    s2 = parse(scrape_text(config, monkeypatch))
    assert value(s2, d, channel="smtp", outcome="delivered") == 2
    assert value(s2, d, channel="smtp", outcome="dead") == 1
    assert value(s2, "bouncetrack_outbox_jobs", state="dead") == 0


def test_store_unavailable_is_a_gauge_not_a_failed_scrape(config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    broken = Config(**{**config.__dict__, "store_url": "sqlite:////proc/nonexistent/dir/bt.db"})
    s = parse(scrape_text(broken, monkeypatch))
    assert value(s, "bouncetrack_store_up") == 0
    assert not any(n.startswith("bouncetrack_events") for n, _ in s)


def test_migration_backfills_counters_from_rows_already_stored(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    before = tuple(m for m in migrations.MIGRATIONS if m[0] < 3)
    migrations.migrate(conn, before)
    conn.execute(
        "INSERT INTO messages (id, token_id, token, sender_domain, envelope_sender, verp_sender, created_at) "
        "VALUES (1, 7, 't', 'tracked.test', 'a@tracked.test', 'b+t@bounce.test', 0)"
    )
    for i, (hard, reason) in enumerate([(1, "userunknown"), (1, "userunknown"), (0, "mailboxfull")]):
        conn.execute(
            "INSERT INTO events (event_id, type, hard, reason, domain, token_status, flagged, "
            "received_at, dedupe_key) VALUES (?, 'bounce', ?, ?, 'tracked.test', 'valid', 0, 0, ?)",
            (f"e{i}", hard, reason, f"k{i}"),
        )
    conn.execute(
        "INSERT INTO outbox (event_id, channel, target, state, attempts, next_attempt_at, created_at, updated_at) "
        "VALUES ('e0', 'webhook', 'u', 'dead', 3, 0, 0, 0), ('e1', 'webhook', 'u', 'delivered', 1, 0, 0, 0)"
    )
    migrations.migrate(conn)
    assert conn.execute("SELECT domain, count FROM metric_message_counts").fetchall() == [("tracked.test", 1)]
    assert sorted(conn.execute("SELECT reason, hard, count FROM metric_event_counts").fetchall()) == [
        ("mailboxfull", 0, 1), ("userunknown", 1, 2)
    ]
    assert sorted(conn.execute("SELECT outcome, count FROM metric_delivery_counts").fetchall()) == [
        ("dead", 1), ("delivered", 1), ("retry", 3)  # 2 before dead-lettering + 1 before delivery
    ]


def test_pipe_does_not_import_prometheus_client(config: Config) -> None:
    verp, _ = record(config, "unknown-1@remote.test")
    code = (
        "import sys; from bouncetrack.bounce_pipe.main import main; rc = main(sys.argv[1:]); "
        "sys.stderr.write('PROM=%s' % ('prometheus_client' in sys.modules)); sys.exit(rc)"
    )
    for config_path in (str(config.path), str(config.path.parent / "missing.yaml")):  # stored, tempfail
        proc = subprocess.run(
            [sys.executable, "-c", code, "--config", config_path, verp, ""],
            input=mailgen.dsn(verp, "unknown-1@remote.test"), capture_output=True, cwd=ROOT, timeout=60,
            env={**os.environ, "BOUNCETRACK_CACHE_DIR": str(config.path.parent)},
        )
        assert proc.returncode in (0, 75) and b"PROM=False" in proc.stderr, proc.stderr


def test_tempfail_log_is_best_effort_and_fixed_size(tmp_path: Path) -> None:
    pipe_tempfail.note_tempfail(0.5, str(tmp_path))
    pipe_tempfail.note_tempfail(12.25, str(tmp_path))
    pipe_tempfail.note_tempfail(1.0, str(tmp_path / "missing-dir"))  # ignored, never raises
    assert (tmp_path / pipe_tempfail.FILENAME).stat().st_size == 2 * pipe_tempfail.RECORD_LEN
    assert pipe_tempfail.read_durations(str(tmp_path)) == (2, [0.5, 12.25])
    assert pipe_tempfail.read_durations(str(tmp_path), max_bytes=10) == (2, [])
    assert pipe_tempfail.read_durations(str(tmp_path / "missing-dir")) == (0, [])


def note_fallback_in(directory: Path, reason: str) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BOUNCETRACK_CACHE_DIR", str(directory))
        client.note_fallback(reason)


def test_fallback_log_is_best_effort_fixed_size_and_counted_by_reason(tmp_path: Path) -> None:
    for reason in (NO_SERVER, SERVER_LOST, NO_SERVER):
        note_fallback_in(tmp_path, reason)
    note_fallback_in(tmp_path / "missing-dir", NO_SERVER)  # ignored, never raises
    assert (tmp_path / client.FALLBACK_LOG).stat().st_size == 3 * client.FALLBACK_RECORD_LEN
    assert pipe_fallback.read_counts(str(tmp_path)) == {NO_SERVER: 2, SERVER_LOST: 1}
    assert pipe_fallback.read_counts(str(tmp_path / "missing-dir")) == {NO_SERVER: 0, SERVER_LOST: 0}


def test_a_fresh_store_does_not_count_an_earlier_installs_pipe_logs(
        config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tempfail and fallback logs live in the cache directory, which outlives a store
    (issue 15: a new store showed 143 tempfails): only records since the store's
    creation (its first migration) are counted."""
    directory = cache_dir(config)
    directory.mkdir(exist_ok=True)
    old = int(time.time()) - 86400
    with open(directory / pipe_tempfail.FILENAME, "wb") as fh:
        for i in range(143):
            fh.write(f"{old + i:010d} {0.5:12.6f}\n".encode())
    with open(directory / client.FALLBACK_LOG, "wb") as fh:
        for i in range(7):
            fh.write(("%010d %-*s\n" % (old + i, client.REASON_WIDTH, NO_SERVER)).encode())
    open_store(config.store_url).close()  # the store is created now
    samples = parse(scrape_text(config, monkeypatch))
    assert value(samples, "bouncetrack_pipe_runs_total", outcome="tempfail") == 0
    assert value(samples, "bouncetrack_pipe_fallbacks_total", reason=NO_SERVER) == 0
    pipe_tempfail.note_tempfail(1.5, str(directory))  # this store's own
    note_fallback_in(directory, NO_SERVER)
    samples = parse(scrape_text(config, monkeypatch))
    assert value(samples, "bouncetrack_pipe_runs_total", outcome="tempfail") == 1
    assert value(samples, "bouncetrack_pipe_fallbacks_total", reason=NO_SERVER) == 1
    # The readers find the first recent record by binary search, at any size.
    assert pipe_tempfail.read_durations(str(directory), since=old + 100)[0] == 44
    assert pipe_tempfail.read_durations(str(directory), since=old + 100, max_bytes=10) == (44, [])


# ------------------------------------------------------------------ the milter


@pytest.fixture()
def milter_shared(tmp_path: Path) -> Shared:
    base = make_config()
    cfg = Config(**{**base.__dict__, "secret_file": tmp_path / "verp.key", "store_url": f"sqlite:///{tmp_path}/bt.db",
                            "milter_journal": tmp_path / "journal"})
    shared = journal_shared(cfg)
    Milter.factory = make_factory(shared)
    return shared


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_milter_port_serves_decisions_and_record_latency(milter_shared: Shared) -> None:
    port = free_port()
    stop = serve(milter_shared, f"127.0.0.1:{port}")
    try:
        assert feed("<info@tracked.test>", [("<a@remote.test>", ())])[1] == Milter.CONTINUE
        assert feed("<info@tracked.test>", [("<b@remote.test>", ())])[1] == Milter.CONTINUE
        assert feed("<info@untracked.test>", [("<c@remote.test>", ())])[1] == Milter.CONTINUE
        assert feed("<>", [("<d@remote.test>", ())])[1] == Milter.CONTINUE
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        stop()
        milter_shared.close()
    s = parse(text)
    d = "bouncetrack_milter_decisions_total"
    assert value(s, d, decision="tracked") == 2
    assert value(s, d, decision="untracked") == 1
    assert value(s, d, decision="null-sender") == 1
    assert value(s, d, decision="tempfail-store") == 0  # every decision present from the start
    assert value(s, "bouncetrack_milter_record_seconds_count") == 2
    assert 0 < value(s, "bouncetrack_milter_record_seconds_sum") < 5


def test_milter_metrics_listen_config(tmp_path: Path) -> None:
    base = f"bounce_domain: bounce.test\nsecret_file: {tmp_path}/k\nstore: sqlite:///{tmp_path}/bt.db\n"
    path = tmp_path / "c.yaml"
    path.write_text(base)
    assert load_config(path).milter_metrics_listen is None
    path.write_text(base + "milter_metrics_listen: null\n")
    assert load_config(path).milter_metrics_listen is None
    path.write_text(base + "milter_metrics_listen: 127.0.0.1:9125\n")
    assert load_config(path).milter_metrics_listen == "127.0.0.1:9125"
    path.write_text(base + "milter_metrics_listen: 9125\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}:4: milter_metrics_listen:" in str(err.value)


# ------------------------------------------------------------ the milter probe (issue 15)


def test_milter_up_is_probed_by_the_api_at_each_scrape(config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """The milter's own metrics vanish when it is down: the API's /metrics says so instead."""
    from tests.test_doctor import _fake_milter

    sock = config.milter_socket
    assert not sock.exists()
    assert value(parse(scrape_text(config, monkeypatch)), "bouncetrack_milter_up") == 0.0
    assert ("bouncetrack_milter_up", frozenset()) in parse(scrape_text(config, monkeypatch))
    t = _fake_milter(str(sock), 0x1FF)  # answers one negotiation
    try:
        assert value(parse(scrape_text(config, monkeypatch)), "bouncetrack_milter_up") == 1.0
    finally:
        t.join(5)
        sock.unlink()
    # a socket that accepts but never answers: 0, within the probe's timeout
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.bind(str(sock))
    silent.listen(1)
    try:
        started = time.monotonic()
        assert value(parse(scrape_text(config, monkeypatch)), "bouncetrack_milter_up") == 0.0
        assert time.monotonic() - started < 10
    finally:
        silent.close()
    # no milter on this host at all (an API instance elsewhere): no series, nothing fires
    elsewhere = Config(**{**config.__dict__, "milter_socket": config.path.parent / "absent" / "milter.sock"})
    assert ("bouncetrack_milter_up", frozenset()) not in parse(scrape_text(elsewhere, monkeypatch))


# ------------------------------------------------------------ the alert rules


def family_names(text: str) -> set[str]:
    """Every series name the families declare, with or without samples yet."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    return {
        f.name + suffix
        for f in text_string_to_metric_families(text)
        for suffix in suffixes.get(f.type, ("",))
    }


def exported_names(config: Config, monkeypatch: pytest.MonkeyPatch, shared: Shared) -> set[str]:
    return family_names(scrape_text(config, monkeypatch)) | family_names(
        generate_latest(build_registry(shared)).decode()
    )


def test_alert_rules_parse_and_name_existing_metrics(
    config: Config, monkeypatch: pytest.MonkeyPatch, milter_shared: Shared
) -> None:
    verp, _ = record(config, "unknown-1@remote.test")  # so every store series exists
    assert run_pipe(config, verp, mailgen.dsn(verp, "unknown-1@remote.test")).returncode == 0
    names = exported_names(config, monkeypatch, milter_shared)
    doc: Any = yaml.safe_load(ALERTS.read_text())
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert {r["alert"] for r in rules} >= {
        "BouncetrackHardBounceRateHigh", "BouncetrackComplaintRateHigh", "BouncetrackOutboxStuck",
        "BouncetrackDeadLetters", "BouncetrackForgedTokensSpike", "BouncetrackPipeTempfails",
        "BouncetrackPipeServerMissing", "BouncetrackMilterDown", "BouncetrackTrackedMailStopped",
    }
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
        used = set(re.findall(r"\bbouncetrack_[a-z_]+", rule["expr"]))
        assert used, rule["alert"]
        assert used <= names, (rule["alert"], used - names)
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]


def test_pipe_guards_reach_metrics(config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    verp, _ = record(config, "only@remote.test")
    assert run_pipe(config, verp, mailgen.hostile_many_recipients(verp, "only@remote.test", 3000)).returncode == 0
    bad = forged(verp)
    assert run_pipe(config, bad, mailgen.dsn(bad, "someone@remote.test")).returncode == 0
    samples = parse(scrape_text(config, monkeypatch))
    assert value(samples, "bouncetrack_pipe_guards_total", guard="events_dropped") == 2999
    assert value(samples, "bouncetrack_pipe_guards_total", guard="unparsed_bad_token") == 1
    assert ("bouncetrack_pipe_guards_total", frozenset({("guard", "classify_budget")})) in samples
