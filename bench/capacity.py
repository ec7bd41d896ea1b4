#!/usr/bin/env python3
"""Capacity: how much mail, and how many bounces, one node carries before bounces wait.

Three configurations, measured one after the other in the same run (``--configs``), at the
same rising offered rates (``--rates``, messages/s; ``--pipe-rates`` for the pipe's series),
each step ``--step-seconds`` long:

* **bouncetrack-lmtp**: the soak's whole product (:mod:`bench.soak`): private Postfix with the
  milter, the bounce domain delivered by Postfix's lmtp client to the pipe server's LMTP
  workers (``pipe.transport: lmtp``, :data:`LMTP_WORKERS` workers, the default, wired as
  ``bouncetrack install`` wires them; no process per bounce), the outbox worker delivering webhooks to a local
  receiver (no faults; HTTP/1.1 keep-alive, as receivers in the wild answer);
* **bouncetrack**: the same with the pipe transport (the default): pipe(8) starting the pipe
  client per bounce, the pipe server forking per bounce;
* **floor**: the same Postfix with the milter off and the bounce transport delivering
  into a trivial pipe command (``/bin/sh floorpipe.sh``: ``cat`` the message into a
  file): the most this Postfix carries when handling a bounce costs nothing.

Traffic: the soak's mix (:data:`bench.soak.MIX`: ok, complaint, auto-reply, hard,
moved, soft, delayed, multi), paced by a global schedule over
``ceil(rate / 8)`` (at least 4) persistent SMTP sessions. In the floor every message has
its own envelope sender at the bounce domain (no milter to VERP it) and complaints go to
that sender, so every delivery names its message.

Per step: accepted msg/s and how late the driver sent (send lag: accepted minus scheduled,
p50/p99: the driver and Postfix's acceptance keep pace); events stored/s (floor: deliveries
into the trivial pipe);
webhooks delivered/s; p50/p99 send → stored and stored → webhook; Postfix's active,
incoming and deferred queue sizes (files counted in the private instance's queue
directories every 0.5 s; the growth check compares the smallest sample of the first and of
the last 3 s of the step's second half, since qmgr moves retried mail through the active
queue in bursts and a backlog raises the troughs);
CPU per component.

CPU, measured from ``/proc/<pid>/stat`` (utime+stime, and cutime+cstime for reaped
children) by one pass over ``/proc`` every 0.5 s (:class:`ProcSampler`): each live process
of a component adds its own CPU since the previous pass; a process that ends between two
passes adds its tail through its parent's cutime+cstime (the parent's increase minus what
was already counted for the vanished child). Short-lived pipe clients, mostly missed by
the polling, are therefore counted in full through pipe(8)'s reaped-children time, and the
pipe server's per-bounce children through the server's. Components: Postfix daemons by
process name, ``pipe clients`` (children of pipe(8)), ``milter``, ``pipe server`` (accept
loop) and ``pipe server children`` (one fork per bounce; with LMTP: ``lmtp workers``),
``worker``, ``driver`` (this process: SMTP senders, fake MX, webhook receiver: the outside
world, which shares the machine here; reported apart, never bouncetrack's).

**Knee**: the highest offered rate at which (1) p99 send → stored < 5 s, soft bounces
excepted (they wait for ``maximal_queue_lifetime`` by design), (2) no queue keeps growing:
active+incoming at the end of the step's second half is no larger than at its start,
within one second of offered load, and (3) the step was carried: accepted ≥ 90 % of the
offered rate. After each step the backlog drains (at most ``--max-drain`` s) before the
next step starts; after two consecutive steps past the knee the climb stops. Nothing
lost or duplicated at every step, past the knee too: once the last step is sent, the run
drains everything and reconciles (bouncetrack: :func:`bench.soak.analyse`, every event
exactly once, rightly attributed, every webhook delivered; floor: every expected
delivery exactly once).

Bounce storm (``--storm N``): N messages, each to one recipient the fake MX refuses with
550, sent within a minute; Postfix's bounce daemon writes N DSNs that take the real path
into bouncetrack. Reported: lost, duplicated, time to drain, peak RSS per component,
tempfails (Postfix's ``status=deferred`` for the bounce transport, the pipe's tempfail and
fallback logs, machine-wide), retry loops (a DSN attempted more than twice).

Writes ``bench/results/capacity.json`` and ``capacity.png`` (``--quick``:
``capacity-quick``), or ``storm.json`` (``--out`` to write elsewhere); exits 1 when a
reconciliation fails. The machine may be shared: the JSON records the whole machine's
CPU busy share per step beside the components' own.

    python bench/capacity.py                 # ~20 min
    python bench/capacity.py --quick         # ~6 min, development
    python bench/capacity.py --configs bouncetrack-lmtp,floor --rates 80,120,160
    python bench/capacity.py --storm 20000 [--transport lmtp]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import RESULTS, percentile, write_result  # noqa: E402
from bench.soak import (  # noqa: E402
    REMOTE,
    SENDER,
    Expect,
    Msg,
    Run,
    analyse,
    build_messages,
    followup_thread,
    sender_thread,
)
from bouncetrack.core.config import LmtpConfig  # noqa: E402
from bouncetrack.harness.stack import Stack, make_message, unavailable_reason  # noqa: E402
from bouncetrack.harness.webhook_receiver import WebhookReceiver  # noqa: E402

Mode = Literal["bouncetrack", "floor"]
#: The configurations a run may hold (result keys), in the order they run by default:
#: (key, mode, bounce transport).
PLAN: tuple[tuple[str, Mode, str], ...] = (("bouncetrack-lmtp", "bouncetrack", "lmtp"),
                                           ("floor", "floor", "pipe"),
                                           ("bouncetrack", "bouncetrack", "pipe"))
CONFIGS = tuple(key for key, _mode, _transport in PLAN)
#: The pipe server's LMTP workers: ``pipe.lmtp.workers``' default (Postfix gets half as many
#: deliveries at once: ``postfix_wiring.lmtp_concurrency``, as ``bouncetrack install`` sets it).
LMTP_WORKERS = LmtpConfig().workers

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
KNEE_P99_S = 5.0
CARRIED_SHARE = 0.9
SOFT = "soft bounce"
DEFAULT_RATES = "10,20,40,80,160,320"
QUICK_RATES = "10,40,160"
SAMPLE_EVERY = 0.5
QUEUE_WINDOW_S = 3.0


# --- /proc ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    comm: str
    start: int  # starttime in ticks: (pid, start) names one process
    own: int  # utime + stime, ticks
    kids: int  # cutime + cstime (reaped children), ticks
    rss_kb: int


def read_procs() -> dict[int, Proc]:
    """Every process on the machine, from ``/proc/<pid>/stat`` (one pass)."""
    out: dict[int, Proc] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                raw = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        lp, rp = raw.find("("), raw.rfind(")")
        f_ = raw[rp + 2:].split()
        if len(f_) < 22:
            continue
        out[int(name)] = Proc(int(name), int(f_[1]), raw[lp + 1:rp], int(f_[19]),
                              int(f_[11]) + int(f_[12]), int(f_[13]) + int(f_[14]), int(f_[21]) * PAGE_KB)
    return out


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from ``/proc/stat``."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals) - idle, sum(vals)


def queue_counts(queue_dir: Path) -> dict[str, int]:
    """Files in Postfix's incoming, active and deferred queues (subdirectories included)."""
    out = {}
    for q in ("incoming", "active", "deferred"):
        n = 0
        for _root, _dirs, files in os.walk(queue_dir / q):
            n += len(files)
        out[q] = n
    return out


class ProcSampler(threading.Thread):
    """CPU per component (see the module doc), RSS per component and Postfix's queue sizes,
    every :data:`SAMPLE_EVERY` s."""

    def __init__(self, roots: Callable[[], dict[str, int | None]], queue_dir: Path,
                 server_children: str = "pipe server children") -> None:
        super().__init__(daemon=True, name="proc-sampler")
        self.roots, self.queue_dir = roots, queue_dir
        self.server_children = server_children  # the pipe server's children: per bounce, or LMTP workers
        self.lock = threading.Lock()
        self.cpu: dict[str, float] = defaultdict(float)  # component -> CPU seconds so far
        self.rss_peak: dict[str, dict[str, float]] = {}  # component -> {sum_mb, single_mb, processes}
        self.queues: list[tuple[float, dict[str, int]]] = []
        self.machine: list[tuple[float, int, int]] = []
        self.prev: dict[tuple[int, int], tuple[Proc, str]] = {}
        self.stop_ev = threading.Event()

    def classify(self, procs: dict[int, Proc]) -> dict[int, str]:
        """pid -> component for every process under the roots."""
        kids: dict[int, list[int]] = defaultdict(list)
        for p in procs.values():
            kids[p.ppid].append(p.pid)
        out: dict[int, str] = {}
        for label, root in self.roots().items():
            if root is None or root not in procs:
                continue
            todo = [(root, label)]
            while todo:
                pid, comp = todo.pop()
                if pid in out:
                    continue
                p = procs[pid]
                if label == "postfix":
                    parent = out.get(p.ppid, "")
                    comp = "pipe clients" if parent in ("postfix pipe", "pipe clients") else f"postfix {p.comm}"
                elif label == "pipe server" and pid != root:
                    comp = self.server_children
                out[pid] = comp
                todo.extend((k, comp) for k in kids.get(pid, []))
        return out

    def kids_component(self, comp: str) -> str:
        """Where a component's reaped-children tail is counted."""
        if comp == "postfix pipe":
            return "pipe clients"
        if comp == "pipe server":
            return self.server_children
        if comp == "postfix master":
            return "postfix (exited daemons)"
        return comp

    def sample(self) -> None:
        now = time.time()
        procs = read_procs()
        comps = self.classify(procs)
        cur: dict[tuple[int, int], tuple[Proc, str]] = {(procs[pid].pid, procs[pid].start): (procs[pid], c)
                                                        for pid, c in comps.items()}
        vanished_by_parent: dict[int, int] = defaultdict(int)
        for key, (p, _c) in self.prev.items():
            if key not in cur:
                vanished_by_parent[p.ppid] += p.own + p.kids
        add: dict[str, float] = defaultdict(float)
        rss: dict[str, list[int]] = defaultdict(list)
        for key, (p, c) in cur.items():
            before = self.prev.get(key)
            d_own = p.own - (before[0].own if before else 0)
            d_kids = p.kids - (before[0].kids if before else 0)
            if before is None and not self.prev:
                d_own = d_kids = 0  # first pass: a baseline, not CPU used now
            add[c] += d_own
            add[self.kids_component(c)] += d_kids - vanished_by_parent.get(p.pid, 0)
            rss[c].append(p.rss_kb)
        busy, total = machine_busy()
        q = queue_counts(self.queue_dir)
        with self.lock:
            for c, ticks in add.items():
                self.cpu[c] += ticks / CLK_TCK
            for c, vals in rss.items():
                peak = self.rss_peak.setdefault(c, {"sum_mb": 0.0, "single_mb": 0.0, "processes": 0})
                peak["sum_mb"] = max(peak["sum_mb"], sum(vals) / 1024)
                peak["single_mb"] = max(peak["single_mb"], max(vals) / 1024)
                peak["processes"] = max(peak["processes"], len(vals))
            self.queues.append((now, q))
            self.machine.append((now, busy, total))
        self.prev = cur

    def run(self) -> None:
        while not self.stop_ev.is_set():
            self.sample()
            self.stop_ev.wait(SAMPLE_EVERY)

    def cpu_snapshot(self) -> dict[str, float]:
        with self.lock:
            return dict(self.cpu)

    def queue_at(self, t0: float, t1: float) -> dict[str, int]:
        """Each queue's smallest size over the samples taken between ``t0`` and ``t1`` (the
        nearest sample when there is none): qmgr's deferred-queue scans move retried mail
        through the active queue in bursts, which one sample would mistake for growth; a
        backlog raises the troughs."""
        with self.lock:
            qs = list(self.queues)
        if not qs:
            return {"incoming": 0, "active": 0, "deferred": 0}
        within = [q for t, q in qs if t0 <= t <= t1] or [min(qs, key=lambda x: abs(x[0] - t0))[1]]
        return {k: min(q[k] for q in within) for k in within[0]}

    def queue_series(self, t0: float, t1: float) -> list[dict[str, Any]]:
        with self.lock:
            return [{"t": round(t - t0, 2), **q} for t, q in self.queues if t0 <= t <= t1]

    def machine_share(self, t0: float, t1: float) -> float | None:
        """The whole machine's busy share (all cores) between ``t0`` and ``t1``."""
        with self.lock:
            pts = [(b, tot) for t, b, tot in self.machine if t0 <= t <= t1]
        if len(pts) < 2 or pts[-1][1] == pts[0][1]:
            return None
        return (pts[-1][0] - pts[0][0]) / (pts[-1][1] - pts[0][1])


def cpu_delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: round(b.get(k, 0.0) - a.get(k, 0.0), 3) for k in sorted(set(a) | set(b))
            if abs(b.get(k, 0.0) - a.get(k, 0.0)) > 0.0005}


# --- the two configurations --------------------------------------------------------------

#: The floor's bounce transport: read the message and keep it in a file named after its
#: recipient (the time of delivery is the file's mtime). Arguments: the directory, then
#: what master.cf passes (options such as ``--client-address=…``, the recipient, the sender).
#: The name ends in the shell's pid, made unique with shell built-ins only (pids wrap around
#: at pid_max: a second report to the same address must not overwrite the first).
FLOOR_SCRIPT = """#!/bin/sh
dir=$1; shift
while [ "${1#--}" != "$1" ]; do shift; done
f="$dir/$1.$$"
while [ -e "$f" ]; do f="$f.x"; done
exec cat > "$f"
"""
#: A floor delivery's file is read once its last write is this old (s): never half-written.
FLOOR_SETTLED_S = 1.0


class FloorStack(Stack):
    """The harness's Postfix with the bounce transport delivering into :data:`FLOOR_SCRIPT`."""

    @property
    def floor_script(self) -> Path:
        return self.workdir / "floorpipe.sh"

    def pipe_argv(self) -> list[str]:
        self.floor_script.write_text(FLOOR_SCRIPT)
        self.floor_script.chmod(0o755)
        return ["/bin/sh", str(self.floor_script), str(self.spool_dir)]


def floor_sender(m: Msg) -> str:
    """The floor's envelope sender: one address per message at the bounce domain."""
    return f"fl-{m.rcpts[0].split('@')[0]}@bounce.test"


def spawn_worker(st: Stack) -> subprocess.Popen[bytes]:
    wlog = open(st.log_dir / "worker.log", "ab")
    try:
        worker = subprocess.Popen(
            [st.python, str(st.lib / "bt.py"), "worker", "--config", str(st.config_path)],
            user=st.user, group=st.user, extra_groups=[], cwd=str(st.workdir),
            stdin=subprocess.DEVNULL, stdout=wlog, stderr=subprocess.STDOUT, start_new_session=True,
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"},
        )
    finally:
        wlog.close()
    time.sleep(1.0)
    if worker.poll() is not None:
        raise SystemExit(f"worker exited {worker.returncode}:\n{(st.log_dir / 'worker.log').read_text()}")
    return worker


def stop_worker(worker: subprocess.Popen[bytes] | None) -> None:
    if worker is None or worker.poll() is not None:
        return
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(20)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


def roots_of(st: Stack, worker: subprocess.Popen[bytes] | None) -> Callable[[], dict[str, int | None]]:
    def roots() -> dict[str, int | None]:
        return {
            "postfix": st.postfix.master_pid(),
            "milter": st._milter.pid if st._milter is not None else None,
            "pipe server": st._pipe_server.pid if st._pipe_server is not None else None,
            "worker": worker.pid if worker is not None else None,
            "driver": os.getpid(),
        }
    return roots


def read_db(st: Stack) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    with sqlite3.connect(f"file:{st.db_path}?mode=ro", uri=True, timeout=30) as db:
        db.row_factory = sqlite3.Row
        evs = [dict(r) for r in db.execute("SELECT * FROM events ORDER BY id")]
        jobs = [dict(r) for r in db.execute("SELECT * FROM outbox ORDER BY id")]
        nmsg = db.execute("SELECT count(*) FROM messages").fetchone()[0]
    return evs, jobs, nmsg


def count_stored(st: Stack) -> tuple[int, int]:
    """(events other than soft bounces, all events) stored so far."""
    with sqlite3.connect(f"file:{st.db_path}?mode=ro", uri=True, timeout=30) as db:
        total = db.execute("SELECT count(*) FROM events").fetchone()[0]
        soft = db.execute("SELECT count(*) FROM events WHERE type = 'bounce' AND hard = 0").fetchone()[0]
    return total - soft, total


@dataclass(frozen=True)
class Delivery:
    """One message the floor's pipe received."""

    rcpt: str  # its envelope recipient: the floor message's own sender
    t: float  # when it was delivered (the file's mtime)
    reports: tuple[tuple[str, str], ...]  # a DSN's (Final-Recipient, Action) pairs; () for other mail


def parse_reports(data: bytes) -> tuple[tuple[str, str], ...]:
    """The (Final-Recipient, Action) pairs of a DSN (RFC 3464 §2.3), lower-cased."""
    out = []
    final: str | None = None
    for line in data.decode("utf-8", "replace").splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "final-recipient":
            final = value.split(";", 1)[-1].strip().lower()
        elif key == "action" and final is not None:
            out.append((final, value.strip().lower()))
            final = None
    return tuple(out)


def floor_recipient(name: str) -> str:
    """The recipient a floor delivery's file was named after (:data:`FLOOR_SCRIPT`:
    ``RCPT.PID``, ``.x`` appended until unique), lower-cased."""
    while name.endswith(".x"):
        name = name[:-2]
    return name.rsplit(".", 1)[0].lower()


class FloorIndex:
    """The floor's deliveries, each file read once. Postfix's bounce daemon reports every
    recipient that failed in one delivery pass in one DSN, so a message's failures may come
    in fewer DSNs than failed recipients: the floor is matched recipient by recipient."""

    def __init__(self, spool: Path) -> None:
        self.spool = spool
        self.seen: dict[str, Delivery] = {}

    def refresh(self) -> list[Delivery]:
        """Every delivery so far, each file read once it is complete (its last write
        :data:`FLOOR_SETTLED_S` ago: ``cat`` may still be writing a newer one)."""
        settled = time.time() - FLOOR_SETTLED_S
        for e in os.scandir(self.spool):
            if e.is_file() and e.name not in self.seen:
                st = e.stat()
                if st.st_mtime > settled:
                    continue
                self.seen[e.name] = Delivery(floor_recipient(e.name), st.st_mtime,
                                             parse_reports(Path(e.path).read_bytes()))
        return list(self.seen.values())

    def covered(self) -> tuple[int, int]:
        """(reports other than soft bounces, all reports) received so far; a DSN counts
        once per recipient it reports, other mail (complaints, replies) once."""
        total = non_soft = 0
        for d in self.refresh():
            for rcpt, action in d.reports or (("", ""),):
                total += 1
                non_soft += not (action == "failed" and rcpt.startswith("full-"))
        return non_soft, total


# --- one configuration's climb ------------------------------------------------------------


@dataclass
class Step:
    index: int
    rate: float
    msgs: list[Msg]
    t0: float
    t_end: float = 0.0
    drained_at: float | None = None
    cpu_before: dict[str, float] = field(default_factory=dict)
    cpu_after: dict[str, float] = field(default_factory=dict)


def connections_for(rate: float) -> int:
    return max(4, math.ceil(rate / 8))


def offer(st: Stack, msgs: list[Msg], rate: float, sender_for: Callable[[Msg], str] | None,
          fbl: str | None, data_for: Callable[[Msg], bytes],
          at_sent: Callable[[], None] | None = None) -> tuple[Run, float]:
    """Send ``msgs`` at their due times over :func:`connections_for` sessions, and the
    complaints / auto-replies they call for; returns once all are sent, with the time
    the last message was accepted (the end of the sending window). ``at_sent`` is called
    once the messages are sent, before waiting for the last follow-ups."""
    run = Run(msgs)
    conns = connections_for(rate)
    for m in msgs:
        run.send_q.put(m)
    for _ in range(conns):
        run.send_q.put(None)
    senders = [threading.Thread(target=sender_thread, args=(run, st.postfix.host, st.postfix.port, data_for,
                                                            sender_for), daemon=True) for _ in range(conns)]
    follow = threading.Thread(target=followup_thread, args=(run, st, fbl), daemon=True)
    for th in (*senders, follow):
        th.start()
    for th in senders:
        th.join()
    sent_end = max((m.sent_at for m in msgs if m.sent_at), default=time.time())
    if at_sent is not None:
        at_sent()
    run.sending_done.set()
    follow.join()
    return run, sent_end


def expected_non_soft(msgs: list[Msg]) -> int:
    return sum(1 for m in msgs if m.sent_at for e in m.expected() if e.kind != SOFT)


@dataclass(frozen=True)
class Returned:
    """What Postfix's log says of the mail it returned at ``maximal_queue_lifetime``."""

    expired: frozenset[str] = frozenset()  # recipients returned at the queue lifetime
    delay_notified: frozenset[str] = frozenset()  # recipients whose sender got a delay notice


def returned(postfix_log: str) -> Returned:
    """Recipients whose mail Postfix returned at ``maximal_queue_lifetime`` (qmgr logs
    ``QID: from=<…>, status=expired, returned to sender`` for the message) and those it sent a
    delay notice for (the bounce daemon logs ``QID: sender delay notification: …``): the
    recipients of a queue id are those of the delivery agents' lines (``QID: to=<…>``) that
    were deferred."""
    expired: set[str] = set()
    notified: set[str] = set()
    deferred: dict[str, set[str]] = defaultdict(set)
    for line in postfix_log.splitlines():
        _head, sep, rest = line.partition("]: ")
        qid = rest.split(":", 1)[0] if sep else ""
        if "status=expired" in rest:
            expired.add(qid)
        elif "sender delay notification" in rest:
            notified.add(qid)
        elif rest.startswith(f"{qid}: to=<") and "status=deferred" in rest:
            deferred[qid].add(rest.split("to=<", 1)[1].split(">", 1)[0].lower())
    return Returned(frozenset(r for qid in expired for r in deferred.get(qid, ())),
                    frozenset(r for qid in notified for r in deferred.get(qid, ())))


def expectations(m: Msg, ret: Returned) -> list[Expect]:
    """What the message's reports should be, given what Postfix did: a recipient whose mail
    was returned at ``maximal_queue_lifetime`` has a delay notice only if Postfix's log says
    it sent one before (under load it may not have: the queue lifetime ran out first), and a
    greylisted (``delay-*``) one that waited that long (only past the knee, where queues
    grow) has a bounce too (soft, 4.x.x: its last deferral's status). Postfix returns such
    mail as it must; nothing disappears either way."""
    out = []
    for e in m.expected():
        r = e.recipient.lower()
        if e.type == "delay" and r in ret.expired and r not in ret.delay_notified:
            continue  # returned before a delay notice was due
        out.append(e)
    for r in m.rcpts:
        if r.lower() in ret.expired and r.split("@")[0].startswith("delay-"):
            out.append(Expect(r, "bounce", None, False, SOFT))
    return out


def climb(mode: Mode, rates: list[float], step_s: float, lifetime: int, delay_for: float, max_drain: float,
          drain_timeout: float, all_steps: bool, seed: int, transport: str = "pipe") -> dict[str, Any]:
    """Run the steps of one configuration, drain, reconcile; the configuration's result.
    ``transport="lmtp"``: bouncetrack's bounce domain is delivered over LMTP to the pipe
    server's workers (``pipe.transport: lmtp``) instead of pipe(8) → pipe client → pipe server."""
    secret = "cap-" + os.urandom(12).hex()
    rx = WebhookReceiver(secret, keep_alive=True).start() if mode == "bouncetrack" else None
    first_seen: dict[str, float] = {}
    first_lock = threading.Lock()

    def rule(addr: str) -> str | None:
        """delay-*: 451 for ``delay_for`` s from the first attempt, then accepted (as the soak)."""
        if not addr.lower().startswith("delay-"):
            return None
        with first_lock:
            t = first_seen.setdefault(addr.lower(), time.time())
        return "451 4.7.1 Greylisted, try again later" if time.time() - t < delay_for else "250 2.1.5 Ok"

    common: dict[str, Any] = {"log_level": "INFO", "maximal_queue_lifetime": f"{lifetime}s",
                              "delay_warning_time": "1s"}
    stack: Stack
    if transport == "lmtp":
        common.update(transport="lmtp", lmtp_workers=LMTP_WORKERS)
    if mode == "bouncetrack":
        assert rx is not None
        stack = Stack(with_milter=True, pipe="real", **common,
                      domains={"tracked.test": {"tracking": True,
                                                "webhook": {"url": rx.url, "secret": secret, "timeout_seconds": 2}}},
                      config_extra={"outbox": {"base_delay_seconds": 1, "max_delay_seconds": 5,
                                               "max_attempts": 50}})
    else:
        stack = FloorStack(with_milter=False, pipe="files", **common)
    sender_for = floor_sender if mode == "floor" else None
    worker: subprocess.Popen[bytes] | None = None
    steps: list[Step] = []
    out: dict[str, Any] = {"mode": mode, "transport": transport}
    label = f"{mode}-lmtp" if transport == "lmtp" else mode
    started = time.time()
    try:
        with stack as st:
            st.fakemx.rule = rule
            if mode == "bouncetrack":
                worker = spawn_worker(st)
            sampler = ProcSampler(roots_of(st, worker), st.postfix.queue_dir,
                                  "lmtp workers" if transport == "lmtp" else "pipe server children")
            floor_index = FloorIndex(st.spool_dir)
            sampler.start()
            data_cache: dict[int, bytes] = {}
            base = int(time.time()) % 100000
            all_msgs: list[Msg] = []
            fails = 0

            def data_for(m: Msg) -> bytes:
                key = id(m)
                if key not in data_cache:
                    data_cache[key] = make_message(sender_for(m) if sender_for else SENDER, m.rcpts,
                                                   subject=f"capacity {m.n}",
                                                   headers={"Message-ID": f"<cap-{m.rcpts[0]}>"})
                return data_cache.pop(key)

            for i, rate in enumerate(rates):
                t0 = time.time() + 0.5
                msgs = build_messages(int(rate * step_s), rate, t0, f"{mode[0]}{base}s{i}", seed + i)
                step = Step(i, rate, msgs, t0)
                time.sleep(max(0.0, t0 - time.time()))
                step.cpu_before = sampler.cpu_snapshot()
                print(f"[{label}] step {i}: {rate:g} msg/s for {step_s:g} s ({len(msgs)} messages, "
                      f"{connections_for(rate)} connections)", flush=True)

                def at_sent(step: Step = step) -> None:
                    step.cpu_after = sampler.cpu_snapshot()

                _run, step.t_end = offer(st, msgs, rate, sender_for, "" if mode == "floor" else "fbl@bounce.test",
                                         data_for, at_sent)
                steps.append(step)
                all_msgs += msgs
                st.fakemx.clear()
                # Drain the backlog before the next step (soft bounces wait for their lifetime).
                want = expected_non_soft(all_msgs)
                deadline = time.time() + max_drain
                while time.time() < deadline:
                    q = queue_counts(st.postfix.queue_dir)
                    got = count_stored(st)[0] if mode == "bouncetrack" else floor_index.covered()[0]
                    if q["active"] + q["incoming"] == 0:
                        if got >= want:
                            step.drained_at = time.time()
                            break
                        ret = returned(st.postfix.log_text())  # what Postfix returned changes what is due
                        want = sum(1 for m in all_msgs if m.sent_at for e in expectations(m, ret) if e.kind != SOFT)
                    time.sleep(0.5)
                ok_now = step_ok_quick(step, sampler)
                print(f"  accepted {sum(1 for m in msgs if m.sent_at)}/{len(msgs)} in {step.t_end - t0:.1f} s; "
                      f"drained {'in %.1f s' % (step.drained_at - step.t_end) if step.drained_at else 'NOT within %g s' % max_drain}"
                      f"; queue ok {ok_now}", flush=True)
                # A quick look (the verdict comes after the final drain): past the knee when the
                # queue grew or the backlog took long to drain; the climb stops at the second such
                # step in a row (one may be noise at the margin, the more so with fine steps: the
                # knee is the highest step within).
                past = not (ok_now and step.drained_at and step.drained_at - step.t_end < 2 * KNEE_P99_S)
                fails = fails + 1 if past else 0
                if fails >= 2 and not all_steps and i + 1 < len(rates):
                    print(f"  two steps in a row past the knee: rates {rates[i + 1:]} not run", flush=True)
                    break

            # Drain everything (soft bounces included), then reconcile.
            send_end = time.time()
            print(f"[{label}] draining", flush=True)
            deadline = time.time() + drain_timeout
            ret = Returned()
            while True:
                q = queue_counts(st.postfix.queue_dir)
                empty = sum(q.values()) == 0
                if empty:  # what Postfix returned at the queue lifetime changes what is expected
                    ret = returned(st.postfix.log_text())
                want = sum(len(expectations(m, ret)) for m in all_msgs if m.sent_at)
                if mode == "bouncetrack":
                    assert rx is not None
                    events, jobs, _ = read_db(st)
                    accepted = set(rx.accepted_ids())
                    done = (len(events) >= want and all(j["state"] != "pending" for j in jobs)
                            and all(e["event_id"] in accepted for e in events))
                else:
                    done = floor_index.covered()[1] >= want
                if done and empty:
                    break
                if time.time() > deadline:
                    print("  drain timeout", flush=True)
                    break
                time.sleep(1.0)
            time.sleep(3.0)  # late duplicates would show now
            drain_end = time.time()
            sampler.stop_ev.set()
            sampler.join()
            queue_left = sum(queue_counts(st.postfix.queue_dir).values())
            ret = returned(st.postfix.log_text())
            out["returned_at_queue_lifetime"] = {"recipients": len(ret.expired),
                                                 "with_a_delay_notice": len(ret.expired & ret.delay_notified)}
            if mode == "bouncetrack":
                assert rx is not None
                events, jobs, n_stored = read_db(st)
                expected = [(m, e) for m in all_msgs if m.sent_at for e in expectations(m, ret)]
                requests = list(rx.requests)
                ns = SimpleNamespace(rate=rates[0], short=True, seed=seed, connections=connections_for(rates[-1]))
                first_t0 = steps[0].t0
                full = analyse(ns, all_msgs, expected, events, jobs, requests, rx, [], [], [], first_t0, send_end,
                               drain_end, n_stored, queue_left, [], send_end - first_t0, lifetime, delay_for,
                               SAMPLE_EVERY)
                recon = full["reconciliation"]
                per_step = [bouncetrack_step(s, events, requests, sampler, ret) for s in steps]
            else:
                deliveries = floor_index.refresh()
                recon, per_step = floor_reconcile(steps, deliveries, queue_left, sampler, ret)
            out.update({
                "steps": per_step,
                "reconciliation": recon,
                "drain_seconds": drain_end - send_end,
                "rss_peak_mb": sampler.rss_peak,
                "wall_seconds": time.time() - started,
            })
            out["knee_msg_per_s"] = knee(per_step)
            out["knee_every_step_below_within_msg_per_s"] = knee_every_step_below(per_step)
            if not recon.get("ok"):
                print(st.logs()[-4000:], file=sys.stderr)
    finally:
        stop_worker(worker)
        if rx is not None:
            rx.stop()
    return out


def step_ok_quick(step: Step, sampler: ProcSampler) -> bool:
    """The queue part of the knee: active+incoming at the end of the step's second half no
    larger than at its start, within one second of offered load."""
    a, b = queue_ends(step, sampler)
    return (b["active"] + b["incoming"]) - (a["active"] + a["incoming"]) <= step.rate


def queue_ends(step: Step, sampler: ProcSampler) -> tuple[dict[str, int], dict[str, int]]:
    """The queues at the start and at the end of the step's second half: the smallest
    sample within :data:`QUEUE_WINDOW_S` at each end."""
    mid = step.t0 + (step.t_end - step.t0) / 2
    return (sampler.queue_at(mid, mid + QUEUE_WINDOW_S),
            sampler.queue_at(step.t_end - QUEUE_WINDOW_S, step.t_end))


def lat_summary(vals: list[float]) -> dict[str, float | int | None]:
    if not vals:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    return {"n": len(vals), "p50": percentile(vals, 0.5), "p99": percentile(vals, 0.99), "max": max(vals)}


def cpu_group(component: str, mode: str) -> str:
    """Whose CPU a component's is: Postfix's daemons, the driver (the outside world: senders,
    fake MX, webhook receiver), the floor's trivial pipe, or bouncetrack's own processes."""
    if component.startswith("postfix"):
        return "postfix"
    if component == "driver":
        return "driver"
    return "trivial pipe" if mode == "floor" else "bouncetrack"


def step_common(s: Step, sampler: ProcSampler, stored_times: list[float], n_webhooks: int,
                mode: str) -> dict[str, Any]:
    sent = [m for m in s.msgs if m.sent_at]
    window = s.t_end - s.t0
    q_mid, q_end = queue_ends(s, sampler)
    cpu = cpu_delta(s.cpu_before, s.cpu_after)
    stored_in = sum(1 for t in stored_times if s.t0 <= t <= s.t_end)
    groups: dict[str, float] = defaultdict(float)
    for comp, sec in cpu.items():
        groups[cpu_group(comp, mode)] += sec
    return {
        "offered_msg_per_s": s.rate,
        "messages": len(s.msgs),
        "accepted": len(sent),
        "accepted_msg_per_s": len(sent) / window,
        "send_lag": lat_summary([m.sent_at - m.due for m in sent if m.sent_at]),
        "send_seconds": window,
        "connections": connections_for(s.rate),
        "events_stored_per_s": stored_in / window,
        "webhooks_delivered_per_s": n_webhooks / window,
        "queue_mid": q_mid,
        "queue_end": q_end,
        "queue_growth_active_incoming": (q_end["active"] + q_end["incoming"]) - (q_mid["active"] + q_mid["incoming"]),
        "queue_series": sampler.queue_series(s.t0, s.drained_at or s.t_end + 5),
        "drain_seconds": (s.drained_at - s.t_end) if s.drained_at else None,
        "cpu_seconds": cpu,
        "cpu_share_of_one_core": {k: round(v / window, 3) for k, v in cpu.items()},
        "cpu_ms_per_event_by_group": {k: round(v * 1000 / stored_in, 2) for k, v in sorted(groups.items())}
        if stored_in else {},
        "machine_busy_share_all_cores": sampler.machine_share(s.t0, s.t_end),
    }


def verdict(row: dict[str, Any]) -> dict[str, Any]:
    p99 = row["send_to_stored_non_soft"]["p99"]
    why = []
    if p99 is None or p99 >= KNEE_P99_S:
        why.append(f"p99 send→stored {p99 if p99 is None else round(p99, 2)} s ≥ {KNEE_P99_S:g} s")
    if row["queue_growth_active_incoming"] > row["offered_msg_per_s"]:
        why.append(f"active+incoming grew by {row['queue_growth_active_incoming']} in the second half")
    if row["accepted_msg_per_s"] < CARRIED_SHARE * row["offered_msg_per_s"]:
        why.append(f"accepted {row['accepted_msg_per_s']:.1f} msg/s < {CARRIED_SHARE:.0%} of offered")
    if row.get("lost") or row.get("duplicated"):
        why.append(f"lost {row.get('lost')} duplicated {row.get('duplicated')}")
    return {"within_knee": not why, "why_not": why}


def bouncetrack_step(s: Step, events: list[dict[str, Any]], requests: list[Any],
                     sampler: ProcSampler, ret: Returned) -> dict[str, Any]:
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for ev in events:
        by_key[((ev["recipient"] or "").lower(), ev["type"])].append(ev)
    first_ok: dict[str, float] = {}
    for r in requests:
        if r.webhook_id and r.verified and 200 <= r.status < 300:
            first_ok.setdefault(r.webhook_id, r.received_at)
    s2s: list[float] = []
    s2s_soft: list[float] = []
    s2w: list[float] = []
    lost = dup = 0
    for m in s.msgs:
        if not m.sent_at:
            continue
        for e in expectations(m, ret):
            got = by_key.get((e.recipient.lower(), e.type), [])
            if not got:
                lost += 1
                continue
            dup += len(got) > 1
            origin = m.origin(e)
            if origin is not None:
                (s2s_soft if e.kind == SOFT else s2s).append(got[0]["received_at"] - origin)
            wh = first_ok.get(got[0]["event_id"])
            if wh is not None:
                s2w.append(wh - got[0]["received_at"])
    stored_at = [ev["received_at"] for ev in events]
    n_wh = sum(1 for t in first_ok.values() if s.t0 <= t <= s.t_end)
    row = step_common(s, sampler, stored_at, n_wh, "bouncetrack")
    row.update({"send_to_stored_non_soft": lat_summary(s2s), "send_to_stored_soft": lat_summary(s2s_soft),
                "stored_to_webhook": lat_summary(s2w), "lost": lost, "duplicated": dup})
    row.update(verdict(row))
    return row


def floor_reconcile(steps: list[Step], deliveries: list[Delivery], queue_left: int, sampler: ProcSampler,
                    ret: Returned) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every expected report exactly once: each bounce and delay of a recipient in exactly
    one DSN to its message's sender (Action failed / delayed), each complaint or reply once;
    per-step rows with latencies (to the first delivery that carries the report)."""
    by_key: dict[tuple[str, str, str], list[float]] = defaultdict(list)  # (sender, rcpt, action)
    others: dict[str, list[float]] = defaultdict(list)  # sender -> non-DSN deliveries
    for d in deliveries:
        if d.reports:
            for rcpt, action in d.reports:
                by_key[(d.rcpt, rcpt, action)].append(d.t)
        else:
            others[d.rcpt].append(d.t)
    used: set[tuple[str, str, str]] = set()
    known: set[str] = set()
    rows = []
    lost_all = dup_all = 0
    lost_items: list[str] = []
    for s in steps:
        s2s: list[float] = []
        s2s_soft: list[float] = []
        lost = dup = 0
        for m in s.msgs:
            if not m.sent_at:
                continue
            r = floor_sender(m).lower()
            known.add(r)
            for e in expectations(m, ret):
                if e.type in ("bounce", "delay"):
                    key = (r, e.recipient.lower(), "failed" if e.type == "bounce" else "delayed")
                    used.add(key)
                    times = by_key.get(key, [])
                else:
                    times = others.get(r, [])
                lost += not times
                if not times:
                    lost_items.append(f"{e.recipient} {e.type}")
                dup += len(times) > 1
                origin = m.origin(e)
                if times and origin is not None:
                    (s2s_soft if e.kind == SOFT else s2s).append(min(times) - origin)
        stored_at = [d.t for d in deliveries for _ in (d.reports or (("", ""),))]
        row = step_common(s, sampler, stored_at, 0, "floor")
        row.update({"send_to_stored_non_soft": lat_summary(s2s), "send_to_stored_soft": lat_summary(s2s_soft),
                    "stored_to_webhook": lat_summary([]), "lost": lost, "duplicated": dup})
        row.update(verdict(row))
        rows.append(row)
        lost_all += lost
        dup_all += dup
    odd = [f"{k[1]} {k[2]} (to {k[0]})" for k, v in by_key.items() if k not in used for _ in v] + [
        f"non-DSN mail to {k}" for k, v in others.items() if k not in known for _ in v]
    unexpected = len(odd)
    sent = sum(1 for s in steps for m in s.msgs if m.sent_at)
    total = sum(1 for s in steps for _ in s.msgs)
    recon = {"messages_sent": sent, "messages_unsent": total - sent, "deliveries": len(deliveries),
             "dsns_naming_several_recipients": sum(1 for d in deliveries if len(d.reports) > 1),
             "lost": lost_all, "duplicated": dup_all, "unexpected": unexpected, "postfix_queue_left": queue_left,
             "details": {"lost": lost_items[:20], "unexpected": odd[:20]}}
    recon["ok"] = not lost_all and not dup_all and not unexpected and not queue_left and sent == total
    return recon, rows


def knee(rows: list[dict[str, Any]]) -> float | None:
    """The knee as issue 21 defines it: the highest offered rate whose step is within
    (:func:`verdict`), whatever the steps below (a step just past the queue-growth limit
    below one within is noise at the margin; :func:`knee_every_step_below` is the strict
    reading, recorded beside it)."""
    ok = [r["offered_msg_per_s"] for r in rows if r["within_knee"]]
    return max(ok) if ok else None


def knee_every_step_below(rows: list[dict[str, Any]]) -> float | None:
    """The highest offered rate whose step is within with every step below it within too."""
    out = None
    for r in sorted(rows, key=lambda r: r["offered_msg_per_s"]):
        if not r["within_knee"]:
            break
        out = r["offered_msg_per_s"]
    return out


# --- storm --------------------------------------------------------------------------------


def storm(n: int, seconds: float, drain_timeout: float, per_message: int = 1, transport: str = "pipe") -> dict[str, Any]:
    """``n`` bounces within ``seconds``: ``n / per_message`` messages, each to ``per_message``
    recipients the fake MX refuses with 550, so Postfix's bounce daemon writes one DSN per
    message naming ``per_message`` failed recipients, each a bounce event. ``transport``: how
    the DSNs reach bouncetrack (``pipe`` or ``lmtp``)."""
    extra: dict[str, Any] = {"transport": "lmtp", "lmtp_workers": LMTP_WORKERS} if transport == "lmtp" else {}
    stack = Stack(with_milter=True, pipe="real", log_level="INFO", **extra)
    n_msgs = math.ceil(n / per_message)
    out: dict[str, Any] = {"bounces": n_msgs * per_message, "messages": n_msgs, "dsns_expected": n_msgs,
                           "recipients_per_message": per_message, "send_within_s": seconds, "transport": transport}
    started = time.time()
    with stack as st:
        sampler = ProcSampler(roots_of(st, None), st.postfix.queue_dir,
                              "lmtp workers" if transport == "lmtp" else "pipe server children")
        sampler.start()
        tag = f"st{int(time.time()) % 100000}"
        rate = n_msgs / seconds
        t0 = time.time() + 0.5
        msgs = [Msg(i, "hard", [f"unknown-{tag}-{i}-{k}@{REMOTE}" for k in range(per_message)], t0 + i / rate)
                for i in range(n_msgs)]
        cpu0 = sampler.cpu_snapshot()

        def data_for(m: Msg) -> bytes:
            return make_message(SENDER, m.rcpts, subject=f"storm {m.n}")

        print(f"storm: {n_msgs} messages to {per_message} refused recipients each within {seconds:g} s "
              f"({connections_for(rate)} connections)", flush=True)
        run, send_end = offer(st, msgs, rate, None, "fbl@bounce.test", data_for)
        sent = [m for m in msgs if m.sent_at]
        wanted = {r.lower() for m in sent for r in m.rcpts}
        print(f"  accepted {len(sent)}/{n_msgs} in {send_end - t0:.1f} s", flush=True)
        deadline = time.time() + drain_timeout
        last = 0.0
        while time.time() < deadline:
            got = count_stored(st)[1]
            q = queue_counts(st.postfix.queue_dir)
            if got >= len(wanted) and sum(q.values()) == 0:
                break
            if time.time() - last > 15:
                last = time.time()
                print(f"  t={time.time() - t0:5.0f}s stored {got}/{len(wanted)} queue {q}", flush=True)
            time.sleep(0.5)
        drained = time.time()
        time.sleep(3.0)
        cpu1 = sampler.cpu_snapshot()
        sampler.stop_ev.set()
        sampler.join()
        events, _jobs, n_messages = read_db(st)
        by_rcpt = Counter((e["recipient"] or "").lower() for e in events if e["type"] == "bounce")
        lost = sum(1 for r in wanted if by_rcpt.get(r, 0) == 0)
        dup = sum(1 for r in wanted if by_rcpt.get(r, 0) > 1)
        unexpected = sum(c for r, c in by_rcpt.items() if r not in wanted) + sum(
            1 for e in events if e["type"] != "bounce")
        log = st.postfix.log_text()
        dsns_sent, tempfails, attempts = bounce_transport_log(log, "lmtp.sock" if transport == "lmtp" else "relay=bouncepipe")
        retried = {k: v for k, v in attempts.items() if v > 2}
        cache = Path(os.environ.get("BOUNCETRACK_CACHE_DIR", "/var/cache/bouncetrack"))
        queue_left = sum(queue_counts(st.postfix.queue_dir).values())
        recon = {"messages_sent": len(sent), "messages_unsent": n_msgs - len(sent),
                 "dsns_delivered": dsns_sent,
                 "messages_recorded_by_milter": n_messages, "bounces_stored": sum(by_rcpt.values()),
                 "lost": lost, "duplicated": dup, "unexpected": unexpected, "postfix_queue_left": queue_left,
                 # what is left and why (cleanup unfinished? qmgr never took it?), for a failure's report
                 "postfix_queue_left_files": st.postfix.describe_queue() if queue_left else []}
        recon["ok"] = not lost and not dup and not unexpected and not queue_left and len(sent) == n_msgs
        out.update({
            "accepted_seconds": send_end - t0,
            "accepted_msg_per_s": len(sent) / (send_end - t0),
            "smtp_errors": len(run.smtp_errors), "smtp_errors_sample": run.smtp_errors[:5],
            "time_to_drain_from_first_send_s": drained - t0,
            "time_to_drain_after_sending_s": drained - send_end,
            "bounces_stored_per_s": sum(by_rcpt.values()) / (drained - t0),
            "reconciliation": recon,
            # The pipe's logs are in the machine's cache directory, shared by every stack
            # running here: Postfix's log is this stack's own count.
            "tempfails": {"postfix_deferred_bounce_transport": tempfails,
                          "pipe_tempfail_log_records": log_records(cache / "pipe-tempfail.log", t0),
                          "pipe_fallback_log_records": log_records(cache / "pipe-fallback.log", t0)},
            "retry_loops": {"dsn_attempted_more_than_twice": len(retried), "sample": dict(list(retried.items())[:5]),
                            "max_attempts_of_one_dsn": max(attempts.values()) if attempts else 0},
            "rss_peak_mb": sampler.rss_peak,
            "cpu_seconds": cpu_delta(cpu0, cpu1),
            "machine_busy_share_all_cores": sampler.machine_share(t0, drained),
        })
    out["wall_seconds"] = time.time() - started
    return out


def bounce_transport_log(log: str, marker: str = "relay=bouncepipe") -> tuple[int, int, dict[str, int]]:
    """(deliveries and deferrals by the bounce transport, delivery attempts per DSN queue id)
    from Postfix's log: the lines that name ``marker`` (the pipe's service, or the LMTP socket
    as the relay)."""
    sent = deferred = 0
    attempts: Counter[str] = Counter()
    for line in log.splitlines():
        if marker not in line:
            continue
        qid = line.split("]: ", 1)[-1].split(":", 1)[0]
        attempts[qid] += 1
        if "status=deferred" in line:
            deferred += 1
        elif "status=sent" in line:
            sent += 1
    return sent, deferred, dict(attempts)


def log_records(path: Path, since: float) -> int:
    """Records of a fixed-format pipe log (``<unix seconds> <reason>``) written since ``since``."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return 0
    n = 0
    for line in lines:
        head = line.split(" ", 1)[0]
        if head.isdigit() and int(head) >= int(since):
            n += 1
    return n


# --- report --------------------------------------------------------------------------------


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    colours = {"bouncetrack": "tab:blue", "bouncetrack-lmtp": "tab:green", "floor": "tab:grey"}
    for mode in CONFIGS:
        d = result.get(mode)
        if not d:
            continue
        rows = d["steps"]
        x = [r["offered_msg_per_s"] for r in rows]
        c = colours[mode]
        axes[0].plot(x, [r["accepted_msg_per_s"] for r in rows], "o-", color=c, label=f"{mode}: accepted msg/s")
        axes[0].plot(x, [r["events_stored_per_s"] for r in rows], "s--", color=c,
                     label=f"{mode}: {'events stored' if d['mode'] == 'bouncetrack' else 'bounces delivered'}/s")
        p99 = [r["send_to_stored_non_soft"]["p99"] or float("nan") for r in rows]
        p50 = [r["send_to_stored_non_soft"]["p50"] or float("nan") for r in rows]
        axes[1].plot(x, p99, "o-", color=c, label=f"{mode} p99")
        axes[1].plot(x, p50, "s--", color=c, label=f"{mode} p50")
        k = d.get("knee_msg_per_s")
        if k:
            for ax in axes[:2]:
                ax.axvline(k, color=c, linestyle=":", alpha=0.7)
    axes[0].plot([0, 400], [0, 400], color="k", lw=0.5, alpha=0.4)
    axes[0].set(xscale="log", yscale="log", xlabel="offered msg/s", ylabel="per second",
                title="carried load (dotted: knee)")
    axes[1].axhline(KNEE_P99_S, color="red", lw=0.8)
    axes[1].set(xscale="log", yscale="log", xlabel="offered msg/s", ylabel="seconds",
                title="send → stored, soft bounces excepted")
    key = "bouncetrack-lmtp" if "bouncetrack-lmtp" in result else "bouncetrack"
    bt = result.get(key)
    if bt:
        rows = bt["steps"]
        comps: Counter[str] = Counter()
        for r in rows:
            for k, v in r["cpu_share_of_one_core"].items():
                comps[k] += v
        top = [k for k, _ in comps.most_common(8)]
        bottom = [0.0] * len(rows)
        labels = [f"{r['offered_msg_per_s']:g}" for r in rows]
        for k in top:
            vals = [r["cpu_share_of_one_core"].get(k, 0.0) for r in rows]
            axes[2].bar(labels, vals, bottom=bottom, label=k)
            bottom = [a + b for a, b in zip(bottom, vals)]
        axes[2].set(xlabel="offered msg/s", ylabel="CPU (cores)", title=f"{key}: CPU per component (sending)")
        axes[2].legend(fontsize=7)
    for ax in axes[:2]:
        ax.legend(fontsize=7)
    fig.suptitle(f"bench/capacity.py, {result.get('taken', '')} — 2-core machine: {result.get('machine_note', '')}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "–" if x is None else format(x, fmt)


def capacity_rows(d: dict[str, Any], heading: str, figs: list[str]) -> list[str]:
    """The report's section for a capacity result (bench/run_all.py)."""
    k = d["knee"]
    p = d["params"]
    L = [f"## {heading}", "",
         f"Taken {d.get('taken_at', '?')}. The soak's traffic mix offered at rising rates, {p['step_seconds']:g} s "
         f"per step, the backlog drained between steps; maximal_queue_lifetime {p['queue_lifetime_s']} s. "
         f"**bouncetrack-lmtp**: milter, the bounce domain delivered over LMTP to the pipe server's "
         f"{p.get('lmtp_workers', '?')} workers (`pipe.transport: lmtp`), worker and webhook receiver. "
         "**bouncetrack**: the same with the pipe transport (pipe(8) → pipe client → pipe server's fork per bounce). "
         "**floor**: the same Postfix, milter off, the bounce transport delivering into `/bin/sh floorpipe.sh` "
         "(`cat` into a file). "
         f"Knee: highest rate with p99 send→stored < {p['knee_p99_s']:g} s (soft bounces excepted), active+incoming "
         "not growing over the step's second half (within 1 s of load) and ≥ 90 % of the offered rate accepted. "
         f"CPU from /proc (see the script's doc). {d.get('machine_note', '')}.", "",
         f"**Knee: bouncetrack over LMTP {k.get('bouncetrack_lmtp_msg_per_s')} msg/s (ratio to the floor "
         f"{_f(k.get('lmtp_ratio'))}), over the pipe {k.get('bouncetrack_msg_per_s')} msg/s (ratio "
         f"{_f(k.get('ratio'))}), floor {k.get('floor_msg_per_s')} msg/s** (goal ≥ 0.7). The strict reading, "
         "every step below the knee within too: "
         + ", ".join(f"{c} {d[c].get('knee_every_step_below_within_msg_per_s')}" for c in CONFIGS if c in d)
         + " msg/s.", ""]
    for fu in d.get("followups", []):
        L += [f"Follow-up run ({fu['taken']}, {fu['step_seconds']:g} s steps): {fu['why']}: "
              + "; ".join(f"{x['config']} {x['offered_msg_per_s']:g} msg/s "
                          f"{'within' if x['within_knee'] else 'not within (' + ', '.join(x['why_not']) + ')'}, "
                          f"p99 {_f(x['p99_s'])} s, {x['events_stored_per_s']:g} events/s" for x in fu["steps"])
              + f". Reconciled: {'ok' if all(x['reconciliation_ok'] for x in fu['steps']) else 'FAILED'}.", ""]
    for mode in CONFIGS:
        m = d.get(mode)
        if not m:
            continue
        r = m["reconciliation"]
        L += [f"**{mode}**: reconciliation after the final drain: lost **{r.get('lost')}**, duplicated "
              f"**{r.get('duplicated')}**, ok **{r.get('ok')}**."
              + (" Past the floor's knee its backlog outlived maximal_queue_lifetime, so Postfix bounced greylisted "
                 "recipients instead of delivering them and bounced soft-failing ones without a delay notice first: "
                 "reports the soak's model expects that Postfix (alone, without bouncetrack) rightly did not send, "
                 "counted as lost in the step where they were due." if mode == "floor" and not r.get("ok") else ""),
              "",
              "| offered msg/s | accepted msg/s | stored/s | webhooks/s | send→stored p50 / p99 (s) | "
              "stored→webhook p50 / p99 (s) | active+incoming growth | deferred at end | machine busy | "
              "top CPU (cores) | within knee |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in m["steps"]:
            s2s, s2w = row["send_to_stored_non_soft"], row["stored_to_webhook"]
            top = sorted(row["cpu_share_of_one_core"].items(), key=lambda kv: -kv[1])[:4]
            busy = row.get("machine_busy_share_all_cores")
            L.append(f"| {row['offered_msg_per_s']:g} | {row['accepted_msg_per_s']:.1f} | "
                     f"{row['events_stored_per_s']:.1f} | {row['webhooks_delivered_per_s']:.1f} | "
                     f"{_f(s2s['p50'])} / {_f(s2s['p99'])} | {_f(s2w['p50'])} / {_f(s2w['p99'])} | "
                     f"{row['queue_growth_active_incoming']} | {row['queue_end']['deferred']} | "
                     f"{_f(busy, '.0%')} | {', '.join(f'{c} {v:.2f}' for c, v in top)} | "
                     f"{'yes' if row['within_knee'] else 'no: ' + '; '.join(row['why_not'])} |")
        L.append("")
        L += cpu_per_event_rows(m)
    L += [f"![{f}]({f})" for f in figs]
    L.append("")
    return L


def cpu_per_event_rows(m: dict[str, Any]) -> list[str]:
    """Where the time goes: CPU ms per event stored (floor: per bounce delivered) while
    sending, by component, per step (the profile of the bounce path)."""
    rows = m["steps"]
    per = []
    for r in rows:
        n = r["events_stored_per_s"] * r["send_seconds"]
        per.append({k: (v * 1000 / n if n else float("nan")) for k, v in r["cpu_seconds"].items()})
    total: dict[str, float] = defaultdict(float)
    for x in per:
        for k, v in x.items():
            if v == v:
                total[k] += v
    top = sorted(total, key=lambda k: -total[k])[:12]
    L = [f"CPU ms per {'event stored' if m['mode'] == 'bouncetrack' else 'bounce delivered'} while sending "
         f"({m.get('config', m['mode'])}; all components share the machine; the driver is the outside world: "
         "senders, fake MX, webhook receiver):", "",
         "| component | " + " | ".join(f"{r['offered_msg_per_s']:g} msg/s" for r in rows) + " |",
         "|---|" + "---|" * len(rows)]
    for k in top:
        L.append(f"| {k} | " + " | ".join(f"{x.get(k, 0.0):.1f}" for x in per) + " |")
    for g in ("bouncetrack", "trivial pipe", "postfix", "driver"):
        if any(g in r.get("cpu_ms_per_event_by_group", {}) for r in rows):
            L.append(f"| *{g}, all its processes* | "
                     + " | ".join(f"*{r.get('cpu_ms_per_event_by_group', {}).get(g, 0.0):.1f}*" for r in rows) + " |")
    L.append("| **all** | " + " | ".join(f"**{sum(v for v in x.values() if v == v):.1f}**" for x in per) + " |")
    return [*L, ""]


def storm_rows(d: dict[str, Any]) -> list[str]:
    """The report's section for a storm result (bench/run_all.py)."""
    r, t, loops = d["reconciliation"], d["tempfails"], d["retry_loops"]
    L = ["## Bounce storm (`bench/capacity.py --storm N`, run separately; its own date)", "",
         f"Taken {d.get('taken_at', '?')}: {d['bounces']:,} bounces: {d['messages']:,} messages, each to "
         f"{d['recipients_per_message']} recipient(s) the fake MX refuses with 550, offered within "
         f"{d['send_within_s']:g} s (accepted in {d['accepted_seconds']:.0f} s); Postfix's bounce daemon writes one "
         f"DSN per message ({r['dsns_delivered']:,} delivered), which take the real path ("
         + ("Postfix's lmtp client → the pipe server's LMTP workers → store" if d.get("transport") == "lmtp"
            else "pipe(8) → pipe client → pipe server → store") + "). No worker.",
         "",
         f"Lost **{r['lost']}**, duplicated **{r['duplicated']}**, unexpected {r['unexpected']}, queue left "
         f"{r['postfix_queue_left']}; drained {d['time_to_drain_from_first_send_s']:.0f} s after the first send "
         f"({d['time_to_drain_after_sending_s']:.0f} s after the last): {d['bounces_stored_per_s']:.1f} bounces/s. "
         f"Tempfails: Postfix deferred {t['postfix_deferred_bounce_transport']} bounce deliveries (its log: "
         f"every exit 75 of this stack's pipe shows there); the machine-wide pipe tempfail and fallback logs, "
         f"which every stack on this machine shares, got {t['pipe_tempfail_log_records']} and "
         f"{t['pipe_fallback_log_records']} records meanwhile. Retry loops: "
         f"{loops['dsn_attempted_more_than_twice']} DSNs attempted more than twice (most attempts of one: "
         f"{loops['max_attempts_of_one_dsn']}). Machine busy {_f(d.get('machine_busy_share_all_cores'), '.0%')}.", "",
         "RSS sums count a page shared by forked processes (the pipe server's children) in each of them.", "",
         "| component | peak RSS, all its processes (MB) | largest process (MB) | most processes at once | CPU s |",
         "|---|---|---|---|---|"]
    cpu = d.get("cpu_seconds", {})
    for comp, v in sorted(d["rss_peak_mb"].items(), key=lambda kv: -kv[1]["sum_mb"]):
        L.append(f"| {comp} | {v['sum_mb']:.1f} | {v['single_mb']:.1f} | {v['processes']} | {cpu.get(comp, 0):.1f} |")
    L.append("")
    return L


def print_table(d: dict[str, Any]) -> None:
    print(f"\n{d.get('config', d['mode'])}: knee {d.get('knee_msg_per_s')} msg/s; reconciliation ok {d['reconciliation'].get('ok')} "
          f"(lost {d['reconciliation'].get('lost')}, duplicated {d['reconciliation'].get('duplicated')})")
    print(" offered accepted stored/s webhk/s  p50 s  p99 s  growth  drain  within")
    for r in d["steps"]:
        s = r["send_to_stored_non_soft"]
        print(f" {r['offered_msg_per_s']:7g} {r['accepted_msg_per_s']:8.1f} {r['events_stored_per_s']:8.1f} "
              f"{r['webhooks_delivered_per_s']:8.1f} {s['p50'] or float('nan'):6.2f} {s['p99'] or float('nan'):6.2f} "
              f"{r['queue_growth_active_incoming']:7d} {r['drain_seconds'] or float('nan'):6.1f}  "
              f"{'yes' if r['within_knee'] else 'no: ' + '; '.join(r['why_not'])}")
        top = sorted(r["cpu_seconds"].items(), key=lambda kv: -kv[1])[:8]
        n = r["events_stored_per_s"] * r["send_seconds"]
        print(f"         CPU ms/event by group {r.get('cpu_ms_per_event_by_group')}; send lag p99 "
              f"{r['send_lag']['p99'] or 0:.2f} s; busy {r.get('machine_busy_share_all_cores') or 0:.0%}; top: "
              + ", ".join(f"{k} {v * 1000 / n:.1f}" for k, v in top if n))


def summarise_knees(result: dict[str, Any]) -> dict[str, Any]:
    """The run's knees (msg/s, and events/s at the knee) and their ratios to the floor's."""
    kf = result.get("floor", {}).get("knee_msg_per_s")
    out: dict[str, Any] = {"floor_msg_per_s": kf}
    for key, name, ratio in (("bouncetrack", "bouncetrack", "ratio"), ("bouncetrack-lmtp", "bouncetrack_lmtp",
                                                                      "lmtp_ratio")):
        if key not in result:
            continue
        k = result[key]["knee_msg_per_s"]
        out.update({f"{name}_msg_per_s": k, ratio: (k / kf) if k and kf else None})
        if k:
            row = next(r for r in result[key]["steps"] if r["offered_msg_per_s"] == k)
            out[f"{name}_events_per_s_at_knee"] = row["events_stored_per_s"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--rates", default=None, help=f"offered msg/s per step (default {DEFAULT_RATES}; "
                                                  f"--quick {QUICK_RATES})")
    ap.add_argument("--step-seconds", type=float, default=None, help="sending time per step (default 30; --quick 12)")
    ap.add_argument("--quick", action="store_true", help="fewer, shorter steps (development)")
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help=f"the configurations to run, in this order (default {','.join(CONFIGS)})")
    ap.add_argument("--pipe-rates", default=None,
                    help="offered msg/s per step of the pipe's series (bouncetrack), default --rates")
    ap.add_argument("--all-steps", action="store_true", help="do not stop two steps past the knee")
    ap.add_argument("--queue-lifetime", type=int, default=15, help="maximal_queue_lifetime, s (default 15)")
    ap.add_argument("--delay-for", type=float, default=5.0, help="delay-* recipients greylisted this long")
    ap.add_argument("--max-drain", type=float, default=90.0, help="max wait for a step's backlog (s)")
    ap.add_argument("--drain-timeout", type=float, default=300.0, help="max wait for the final drain (s)")
    ap.add_argument("--storm", type=int, default=None, metavar="N", help="bounce storm of N bounces instead")
    ap.add_argument("--storm-seconds", type=float, default=60.0, help="the storm is sent within this (s)")
    ap.add_argument("--per-message", type=int, default=1,
                    help="storm: refused recipients per message, i.e. bounces per DSN (default 1)")
    ap.add_argument("--transport", choices=("pipe", "lmtp"), default="pipe",
                    help="storm: the bounce transport (default pipe, the product's default)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--machine-note", default="shared 2-core machine, other helpers' work running beside it",
                    help="how busy the machine was otherwise (recorded in the JSON, the report and the plot)")
    ap.add_argument("--name", default=None, help="result name (default capacity / capacity-quick / storm)")
    ap.add_argument("--out", type=Path, default=None, help="write the JSON here instead of bench/results/")
    a = ap.parse_args()
    why = unavailable_reason()
    if why:
        raise SystemExit(f"cannot run: {why}")

    if a.storm:
        res = storm(a.storm, a.storm_seconds, a.drain_timeout, a.per_message, a.transport)
        return finish(a.name or "storm", res, a.out, res["reconciliation"]["ok"])

    rates = [float(x) for x in (a.rates or (QUICK_RATES if a.quick else DEFAULT_RATES)).split(",")]
    pipe_rates = [float(x) for x in a.pipe_rates.split(",")] if a.pipe_rates else rates
    configs = [c.strip() for c in a.configs.split(",") if c.strip()]
    if not configs or any(c not in CONFIGS for c in configs):
        raise SystemExit(f"--configs: choose among {', '.join(CONFIGS)}")
    step_s = a.step_seconds or (12.0 if a.quick else 30.0)
    name = a.name or ("capacity-quick" if a.quick else "capacity")
    result: dict[str, Any] = {"params": {"rates": rates, "pipe_rates": pipe_rates, "lmtp_workers": LMTP_WORKERS,
                                         "configs": configs, "step_seconds": step_s, "queue_lifetime_s": a.queue_lifetime,
                                         "delay_for_s": a.delay_for, "max_drain_s": a.max_drain,
                                         "knee_p99_s": KNEE_P99_S, "carried_share": CARRIED_SHARE,
                                         "sample_every_s": SAMPLE_EVERY, "seed": a.seed},
                              "taken": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                              "machine_note": a.machine_note}
    plan = {key: (mode, transport) for key, mode, transport in PLAN}
    for key in configs:
        mode, transport = plan[key]
        result[key] = climb(mode, pipe_rates if key == "bouncetrack" else rates, step_s, a.queue_lifetime,
                            a.delay_for, a.max_drain, a.drain_timeout, a.all_steps, a.seed, transport)
        result[key]["config"] = key
        print_table(result[key])
    result["knee"] = summarise_knees(result)
    kb, kf, kl = (result["knee"].get(k) for k in ("bouncetrack_msg_per_s", "floor_msg_per_s",
                                                   "bouncetrack_lmtp_msg_per_s"))
    print(f"\nknee: bouncetrack {kb} msg/s, floor {kf} msg/s, ratio {result['knee'].get('ratio')}"
          + (f"; over LMTP {kl} msg/s, ratio {result['knee'].get('lmtp_ratio')}" if "bouncetrack-lmtp" in result else ""))
    ok = all(result[m]["reconciliation"].get("ok") for m in CONFIGS if m in result)
    if a.out is None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        plot(result, RESULTS / f"{name.replace('-', '_')}.png")
    return finish(name, result, a.out, ok)


def finish(name: str, result: dict[str, Any], out: Path | None, ok: bool) -> int:
    if out is not None:
        out.write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
        path = out
    else:
        path = write_result(name, result)
    print(f"written {path}; reconciliation {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
