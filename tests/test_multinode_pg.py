"""Two Postfix "nodes" sharing one PostgreSQL database (issue 6, "More than one Postfix node").

Each node has its own config file and its own config-snapshot cache, but the
same store URL and the same VERP secret file (shared key ring, rotated half-way
through: tokens minted with the old key still verify on both nodes inside the
grace period). Two real pipe processes (``python -m bouncetrack.bounce_pipe``)
run at a time, one per node, and every DSN is delivered to *both* nodes (a
report that reached two MXes, or a retry that landed elsewhere): each report is
stored once. Two real workers (``python -m bouncetrack worker``), one per node,
deliver the webhooks: each event arrives exactly once.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import cast

import pytest

from bouncetrack.core.config import Config, ConfigError
from bouncetrack.core.config_loader import load_config
from bouncetrack.bounce_pipe import config_snapshot
from bouncetrack.harness.webhook_receiver import WebhookReceiver
from bouncetrack.store import open_store
from bouncetrack.store.base import MessageRecord, RecipientRecord
from bouncetrack.core.tokens import load_keyring, mint, new_token_id, rotate_key, verp_address
from tests import mailgen
from tests.pg import Cluster, pg_cluster  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
SECRET = "whsec_" + base64.b64encode(b"multinode-test-key-0123456789abc").decode()
N = 24


def node_config(tmp_path: Path, name: str, url: str, hook: str) -> Config:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        bounce_domain: bounce.test
        secret_file: {tmp_path}/shared/verp.key
        key_grace_period: 1d
        store: {url}
        milter_socket: {tmp_path}/{name}.sock
        log_level: INFO
        pipe: {{deadline_seconds: 30}}
        outbox: {{base_delay_seconds: 0.05, max_delay_seconds: 0.2}}
        domains:
          tracked.test:
            tracking: true
            webhook: {{url: "{hook}", secret: "{SECRET}"}}
        """))
    (tmp_path / f"{name}-cache").mkdir(mode=0o700, exist_ok=True)
    return load_config(path)


def pipe(config: Config, name: str, recipient: str, data: bytes) -> subprocess.Popen[bytes]:
    """Start the pipe as Postfix's pipe(8) would: report on stdin (a file here: both start at once)."""
    report = config.path.parent / f"{name}-report.eml"
    report.write_bytes(data)
    with open(report, "rb") as stdin:
        return subprocess.Popen(
            [sys.executable, "-m", "bouncetrack.bounce_pipe", "--config", str(config.path), recipient, ""],
            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
            env={**os.environ, "BOUNCETRACK_CACHE_DIR": str(config.path.parent / f"{name}-cache")},
        )


def test_two_pipes_and_two_workers_on_one_database(tmp_path: Path, pg_cluster: Cluster) -> None:
    url = pg_cluster.create_database()
    (tmp_path / "shared").mkdir()
    with WebhookReceiver(SECRET) as rx:
        nodes = {name: node_config(tmp_path, name, url, rx.url) for name in ("node-a", "node-b")}
        a = nodes["node-a"]

        # The milter on either node recorded the messages; half the tokens predate a key rotation.
        store = open_store(url, timeout=10.0)
        sent: list[tuple[str, str]] = []  # (VERP address, recipient)
        for i in range(N):
            if i == N // 2:
                rotate_key(a, time.time())  # shared secret file: both nodes see the new ring
            keyring = load_keyring(a)
            token_id = new_token_id()
            token = mint(keyring, token_id)
            rcpt = f"gone-{i}@remote.test"
            store.record_message(MessageRecord(
                token_id=token_id, token=token, queue_id=f"Q{i}", message_id=f"<m{i}@tracked.test>",
                sender_domain="tracked.test", envelope_sender="info@tracked.test",
                verp_sender=verp_address(a, token), dsn_ret=None, dsn_envid=None,
                recipients=(RecipientRecord(rcpt, f"rfc822;{rcpt}", None),), created_at=time.time(),
            ))
            sent.append((verp_address(a, token), rcpt))

        rx.slow(0.02)  # deliveries overlap: both workers get work
        workers = [
            subprocess.Popen(
                [sys.executable, "-m", "bouncetrack", "worker", "--config", str(cfg.path)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                env={**os.environ, "BOUNCETRACK_CACHE_DIR": str(tmp_path / f"{name}-cache")},
            )
            for name, cfg in nodes.items()
        ]
        try:
            results: list[tuple[str, int, bytes]] = []
            for i, (verp, rcpt) in enumerate(sent):
                dsn = mailgen.dsn(verp, rcpt, original_recipient=rcpt, message_id=f"<m{i}@tracked.test>")
                # The same report reaches both nodes at the same time.
                running = [(name, pipe(cfg, name, verp, dsn)) for name, cfg in nodes.items()]
                for name, proc in running:
                    out, err = proc.communicate(timeout=120)
                    assert out == b""
                    results.append((name, proc.returncode, err))
            assert all(code == 0 for _, code, _ in results), [r for r in results if r[1]]
            stored = [err for _, _, err in results if b": stored:" in err]
            again = [err for _, _, err in results if b"already stored" in err]
            assert len(stored) == N and len(again) == N, results[:4]
            assert rx.wait_for(N, timeout=90)
            time.sleep(0.5)  # a duplicate delivery, if any, would arrive now
        finally:
            for w in workers:
                w.send_signal(signal.SIGTERM)
            outputs = [w.communicate(timeout=30) for w in workers]
        assert [w.returncode for w in workers] == [0, 0], outputs

        events = list(store.events_between(0, time.time() + 60))
        assert len(events) == N  # every report stored once
        assert {e.token_status for e in events} == {"valid"}  # old-key and new-key tokens, on both nodes
        assert sorted(e.recipient or "" for e in events) == sorted(r for _, r in sent)
        assert sorted(rx.accepted_ids()) == sorted(e.event_id for e in events)
        assert not any(r.duplicate for r in rx.requests)  # every webhook delivered once
        jobs = store.jobs(limit=1000)
        assert len(jobs) == N and {j.state for j in jobs} == {"delivered"}
        delivered_per_worker = [err.count(" delivered") for _, err in outputs]
        assert sum(delivered_per_worker) == N and all(delivered_per_worker), delivered_per_worker
        runs = store.metric_counts(time.time()).pipe_runs
        assert sum(c for o, _le, c, _s in runs if o == "stored") == N
        assert sum(c for o, _le, c, _s in runs if o == "duplicate") == N
        store.close()


@pytest.mark.parametrize("url", [
    "postgresql://bouncetrack@db.example.net:5432/bouncetrack",
    "postgresql://bt:s3cret@10.0.0.5/bt?sslmode=require&connect_timeout=5",
    "postgresql:///bouncetrack?host=/run/postgresql",
])
def test_postgresql_store_url_passes_validation_and_the_snapshot(tmp_path: Path, url: str) -> None:
    config = node_config(tmp_path, "node", url, "http://127.0.0.1:9/hook")
    assert config.store_url == url  # passed through unchanged (libpq reads it)
    cache = tmp_path / "snap"
    cache.mkdir(mode=0o700)
    assert config_snapshot.save(config, str(cache))
    (snap,) = cache.iterdir()
    assert snap.stat().st_mode & 0o077 == 0  # the URL may carry a password: owner only
    cached = config_snapshot.load_cached(config.path, str(cache))
    assert cached is not None and cached.store_url == url and cached == config


@pytest.mark.parametrize("url", ["postgresql://", "postgres://h/db", "postgresql+psycopg://h/db"])
def test_bad_postgresql_store_urls_are_refused(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigError, match="store"):
        node_config(tmp_path, "node", url, "http://127.0.0.1:9/hook")
