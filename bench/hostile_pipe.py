#!/usr/bin/env python3
"""Hostile reports through the bounce pipe (issue 16): peak RSS and time per run.

Each input is built here (tests/mailgen.py ``hostile_*``), within Postfix's
``message_size_limit`` (10240000), sent to the VERP address of a real
single-recipient message (a valid token: the costliest path, the report is
parsed, classified, attributed and stored), and piped to a new ``python -m
bouncetrack.bounce_pipe`` process, as pipe(8) runs it when the pipe server is
down (the server's forked children run the same code). Peak RSS is the child's
``ru_maxrss`` (os.wait4 in a small launcher process), time is wall time from start to exit. A normal bounce
(the baseline) runs in the same rounds; rounds alternate the inputs, and the
figures are medians. Goal: each input under 150 MB and 2 s, exit 0.

    python bench/hostile_pipe.py [-r 3]

Writes bench/results/hostile_pipe.json and bench/results/hostile_pipe.md. ``--code DIR
--name hostile_pipe_before`` runs the pipe of another source tree (e.g. ``git archive``
of the commit before issue 16) on the same inputs; the table then shows those figures
beside this tree's (``hostile_pipe_before.json``, when present).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import RESULTS, ROOT, write_result  # noqa: E402
from bench.pipe import record_tracked, write_config  # noqa: E402
from tests import mailgen  # noqa: E402

RSS_GOAL_MB = 150.0
TIME_GOAL_S = 2.0

INPUTS: dict[str, tuple[str, Callable[[str, str], bytes]]] = {
    "baseline": ("a normal DSN (one recipient)", lambda v, r: mailgen.dsn(v, r, original_recipient=r)),
    "dsn_100k_recipients": ("a DSN naming 100,000 recipients", mailgen.hostile_many_recipients),
    "boundary_5mb": ("a 5 MB MIME boundary in a 10 MB report", lambda v, r: mailgen.hostile_long_boundary(v)),
    "semicolons_800k_top": ("800,000 ';' in the top-level Content-Type", mailgen.hostile_semicolons),
    "semicolons_800k_inner": ("800,000 ';' in an inner part's Content-Type",
                              lambda v, r: mailgen.hostile_semicolons(v, r, inner=True)),
    "folded_semicolons": ("one Content-Type folded over 10 MB of ';' lines",
                          lambda v, r: mailgen.hostile_folded_semicolons(v)),
    "nested_boundaries": ("~100,000 nested multiparts, each its own boundary",
                          lambda v, r: mailgen.hostile_nested_boundaries(v)),
    "flat_parts": ("~1.4 million empty parts in one multipart", lambda v, r: mailgen.hostile_flat_parts(v)),
    "header_fields": ("~1.2 million header fields", lambda v, r: mailgen.hostile_header_fields(v)),
    "long_line": ("one 10 MB body line", lambda v, r: mailgen.hostile_long_line(v)),
}


# ru_maxrss survives fork and exec on Linux: a child forked from this process (which
# holds the 10 MB inputs) would report at least this process's peak. So the pipe runs
# are started by a small launcher, itself started before any input is built.
LAUNCHER = r"""
import json, os, sys, time
for line in sys.stdin:
    job = json.loads(line)
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        fd = os.open(job["stdin"], os.O_RDONLY); os.dup2(fd, 0)
        err = os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600); os.dup2(err, 2)
        null = os.open(os.devnull, os.O_WRONLY); os.dup2(null, 1)
        os.chdir("/")
        os.execve(job["cmd"][0], job["cmd"], job["env"])
    _, status, usage = os.wait4(pid, 0)
    print(json.dumps([os.waitstatus_to_exitcode(status), time.perf_counter() - t0, usage.ru_maxrss / 1024]), flush=True)
"""


class Launcher:
    def __init__(self, python: str) -> None:
        self.proc = subprocess.Popen([python, "-S", "-c", LAUNCHER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)

    def run(self, cmd: list[str], data: bytes, env: dict[str, str], tmp: Path) -> tuple[int, float, float, bytes]:
        """(exit code, wall seconds, peak RSS MB, stderr) of one pipe run."""
        src, err = tmp / "in.eml", tmp / "err.txt"
        src.write_bytes(data)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, "env": env, "stdin": str(src), "stderr": str(err)}) + "\n")
        self.proc.stdin.flush()
        code, seconds, rss = json.loads(self.proc.stdout.readline())
        return int(code), float(seconds), float(rss), err.read_bytes()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-r", "--rounds", type=int, default=3)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--code", default=str(ROOT), help="source tree whose pipe runs (default: this one)")
    ap.add_argument("--name", default="hostile_pipe", help="result file name")
    a = ap.parse_args()
    launcher = Launcher(a.python)

    from bouncetrack.core.config_loader import load_config
    from bouncetrack.store import open_store
    from bouncetrack.core.tokens import load_keyring

    results: dict[str, dict[str, list[float]]] = {k: {"seconds": [], "rss_mb": [], "exit": []} for k in INPUTS}
    notes: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        cfg = write_config(tmp)
        config = load_config(cfg)
        keyring = load_keyring(config)
        store = open_store(config.store_url)
        cache = tmp / "cache"
        cache.mkdir(mode=0o700)
        env = {**os.environ, "BOUNCETRACK_CACHE_DIR": str(cache), "PYTHONPATH": a.code}
        cmd = [a.python, "-m", "bouncetrack.bounce_pipe", "--config", str(cfg)]
        n = 0
        for _round in range(a.rounds):
            for name, (_what, build) in INPUTS.items():
                n += 1
                rcpt = f"rcpt-{n}@remote.test"
                verp = record_tracked(store, config, keyring, rcpt, n)
                data = build(verp, rcpt)
                assert len(data) <= mailgen.SIZE_LIMIT, (name, len(data))
                code, seconds, rss, stderr = launcher.run([*cmd, verp, ""], data, env, tmp)
                results[name]["seconds"].append(seconds)
                results[name]["rss_mb"].append(rss)
                results[name]["exit"].append(code)
                notes[name] = stderr.decode("utf-8", "replace").strip().splitlines()[-1][:160] if stderr else ""
                print(f"{name:24} exit {code} {seconds:6.2f} s {rss:7.1f} MB  {len(data):>9} bytes", flush=True)
        store.close()
        launcher.close()

    rows: list[dict[str, Any]] = []
    for name, (what, _build) in INPUTS.items():
        r = results[name]
        sec, rss = statistics.median(r["seconds"]), statistics.median(r["rss_mb"])
        rows.append({"input": name, "what": what, "seconds_median": round(sec, 3), "rss_mb_median": round(rss, 1),
                     "exits": sorted(set(int(c) for c in r["exit"])), "last_log_line": notes[name],
                     "within_goal": sec < TIME_GOAL_S and rss < RSS_GOAL_MB and set(r["exit"]) == {0}})
    base = rows[0]
    for row in rows:
        row["time_vs_baseline"] = round(row["seconds_median"] / base["seconds_median"], 2)
        row["rss_vs_baseline"] = round(row["rss_mb_median"] / base["rss_mb_median"], 2)
    path = write_result(a.name, {"rounds": a.rounds, "code": a.code, "goal": {"rss_mb": RSS_GOAL_MB, "seconds": TIME_GOAL_S},
                                         "inputs": rows})
    if a.name != "hostile_pipe":
        print(f"wrote {path}")
        return
    before_path = RESULTS / "hostile_pipe_before.json"
    before = {r["input"]: r for r in json.loads(before_path.read_text())["inputs"]} if before_path.exists() else {}
    lines = [
        "# Hostile reports through the bounce pipe (bench/hostile_pipe.py)",
        "",
        f"Full pipe (`python -m bouncetrack.bounce_pipe`), a new process per report, SQLite store; "
        f"medians of {a.rounds} alternating rounds; goal: < {RSS_GOAL_MB:g} MB peak RSS and < {TIME_GOAL_S:g} s, exit 0.",
        "",
        "| input | peak RSS (MB) | time (s) | × baseline time | exit | within goal | before issue 16 |",
        "|---|---:|---:|---:|---|---|---|",
    ]
    for row in rows:
        old = before.get(row["input"])
        then = (f"{old['rss_mb_median']:.0f} MB, {old['seconds_median']:.2f} s, exit "
                f"{','.join(map(str, old['exits']))}" if old else "–")
        lines.append(f"| {row['what']} | {row['rss_mb_median']:.1f} | {row['seconds_median']:.2f} | "
                     f"{row['time_vs_baseline']:.1f} | {','.join(map(str, row['exits']))} | "
                     f"{'yes' if row['within_goal'] else 'NO'} | {then} |")
    if before:
        lines += ["", f"Before issue 16: the same inputs through the pipe of `{json.loads(before_path.read_text())['code']}` "
                      f"(the tree before the bounds), {json.loads(before_path.read_text())['rounds']} round(s), same machine."]
    (RESULTS / "hostile_pipe.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {path} and {RESULTS / 'hostile_pipe.md'}")


if __name__ == "__main__":
    main()
