#!/usr/bin/env python3
"""Where a bounce's CPU goes in the pipe server: the work itself vs. the process around it.

One process imports and warms what ``bouncetrack pipe-server`` does (:func:`warm`), then
stores distinct bounces (a real configuration and SQLite store, :func:`bench.pipe.setup_bounces`)
three ways, in alternating rounds (the machine is shared and noisy):

* ``in-process``: the pipe's :func:`~bouncetrack.bounce_pipe.main.main`, as the server's child
  calls it (message, start time and the server's configuration handed in), in this process;
* ``in-process, kept``: the same with the store connection and configuration kept across
  bounces (:func:`~bouncetrack.bounce_pipe.process.keep_stores_open`), as an LMTP worker runs it;
* ``forked child``: the same call in a child forked per bounce, as the server does today
  (CPU: the child's, from the parent's reaped-children times, plus the parent's);
* ``bare fork``: a child that exits at once (the fork and exit alone).

CPU time per bounce, medians of the rounds. The pipe client (``python -S client.py``, one
per bounce, started by pipe(8)) comes on top; ``bench/capacity.py`` measures it in place.
Writes ``bench/results/bounce_path.json``.

    python bench/bounce_path.py [--rounds 5] [-n 40]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import write_result  # noqa: E402
from bench.pipe import setup_bounces  # noqa: E402


def cpu_now() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("-n", type=int, default=40, help="bounces per way and round")
    a = ap.parse_args()

    from bouncetrack.bounce_pipe import process
    from bouncetrack.bounce_pipe.main import main as pipe_main
    from bouncetrack.bounce_pipe.server import warm
    from bouncetrack.core.config_loader import load_config
    from bouncetrack.core.tokens import load_keyring

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["BOUNCETRACK_CACHE_DIR"] = tmp
        cfg, inputs = setup_bounces(tmp, 3 * a.n * a.rounds + 10)
        config = load_config(cfg)
        runtime = (config, load_keyring(config))
        warm(str(cfg))
        said = io.StringIO()
        nxt = iter(inputs)

        def store_one() -> int:
            verp, data = next(nxt)
            saved, sys.stderr = sys.stderr, said
            try:
                return pipe_main(["--config", str(cfg), verp, ""], raw=data, started=time.time(), fallback=runtime)
            finally:
                sys.stderr = saved

        def in_process() -> int:
            process._Kept.on = False
            return store_one()

        def in_process_kept() -> int:
            process._Kept.on = True  # keep_stores_open(), switched per call to alternate the ways
            return store_one()

        def forked() -> int:
            process._Kept.on = False
            pid = os.fork()
            if pid == 0:
                code = 75
                try:
                    code = store_one()
                finally:
                    os._exit(code)
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

        def bare_fork() -> int:
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

        ways: dict[str, Callable[[], int]] = {"in-process": in_process, "in-process, kept": in_process_kept,
                                              "forked child": forked, "bare fork": bare_fork}
        for _ in range(10):
            in_process()  # first-use caches, as a server that has run a while
        per: dict[str, list[float]] = {k: [] for k in ways}
        failures = 0
        for _ in range(a.rounds):
            for name, fn in ways.items():
                c0 = cpu_now()
                codes = [fn() for _ in range(a.n)]
                per[name].append((cpu_now() - c0) / a.n)
                failures += sum(1 for c in codes if c != 0)
        process.close_kept_stores()
    med = {k: statistics.median(v) for k, v in per.items()}
    for k, v in med.items():
        print(f"{k:17s} {v * 1000:6.2f} ms CPU per bounce (rounds: {', '.join(f'{x * 1000:.1f}' for x in per[k])})")
    overhead = med["forked child"] - med["in-process"]
    print(f"a fork per bounce adds {overhead * 1000:.1f} ms ({med['forked child'] / med['in-process']:.1f}× the work); "
          f"failures {failures}")
    path = write_result("bounce_path", {
        "rounds": a.rounds, "n_per_round": a.n, "cpu_ms_per_bounce_median": {k: v * 1000 for k, v in med.items()},
        "cpu_ms_per_bounce_rounds": {k: [x * 1000 for x in v] for k, v in per.items()},
        "fork_overhead_ms": overhead * 1000, "forked_to_in_process_ratio": med["forked child"] / med["in-process"],
        "failures": failures,
    })
    print(f"written {path}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
