#!/usr/bin/env python3
"""Bounce pipe start-up benchmark: a new process per bounce, as Postfix runs it.

Runs ``<python> -m bouncetrack.bounce_pipe --config F RECIPIENT SENDER`` with a
DSN on stdin N times (a real config, a real SQLite store, distinct bounces so
each is stored), interleaved with a bare start, ``-c pass``, of the very same
interpreter (POSTFIX-NOTES: compare with the interpreter that runs the pipe, not
a pyenv shim). Reports median and p99 per bounce and the ratio of medians.
Target (issue 4): pipe median ≤ 4× the bare start.

The pipe is timed as deployed: pipe(8) starts the pipe client (``python -S
bouncetrack/bounce_pipe/client.py --socket S …``), which hands the bounce to a
running ``bouncetrack pipe-server``. The full pipe (``python -m
bouncetrack.bounce_pipe``: what the client falls back to without a server) is timed
too, interleaved, each on its own distinct bounces.

The bare start is the venv's base interpreter (``sys._base_executable``, Debian's
/usr/bin/python3.11). The venv's own ``python -c pass`` is timed too but is not
bare: an editable install (``pip install -e``, what ``scripts/bootstrap`` does)
puts an import hook in site-packages that every start of that venv runs, about
10 ms here, doubling the start. The pipe pays no more for it (it imports the same
modules anyway), so a ratio against that start flatters the pipe by about 2×.

As in production, another connection to the store stays open during the runs
(there, the milter's): the pipe is never the last connection, so its close does
not checkpoint and delete the WAL.

    python bench/pipe.py [-n 200]
"""

from __future__ import annotations

import argparse
import compileall
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import ROOT, summary, write_result  # noqa: E402
from tests import mailgen  # noqa: E402


def write_config(tmp: str | Path) -> Path:
    """A configuration in ``tmp``: SQLite store, one tracked domain with a webhook."""
    cfg = Path(tmp) / "bouncetrack.yaml"
    cfg.write_text(
        textwrap.dedent(
            f"""\
            bounce_domain: bounce.test
            secret_file: {tmp}/verp.key
            store: sqlite:///{tmp}/bt.db
            milter_socket: {tmp}/milter.sock
            domains:
              tracked.test: {{tracking: true, webhook: {{url: "http://127.0.0.1:9/", secret: s}}}}
            """
        )
    )
    return cfg


def record_tracked(store: Any, config: Any, keyring: Any, rcpt: str, i: int) -> str:
    """Record a tracked one-recipient message to ``rcpt``, as the milter would; its VERP address."""
    from bouncetrack.store.base import MessageRecord, RecipientRecord
    from bouncetrack.core.tokens import mint, new_token_id, verp_address

    token_id = new_token_id()
    token = mint(keyring, token_id)
    verp = verp_address(config, token)
    store.record_message(
        MessageRecord(token_id, token, None, f"<m{i}@tracked.test>", "tracked.test", "info@tracked.test",
                      verp, None, None, (RecipientRecord(rcpt, f"rfc822;{rcpt}", None),), time.time())
    )
    return verp


def setup_bounces(tmp: str, n: int) -> tuple[Path, list[tuple[str, bytes]]]:
    """A configuration in ``tmp`` (:func:`write_config`) and ``n`` distinct bounces for
    it: (VERP address, DSN) pairs whose messages are recorded, so each bounce is stored
    as one event."""
    from bouncetrack.core.config_loader import load_config
    from bouncetrack.store import open_store
    from bouncetrack.core.tokens import load_keyring

    cfg = write_config(tmp)
    config = load_config(cfg)
    keyring = load_keyring(config)
    store = open_store(config.store_url)
    inputs = []
    for i in range(n):
        rcpt = f"unknown-{i}@remote.test"
        verp = record_tracked(store, config, keyring, rcpt, i)
        inputs.append((verp, mailgen.dsn(verp, rcpt)))
    store.close()
    return cfg, inputs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=200, help="bounces (and bare starts)")
    ap.add_argument("--python", default=sys.executable, help="interpreter that runs the pipe")
    a = ap.parse_args()

    from bouncetrack.core.config_loader import load_config
    from bouncetrack.harness.stack import wait_accepting
    from bouncetrack.store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        cfg, inputs = setup_bounces(tmp, 2 * a.n)  # one set for the client, one for the full pipe
        config = load_config(cfg)
        # Held open for the whole run, as the milter (and worker, API) hold theirs.
        keep_open = open_store(config.store_url)
        keep_open.message_by_token_id(0)

        full_cmd = [a.python, "-m", "bouncetrack.bounce_pipe", "--config", str(cfg)]
        sock = Path(tmp) / "pipe.sock"
        client_cmd = [a.python, "-S", str(ROOT / "bouncetrack" / "bounce_pipe" / "client.py"),
                      "--socket", str(sock), "--config", str(cfg)]
        # As in production: a private cache directory for the validated config snapshot.
        cache = Path(tmp) / "cache"
        cache.mkdir(mode=0o700)
        env = {**os.environ, "BOUNCETRACK_CACHE_DIR": str(cache)}
        # As installed: byte-compiled. A shell with PYTHONDONTWRITEBYTECODE=1 and a stale
        # __pycache__ would otherwise recompile changed modules in every run and measure that.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        compileall.compile_dir(str(ROOT / "bouncetrack"), quiet=1)
        base_python = subprocess.run([a.python, "-c", "import sys; print(sys._base_executable)"],
                                     capture_output=True, text=True, check=True).stdout.strip()
        bare_cmd = [base_python, "-c", "pass"]
        venv_cmd = [a.python, "-c", "pass"]
        server = subprocess.Popen([a.python, "-m", "bouncetrack", "pipe-server", "--socket", str(sock),
                                   "--config", str(cfg), "--log-level", "WARNING"], cwd=ROOT, env=env)
        try:
            why = wait_accepting(sock, server, 30)
            if why is not None:
                raise SystemExit(f"the pipe server did not start: {why}")
            pipe_t: list[float] = []
            full_t: list[float] = []
            bare_t: list[float] = []
            venv_t: list[float] = []
            failures = 0
            for i in range(a.n):  # interleaved: the machine is noisy, all see the same noise
                t0 = time.perf_counter()
                subprocess.run(bare_cmd, check=True)
                bare_t.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                subprocess.run(venv_cmd, check=True)
                venv_t.append(time.perf_counter() - t0)
                for cmd, (verp, data), times in ((client_cmd, inputs[2 * i], pipe_t),
                                                 (full_cmd, inputs[2 * i + 1], full_t)):
                    t0 = time.perf_counter()
                    proc = subprocess.run([*cmd, verp, ""], input=data, capture_output=True, cwd="/", env=env)
                    times.append(time.perf_counter() - t0)
                    failures += proc.returncode != 0 or b"stored: 1 event" not in proc.stderr
        finally:
            server.terminate()
            server.wait(30)
            keep_open.close()

    pipe_s, full_s, bare_s, venv_s = summary(pipe_t), summary(full_t), summary(bare_t), summary(venv_t)
    ratio = pipe_s["median"] / bare_s["median"]
    full_ratio = full_s["median"] / bare_s["median"]
    venv_ratio = full_s["median"] / venv_s["median"]
    print(f"bare start ({base_python})  median {bare_s['median']*1000:6.1f} ms  p99 {bare_s['p99']*1000:6.1f} ms")
    print(f"venv start ({a.python}, not bare)  median {venv_s['median']*1000:6.1f} ms  "
          f"p99 {venv_s['p99']*1000:6.1f} ms")
    print(f"pipe (client + server)  median {pipe_s['median']*1000:6.1f} ms  p99 {pipe_s['p99']*1000:6.1f} ms")
    print(f"full pipe (no server)   median {full_s['median']*1000:6.1f} ms  p99 {full_s['p99']*1000:6.1f} ms  "
          f"ratio {full_ratio:.2f} (against the venv's start: {venv_ratio:.2f})")
    print(f"ratio (median pipe / median bare) {ratio:.2f}  target <= 4.0  failures {failures}")
    path = write_result(
        "pipe",
        {"n": a.n, "python": a.python, "bare_python": base_python, "pipe_seconds": pipe_s, "bare_seconds": bare_s,
         "full_pipe_seconds": full_s, "full_pipe_ratio": full_ratio,
         "venv_start_seconds": venv_s, "full_pipe_ratio_to_venv_start": venv_ratio, "ratio_median": ratio,
         "target_ratio": 4.0, "failures": failures,
         # Every run, in order (for the report's distribution plot).
         "pipe_samples_seconds": [round(x, 5) for x in pipe_t], "bare_samples_seconds": [round(x, 5) for x in bare_t],
         "full_pipe_samples_seconds": [round(x, 5) for x in full_t]},
    )
    print(f"written {path}")


if __name__ == "__main__":
    main()
