#!/usr/bin/env python3
"""Download API export benchmark: a million events through the real HTTP endpoint.

Fills a fresh SQLite store with N events (executemany, one transaction), then
exports the whole range as NDJSON and as CSV through ``bouncetrack api``
(uvicorn in a subprocess on loopback, the real CLI and config), streamed by an
httpx client that counts the rows. Per export: wall time, rows/s, bytes, and
the server's peak RSS (VmHWM from /proc/PID/status; a fresh server per export,
so each peak is that export's). The baseline, in the same run and on the same
file: a bare ``SELECT * FROM events`` in this process, fetched in the same
batches and thrown away. Rounds alternate baseline / NDJSON / CSV (the machine
is noisy: all see the same noise); medians are reported, the ratio as the
median of each round's export / that round's baseline.

Targets (issue 5): export under 10 s, server RSS under 150 MB, at most 3x the
bare SELECT. The figures are printed and written to bench/results/export.json;
nothing here asserts on time.

``--compare-httptools`` adds, in the same rounds, the exports through the
server as it was before issue 16 (uvicorn's httptools parser instead of h11,
everything else equal; needs httptools installed): the figures behind the
README's choice of h11.

    python bench/export.py [-n 1000000] [--rounds 3] [--compare-httptools]
"""

from __future__ import annotations

import argparse
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from bench._common import ROOT, write_result  # noqa: E402

TOKEN = "bench-export-token"
DOMAIN = "bench.test"
DAY0 = 1767225600.0  # 2026-01-01T00:00:00Z
FETCH = 2000  # the API's batch size (bouncetrack.api.download.STREAM_BATCH)
TARGET_SECONDS, TARGET_RSS_MB, TARGET_RATIO = 10.0, 150.0, 3.0


def fill(path: Path, n: int) -> float:
    """n realistic events (varied types, reasons, recipients, diagnostics), one transaction."""
    types = ("bounce", "bounce", "bounce", "delay", "complaint")
    reasons = ("userunknown", "mailboxfull", "hostunknown", "spamdetected", "expired")
    cols = (
        "event_id, type, hard, reason, status, reply_code, diagnostic, recipient, reported_recipient, "
        "action, remote_mta, domain, original_sender, original_message_id, token, token_status, flagged, "
        "received_at, dedupe_key, feedback_type, sent_at"
    )
    rand = os.urandom(12).hex()

    def rows() -> Any:
        for i in range(n):
            t = types[i % 5]
            yield (
                f"{i:012x}{rand}{i % 997:08x}", t, t == "bounce" and i % 3 == 0, reasons[i % 5], "5.1.1", "550",
                f"smtp; 550 5.1.1 <user{i}@remote{i % 50}.example>: Recipient address rejected: "
                "User unknown in virtual mailbox table",
                f"user{i}@remote{i % 50}.example", f"user{i}@remote{i % 50}.example", "failed",
                f"dns; mx{i % 50}.remote.example", DOMAIN, f"news@{DOMAIN}", f"<{i}.20260101@{DOMAIN}>",
                "aebagbafaydqqcikbmgq2dq4", "valid", 0, DAY0 + i * 0.25, f"dk{i}",
                "abuse" if t == "complaint" else None, DAY0 + i * 0.25 - 30,
            )

    t0 = time.perf_counter()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("BEGIN")
    conn.executemany(f"INSERT INTO events ({cols}) VALUES ({', '.join('?' * 21)})", rows())
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - t0


def bare_select(path: Path) -> tuple[float, int]:
    conn = sqlite3.connect(path)
    t0 = time.perf_counter()
    cur = conn.execute("SELECT * FROM events")
    n = 0
    while True:
        rows = cur.fetchmany(FETCH)
        if not rows:
            break
        n += len(rows)
    elapsed = time.perf_counter() - t0
    conn.close()
    return elapsed, n


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def wait_until_serving(base: str, server: "subprocess.Popen[bytes]", log_name: str, seconds: float = 30) -> None:
    """Return once the API at ``base`` answers ``/openapi.json``; raise if it exits or stays silent."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            httpx.get(base + "/openapi.json", timeout=1).raise_for_status()
            return
        except httpx.HTTPError:
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"the API did not start; see {log_name}") from None
            time.sleep(0.1)


# The server as ``bouncetrack api`` runs it, with uvicorn's httptools parser instead of h11.
HTTPTOOLS_SERVER = """\
import sys, uvicorn
from bouncetrack.api.app import create_app
from bouncetrack.api.server import server_config
from bouncetrack.core.config_loader import load_config
config = load_config(sys.argv[1])
settings = server_config(create_app(config), config, "127.0.0.1", int(sys.argv[2]))
settings.http = "httptools"
uvicorn.Server(settings).run()
"""


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (less sensitive to a loaded machine than wall time)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def export(python: str, cfg: Path, fmt: str, n: int, tmp: Path, http: str = "h11") -> dict[str, Any]:
    """One export through a fresh server (``http``: h11, as shipped, or httptools); returns the figures."""
    port = free_port()
    log = open(tmp / f"api-{fmt}.log", "ab")
    if http == "h11":
        cmd = [python, "-m", "bouncetrack", "api", "--config", str(cfg), "--listen", f"127.0.0.1:{port}"]
    else:
        cmd = [python, "-c", HTTPTOOLS_SERVER, str(cfg), str(port)]
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(base, server, log.name)
        rss_idle = proc_kib(server.pid, "VmRSS")
        cpu_idle = proc_cpu_seconds(server.pid)
        url = f"{base}/v1/bounces/2026-01-01/2026-12-31"
        rows = size = 0
        t0 = time.perf_counter()
        with httpx.stream("GET", url, params={"format": fmt}, headers={"Authorization": f"Bearer {TOKEN}"},
                          timeout=120) as r:
            r.raise_for_status()
            for chunk in r.iter_raw(1 << 20):
                rows += chunk.count(b"\n")
                size += len(chunk)
        elapsed = time.perf_counter() - t0
        peak = proc_kib(server.pid, "VmHWM")
        cpu = proc_cpu_seconds(server.pid) - cpu_idle
    finally:
        server.terminate()
        server.wait(10)
        log.close()
    if fmt == "csv":
        rows -= 1  # the header
    if rows != n:
        raise RuntimeError(f"{fmt}: exported {rows} rows, expected {n}")
    return {"seconds": elapsed, "server_cpu_seconds": cpu, "rows": rows, "bytes": size, "rows_per_s": rows / elapsed,
            "rss_idle_mb": rss_idle / 1024, "rss_peak_mb": peak / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("-n", type=int, default=1_000_000, help="events in the store")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--python", default=sys.executable, help="interpreter that runs the API")
    ap.add_argument("--compare-httptools", action="store_true", help="also export through httptools (pre-issue-16)")
    a = ap.parse_args()
    formats = ("ndjson", "csv") + (("ndjson-httptools", "csv-httptools") if a.compare_httptools else ())

    from bouncetrack.core.config_loader import load_config
    from bouncetrack.store import open_store
    from bouncetrack.core.tokens import hash_api_token, load_keyring

    with tempfile.TemporaryDirectory(prefix="bt-bench-export-") as tmpdir:
        tmp = Path(tmpdir)
        cfg = tmp / "bouncetrack.yaml"
        cfg.write_text(textwrap.dedent(f"""\
            bounce_domain: bounce.test
            secret_file: {tmp}/verp.key
            store: sqlite:///{tmp}/bt.db
            milter_socket: {tmp}/milter.sock
            log_level: WARNING
            domains:
              {DOMAIN}: {{api_tokens: ["{hash_api_token(TOKEN)}"]}}
            """))
        config = load_config(cfg)
        load_keyring(config)
        open_store(config.store_url).close()  # creates and migrates the schema
        db = tmp / "bt.db"
        fill_s = fill(db, a.n)
        print(f"filled {a.n} events in {fill_s:.1f} s ({db.stat().st_size / 1e6:.0f} MB)")

        runs: dict[str, list[dict[str, Any]]] = {"bare": [], **{f: [] for f in formats}}
        for r in range(a.rounds):
            secs, n = bare_select(db)
            assert n == a.n
            runs["bare"].append({"seconds": secs, "rows_per_s": n / secs})
            for variant in formats:
                fmt, _, http = variant.partition("-")
                runs[variant].append(export(a.python, cfg, fmt, a.n, tmp, http or "h11"))
            print(f"round {r + 1}: bare {secs:.2f} s, "
                  + ", ".join(f"{v} {runs[v][-1]['seconds']:.2f} s" for v in formats))

    def med(fmt: str, key: str) -> float:
        values: list[float] = [x[key] for x in runs[fmt]]
        return statistics.median(values)

    bare = med("bare", "seconds")
    out: dict[str, Any] = {"n": a.n, "rounds": a.rounds, "fetch_batch": FETCH, "fill_seconds": fill_s,
                           "bare_select": {"seconds_median": bare, "rows_per_s": a.n / bare, "runs": runs["bare"]},
                           "targets": {"seconds": TARGET_SECONDS, "rss_mb": TARGET_RSS_MB, "ratio": TARGET_RATIO}}
    print(f"\nbare SELECT * FROM events  {bare:6.2f} s  {a.n / bare:>10,.0f} rows/s")
    for fmt in formats:
        secs = med(fmt, "seconds")
        peak = max(x["rss_peak_mb"] for x in runs[fmt])
        # Each export against the baseline of its own round (the machine is
        # shared and noisy); the median of those ratios.
        ratio = statistics.median(x["seconds"] / b["seconds"] for x, b in zip(runs[fmt], runs["bare"]))
        ok = secs < TARGET_SECONDS and peak < TARGET_RSS_MB and ratio <= TARGET_RATIO
        out[fmt] = {"seconds_median": secs, "rows_per_s": a.n / secs, "ratio_to_bare_median": ratio,
                    "rss_peak_mb_max": peak, "bytes": runs[fmt][0]["bytes"], "meets_targets": ok, "runs": runs[fmt]}
        print(f"{fmt:<16} export over HTTP    {secs:6.2f} s  {a.n / secs:>10,.0f} rows/s  "
              f"{runs[fmt][0]['bytes'] / 1e6:5.0f} MB  peak RSS {peak:5.1f} MB  "
              f"ratio {ratio:.2f}x  targets (<{TARGET_SECONDS:g} s, <{TARGET_RSS_MB:g} MB, <={TARGET_RATIO:g}x) "
              f"{'met' if ok else 'MISSED'}")
    if a.compare_httptools:
        # h11 (shipped) against httptools (before issue 16), round by round.
        out["h11_vs_httptools"] = {
            fmt: statistics.median(x["seconds"] / y["seconds"] for x, y in zip(runs[fmt], runs[f"{fmt}-httptools"]))
            for fmt in ("ndjson", "csv")
        }
        out["h11_vs_httptools_server_cpu"] = {
            fmt: statistics.median(x["server_cpu_seconds"] / y["server_cpu_seconds"]
                                   for x, y in zip(runs[fmt], runs[f"{fmt}-httptools"]))
            for fmt in ("ndjson", "csv")
        }
        print("h11 / httptools, medians of rounds: wall time "
              + ", ".join(f"{k} {v:.3f}x" for k, v in out["h11_vs_httptools"].items())
              + "; server CPU " + ", ".join(f"{k} {v:.3f}x" for k, v in out["h11_vs_httptools_server_cpu"].items()))
    print(f"written {write_result('export', out)}")


if __name__ == "__main__":
    main()
