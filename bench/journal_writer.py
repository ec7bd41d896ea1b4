#!/usr/bin/env python3
"""CPU per record of the milter's journal writer: this checkout against an earlier revision, same run.

Issue 20: the journal writer (:class:`~bouncetrack.milter.journal.JournalWriter`) shares the
node's two cores with Postfix and the milter child; what it spends per record is taken
from mail acceptance. This measures that cost, not a throughput:

* each round runs every side once, the order alternating between rounds (the machine is
  noisy: both see the same noise). A side is a fresh interpreter whose ``bouncetrack`` is
  either this checkout (**after**) or ``git archive REV`` of it (**before**);
* a side makes a fresh SQLite store (``--store postgresql``: a database in a private cluster,
  ``tests/pg.py``, fsync on; its server process's CPU, from ``/proc``, is added to ours; the
  cluster's background writers are not counted), fills it with ``--prefill`` messages through
  ``Store.record_messages`` (a store in use holds days of messages: index pages are not
  all hot), logs as ``bouncetrack milter`` sets it up at INFO into a file, then feeds
  ``-n`` records to a :class:`JournalWriter`: ``--batch`` records appended to a segment
  (made with ``journal.encode``, not timed), one ``step()`` (timed), and so on: batches of
  ~60 are what the writer sees at ~600 messages/s with its 0.1 s pause;
* Message-IDs: ``--message-ids random`` (default) as clients make them (no order: each lands
  on its own index page), or ``sequential`` as ``email.utils.make_msgid`` (the harness, the
  benchmark's client) makes them; token ids random, as the milter mints them;
* the split (each side, each round, the same records): ``store`` = ``Store.record_messages``
  alone (a second store, same prefill); ``log`` = the writer's steps at INFO minus the same at
  WARNING, both into a store that does nothing (no SQLite noise in the difference);
  ``no_store_no_log`` = the latter alone (reading, parsing, decoding, deleting segments);
  ``decode`` = ``decode_all`` alone.

CPU is ``time.process_time()`` (user + system of the process) around the timed calls only.
Reported: µs per record per side and part (medians over rounds), ratios after / before.

    python bench/journal_writer.py [-n 6000] [--rounds 5] [--prefill 100000] [--before REV]
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

BEFORE = "b685ddd"  # main before this work on the writer (issue 20, h20w)

# One side of one round; argv: tree, work dir, n, batch, prefill, message-id kind, the store
# URLs (JSON: "full" and "store"). Prints one JSON line.
SIDE = textwrap.dedent(
    """\
    import json, logging, os, random, sys, time, uuid
    from email.utils import make_msgid
    from pathlib import Path
    tree, work, n, batch, prefill, kind, urls = (sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]),
                                                int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], json.loads(sys.argv[7]))
    import bouncetrack
    assert bouncetrack.__file__.startswith(tree), (bouncetrack.__file__, tree)
    from bouncetrack.core.logsetup import setup
    from bouncetrack.milter import journal
    from bouncetrack.store import open_store
    from bouncetrack.store.base import MessageRecord, RecipientRecord

    setup("milter", "INFO")  # stderr: a file, as journald would take it
    rng = random.Random(1)

    def record(i):
        token = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz234567") for _ in range(24))
        mid = make_msgid(domain="tracked.test") if kind == "sequential" else f"<{uuid.uuid4().hex}@client.test>"
        return MessageRecord(
            token_id=rng.getrandbits(63) or 1, token=token, queue_id=f"4Xk9Qn{i:08X}", message_id=mid,
            sender_domain="tracked.test", envelope_sender="info@tracked.test", verp_sender=f"b+{token}@bounce.test",
            dsn_ret=None, dsn_envid=None, created_at=time.time(),
            recipients=(RecipientRecord(address=f"ok-{i}@remote.test", orcpt=None, notify=None),))

    TICK = os.sysconf("SC_CLK_TCK")

    def backend_cpu(store):  # CPU seconds of a PostgreSQL store's server process (0 for SQLite: in ours)
        pid = getattr(getattr(getattr(store, "_conn", None), "info", None), "backend_pid", None)
        if not pid:
            return 0.0
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime

    def fresh(name):
        store = open_store(urls[name])
        for first in range(0, prefill, 1000):
            store.record_messages([record(i) for i in range(first, min(prefill, first + 1000))])
        return store

    records = [record(prefill + i) for i in range(n)]
    texts = [journal.encode(m)[1:-1] for m in records]
    chunks = [records[i : i + batch] for i in range(0, n, batch)]

    class NullStore:  # the writer without a store: what the rest of its work costs
        def record_messages(self, records):
            return len(records)

        def close(self):
            pass

    def writer_run(name, level, null=False):
        store = NullStore() if null else fresh(name)
        directory = work / f"journal-{name}"
        directory.mkdir()
        writer = journal.JournalWriter(directory, lambda: store)
        logging.getLogger().setLevel(level)
        cpu = -backend_cpu(store)  # the server's: over the whole loop (clock ticks), idle between steps
        for k, chunk in enumerate(chunks):
            (directory / f"{k:020d}-1.seg").write_bytes(b"".join(journal.encode(m) for m in chunk))
            t0 = time.process_time()
            moved = writer.step()
            cpu += time.process_time() - t0
            assert moved == len(chunk), (moved, len(chunk))
        cpu += backend_cpu(store)
        logging.getLogger().setLevel("INFO")
        store.close()
        return cpu

    def store_run(name):
        store = fresh(name)
        cpu = -backend_cpu(store)
        for first in range(0, n, batch):
            part = records[first : first + batch]
            t0 = time.process_time()
            store.record_messages(part)
            cpu += time.process_time() - t0
        cpu += backend_cpu(store)
        store.close()
        return cpu

    t0 = time.process_time()
    for first in range(0, n, batch):
        journal.decode_all(texts[first : first + batch])
    decode = time.process_time() - t0
    total = writer_run("full", "INFO")
    store = store_run("store")
    logged = writer_run("null-info", "INFO", null=True)
    quiet = writer_run("null-quiet", "WARNING", null=True)
    us = 1e6 / n
    print(json.dumps({"total": total * us, "store": store * us, "log": (logged - quiet) * us,
                      "decode": decode * us, "no_store_no_log": quiet * us}))
    """
)

PARTS = ("total", "store", "log", "decode", "no_store_no_log")


def run_side(tree: Path, work: Path, a: argparse.Namespace, urls: dict[str, str]) -> dict[str, float]:
    work.mkdir(parents=True)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    with open(work / "writer.log", "wb") as log:
        out = subprocess.run([sys.executable, "-c", SIDE, str(tree), str(work), str(a.n), str(a.batch),
                              str(a.prefill), a.message_ids, json.dumps(urls)],
                             env=env, cwd=work, stdout=subprocess.PIPE, stderr=log, check=True, timeout=1800)
    result: dict[str, float] = json.loads(out.stdout)
    lines = sum(1 for line in (work / "writer.log").read_bytes().splitlines() if b" INFO tracked queue_id=" in line)
    if lines != 2 * a.n:  # the real store's run and the no-op store's at INFO
        raise SystemExit(f"{work}: {lines} 'tracked' lines logged, expected {2 * a.n}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("-n", type=int, default=6000, help="records per side and round (default 6000)")
    ap.add_argument("--batch", type=int, default=60, help="records per writer step (default 60)")
    ap.add_argument("--prefill", type=int, default=100000, help="messages in the store before (default 100000)")
    ap.add_argument("--message-ids", choices=("random", "sequential"), default="random")
    ap.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite",
                    help="postgresql: a private cluster (tests/pg.py, fsync on), its server process's CPU added")
    ap.add_argument("--rounds", type=int, default=5, help="rounds, each side once per round (default 5)")
    ap.add_argument("--before", default=BEFORE, help=f"the revision to compare with (default {BEFORE})")
    ap.add_argument("--name", default="journal_writer", help="result file name (bench/results/NAME.json)")
    a = ap.parse_args()

    rounds: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        before_tree = tmp / "before"
        before_tree.mkdir()
        before_rev, after_rev = checkout_at(a.before, before_tree)
        trees = {"before": before_tree, "after": ROOT}
        cluster = None
        if a.store == "postgresql":
            from tests.pg import start_cluster, unavailable

            if why := unavailable():
                raise SystemExit(f"--store postgresql: {why}")
            cluster = start_cluster(durable=True)
        try:
            for r in range(a.rounds):
                order = ("before", "after") if r % 2 == 0 else ("after", "before")
                for side in order:
                    urls = {name: cluster.create_database() if cluster else f"sqlite:///{tmp}/r{r}-{side}/{name}.db"
                            for name in ("full", "store")}
                    got = run_side(trees[side], tmp / f"r{r}-{side}", a, urls)
                    rounds.append({"round": r + 1, "side": side, **got})
                    print(f"round {r + 1} {side:6s} " + "  ".join(f"{p} {got[p]:5.1f}" for p in PARTS)
                          + " µs CPU/record", flush=True)
        finally:
            if cluster is not None:
                cluster.stop()

    def values(side: str, part: str) -> list[float]:
        return [float(x[part]) for x in rounds if x["side"] == side]  # type: ignore[arg-type]

    medians = {side: {p: statistics.median(values(side, p)) for p in PARTS} for side in ("before", "after")}
    per_round = [f / b for f, b in zip(values("after", "total"), values("before", "total"))]
    for side, rev in (("before", before_rev), ("after", after_rev)):
        print(f"{side:6s} ({rev}) medians: " + "  ".join(f"{p} {medians[side][p]:5.1f}" for p in PARTS) + " µs/record")
    ratio = medians["after"]["total"] / medians["before"]["total"]
    print(f"total after / before {ratio:.2f} (median of per-round ratios {statistics.median(per_round):.2f})")
    path = write_result(a.name, {
        "records_per_round": a.n, "batch": a.batch, "prefill": a.prefill, "message_ids": a.message_ids,
        "store": a.store, "rounds": a.rounds, "before_rev": before_rev, "after_rev": after_rev,
        "comparison": "fresh interpreter per side and round, order alternating; CPU = time.process_time() "
                      "around JournalWriter.step() (total, INFO logged to a file), Store.record_messages alone "
                      "(store), steps into a no-op store at INFO minus at WARNING (log), the latter alone "
                      "(no_store_no_log), decode_all alone (decode)",
        "before_us_per_record": medians["before"], "after_us_per_record": medians["after"],
        "ratio_after_to_before_total": ratio, "ratio_per_round_median": statistics.median(per_round),
        "runs": rounds,
    })
    print(f"written {path}")


if __name__ == "__main__":
    main()
