#!/usr/bin/env python3
"""CPU per delivered webhook: the outbox worker of this checkout against an earlier revision, same run.

Issue 21: the worker is one of the processes a node's two cores feed at capacity. This
measures what one delivery costs the worker process, not how fast it goes:

* a :class:`~bouncetrack.harness.webhook_receiver.WebhookReceiver` runs in its own process
  on loopback with HTTP/1.1 keep-alive (as in ``bench/capacity.py``), verifying every
  signature;
* each round runs every side once, the order alternating between rounds (the machine is
  noisy: both see the same noise). A side is a fresh interpreter whose ``bouncetrack`` is
  either this checkout (**after**) or ``git archive REV`` of it (**before**, default
  ``aba94bc``: the last revision whose worker used httpx). It writes ``-n`` events with one
  webhook job each to its own SQLite store, delivers 100 first (imports, the connection,
  the store's pages), then ``-n`` with :func:`~bouncetrack.forward.worker.run_worker`
  (``once``: until nothing is due; production defaults: batch 20, leases; logging as
  ``bouncetrack worker`` sets it up at INFO, one line per delivery, secrets registered
  for redaction, into a file). CPU is ``getrusage(RUSAGE_SELF)`` user + system around
  that call only; every job must end ``delivered``.

Reported: CPU µs per delivery per side (median over rounds), the ratio after / before
of the medians and the median of the per-round ratios; deliveries/s for information.

    python bench/webhook_cpu.py [-n 2000] [--rounds 7] [--before REV]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import ROOT, checkout_at, write_result  # noqa: E402

BEFORE = "aba94bc"  # main before issue 21's worker changes: the last worker with httpx

RECEIVER = textwrap.dedent(
    """\
    import json, sys
    from bouncetrack.harness.webhook_receiver import WebhookReceiver
    rx = WebhookReceiver(sys.argv[1], keep_alive=True).start()
    print(rx.port, flush=True)
    sys.stdin.read()
    ok = rx.accepted()
    print(json.dumps({"requests": len(rx.requests), "accepted": len(ok), "distinct": len(rx.accepted_ids())}))
    rx.stop()
    """
)

# One side of one round; argv: tree, work dir, n, url, secret. Prints one JSON line.
SIDE = textwrap.dedent(
    """\
    import json, resource, sqlite3, sys, textwrap, time, uuid
    from pathlib import Path
    tree, work, n, url, secret = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    import bouncetrack
    assert bouncetrack.__file__.startswith(tree), (bouncetrack.__file__, tree)
    from bouncetrack.core.config_loader import load_config
    from bouncetrack.core.logsetup import setup
    from bouncetrack.core.redact import config_secrets, register
    from bouncetrack.forward.jobs import jobs_for
    from bouncetrack.forward.worker import run_worker
    from bouncetrack.store import open_store
    from bouncetrack.store.base import BounceEvent

    cfg = work / "bouncetrack.yaml"
    cfg.write_text(textwrap.dedent(f'''\\
        bounce_domain: bounce.test
        secret_file: {work}/verp.key
        store: sqlite:///{work}/bt.db
        milter_socket: {work}/milter.sock
        log_level: INFO
        domains:
          tracked.test: {{tracking: true, webhook: {{url: "{url}", secret: "{secret}", timeout_seconds: 10}}}}
        '''))
    config = load_config(cfg)
    setup("worker", config.log_level)  # stderr: a file, as journald would take it
    register(config_secrets(config))
    policy = config.policy_for("tracked.test")
    store = open_store(config.store_url)

    def event(i, now):
        rcpt = f"unknown-{i}@remote.test"
        return BounceEvent(
            event_id=uuid.uuid4().hex, type="bounce", hard=True, reason="userunknown", status="5.1.1",
            reply_code="550", diagnostic=f"smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown",
            recipient=rcpt, reported_recipient=rcpt, action="failed", remote_mta="dns; mx.remote.test",
            domain="tracked.test", original_sender="info@tracked.test", original_message_id=f"<m{i}@tracked.test>",
            token="a" * 24, token_status="valid", flagged=False, message_pk=None, received_at=now,
            dedupe_key=uuid.uuid4().hex, sent_at=now - 5, queue_id=f"Q{i:010d}",
        )

    def fill(count):
        now = time.time()
        for start in range(0, count, 50):
            evs = [event(i, now) for i in range(start, min(count, start + 50))]
            store.store_report(evs, b"raw report %d" % start, jobs_for(evs, policy, now=now), uuid.uuid4().hex)

    def delivered():
        with sqlite3.connect(f"{work}/bt.db") as db:
            return int(db.execute("SELECT count(*) FROM outbox WHERE state = 'delivered'").fetchone()[0])

    fill(100)
    run_worker(config, store, once=True, handle_signals=False)
    fill(n)
    before = delivered()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    run_worker(config, store, once=True, handle_signals=False)
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    store.close()
    print(json.dumps({"cpu_s": (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime),
                      "user_s": r1.ru_utime - r0.ru_utime, "sys_s": r1.ru_stime - r0.ru_stime,
                      "wall_s": t1 - t0, "delivered": delivered() - before}))
    """
)


def run_side(tree: Path, work: Path, n: int, url: str, secret: str) -> dict[str, float]:
    work.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    with open(work / "worker.log", "wb") as log:
        out = subprocess.run([sys.executable, "-c", SIDE, str(tree), str(work), str(n), url, secret],
                             env=env, cwd=work, stdout=subprocess.PIPE, stderr=log, check=True, timeout=900)
    result: dict[str, float] = json.loads(out.stdout)
    lines = sum(1 for line in (work / "worker.log").read_bytes().splitlines() if b": delivered" in line)
    result["log_lines_delivered"] = lines
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("-n", type=int, default=2000, help="deliveries per round and side (default 2000)")
    ap.add_argument("--rounds", type=int, default=7, help="rounds, each side once per round (default 7)")
    ap.add_argument("--before", default=BEFORE, help=f"the revision to compare with (default {BEFORE})")
    ap.add_argument("--name", default="webhook_cpu", help="result file name (bench/results/NAME.json)")
    a = ap.parse_args()

    secret = "bench-" + os.urandom(8).hex()
    rounds: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        before_tree = tmp / "before"
        before_tree.mkdir()
        before_rev, after_rev = checkout_at(a.before, before_tree)
        trees = {"before": before_tree, "after": ROOT}
        rx = subprocess.Popen([sys.executable, "-c", RECEIVER, secret], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, cwd=ROOT, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert rx.stdout is not None and rx.stdin is not None
        url = f"http://127.0.0.1:{int(rx.stdout.readline())}/hook"
        for r in range(a.rounds):
            order = ("before", "after") if r % 2 == 0 else ("after", "before")
            for side in order:
                got = run_side(trees[side], tmp / f"r{r}-{side}", a.n, url, secret)
                us = got["cpu_s"] / a.n * 1e6
                rounds.append({"round": r + 1, "side": side, "cpu_us_per_delivery": us,
                               "deliveries_per_s": a.n / got["wall_s"], **got})
                print(f"round {r + 1} {side:6s} {us:7.0f} µs CPU/delivery  {a.n / got['wall_s']:7.0f} deliveries/s  "
                      f"delivered {got['delivered']:.0f}/{a.n}  log lines {got['log_lines_delivered']:.0f}", flush=True)
        rx.stdin.close()
        counts = json.loads(rx.stdout.readline() or "{}")
        rx.wait(10)

    def side_values(side: str, key: str) -> list[float]:
        return [float(x[key]) for x in rounds if x["side"] == side]  # type: ignore[arg-type]

    before, after = side_values("before", "cpu_us_per_delivery"), side_values("after", "cpu_us_per_delivery")
    per_round = [b / f for b, f in zip(after, before)]
    ratio = statistics.median(after) / statistics.median(before)
    failures = sum(a.n - int(float(x["delivered"])) for x in rounds)  # type: ignore[arg-type]
    expected = a.rounds * 2 * (a.n + 100)
    print(f"before ({before_rev})  median {statistics.median(before):7.0f} µs CPU per delivery")
    print(f"after  ({after_rev})  median {statistics.median(after):7.0f} µs CPU per delivery")
    print(f"ratio after / before {ratio:.2f} (median of per-round ratios {statistics.median(per_round):.2f}); "
          f"undelivered {failures}; receiver accepted {counts.get('accepted')} (expected {expected})")
    path = write_result(a.name, {
        "deliveries_per_round": a.n, "rounds": a.rounds, "before_rev": before_rev, "after_rev": after_rev,
        "comparison": "fresh interpreter per side and round, order alternating; the same keep-alive receiver "
                      "process (verifies signatures); CPU = getrusage user+system around run_worker(once=True)",
        "before_cpu_us_per_delivery": {"median": statistics.median(before), "rounds": before},
        "after_cpu_us_per_delivery": {"median": statistics.median(after), "rounds": after},
        "before_deliveries_per_s": {"median": statistics.median(side_values("before", "deliveries_per_s"))},
        "after_deliveries_per_s": {"median": statistics.median(side_values("after", "deliveries_per_s"))},
        "ratio_after_to_before": ratio, "ratio_per_round_median": statistics.median(per_round),
        "undelivered": failures, "receiver": counts, "receiver_check": counts.get("accepted") == expected,
        "runs": rounds,
    })
    print(f"written {path}")


if __name__ == "__main__":
    main()
