#!/usr/bin/env python3
"""Webhook delivery throughput: the outbox worker vs a bare POST loop, same receiver, same run.

A :class:`~bouncetrack.harness.webhook_receiver.WebhookReceiver` (verifies every
signature, records every request) runs in its own process on loopback, so the
receiver's work does not share this process's GIL with either side. Each round
alternates the two sides (the 2-core machine is noisy: both see the same noise):

* **bare**: :meth:`bouncetrack.forward.httpclient.HttpClient.post` (the worker's own
  client) of ``-n`` requests that were built and signed beforehand (the same payload
  shape and headers the worker sends), one after another, each answer checked for 200;
* **worker**: ``-n`` events with one webhook job each are written to a real SQLite
  store (outside the timing), then :func:`bouncetrack.forward.worker.run_worker`
  (``once``: until no job is due) claims, signs, POSTs and settles them, in this
  process with the production defaults (batch 20, leases); every job must end
  ``delivered``.

Reported: deliveries/s per side (median over rounds) and the ratio worker / bare: what
the store, signing and the log line add to the POSTs. The receiver answers with HTTP/1.0
(a connection per request), alike for both. CPU per delivery, before/after issue 21:
``bench/webhook_cpu.py``.

    python bench/webhook.py [-n 400] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import ROOT, write_result  # noqa: E402

if TYPE_CHECKING:
    from bouncetrack.store.base import BounceEvent

RECEIVER = textwrap.dedent(
    """\
    import json, sys
    from bouncetrack.harness.webhook_receiver import WebhookReceiver
    rx = WebhookReceiver(sys.argv[1]).start()
    print(rx.port, flush=True)
    sys.stdin.read()
    ok = rx.accepted()
    print(json.dumps({"requests": len(rx.requests), "accepted": len(ok), "distinct": len(rx.accepted_ids())}))
    rx.stop()
    """
)


def make_event(i: int, now: float) -> BounceEvent:
    from bouncetrack.store.base import BounceEvent

    rcpt = f"unknown-{i}@remote.test"
    return BounceEvent(
        event_id=uuid.uuid4().hex, type="bounce", hard=True, reason="userunknown", status="5.1.1",
        reply_code="550", diagnostic=f"smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown",
        recipient=rcpt, reported_recipient=rcpt, action="failed", remote_mta="dns; mx.remote.test",
        domain="tracked.test", original_sender="info@tracked.test", original_message_id=f"<m{i}@tracked.test>",
        token="a" * 24, token_status="valid", flagged=False, message_pk=None, received_at=now,
        dedupe_key=uuid.uuid4().hex, sent_at=now - 5,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("-n", type=int, default=400, help="deliveries per round and side (default 400)")
    ap.add_argument("--rounds", type=int, default=5, help="rounds per side, alternating (default 5)")
    a = ap.parse_args()

    from bouncetrack.core.config_loader import load_config
    from bouncetrack.forward import webhook
    from bouncetrack.forward.httpclient import HttpClient
    from bouncetrack.forward.jobs import jobs_for
    from bouncetrack.forward.worker import run_worker
    from bouncetrack.store import open_store

    secret = "bench-" + os.urandom(8).hex()
    rx = subprocess.Popen([sys.executable, "-c", RECEIVER, secret], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          cwd=ROOT, text=True)
    assert rx.stdout is not None and rx.stdin is not None
    port = int(rx.stdout.readline())
    url = f"http://127.0.0.1:{port}/hook"
    rounds: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "bouncetrack.yaml"
        cfg.write_text(textwrap.dedent(f"""\
            bounce_domain: bounce.test
            secret_file: {tmp}/verp.key
            store: sqlite:///{tmp}/bt.db
            milter_socket: {tmp}/milter.sock
            log_level: WARNING
            domains:
              tracked.test: {{tracking: true, webhook: {{url: "{url}", secret: "{secret}", timeout_seconds: 10}}}}
            """))
        config = load_config(cfg)
        policy = config.policy_for("tracked.test")
        store = open_store(config.store_url)

        def fill(n: int) -> None:
            """n events, one webhook job each, stored as the pipe does (batches of 50 per report)."""
            now = time.time()
            for start in range(0, n, 50):
                evs = [make_event(i, now) for i in range(start, min(n, start + 50))]
                jobs = jobs_for(evs, policy, now=now)
                store.store_report(evs, b"raw report %d" % start, jobs, uuid.uuid4().hex)

        def delivered() -> int:
            with sqlite3.connect(f"{tmp}/bt.db") as db:
                return int(db.execute("SELECT count(*) FROM outbox WHERE state = 'delivered'").fetchone()[0])

        def bare_round() -> tuple[float, int]:
            now = time.time()
            reqs = [webhook.build_request(make_event(i, now), url, secret, now) for i in range(a.n)]
            bad = 0
            client = HttpClient()
            try:
                t0 = time.perf_counter()
                for r in reqs:
                    bad += client.post(r.url, r.body, r.headers, 10, 512).status != 200
                return time.perf_counter() - t0, bad
            finally:
                client.close()

        def worker_round() -> tuple[float, int]:
            before = delivered()
            fill(a.n)
            t0 = time.perf_counter()
            run_worker(config, store, once=True, handle_signals=False)
            seconds = time.perf_counter() - t0
            return seconds, a.n - (delivered() - before)

        # Warm-up: imports, connections, the store's pages.
        a_n = a.n
        a.n = min(50, a_n)
        bare_round()
        worker_round()
        a.n = a_n
        for r in range(a.rounds):
            for side, fn in (("bare", bare_round), ("worker", worker_round)):
                seconds, bad = fn()
                rounds.append({"side": side, "seconds": seconds, "per_s": a.n / seconds, "failures": bad})
                print(f"round {r + 1} {side:6s} {a.n / seconds:8.1f} deliveries/s  {seconds:6.2f} s  failures {bad}",
                      flush=True)
        store.close()
    rx.stdin.close()
    counts = json.loads(rx.stdout.readline() or "{}")
    rx.wait(10)

    bare = [float(r["per_s"]) for r in rounds if r["side"] == "bare"]  # type: ignore[arg-type]
    work = [float(r["per_s"]) for r in rounds if r["side"] == "worker"]  # type: ignore[arg-type]
    ratio = statistics.median(work) / statistics.median(bare)
    failures = sum(int(r["failures"]) for r in rounds)  # type: ignore[call-overload]
    expected_accepted = (a.rounds * 2 * a.n) + 2 * min(50, a.n)
    print(f"bare POST loop        median {statistics.median(bare):8.1f} deliveries/s")
    print(f"outbox worker         median {statistics.median(work):8.1f} deliveries/s")
    print(f"ratio worker / bare {ratio:.2f}  failures {failures}  receiver accepted {counts.get('accepted')} "
          f"(expected {expected_accepted})")
    path = write_result("webhook", {
        "deliveries_per_round": a.n, "rounds_per_side": a.rounds, "bare_label": "bare POST loop",
        "comparison": "same receiver process (HTTP/1.0, verifies signatures); rounds alternate bare/worker; "
                      "bare: HttpClient.post (the worker's client) of pre-signed requests",
        "bare_per_s": {"median": statistics.median(bare), "rounds": bare},
        "worker_per_s": {"median": statistics.median(work), "rounds": work},
        "ratio_median": ratio, "failures": failures, "receiver": counts,
        "receiver_check": counts.get("accepted") == expected_accepted,
        "rounds": rounds,
    })
    print(f"written {path}")


if __name__ == "__main__":
    main()
