#!/usr/bin/env python3
"""Soak: a steady stream of mail through the whole product for minutes, with faults; nothing lost.

One :class:`~bouncetrack.harness.stack.Stack` (private Postfix + the milter + fake MX +
the real pipe; needs root), the real outbox worker (``bt.py worker --config F``, a
subprocess run as the ``bouncetrack`` user like the milter) and a
:class:`~bouncetrack.harness.webhook_receiver.WebhookReceiver` that the tracked
domain's webhook points at.

Load: ``--rate`` messages/s (default 6) from ``news@tracked.test`` over
``--connections`` persistent SMTP sessions (default 4), paced by a global schedule,
with a mix of recipients (fake MX rules):

=========  ===================================  =====================================
kind       recipients                           expected events (one each)
=========  ===================================  =====================================
ok         ok-*                                 none
complaint  ok-*; then an ARF to fbl@bounce.test  complaint/feedback
           whose original carries the VERP
autoreply  ok-*; then an RFC 3834 vacation       auto_reply/vacation
           reply to the VERP address
hard       unknown-* (550 5.1.1)                bounce/userunknown, hard
moved      gone-* (550 5.1.6)                   bounce/hasmoved, hard
soft       full-* (452 4.2.2, always)           delay, then bounce/mailboxfull soft
                                                 after ``maximal_queue_lifetime``
delayed    delay-* (451 for ``--delay-for`` s,  delay (then delivered: nothing more)
           then 250)
multi      ok-*, unknown-*, full-*              as hard + soft, each to its recipient
=========  ===================================  =====================================

Postfix runs with ``delay_warning_time=1s`` (a delay notice at the first deferral)
and ``maximal_queue_lifetime=--queue-lifetime`` (soft failures become bounces
within the run). Postfix's queue is never flushed by hand (a flush re-queues a
message before qmgr's delay-warning check).

Faults (the webhook receiver misbehaves): down (connections refused) for 20 s,
then answering 500/429/503 to 30 % of requests for a while, then a few slow
answers (longer than the webhook timeout: the receiver commits, the worker sees a
timeout and retries with the same key, a legitimate duplicate). The outbox runs
with a short backoff (``base_delay_seconds`` 1 s, cap 5 s) so retries happen
within the run.

Measured: throughput (accepted msg/s; stored events/s), end-to-end latency per
event (send → stored ``received_at`` → first accepted webhook) by kind, RSS of
every long-running process every ``--sample-every`` s (Postfix master, qmgr and the
sum of all Postfix processes, milter supervisor and child, pipe server, worker, this driver
process which hosts the fake MX and the receiver) with a growth check (mean of the
first third vs the last third of the samples), and the final reconciliation:

* every expected event stored exactly once, attributed to the right recipient
  (type, reason, hard flag, token valid, not flagged, domain) — ``lost`` and
  ``duplicated`` must be 0 and nothing unexpected stored;
* every stored event has a webhook job, delivered, none dead or pending; the
  receiver accepted every event id (``webhooks_lost`` 0) and nothing unknown;
  an id accepted more than once is only a retry: same ``webhook-id`` and
  ``Idempotency-Key`` and the outbox counted a failed attempt for each extra copy.

Writes ``bench/results/NAME.json`` (``soak``; ``soak-short`` with ``--short``)
including the time series; exits 1 when reconciliation fails.

    python bench/soak.py [--minutes 10] [--short] [--rate 6] [--connections 4]
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import signal
import smtplib
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import percentile, summary, write_result  # noqa: E402

SENDER = "news@tracked.test"
REMOTE = "remote.test"
FBL = "fbl@bounce.test"

UNCHECKED = {
    "driver (fake MX, receiver)": "keeps every SMTP transaction and webhook request for the reconciliation",
    "postfix all processes": "a process pool that follows the load; see postfix_processes",
}

# kind -> weight (per 100 messages)
MIX = {"ok": 40, "complaint": 5, "autoreply": 5, "hard": 15, "moved": 5, "soft": 10, "delayed": 10, "multi": 10}


@dataclass(frozen=True)
class Expect:
    recipient: str
    type: str
    reason: str | None  # None: not checked (delay notices)
    hard: bool
    kind: str  # latency class: hard bounce, soft bounce, delay, complaint, auto-reply


@dataclass
class Msg:
    n: int
    kind: str
    rcpts: list[str]
    due: float  # scheduled send time (time.time())
    sent_at: float | None = None  # DATA 250
    attempts: int = 0
    error: str | None = None
    follow_up: str | None = None  # "complaint" | "autoreply": its recipient gets one after delivery
    follow_up_at: float | None = None  # when the complaint / auto-reply was accepted by Postfix

    def expected(self) -> list[Expect]:
        out: list[Expect] = []
        for r in self.rcpts:
            local = r.split("@")[0]
            if local.startswith("unknown-"):
                out.append(Expect(r, "bounce", "userunknown", True, "hard bounce"))
            elif local.startswith("gone-"):
                out.append(Expect(r, "bounce", "hasmoved", True, "hard bounce"))
            elif local.startswith("full-"):
                out.append(Expect(r, "delay", None, False, "delay notice"))
                out.append(Expect(r, "bounce", "mailboxfull", False, "soft bounce"))
            elif local.startswith("delay-"):
                out.append(Expect(r, "delay", None, False, "delay notice"))
        if self.follow_up == "complaint" and self.follow_up_at is not None:
            out.append(Expect(self.rcpts[0], "complaint", "feedback", False, "complaint"))
        if self.follow_up == "autoreply" and self.follow_up_at is not None:
            out.append(Expect(self.rcpts[0], "auto_reply", "vacation", False, "auto-reply"))
        return out

    def origin(self, e: Expect) -> float | None:
        """Start of the end-to-end latency: the send, or the complaint's / reply's injection."""
        if e.type in ("complaint", "auto_reply"):
            return self.follow_up_at
        return self.sent_at


def build_messages(n: int, rate: float, t0: float, run: str, seed: int) -> list[Msg]:
    rng = random.Random(seed)
    kinds = [k for k, w in MIX.items() for _ in range(w)]
    out = []
    for i in range(n):
        kind = rng.choice(kinds)
        tag = f"{run}-{i}"
        rcpts = {
            "ok": [f"ok-{tag}@{REMOTE}"],
            "complaint": [f"ok-c-{tag}@{REMOTE}"],
            "autoreply": [f"ok-a-{tag}@{REMOTE}"],
            "hard": [f"unknown-{tag}@{REMOTE}"],
            "moved": [f"gone-{tag}@{REMOTE}"],
            "soft": [f"full-{tag}@{REMOTE}"],
            "delayed": [f"delay-{tag}@{REMOTE}"],
            "multi": [f"ok-m-{tag}@{REMOTE}", f"unknown-m-{tag}@{REMOTE}", f"full-m-{tag}@{REMOTE}"],
        }[kind]
        follow = kind if kind in ("complaint", "autoreply") else None
        out.append(Msg(i, kind, rcpts, t0 + i / rate, follow_up=follow))
    return out


def vacation_reply(verp: str, responder: str, n: int) -> bytes:
    """An RFC 3834 automatic response (§3.1.7 Auto-Submitted, §3.1.5 From = the responder)."""
    return (
        f"From: {responder}\r\nTo: {verp}\r\nSubject: Out of office: hello {n}\r\n"
        f"Auto-Submitted: auto-replied\r\nMessage-ID: <vac-{n}-{time.time_ns()}@{REMOTE}>\r\n"
        "Date: Sat, 28 Nov 2026 12:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        "I am out of the office until Monday and will reply when I am back.\r\n"
    ).encode()


# --- processes and memory ------------------------------------------------------------


def _status(pid: int) -> dict[str, str]:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            out[k] = v.strip()
    except OSError:
        pass
    return out


def rss_mb(pid: int | None) -> float | None:
    if not pid:
        return None
    v = _status(pid).get("VmRSS")
    return int(v.split()[0]) / 1024 if v else None


def children(pid: int) -> list[int]:
    kids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            st = _status(int(p.name))
            if st.get("PPid") == str(pid):
                kids.append(int(p.name))
    return kids


def process_tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children(p))
    return out


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


# --- the run ---------------------------------------------------------------------------


@dataclass
class Run:
    msgs: list[Msg]
    send_q: "queue.Queue[Msg | None]" = field(default_factory=queue.Queue)
    follow_q: "queue.Queue[Msg]" = field(default_factory=queue.Queue)
    lock: threading.Lock = field(default_factory=threading.Lock)
    smtp_errors: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    sending_done: threading.Event = field(default_factory=threading.Event)
    followups_done: threading.Event = field(default_factory=threading.Event)


def sender_thread(run: Run, host: str, port: int, data_for: Any, sender_for: Any = None) -> None:
    """Send the queued messages at their due times; ``sender_for(msg)``: the envelope
    sender (default :data:`SENDER`)."""
    s: smtplib.SMTP | None = None
    while True:
        m = run.send_q.get()
        if m is None:
            break
        delay = m.due - time.time()
        if delay > 0:
            time.sleep(delay)
        for attempt in range(1, 6):
            m.attempts = attempt
            try:
                if s is None:
                    s = smtplib.SMTP(host, port, timeout=60)
                    s.ehlo("soak.harness.test")
                code, msg = s.mail(sender_for(m) if sender_for is not None else SENDER)
                if code != 250:
                    raise smtplib.SMTPResponseException(code, msg)
                for r in m.rcpts:
                    code, msg = s.rcpt(r)
                    if code not in (250, 251):
                        raise smtplib.SMTPResponseException(code, msg)
                code, msg = s.data(data_for(m))
                if code != 250:
                    raise smtplib.SMTPResponseException(code, msg)
                m.sent_at = time.time()
                m.error = None
                break
            except smtplib.SMTPResponseException as exc:
                # 4xx/5xx before or at DATA: nothing was queued; reset and retry.
                m.error = f"{exc.smtp_code} {exc.smtp_error!r}"
                with run.lock:
                    run.smtp_errors.append(f"msg {m.n}: {m.error}")
                try:
                    if s is not None:
                        s.rset()
                except (smtplib.SMTPException, OSError):
                    s = None
                time.sleep(0.5 * attempt)
            except (smtplib.SMTPException, OSError) as exc:
                # Connection trouble: if it broke after DATA was sent the message may be
                # queued without us knowing; such messages are reported, not retried.
                m.error = f"{type(exc).__name__}: {exc}"
                with run.lock:
                    run.smtp_errors.append(f"msg {m.n}: {m.error}")
                s = None
                break
        if m.sent_at is not None and m.follow_up:
            run.follow_q.put(m)
    if s is not None:
        try:
            s.quit()
        except (smtplib.SMTPException, OSError):
            pass


def followup_thread(run: Run, st: Any, fbl: str | None = FBL) -> None:
    """Complaints and auto-replies: once the fake MX has the message, answer its VERP sender.
    Complaints go to ``fbl``, or with None to the message's own envelope sender."""
    from tests import mailgen

    pending: list[Msg] = []
    s: smtplib.SMTP | None = None
    while True:
        try:
            while True:
                pending.append(run.follow_q.get_nowait())
        except queue.Empty:
            pass
        if not pending and run.sending_done.is_set() and run.follow_q.empty():
            break
        still = []
        # One pass over the fake MX's transactions per round (not one per message).
        verp_of: dict[str, str] = {}
        if pending:
            for t in st.fakemx.delivered():
                for r in t.rcpts:
                    verp_of.setdefault(r.address.lower(), t.mail_from)
        for m in pending:
            rcpt = m.rcpts[0]
            verp = verp_of.get(rcpt.lower())
            if verp is None:
                if time.time() - (m.sent_at or 0) > 120:
                    with run.lock:
                        run.smtp_errors.append(f"msg {m.n}: never reached the fake MX; no {m.follow_up}")
                    continue
                still.append(m)
                continue
            if m.follow_up == "complaint":
                to = fbl or verp
                data = mailgen.arf(to, verp, rcpt, message_id=f"<soak-{m.n}@tracked.test>")
            else:
                data, to = vacation_reply(verp, rcpt, m.n), verp
            try:
                if s is None:
                    s = smtplib.SMTP(st.postfix.host, st.postfix.port, timeout=60)
                    s.ehlo("isp.harness.test")
                s.sendmail("", [to], data)  # null sender: RFC 5965 §3 / RFC 3834 §3.3
                m.follow_up_at = time.time()
            except (smtplib.SMTPException, OSError) as exc:
                with run.lock:
                    run.smtp_errors.append(f"msg {m.n} {m.follow_up}: {type(exc).__name__}: {exc}")
                s = None
                still.append(m)
        pending = still
        time.sleep(0.3)
    if s is not None:
        try:
            s.quit()
        except (smtplib.SMTPException, OSError):
            pass
    run.followups_done.set()


class Sampler(threading.Thread):
    """RSS of the long-running processes every ``every`` seconds."""

    def __init__(self, st: Any, worker: subprocess.Popen[bytes], every: float, t0: float) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.st, self.worker, self.every, self.t0 = st, worker, every, t0
        self.samples: list[dict[str, Any]] = []
        self.stop = threading.Event()

    def pids(self) -> dict[str, int | None]:
        master = self.st.postfix.master_pid()
        kids = children(master) if master else []
        qmgr = next((p for p in kids if comm(p) == "qmgr"), None)
        sup = self.st._milter.pid if self.st._milter is not None else None
        child = next(iter(children(sup)), None) if sup else None
        server = self.st._pipe_server.pid if self.st._pipe_server is not None else None
        return {"postfix master": master, "postfix qmgr": qmgr, "milter supervisor": sup,
                "milter child": child, "pipe server": server, "worker": self.worker.pid,
                "driver (fake MX, receiver)": os.getpid()}

    def sample(self) -> None:
        now = time.time()
        pids = self.pids()
        row: dict[str, Any] = {"t": now - self.t0, "rss_mb": {k: rss_mb(p) for k, p in pids.items()}}
        master = pids["postfix master"]
        if master:
            tree = process_tree(master)
            row["postfix_processes"] = len(tree)
            row["rss_mb"]["postfix all processes"] = sum(rss_mb(p) or 0 for p in tree)
        self.samples.append(row)

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.every)


def growth(samples: list[dict[str, Any]], name: str) -> dict[str, Any]:
    vals = [s["rss_mb"].get(name) for s in samples]
    vals = [v for v in vals if v is not None]
    if len(vals) < 3:
        return {"n": len(vals)}
    third = max(1, len(vals) // 3)
    first, last = sum(vals[:third]) / third, sum(vals[-third:]) / third
    # Growth: last third's mean above the first third's by more than 10 % and 2 MB.
    grew = last - first > max(2.0, 0.10 * first)
    return {"n": len(vals), "first_third_mb": first, "last_third_mb": last, "growth_mb": last - first,
            "growth_ratio": last / first if first else None, "max_mb": max(vals), "grew": grew}


def fault_plan(send_seconds: float) -> list[tuple[float, str, float]]:
    """(start offset s, fault, duration s) for the receiver."""
    down_at = 0.15 * send_seconds
    rnd_at = max(down_at + 25.0, 0.45 * send_seconds)
    rnd_for = max(8.0, 0.10 * send_seconds)
    slow_at = max(rnd_at + rnd_for + 3.0, 0.80 * send_seconds)
    return [(down_at, "down", 20.0), (rnd_at, "random 500/429/503 (30 %)", rnd_for),
            (slow_at, "slow (3 s > 2 s timeout, 4 requests)", 12.0)]


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="sending time (default 10)")
    ap.add_argument("--short", action="store_true", help="~75 s in all: 45 s of sending, 15 s queue lifetime")
    ap.add_argument("--rate", type=float, default=6.0, help="messages per second (default 6)")
    ap.add_argument("--connections", type=int, default=4, help="concurrent SMTP sessions (default 4)")
    ap.add_argument("--queue-lifetime", type=int, default=None,
                    help="Postfix maximal_queue_lifetime in s (default 30; 15 with --short)")
    ap.add_argument("--delay-for", type=float, default=None,
                    help="delay-* recipients get 451 for this long, then 250 (default 8 s; 5 with --short)")
    ap.add_argument("--sample-every", type=float, default=None, help="RSS sampling period (default 5 s; 2 with --short)")
    ap.add_argument("--drain-timeout", type=float, default=180.0, help="max wait for the last events after sending")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--name", default=None, help="result name (default soak, or soak-short with --short)")
    a = ap.parse_args()

    send_seconds = 45.0 if a.short else a.minutes * 60
    lifetime = a.queue_lifetime or (15 if a.short else 30)
    delay_for = a.delay_for or (5.0 if a.short else 8.0)
    every = a.sample_every or (2.0 if a.short else 5.0)
    name = a.name or ("soak-short" if a.short else "soak")

    from bouncetrack.harness.stack import Stack, make_message, unavailable_reason
    from bouncetrack.harness.webhook_receiver import WebhookReceiver

    why = unavailable_reason()
    if why:
        raise SystemExit(f"cannot run: {why}")

    started = time.time()
    secret = "soak-" + os.urandom(12).hex()
    rx = WebhookReceiver(secret).start()
    first_seen: dict[str, float] = {}
    first_lock = threading.Lock()

    def rule(addr: str) -> str | None:
        """delay-*: 451 for ``delay_for`` s from the first attempt, then accepted."""
        if not addr.lower().startswith("delay-"):
            return None
        with first_lock:
            t = first_seen.setdefault(addr.lower(), time.time())
        return "451 4.7.1 Greylisted, try again later" if time.time() - t < delay_for else "250 2.1.5 Ok"

    stack = Stack(
        with_milter=True, pipe="real", log_level="INFO",
        maximal_queue_lifetime=f"{lifetime}s", delay_warning_time="1s",
        domains={"tracked.test": {"tracking": True, "webhook": {"url": rx.url, "secret": secret, "timeout_seconds": 2}}},
        config_extra={"outbox": {"base_delay_seconds": 1, "max_delay_seconds": 5, "max_attempts": 50}},
    )
    worker: subprocess.Popen[bytes] | None = None
    result: dict[str, Any] = {}
    ok = False
    try:
        with stack as st:
            st.fakemx.rule = rule
            wlog = open(st.log_dir / "worker.log", "ab")
            worker = subprocess.Popen(
                [st.python, str(st.lib / "bt.py"), "worker", "--config", str(st.config_path)],
                user=st.user, group=st.user, extra_groups=[], cwd=str(st.workdir),
                stdin=subprocess.DEVNULL, stdout=wlog, stderr=subprocess.STDOUT, start_new_session=True,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"},
            )
            wlog.close()
            time.sleep(1.0)
            if worker.poll() is not None:
                raise SystemExit(f"worker exited {worker.returncode}:\n{(st.log_dir / 'worker.log').read_text()}")

            n_msgs = int(send_seconds * a.rate)
            t0 = time.time() + 1.0
            msgs = build_messages(n_msgs, a.rate, t0, f"{int(t0) % 100000}", a.seed)
            run = Run(msgs)
            data_cache: dict[int, bytes] = {}

            def data_for(m: Msg) -> bytes:
                if m.n not in data_cache:
                    data_cache[m.n] = make_message(SENDER, m.rcpts, subject=f"soak {m.n}",
                                                   headers={"Message-ID": f"<soak-{m.n}-{t0:.0f}@tracked.test>"})
                return data_cache[m.n]

            for m in msgs:
                run.send_q.put(m)
            for _ in range(a.connections):
                run.send_q.put(None)
            senders = [threading.Thread(target=sender_thread, args=(run, st.postfix.host, st.postfix.port, data_for),
                                        daemon=True) for _ in range(a.connections)]
            follow = threading.Thread(target=followup_thread, args=(run, st), daemon=True)
            sampler = Sampler(st, worker, every, t0)
            print(f"soak: {n_msgs} messages at {a.rate}/s over {a.connections} connections for {send_seconds:.0f} s, "
                  f"queue lifetime {lifetime}s, delay-* greylisted {delay_for:.0f} s; workdir {st.workdir}", flush=True)
            for th in (*senders, follow, sampler):
                th.start()

            # The receiver's misbehaviour, on a timeline relative to t0.
            plan = fault_plan(send_seconds)
            faults_log: list[dict[str, Any]] = []
            actions = []
            for at, what, dur in plan:
                if what == "down":
                    actions += [(at, "down", rx.go_down), (at + dur, "up", rx.come_up)]
                elif what.startswith("random"):
                    actions += [(at, "random on", lambda: rx.random_failures(0.3, seed=a.seed)),
                                (at + dur, "random off", lambda: rx.random_failures(0.0))]
                else:
                    actions += [(at, "slow", lambda: rx.slow(3.0, n=4))]
            actions.sort(key=lambda x: x[0])
            last_report = time.time()
            for at, label, fn in actions:
                while time.time() < t0 + at:
                    time.sleep(0.2)
                    if time.time() - last_report > 15:
                        last_report = time.time()
                        done = sum(1 for m in msgs if m.sent_at)
                        print(f"  t={time.time() - t0:5.0f}s sent {done}/{n_msgs}  webhooks {len(rx.accepted_ids())}",
                              flush=True)
                fn()
                faults_log.append({"t": time.time() - t0, "action": label})
                print(f"  t={time.time() - t0:5.0f}s receiver: {label}", flush=True)
            for th in senders:
                th.join()
            send_end = time.time()
            run.sending_done.set()
            follow.join()
            print(f"  t={send_end - t0:5.0f}s sending done; draining", flush=True)

            expected = [(m, e) for m in msgs if m.sent_at for e in m.expected()]

            def read_db() -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
                with sqlite3.connect(f"file:{st.db_path}?mode=ro", uri=True, timeout=30) as db:
                    db.row_factory = sqlite3.Row
                    evs = [dict(r) for r in db.execute("SELECT * FROM events ORDER BY id")]
                    jobs = [dict(r) for r in db.execute("SELECT * FROM outbox ORDER BY id")]
                    nmsg = db.execute("SELECT count(*) FROM messages").fetchone()[0]
                return evs, jobs, nmsg

            # Drain: all expected events stored, every webhook job settled, the queue empty.
            deadline = time.time() + a.drain_timeout
            while True:
                events, jobs, _ = read_db()
                settled = all(j["state"] != "pending" for j in jobs)
                accepted = set(rx.accepted_ids())
                all_rx = all(e["event_id"] in accepted for e in events)
                if len(events) >= len(expected) and settled and all_rx and not st.postfix.queue():
                    break
                if time.time() > deadline:
                    print("  drain timeout", flush=True)
                    break
                time.sleep(1.0)
            time.sleep(3.0)  # late duplicates / stray events would show now
            sampler.stop.set()
            sampler.join()
            drain_end = time.time()
            events, jobs, n_messages_stored = read_db()
            queue_left = len(st.postfix.queue())
            requests = list(rx.requests)
            result = analyse(a, msgs, expected, events, jobs, requests, rx, sampler.samples, faults_log, plan,
                             t0, send_end, drain_end, n_messages_stored, queue_left, run.smtp_errors,
                             send_seconds, lifetime, delay_for, every)
            ok = result["reconciliation"]["ok"]
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()
            if not ok:
                (Path(__file__).parent / "results").mkdir(exist_ok=True)
                print(st.logs()[-6000:], file=sys.stderr)
                print((st.log_dir / "worker.log").read_text()[-3000:], file=sys.stderr)
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait()
        rx.stop()
    result["wall_seconds"] = time.time() - started
    path = write_result(name, result)
    print(f"written {path} ({result['wall_seconds']:.0f} s in all)")
    return 0 if ok else 1


def analyse(a: Any, msgs: list[Msg], expected: list[tuple[Msg, Expect]], events: list[dict[str, Any]],
            jobs: list[dict[str, Any]], requests: list[Any], rx: Any, samples: list[dict[str, Any]],
            faults_log: list[dict[str, Any]], plan: list[tuple[float, str, float]], t0: float, send_end: float,
            drain_end: float, n_messages_stored: int, queue_left: int, smtp_errors: list[str],
            send_seconds: float, lifetime: int, delay_for: float, every: float) -> dict[str, Any]:
    sent = [m for m in msgs if m.sent_at]
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in events:
        by_key[((row["recipient"] or "").lower(), row["type"])].append(row)
    exp_keys = {(e.recipient.lower(), e.type) for _, e in expected}

    lost, duplicated, misattributed = [], [], []
    latencies: list[dict[str, Any]] = []
    first_ok: dict[str, float] = {}
    first_try: dict[str, float] = {}
    for r in requests:
        if r.webhook_id:
            first_try.setdefault(r.webhook_id, r.received_at)
            if r.verified and 200 <= r.status < 300:
                first_ok.setdefault(r.webhook_id, r.received_at)
    for m, e in expected:
        got = by_key.get((e.recipient.lower(), e.type), [])
        if not got:
            lost.append({"msg": m.n, "kind": m.kind, "recipient": e.recipient, "type": e.type})
            continue
        if len(got) > 1:
            duplicated.append({"recipient": e.recipient, "type": e.type, "count": len(got)})
        ev = got[0]
        bad = []
        if e.reason is not None and ev["reason"] != e.reason:
            bad.append(f"reason {ev['reason']} != {e.reason}")
        if bool(ev["hard"]) != e.hard:
            bad.append(f"hard {ev['hard']} != {e.hard}")
        if ev["token_status"] != "valid" or ev["flagged"] or ev["domain"] != "tracked.test":
            bad.append(f"token {ev['token_status']} flagged {ev['flagged']} domain {ev['domain']}")
        if bad:
            misattributed.append({"recipient": e.recipient, "type": e.type, "problems": bad})
        origin = m.origin(e)
        wh = first_ok.get(ev["event_id"])
        latencies.append({
            "kind": e.kind, "send_to_stored": ev["received_at"] - origin if origin else None,
            "stored_to_webhook": (wh - ev["received_at"]) if wh else None,
            "send_to_webhook": (wh - origin) if (wh and origin) else None,
            "stored_t": ev["received_at"] - t0,
        })
    unexpected = [{"recipient": e["recipient"], "type": e["type"], "token_status": e["token_status"]}
                  for e in events if ((e["recipient"] or "").lower(), e["type"]) not in exp_keys]

    # Webhooks: every stored event has one webhook job, delivered; the receiver has every id.
    event_ids = {e["event_id"] for e in events}
    wjobs = [j for j in jobs if j["channel"] == "webhook"]
    jobs_by_event = Counter(j["event_id"] for j in wjobs)
    no_job = sorted(event_ids - set(jobs_by_event))
    job_dupes = [k for k, c in jobs_by_event.items() if c > 1]
    states = Counter(j["state"] for j in wjobs)
    accepted_counts = Counter(r.webhook_id for r in requests if r.verified and 200 <= r.status < 300 and r.webhook_id)
    webhooks_lost = sorted(event_ids - set(accepted_counts))
    unknown_ids = sorted(set(accepted_counts) - event_ids)
    attempts_by_event = {j["event_id"]: j["attempts"] for j in wjobs}
    dup_ids = {k: c for k, c in accepted_counts.items() if c > 1}
    bad_dupes = []
    for k, c in dup_ids.items():
        copies = [r for r in requests if r.webhook_id == k and r.verified and 200 <= r.status < 300]
        same_key = all(r.idempotency_key == k for r in copies)
        same_body = len({r.body for r in copies}) == 1
        # Each extra accepted copy follows an attempt the worker counted as failed (a timeout).
        if not (same_key and attempts_by_event.get(k, 0) >= c - 1):
            bad_dupes.append({"event_id": k, "accepted": c, "attempts_failed": attempts_by_event.get(k, 0),
                              "same_key": same_key, "same_body": same_body})
    statuses = Counter(r.status for r in requests)
    key_mismatch = sum(1 for r in requests if r.verified and r.webhook_id and r.idempotency_key != r.webhook_id)

    recon = {
        "messages_sent": len(sent),
        "messages_unsent": len(msgs) - len(sent),
        "messages_recorded_by_milter": n_messages_stored,
        "expected_events": len(expected),
        "stored_events": len(events),
        "lost": len(lost),
        "duplicated": len(duplicated),
        "misattributed": len(misattributed),
        "unexpected": len(unexpected),
        "webhook_jobs": len(wjobs),
        "webhook_job_states": dict(states),
        "events_without_webhook_job": len(no_job),
        "duplicate_webhook_jobs": len(job_dupes),
        "webhooks_lost": len(webhooks_lost),
        "webhooks_unknown_ids": len(unknown_ids),
        "webhook_duplicates_as_retries": sum(c - 1 for c in dup_ids.values()),
        "webhook_duplicates_unexplained": len(bad_dupes),
        "webhook_idempotency_key_mismatch": key_mismatch,
        "postfix_queue_left": queue_left,
        "details": {"lost": lost[:20], "duplicated": duplicated[:20], "misattributed": misattributed[:20],
                    "unexpected": unexpected[:20], "webhooks_lost": webhooks_lost[:20],
                    "bad_duplicates": bad_dupes[:20]},
    }
    recon["ok"] = bool(
        len(sent) == len(msgs) and n_messages_stored == len(sent) and not lost and not duplicated
        and not misattributed and not unexpected and not no_job and not job_dupes
        and states.get("pending", 0) == 0 and states.get("dead", 0) == 0
        and not webhooks_lost and not unknown_ids and not bad_dupes and not key_mismatch and queue_left == 0
    )

    # Latency by kind.
    lat: dict[str, Any] = {}
    kinds = sorted({x["kind"] for x in latencies})
    for seg in ("send_to_stored", "stored_to_webhook", "send_to_webhook"):
        lat[seg] = {}
        for k in ["all", *kinds]:
            vals = [x[seg] for x in latencies if x[seg] is not None and (k == "all" or x["kind"] == k)]
            if vals:
                lat[seg][k] = summary(vals)
    # Throughput.
    send_window = send_end - t0
    stored_in_window = sum(1 for e in events if t0 <= e["received_at"] <= send_end)
    all_ts = [e["received_at"] for e in events]
    bins = 5.0
    nb = int((drain_end - t0) // bins) + 1
    sent_series, stored_series, wh_series = [0] * nb, [0] * nb, [0] * nb
    for m in sent:
        assert m.sent_at is not None  # ``sent`` holds only the messages with a sent_at
        i = int((m.sent_at - t0) // bins)
        if 0 <= i < nb:
            sent_series[i] += 1
    for t in all_ts:
        i = int((t - t0) // bins)
        if 0 <= i < nb:
            stored_series[i] += 1
    for t in first_ok.values():
        i = int((t - t0) // bins)
        if 0 <= i < nb:
            wh_series[i] += 1
    mem = {k: growth(samples, k) for k in (samples[0]["rss_mb"] if samples else {})}
    # Not checked: the driver keeps every transaction and request by design; "postfix all
    # processes" is a pool whose size follows the load (smtp/pipe processes come and go).
    checked = [k for k in mem if not k.startswith("driver") and k != "postfix all processes"]
    kinds_sent = Counter(m.kind for m in sent)
    print()
    print(f"sent {len(sent)}/{len(msgs)} messages in {send_window:.1f} s = {len(sent) / send_window:.2f} msg/s "
          f"(target {a.rate}); kinds {dict(kinds_sent)}; SMTP retries/errors {len(smtp_errors)}")
    print(f"stored {len(events)} events; {stored_in_window / send_window:.2f} events/s during sending, "
          f"{len(events) / (max(all_ts) - t0) if all_ts else 0:.2f} events/s overall")
    print(f"receiver: {len(requests)} requests, statuses {dict(statuses)}; faults {[f['action'] for f in faults_log]}")
    for seg in ("send_to_stored", "stored_to_webhook", "send_to_webhook"):
        for k, s in lat[seg].items():
            print(f"  {seg:18s} {k:13s} n {s['n']:5d}  median {s['median']:7.2f} s  p90 {s['p90']:7.2f} s  "
                  f"p99 {s['p99']:7.2f} s  max {s['max']:7.2f} s")
    for k, g in mem.items():
        if "first_third_mb" in g:
            print(f"  RSS {k:28s} first third {g['first_third_mb']:7.1f} MB  last third {g['last_third_mb']:7.1f} MB"
                  f"  max {g['max_mb']:7.1f} MB  {'GREW' if g['grew'] else 'flat'}"
                  f"{'' if k in checked else ' (not checked: ' + UNCHECKED.get(k, '') + ')'}")
    print("reconciliation: " + ", ".join(f"{k}: {v}" for k, v in recon.items() if k not in ("details",)))
    if not recon["ok"]:
        print(json.dumps(recon["details"], indent=1)[:4000], file=sys.stderr)
    return {
        "mode": "short" if a.short else "full",
        "params": {"send_seconds": send_seconds, "rate": a.rate, "connections": a.connections,
                   "maximal_queue_lifetime_s": lifetime, "delay_warning_time": "1s", "delay_for_s": delay_for,
                   "sample_every_s": every, "mix_per_100": MIX, "webhook_timeout_s": 2,
                   "outbox": {"base_delay_seconds": 1, "max_delay_seconds": 5, "max_attempts": 50}, "seed": a.seed},
        "faults_planned": [{"at": at, "fault": what, "seconds": dur} for at, what, dur in plan],
        "faults": faults_log,
        "throughput": {
            "sent_msg_per_s": len(sent) / send_window, "target_msg_per_s": a.rate, "send_seconds": send_window,
            "stored_events_per_s_during_send": stored_in_window / send_window,
            "stored_events_per_s_overall": len(events) / (max(all_ts) - t0) if all_ts else 0.0,
            "drain_seconds": drain_end - send_end, "kinds_sent": dict(kinds_sent),
            "smtp_retries_or_errors": len(smtp_errors), "smtp_errors_sample": smtp_errors[:10],
        },
        "receiver": {"requests": len(requests), "statuses": {str(k): v for k, v in statuses.items()},
                     "first_attempt_to_accepted_median_s": (
                         summary([first_ok[k] - first_try[k] for k in first_ok])["median"] if first_ok else None)},
        "latency_seconds": lat,
        "memory": {"growth_check": mem, "checked": checked, "not_checked_why": UNCHECKED,
                   "no_growth": all(not mem[k].get("grew", False) for k in checked),
                   "rule": "grew = mean of the last third of samples exceeds the first third's by > max(2 MB, 10 %)"},
        "reconciliation": recon,
        "series": {
            "bin_seconds": bins,
            "sent_per_bin": sent_series, "stored_per_bin": stored_series, "webhooks_per_bin": wh_series,
            "rss": samples,
            "latencies": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in x.items()} for x in latencies],
        },
        "p50_send_to_webhook_s": lat["send_to_webhook"].get("all", {}).get("median"),
        "p99_send_to_webhook_s": percentile([x["send_to_webhook"] for x in latencies if x["send_to_webhook"]], 0.99)
        if latencies else None,
    }


if __name__ == "__main__":
    raise SystemExit(main())
