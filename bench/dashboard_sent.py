#!/usr/bin/env python3
"""The dashboard's "sent" count: every message of the period vs the worker's daily roll-up.

Fills a real SQLite store (temporary directory) with ``-n`` tracked messages (one
recipient each, ``--extra`` of them with a second) spread over ``--days`` days of
``--domains`` sender domains, then, in this one process, times
:meth:`~bouncetrack.store.sqlite.SQLiteStore.dashboard_sent` for the whole period
as the dashboard asks for it (one domain's scope and all domains'):

- live: nothing rolled up yet, every message of the period is read (the baseline,
  what every dashboard load cost before the roll-up);
- rolled: after :meth:`~bouncetrack.store.sqlite.SQLiteStore.roll_up_sent` up to the
  last day's start (what the worker does hourly), so only the last day is live.

Both must give the same counts (checked). Also reported: the roll-up's own time
(once per day in production, one transaction per day of messages), and the
longest of those transactions (how long the milter's writes may wait for it).

    python bench/dashboard_sent.py [-n 1000000] [--days 30] [--domains 3] [--rounds 5]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import write_result  # noqa: E402

DAY = 86400


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("-n", type=int, default=1_000_000, help="messages (default 1000000)")
    ap.add_argument("--days", type=int, default=30, help="days they are spread over (default 30)")
    ap.add_argument("--domains", type=int, default=3, help="sender domains (default 3)")
    ap.add_argument("--extra", type=float, default=0.2, help="share of messages with a second recipient")
    ap.add_argument("--rounds", type=int, default=5, help="timed calls per case; the median is reported")
    a = ap.parse_args()

    from bouncetrack.store import open_store
    from bouncetrack.store.sqlite import SQLiteStore

    domains = [f"sender{i}.test" for i in range(a.domains)]
    today = time.time() // DAY * DAY
    first_day = today - (a.days - 1) * DAY
    with tempfile.TemporaryDirectory(prefix="bt-dashboard-bench-") as tmp:
        store = open_store(f"sqlite:///{tmp}/bt.db", timeout=60)
        assert isinstance(store, SQLiteStore)
        t0 = time.perf_counter()
        # Bulk rows straight into the tables (record_message per message would take
        # minutes); the same columns the milter writes.
        db = sqlite3.connect(f"{tmp}/bt.db", isolation_level=None)
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO messages (id, token_id, token, queue_id, message_id, sender_domain, envelope_sender, "
            "verp_sender, dsn_ret, dsn_envid, created_at) VALUES (?, ?, ?, NULL, ?, ?, ?, ?, NULL, NULL, ?)",
            ((i, i, f"t{i}", f"<{i}@bench>", domains[i % a.domains], f"info@{domains[i % a.domains]}",
              f"b+t{i}@bounce.test", first_day + ((i - 1) * a.days * DAY) / a.n) for i in range(1, a.n + 1)),
        )
        extra_every = max(1, round(1 / a.extra)) if a.extra > 0 else 0
        db.executemany(
            "INSERT INTO recipients (message_pk, address, orcpt, notify, position) VALUES (?, ?, NULL, NULL, ?)",
            ((i, f"r{i}.{p}@remote.test", p) for i in range(1, a.n + 1)
             for p in range(2 if extra_every and i % extra_every == 0 else 1)),
        )
        db.execute("COMMIT")
        db.close()
        fill_s = time.perf_counter() - t0
        print(f"store filled with {a.n} messages over {a.days} days in {fill_s:.1f} s")

        start, end = first_day, today + DAY
        scopes = {"one domain": domains[:1], "all domains": domains}

        def timed() -> dict[str, dict[str, float | list[int]]]:
            out: dict[str, dict[str, float | list[int]]] = {}
            for name, scope in scopes.items():
                runs = []
                for _ in range(a.rounds):
                    t = time.perf_counter()
                    counts = store.dashboard_sent(scope, start, end)
                    runs.append(time.perf_counter() - t)
                out[name] = {"median_s": statistics.median(runs), "counts": list(counts)}
            return out

        live = timed()
        t = time.perf_counter()
        days_written = store.roll_up_sent(today)
        roll_up_s = time.perf_counter() - t
        # The longest single transaction: roll one more day up from scratch, timed alone.
        store._conn.execute("DELETE FROM message_days")
        store._conn.execute("UPDATE sent_rolled_until SET until = ?", (today - DAY,))
        t = time.perf_counter()
        store.roll_up_sent(today)
        one_day_s = time.perf_counter() - t
        store._conn.execute("DELETE FROM message_days")
        store._conn.execute("UPDATE sent_rolled_until SET until = 0")
        store.roll_up_sent(today)
        rolled = timed()
        store.close()

    print(f"roll-up of {a.days - 1} days: {roll_up_s:.2f} s ({days_written} day rows); "
          f"one day's transaction: {one_day_s * 1e3:.0f} ms")
    ratios = {}
    for name in scopes:
        assert rolled[name]["counts"] == live[name]["counts"], (name, rolled[name], live[name])
        lv, rv = float(live[name]["median_s"]), float(rolled[name]["median_s"])  # type: ignore[arg-type]
        ratios[name] = rv / lv
        print(f"{name:12s} live {lv * 1e3:8.1f} ms   rolled up {rv * 1e3:7.1f} ms   ratio {rv / lv:.3f}   "
              f"counts {live[name]['counts']}")
    path = write_result("dashboard_sent", {
        "benchmark": "dashboard_sent",
        "messages": a.n, "days": a.days, "domains": a.domains,
        "fill_s": fill_s,
        "live": live, "rolled": rolled, "ratio_rolled_to_live": ratios,
        "roll_up_s": roll_up_s, "roll_up_days": days_written, "roll_up_one_day_s": one_day_s,
    })
    print(f"written {path}")


if __name__ == "__main__":
    main()
