#!/usr/bin/env python3
"""API latency under hostile requests (issue 16): a normal request's p99 while attacks run beside it.

``bouncetrack api`` runs in a subprocess on loopback (the real CLI and config, a
SQLite store with some events). One client sends a normal request in a loop
(``GET /v1/bounces/...?limit=50`` with a valid token, keep-alive) and records
each latency. Phases alternate, in the same run: *idle* (the normal client alone)
and one *hostile* phase per attack, where attacker threads (``--attackers``, each
at most ``--rate`` attacks a second, one at a time) run beside it:

- ``header``: a 100 MB request header sent in 1 MB writes (the server answers 400
  after ``api.max_header_bytes`` and closes);
- ``body``: ``POST /v1/send`` declaring a 300 MB body, without a token (401 at
  once, the connection closed, the body never read);
- ``integers``: forged cursors and ids past 2^63 (400s);
- ``html``: a valid token posting 1.2 MB of nested links to ``/v1/send`` (the
  HTML-to-text conversion runs; no MTA listens, so each ends in a 503).

Per phase: the normal request's p50/p99 and the number of attacks served; the
figure is each round's hostile p99 / that round's idle p99, median over rounds
(goal: at most 2x). Also the server's peak RSS. Written to
bench/results/api_hostile.json; nothing asserts on time.

    python bench/api_hostile.py [--rounds 5] [--seconds 5] [--attackers 2] [--rate 10]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from bench._common import ROOT, percentile, write_result  # noqa: E402
from bench.export import fill, free_port, proc_kib, wait_until_serving  # noqa: E402

TOKEN = "bench-export-token"  # bench.export.fill's domain and token
DOMAIN = "bench.test"
MB = 1 << 20
GOAL_RATIO = 2.0
NORMAL = "/v1/bounces/2026-01-01/2026-01-02"


def attack_header(host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Junk: ")
        chunk = b"a" * MB
        try:
            for _ in range(100):
                s.sendall(chunk)
        except OSError:
            pass


def attack_body(host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(f"POST /v1/send HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  f"Content-Length: {300 * MB}\r\n\r\n".encode())
        chunk = b" " * MB
        try:
            for _ in range(300):
                s.sendall(chunk)
        except OSError:
            pass


def attack_integers(client: httpx.Client) -> None:
    for params in ({"cursor": str(2**64 - 1)}, {"cursor": str(2**63)}):
        client.get("/v1/suppressions", params=params, headers={"Authorization": f"Bearer {TOKEN}"})


HTML = "<a href='https://x.test/'>" * 40_000 + "x" + "</a>" * 40_000  # ~1.2 MB


def attack_html(client: httpx.Client) -> None:
    client.post("/v1/send", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60,
                json={"from": f"news@{DOMAIN}", "to": "a@remote.test", "recipient": "a@remote.test", "html": HTML})


def run_phase(base: str, seconds: float, attack: str | None, attackers: int, rate: float, host: str,
              port: int) -> dict[str, Any]:
    stop = threading.Event()
    served = [0]
    lock = threading.Lock()

    def attacker() -> None:
        with httpx.Client(base_url=base, timeout=60) as client:
            fn: Callable[[], None] = {
                "header": lambda: attack_header(host, port),
                "body": lambda: attack_body(host, port),
                "integers": lambda: attack_integers(client),
                "html": lambda: attack_html(client),
            }[attack or ""]
            while not stop.is_set():
                started = time.monotonic()
                try:
                    fn()
                except (OSError, httpx.HTTPError):
                    pass
                with lock:
                    served[0] += 1
                stop.wait(max(0.0, 1 / rate - (time.monotonic() - started)))

    threads = [threading.Thread(target=attacker, daemon=True) for _ in range(attackers if attack else 0)]
    for t in threads:
        t.start()
    latencies: list[float] = []
    with httpx.Client(base_url=base, timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        time.sleep(0.2 if attack else 0)  # let the attack start
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            r = client.get(NORMAL, params={"limit": 50})
            latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise RuntimeError(f"normal request: {r.status_code} {r.text[:200]}")
    stop.set()
    for t in threads:
        t.join(60)
    return {"n": len(latencies), "p50_ms": percentile(latencies, 0.5) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000, "attacks": served[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0, help="per phase")
    ap.add_argument("--attackers", type=int, default=2, help="attacker threads per hostile phase")
    ap.add_argument("--rate", type=float, default=10.0, help="attacks per second per attacker, at most")
    ap.add_argument("-n", type=int, default=20_000, help="events in the store")
    ap.add_argument("--python", default=sys.executable)
    a = ap.parse_args()

    from bouncetrack.core.config_loader import load_config
    from bouncetrack.store import open_store
    from bouncetrack.core.tokens import hash_api_token, load_keyring

    attacks = ("header", "body", "integers", "html")
    with tempfile.TemporaryDirectory(prefix="bt-bench-hostile-") as tmpdir:
        tmp = Path(tmpdir)
        cfg = tmp / "bouncetrack.yaml"
        smtp_port = free_port()  # nothing listens: /v1/send ends in a quick 503
        cfg.write_text(textwrap.dedent(f"""\
            bounce_domain: bounce.test
            secret_file: {tmp}/verp.key
            store: sqlite:///{tmp}/bt.db
            milter_socket: {tmp}/milter.sock
            log_level: WARNING
            outbox: {{smtp_host: 127.0.0.1, smtp_port: {smtp_port}}}
            # the attackers and the normal client share 127.0.0.1: the failed-auth limit
            # (its own test: tests/test_api_hostile.py) would answer the client 429 too
            api: {{failed_auth_per_minute: 0}}
            domains:
              {DOMAIN}: {{api_tokens: ["{hash_api_token(TOKEN)}"]}}
            """))
        config = load_config(cfg)
        load_keyring(config)
        open_store(config.store_url).close()
        fill(tmp / "bt.db", a.n)
        port = free_port()
        log = open(tmp / "api.log", "ab")
        server = subprocess.Popen(
            [a.python, "-m", "bouncetrack", "api", "--config", str(cfg), "--listen", f"127.0.0.1:{port}"],
            cwd=ROOT, stdout=log, stderr=log,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until_serving(base, server, log.name)
            rss_idle = proc_kib(server.pid, "VmRSS") / 1024
            rounds: list[dict[str, Any]] = []
            for r in range(a.rounds):
                row: dict[str, Any] = {}
                for phase in ("idle", *attacks):
                    row[phase] = run_phase(base, a.seconds, None if phase == "idle" else phase, a.attackers,
                                           a.rate, "127.0.0.1", port)
                rounds.append(row)
                print(f"round {r + 1}: " + ", ".join(
                    f"{p} p99 {row[p]['p99_ms']:.1f} ms ({row[p]['attacks']} attacks)" for p in row), flush=True)
            rss_peak = proc_kib(server.pid, "VmHWM") / 1024
        finally:
            server.terminate()
            server.wait(10)
            log.close()

    out: dict[str, Any] = {
        "rounds": a.rounds, "seconds_per_phase": a.seconds, "attackers": a.attackers,
        "max_attacks_per_second_per_attacker": a.rate, "events": a.n,
        "normal_request": f"GET {NORMAL}?limit=50 (keep-alive, valid token)",
        "goal_ratio": GOAL_RATIO, "server_rss_idle_mb": rss_idle, "server_rss_peak_mb": rss_peak,
        "idle_p99_ms_median": statistics.median(x["idle"]["p99_ms"] for x in rounds),
        "attacks": {}, "runs": rounds,
    }
    print(f"\nidle p99 {out['idle_p99_ms_median']:.1f} ms (median of {a.rounds} rounds); "
          f"server RSS {rss_idle:.0f} MB idle, {rss_peak:.0f} MB peak")
    for attack in attacks:
        ratio = statistics.median(x[attack]["p99_ms"] / x["idle"]["p99_ms"] for x in rounds)
        out["attacks"][attack] = {
            "p99_ms_median": statistics.median(x[attack]["p99_ms"] for x in rounds),
            "p99_ratio_to_idle_median": ratio,
            "attacks_served_median": statistics.median(x[attack]["attacks"] for x in rounds),
            "meets_goal": ratio <= GOAL_RATIO,
        }
        print(f"{attack:<9} p99 {out['attacks'][attack]['p99_ms_median']:7.1f} ms  ratio {ratio:4.2f}x  "
              f"({out['attacks'][attack]['attacks_served_median']:.0f} attacks/phase)  "
              f"goal <= {GOAL_RATIO:g}x {'met' if ratio <= GOAL_RATIO else 'MISSED'}")
    print(f"written {write_result('api_hostile', out)}")


if __name__ == "__main__":
    main()
