#!/usr/bin/env python3
"""An LMTP worker's CPU per delivery, on the bounces of a real run, A/B between code trees.

Replays the reports a capacity run stored (``BOUNCETRACK_KEEP=1 python bench/capacity.py
--configs bouncetrack-lmtp …`` keeps the stack's directory; its ``state/bouncetrack.db`` holds
every report Postfix delivered, raw, and the milter's records of the messages they are about)
through what an LMTP worker runs: :class:`~bouncetrack.bounce_pipe.lmtp.Session` with the
pipe's deliver function, the store and configuration kept open, logging as the pipe server
sets it up. A client process plays lmtp(8) on one connection: LHLO, then per report
XFORWARD, MAIL, RCPT and DATA pipelined, the message (dot-stuffed, CRLF), RSET (:func:`transcript`).

Each code tree (``--code DIR``, repeatable; default this tree) runs in its own process
(``PYTHONPATH=DIR``) with its own copy of the store; rounds alternate between them (the
machine is shared and noisy), each round stores every report once (the store's reports,
events and outbox emptied before the round, not timed). Measured: the worker process's CPU
(user+system, ``os.times``) over the session, per delivery; medians of the rounds, and the
ratio of each tree's median to the first tree's, and the median of the per-round ratios.

What it leaves out: a bounce that comes before the milter's journal writer moved its message
into the store (the journal wait; here every message is in the store), lock waits against
other writers (one worker here), lmtp(8)'s own work, new connections, and the caches the
other processes of a loaded node keep cold (a worker in a capacity run spends about twice
this per delivery). ``-n`` should exceed 512 reports with distinct MIME boundaries, or the
``re`` module's cache spares the parser the compilation of each boundary's pattern, which a
worker pays.

    python bench/lmtp_replay.py --db /var/tmp/bouncetrack-XXXX/state/bouncetrack.db \\
        --code /work/main --code . [--rounds 7] [-n 1500]
"""

from __future__ import annotations

import argparse
import json
import marshal
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: The stack's configuration (bouncetrack.harness.stack), its paths moved into our copy.
CONFIG = """\
bounce_domain: bounce.test
verp_prefix: b
secret_file: {d}/verp.key
store: sqlite:///{d}/bouncetrack.db
milter_socket: {d}/milter.sock
milter_journal: {d}/milter-journal
log_level: INFO
domains:
  tracked.test:
    tracking: true
    webhook:
      url: http://127.0.0.1:9/hook
      secret: replay-secret
      timeout_seconds: 2
  untracked.test:
    tracking: false
  default:
    tracking: false
pipe:
  transport: lmtp
  lmtp:
    socket: {d}/lmtp.sock
"""

EMPTIED = ("outbox", "events", "raw_reports", "suppressions", "untrusted_reports")


def corpus(db: Path, n: int) -> list[tuple[str, str, str, bytes]]:
    """Up to ``n`` reports of the run: (delivery recipient, sender, client address, message
    without its Return-Path line). The recipient is the VERP address of the token the report
    was attributed to (the feedback-loop address for a complaint); a report without a token
    is left out. Postfix's own reports (sender MAILER-DAEMON) came with no SMTP client."""
    out = []
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        rows = conn.execute(
            "SELECT r.id, r.compressed, min(e.type), min(e.token) FROM raw_reports r JOIN events e ON e.raw_pk = r.id "
            "WHERE r.compressed IS NOT NULL GROUP BY r.id ORDER BY r.id").fetchall()
    for _pk, blob, etype, token in rows:
        raw = zlib.decompress(blob)
        first, _, rest = raw.partition(b"\n")
        if not first.startswith(b"Return-Path:") or not token:
            continue
        sender = first.split(b"<", 1)[1].rsplit(b">", 1)[0].decode()
        rcpt = "fbl@bounce.test" if etype == "complaint" else f"b+{token.lower()}@bounce.test"
        client = "" if sender == "MAILER-DAEMON" else "127.0.0.1"
        out.append((rcpt, "" if sender == "MAILER-DAEMON" else sender, client, rest))
        if len(out) >= n:
            break
    return out


def transcript(reports: list[tuple[str, str, str, bytes]]) -> list[bytes]:
    """What lmtp(8) sends per transaction: XFORWARD, MAIL, RCPT and DATA pipelined (four
    replies read), then the message (one reply), then RSET before the connection goes back
    to its cache (one reply): three writes."""
    out = []
    for rcpt, sender, client, body in reports:
        data = b"\r\n".join((b"." + line if line.startswith(b".") else line) for line in body.split(b"\n"))
        xf = f"XFORWARD ADDR={client}\r\n" if client else "XFORWARD SOURCE=LOCAL\r\n"
        out.append(f"{xf}MAIL FROM:<{sender}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode())
        out.append(data + b"\r\n.\r\n")
    return out


def play(sock_path: str, tx_path: str) -> int:
    """The client's process: connect, :func:`client`; exit 0 when every report got 250."""
    tx = marshal.loads(Path(tx_path).read_bytes())
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(sock_path)
    return 0 if client(sock, tx) == len(tx) // 2 else 3


def client(sock: socket.socket, tx: list[bytes]) -> int:
    """Play lmtp(8): LHLO, the transactions, QUIT; the number of 250 replies to DATA."""
    f = sock.makefile("rb")
    f.readline()
    sock.sendall(b"LHLO replay\r\n")
    while not f.readline().startswith(b"250 "):
        pass
    ok = 0
    for head, message in zip(tx[::2], tx[1::2]):
        sock.sendall(head)
        for _ in range(4):  # XFORWARD, MAIL, RCPT, DATA's 354
            f.readline()
        sock.sendall(message)
        ok += f.readline().startswith(b"250")
        sock.sendall(b"RSET\r\n")
        f.readline()
    sock.sendall(b"QUIT\r\n")
    f.readline()
    return ok


def child(db: Path, n: int) -> int:
    """One code tree's worker: set up, then a round per ``round`` line on stdin."""
    tmp = Path(tempfile.mkdtemp(prefix="lmtp-replay-"))
    try:
        shutil.copy(db, tmp / "bouncetrack.db")
        shutil.copy(db.parent / "verp.key", tmp / "verp.key")
        (tmp / "milter-journal").mkdir()
        cfg = tmp / "bouncetrack.yaml"
        cfg.write_text(CONFIG.format(d=tmp))
        os.environ["BOUNCETRACK_CACHE_DIR"] = str(tmp)
        import bouncetrack
        from bouncetrack.bounce_pipe.lmtp import Session, pipe_deliver
        from bouncetrack.bounce_pipe.process import keep_stores_open
        from bouncetrack.bounce_pipe.server import warm
        from bouncetrack.core.config_loader import load_config
        from bouncetrack.core.logsetup import setup
        from bouncetrack.core.tokens import load_keyring

        setup("pipe-server", "INFO")
        sys.stderr = open(os.devnull, "w")  # the log goes there (journald's pipe in production)
        for h in __import__("logging").getLogger().handlers:
            if hasattr(h, "setStream"):
                h.setStream(sys.stderr)
        config = load_config(cfg)
        runtime = (config, load_keyring(config))
        warm(str(cfg))
        keep_stores_open()
        deliver = pipe_deliver(str(cfg), runtime)
        tx = transcript(corpus(db, n))
        tx_path = tmp / "transcript"
        tx_path.write_bytes(marshal.dumps(tx))
        sock_path = tmp / "lmtp.sock"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(sock_path))
        listener.listen(1)
        print(json.dumps({"ready": len(tx) // 2, "code": str(Path(bouncetrack.__file__).parents[1])}), flush=True)
        for line in sys.stdin:
            with sqlite3.connect(tmp / "bouncetrack.db", timeout=30) as conn:
                for table in EMPTIED:
                    conn.execute(f"DELETE FROM {table}")
            # The client is a process of its own, started afresh (fork+exec: no copy-on-write
            # faults of a forked copy of this one land in our CPU time).
            player = subprocess.Popen([sys.executable, "-S", str(Path(__file__).resolve()), "--play",
                                       str(sock_path), str(tx_path)])
            a, _ = listener.accept()
            t0 = os.times()
            Session(a, config.pipe.lmtp, deliver).run()
            t1 = os.times()
            a.close()
            status = player.wait()
            cpu = (t1.user + t1.system) - (t0.user + t0.system)
            res: dict[str, Any] = {"cpu_ms_per_delivery": cpu * 1000 / (len(tx) // 2), "ok": status == 0}
            print(json.dumps(res), flush=True)
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--db", type=Path, required=True, help="state/bouncetrack.db of a kept capacity run (LMTP)")
    ap.add_argument("--code", action="append", default=None, help="a code tree to measure (repeatable)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("-n", type=int, default=1500, help="reports per round")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--play", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here (default bench/results/lmtp_replay.json)")
    if sys.argv[1:2] == ["--play"]:
        return play(sys.argv[2], sys.argv[3])
    a = ap.parse_args()
    if a.child:
        return child(a.db.resolve(), a.n)
    codes = [str(Path(c).resolve()) for c in (a.code or [str(ROOT)])]
    procs = []
    for c in codes:
        env = {**os.environ, "PYTHONPATH": c}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        p = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", "--db", str(a.db),
                              "-n", str(a.n)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                             cwd="/")
        procs.append(p)
    for c, p in zip(codes, procs):
        assert p.stdout is not None
        hello = json.loads(p.stdout.readline())
        print(f"{c}: {hello['ready']} reports (bouncetrack from {hello['code']})", flush=True)

    def round_(p: subprocess.Popen[str], cmd: str) -> dict[str, Any]:
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(cmd + "\n")
        p.stdin.flush()
        return dict(json.loads(p.stdout.readline()))

    for p in procs:  # a warm-up round each (first-use caches, as a worker that has run a while)
        round_(p, "round")
    per: dict[str, list[float]] = {c: [] for c in codes}
    failures = 0
    for r in range(a.rounds):
        order = list(zip(codes, procs))
        if r % 2:
            order.reverse()
        for c, p in order:
            res = round_(p, "round")
            per[c].append(res["cpu_ms_per_delivery"])
            failures += not res["ok"]
    for p in procs:
        assert p.stdin is not None
        p.stdin.close()
        p.wait()
    med = {c: statistics.median(v) for c, v in per.items()}
    base = med[codes[0]]
    for c in codes:
        print(f"{c}: {med[c]:.3f} ms CPU per delivery (median of {a.rounds}; rounds "
              f"{', '.join(f'{x:.2f}' for x in per[c])}); ×{med[c] / base:.3f} of {codes[0]}")
    # the ratio per pair of rounds (each tree's round against the first tree's of the same round)
    for c in codes[1:]:
        ratios = [x / y for x, y in zip(per[c], per[codes[0]])]
        print(f"  per-round ratio {c} / {codes[0]}: median {statistics.median(ratios):.3f}")
    print(f"failures {failures}")
    result = {"codes": codes, "rounds": a.rounds, "n": a.n, "cpu_ms_per_delivery_median": med,
              "cpu_ms_per_delivery_rounds": per, "failures": failures,
              "ratio_of_medians": {c: med[c] / base for c in codes},
              "per_round_ratio_median": {c: statistics.median(x / y for x, y in zip(per[c], per[codes[0]]))
                                         for c in codes}}
    if a.out:
        a.out.write_text(json.dumps(result, indent=1) + "\n")
    else:
        sys.path.insert(0, str(ROOT))
        from bench._common import write_result

        print(f"written {write_result('lmtp_replay', result)}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
