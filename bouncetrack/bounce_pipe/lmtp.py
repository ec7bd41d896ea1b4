"""The bounce pipe over LMTP (RFC 2033): warm worker processes of the pipe server.

Why (issue 21): with pipe(8), each bounce costs two processes around the work, the pipe
client that pipe(8) starts (~14 ms of CPU) and the pipe server's fork (~15 ms), against
~4 ms of work. With ``pipe.transport: lmtp``, Postfix's lmtp(8) client delivers to a unix
socket instead and keeps its connections open across deliveries (connection cache): no
process is started per bounce at all.

Where it runs: inside ``bouncetrack pipe-server`` (:mod:`.server`), one unit, one log,
one reload. The server creates the listening socket, then forks ``pipe.lmtp.workers``
workers that inherit it and each serve one connection at a time (pre-fork: they wait in
``accept`` on the same socket). A worker is replaced by the server when it exits: after
``messages_per_worker`` messages, once its peak RSS passes ``worker_max_rss_mb``, at
SIGHUP (the server loads the configuration, refuses a broken one, and replaces its workers
so that they start from the new one), or when it crashes; a worker due for replacement
ends its connection at a transaction's end (``421 4.3.2``). So at most ``workers``
connections are served at once. lmtp(8) parks finished connections in its cache, each
holding a worker while idle: install gives Postfix half as many deliveries at once as there
are workers (:func:`bouncetrack.ops.postfix_wiring.lmtp_concurrency`), and a connection
idle between transactions is closed for a new one that waits at the socket with no worker
free (:meth:`Session._wait_or_yield`).

Each message is stored by the very code of ``bouncetrack pipe`` (:func:`.main.main`, as in
the pipe server's children; a worker keeps its store connection and configuration across
messages, :func:`.process.keep_stores_open`): the token verified first, the bounds on one report
(:mod:`.guard`, :mod:`bouncetrack.classifier.bounds`, the CPU budget), the trust rules with
the client address, classification, store, outbox. Its exit code becomes the reply for
the recipient (RFC 2033 §4.2: one reply per accepted recipient, after DATA): 0 →
``250 2.0.0``; 75, where pipe(8) would retry (store down, the token only in the milter's
journal, the deadline, any failure before the bounce is stored) → ``451 4.3.0``, and
Postfix keeps the bounce and retries. Replies come from :mod:`bouncetrack.core.replies`.

The message is handed over as pipe(8) hands it (master.cf flags ``R``, line ends LF): a
``Return-Path:`` line first, CRLF turned into LF; the null sender is ``MAILER-DAEMON``
(pipe(8)'s ``${sender}``). The client address (pipe(8)'s ``${client_address}``, which the
trust rules read) comes from XFORWARD ADDR (install turns ``lmtp_send_xforward_command``
on for our service; an XFORWARD without ADDR, or with ``[UNAVAILABLE]``, is a message
Postfix made itself: empty, as pipe(8) gives it); without XFORWARD it is unknown, and the
report is not trusted to suppress.

Bounds per connection, on top of the pipe's per report: a command line of at most
:data:`MAX_COMMAND_LINE` octets (beyond: ``500 5.5.2`` and the connection is closed);
``max_recipients`` per transaction (``452 4.5.3`` beyond); the message size,
``max_message_bytes`` (announced as SIZE, refused at MAIL ``SIZE=``, and enforced while
DATA is read: the rest is drained, not kept, and every recipient gets ``552 5.3.4``);
``command_timeout_seconds`` for a whole command line and for any read (``421 4.4.2``, a
client that sends one byte at a time included), ``data_timeout_seconds`` for the whole of
DATA; :data:`MAX_ERRORS` errors per connection. Only Postfix can connect: the socket lies
in ``/var/spool/postfix/bouncetrack`` (``bouncetrack:postfix 0750``, as for the milter).
"""

from __future__ import annotations

# Lazy imports: the pipe's lean path (HACKING): a bounce imports only what its case needs (PyYAML
# only for a stale config snapshot); the pipe server imports them once before it forks (warm()).

import io
import logging
import os
import random
import re
import resource
import select
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Callable, Sequence

from ..core import replies
from ..core.config import LmtpConfig
from ..core.esmtp import parse_params, strip_path, xtext_decode
from ..core.replies import Reply
from .client import PROTOCOL, REFUSED_LOG, TIMED_OUT, TOO_BIG, note_fallback
from .process import close_kept_stores, keep_stores_open
from .sockets import listen_unix
from .tempfail import note_tempfail

if TYPE_CHECKING:
    from ..core.config import Config
    from ..core.tokens import KeyRing

log = logging.getLogger("bouncetrack.lmtp")

#: A command line (RFC 5321 §4.5.3.1.4: 512 octets; Postfix folds its XFORWARD to fit, we
#: allow more). DATA lines are read in pieces of :data:`DATA_PIECE` and never refused.
MAX_COMMAND_LINE = 2048
DATA_PIECE = 65536
MAX_ERRORS = 20
ACCEPT_POLL_SECONDS = 1.0  # how soon an idle worker sees a stop or retire request
#: How long a new connection may wait for a worker while another worker's connection is
#: idle between transactions (parked in lmtp(8)'s connection cache) before that one is
#: closed for it: a random pause in this range, so that of several idle workers one yields.
YIELD_AFTER_SECONDS = (0.05, 0.2)
RESPAWN_PAUSE_SECONDS = 1.0  # between replacing workers that die at once (a crash loop)
NULL_SENDER = "MAILER-DAEMON"  # pipe(8)'s ${sender} for the null sender (its null_sender)
EX_TEMPFAIL = 75

#: Delivers one recipient's copy: (recipient, sender, client address or None, message,
#: start time) -> (the pipe's exit code, what it said).
Deliver = Callable[[str, str, "str | None", bytes, float], "tuple[int, str]"]


class _Timeout(Exception):
    pass


class _Closed(Exception):
    pass


class _Yield(Exception):
    """Idle between transactions while a new connection waits for a worker: close this one."""


class _Interrupted(BaseException):
    """SIGTERM or SIGHUP while the worker waits for the next command: close now (421)."""


def reply_line(r: Reply, text: str | None = None) -> bytes:
    """``code status text`` (the enhanced status left out where there is none, e.g. 354)."""
    words = [r.code, r.status, text or r.text] if r.status else [r.code, text or r.text]
    return (" ".join(words) + "\r\n").encode("utf-8", "replace")


@dataclass
class Transaction:
    sender: str | None = None
    recipients: list[str] = field(default_factory=list)
    client_address: str | None = None  # XFORWARD ADDR; "" without one (mail Postfix made itself)
    ident: str | None = None  # XFORWARD IDENT: the message's queue id here (not sent for a DSN Postfix wrote)


def xforward(arg: str, into: Transaction) -> None:
    """XFORWARD attributes (Postfix XFORWARD_README: xtext values, ``[UNAVAILABLE]``).

    Postfix sends the attributes it has: for a DSN its bounce daemon wrote, only
    ``SOURCE=LOCAL``. No ADDR then means no SMTP client, which pipe(8) gives as an empty
    ``${client_address}``: the client address becomes "" at the first XFORWARD."""
    if into.client_address is None:
        into.client_address = ""
    for word in arg.split():
        name, _, value = word.partition("=")
        value = xtext_decode(value)
        unavailable = value.upper() == "[UNAVAILABLE]"
        if name.upper() == "ADDR":
            value = value[5:] if value[:5].upper() == "IPV6:" else value
            into.client_address = "" if unavailable else value[:64]
        elif name.upper() == "IDENT" and not unavailable:
            into.ident = value[:64]


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def path_arg(arg: str, keyword: str) -> tuple[str, dict[str, str | None]] | None:
    """``FROM:<a> PARAMS`` → (a, params); None when malformed (a control character in it
    included: the sender goes into the ``Return-Path:`` line the pipe reads)."""
    if _CONTROL.search(arg):
        return None
    head, sep, rest = arg.partition(":")
    if not sep or head.strip().upper() != keyword:
        return None
    rest = rest.strip()
    if not rest.startswith("<") or ">" not in rest:
        return None
    end = rest.index(">")
    return strip_path(rest[: end + 1]), parse_params([rest[end + 1 :]])


def _lone_dot(block: bytes, line_start: bool) -> tuple[int, int] | None:
    """Where the lone dot line ends DATA in ``block`` (complete lines): (its start, its end),
    or None. ``line_start``: the block begins a line."""
    if line_start and (block.startswith(b".\r\n") or block.startswith(b".\n")):
        return 0, 3 if block[1:2] == b"\r" else 2
    found = [at for at in (block.find(b"\n.\r\n"), block.find(b"\n.\n")) if at >= 0]
    if not found:
        return None
    at = min(found)
    return at + 1, at + (4 if block[at + 2 : at + 3] == b"\r" else 3)


class Session:
    """One LMTP connection: read commands, answer, deliver after DATA.

    ``stopping`` is asked before each command: true, the session answers 421 4.3.2 and
    ends (the worker is stopping or retiring). Returns the number of messages handled.
    """

    def __init__(self, sock: socket.socket, settings: LmtpConfig, deliver: Deliver,
                 stopping: Callable[[], bool] = lambda: False, hostname: str = "bouncetrack",
                 listener: socket.socket | None = None) -> None:
        self.sock = sock
        self.listener = listener  # the workers' listening socket: a connection waiting there
        self.idle = False  # between transactions: this connection may be closed for a waiting one
        self.settings = settings
        self.deliver = deliver
        self.stopping = stopping
        self.hostname = hostname
        self.buf = bytearray()
        self.out = bytearray()  # replies not sent yet (flushed before a read waits)
        self.waiting = False  # in recv for the first byte of a command (SIGTERM may interrupt)
        self.in_command = False  # reading a command line (not DATA)
        self.messages = 0

    # --- I/O -------------------------------------------------------------------------
    def say(self, r: Reply, text: str | None = None) -> None:
        """Queue a reply: it goes out with the others at :meth:`flush`, before the next read
        that waits for the client (RFC 2920 §3.2: a server may buffer the replies to pipelined
        commands, never past the point where it waits for more): lmtp(8) pipelines XFORWARD,
        MAIL, RCPT and DATA, whose four replies then leave in one write."""
        self.out += reply_line(r, text)

    def flush(self) -> None:
        if self.out:
            out, self.out = bytes(self.out), bytearray()
            self.sock.sendall(out)

    def _fill(self, deadline: float) -> None:
        self.flush()  # nothing more to read without waiting: the client gets our replies first
        self.waiting = self.in_command and not self.buf
        try:
            if self.waiting and self.idle and self.listener is not None:
                self._wait_or_yield(deadline)
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Timeout()
            self.sock.settimeout(min(left, self.settings.command_timeout_seconds))
            chunk = self.sock.recv(DATA_PIECE)
        except TimeoutError:
            raise _Timeout() from None
        finally:
            self.waiting = False
        if not chunk:
            raise _Closed()
        self.buf += chunk

    def _wait_or_yield(self, deadline: float) -> None:
        """Until this connection has bytes to read (then return) or the deadline (then
        return: the read times out); raise :class:`_Yield` when a new connection has waited
        at the listener for :data:`YIELD_AFTER_SECONDS` meanwhile, which no free worker took.

        Why: lmtp(8) parks finished connections in its cache, and each holds a worker while
        idle; the connection Postfix opens meanwhile would wait in the listen queue until
        one of them expires (up to ``lmtp_connection_cache_time_limit``)."""
        assert self.listener is not None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            ready, _, _ = select.select([self.sock, self.listener], [], [], left)
            if not ready or self.sock in ready:
                return
            ready, _, _ = select.select([self.sock], [], [], random.uniform(*YIELD_AFTER_SECONDS))
            if ready:
                return
            still, _, _ = select.select([self.listener], [], [], 0)
            if still:
                raise _Yield()

    def _piece(self, limit: int, deadline: float) -> bytes:
        """Up to and including the next LF, or ``limit`` octets without one."""
        while True:
            at = self.buf.find(b"\n", 0, limit)
            if at >= 0 or len(self.buf) >= limit:
                end = at + 1 if at >= 0 else limit
                out = bytes(self.buf[:end])
                del self.buf[:end]
                return out
            self._fill(deadline)

    def read_data(self) -> bytes | None:
        """The message up to the lone dot (RFC 5321 §4.5.2 dot-unstuffing), CRLF as LF;
        None when it grew past ``max_message_bytes`` (the rest read and dropped).

        The complete lines in hand are handled together (the lone dot looked for, the dots
        and CRs taken out by two passes of ``bytes.replace``); a line without its LF after
        :data:`DATA_PIECE` octets is taken as it is (not a line start after it), so at most
        about two pieces are held beside what is kept."""
        deadline = time.monotonic() + self.settings.data_timeout_seconds
        limit = self.settings.max_message_bytes
        parts: list[bytes] = []
        size = 0
        line_start = True
        while True:
            last_lf = self.buf.rfind(b"\n")
            end: tuple[int, int] | None = None
            if last_lf < 0:
                if len(self.buf) < DATA_PIECE:
                    self._fill(deadline)
                    continue
                block = bytes(self.buf[:DATA_PIECE])  # a line longer than a piece
                del self.buf[:DATA_PIECE]
                if line_start and block.startswith(b"."):
                    block = block[1:]
                line_start = False
            else:
                block = bytes(self.buf[: last_lf + 1])
                end = _lone_dot(block, line_start)
                if end is not None:
                    del self.buf[: end[1]]
                    block = block[: end[0]]
                else:
                    del self.buf[: last_lf + 1]
                if block:
                    if line_start and block.startswith(b"."):
                        block = block[1:]
                    block = block.replace(b"\n.", b"\n").replace(b"\r\n", b"\n")
                line_start = True
            size += len(block)
            if size <= limit:
                parts.append(block)
            elif parts:
                parts = []  # past the limit: keep nothing, drain to the dot
            if end is not None:  # the lone dot: the message ends here
                return b"".join(parts) if size <= limit else None

    # --- the session ------------------------------------------------------------------
    def run(self) -> int:
        try:
            return self._run()
        finally:
            try:
                self.flush()  # the last replies (221, 421, …)
            except OSError:
                pass

    def _run(self) -> int:
        t = Transaction()
        greeted = False
        errors = 0
        try:
            self.say(replies.LMTP_GREETING, f"{self.hostname} {replies.LMTP_GREETING.text}")
            while True:
                if self.stopping():
                    self.say(replies.LMTP_SHUTTING_DOWN)
                    return self.messages
                if errors >= MAX_ERRORS:
                    note_fallback(PROTOCOL, REFUSED_LOG)
                    self.say(replies.LMTP_TOO_MANY_ERRORS)
                    return self.messages
                self.in_command, self.idle = True, greeted and t.sender is None
                try:
                    raw = self._piece(MAX_COMMAND_LINE + 2, time.monotonic() + self.settings.command_timeout_seconds)
                finally:
                    self.in_command = self.idle = False
                if not raw.endswith(b"\n"):
                    note_fallback(PROTOCOL, REFUSED_LOG)
                    self.say(replies.LMTP_LINE_TOO_LONG)
                    return self.messages
                line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
                verb, _, arg = line.partition(" ")
                verb = verb.upper()
                if verb == "LHLO":
                    if not arg.strip():
                        errors += 1
                        self.say(replies.LMTP_SYNTAX)
                        continue
                    t, greeted = Transaction(), True
                    self.out += (
                        f"250-{self.hostname}\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n"
                        f"250-SIZE {self.settings.max_message_bytes}\r\n"  # RFC 1870 §4
                        "250 XFORWARD NAME ADDR PROTO HELO IDENT SOURCE\r\n".encode())
                elif verb == "XFORWARD":
                    if not greeted or t.sender is not None:  # XFORWARD_README: before MAIL
                        errors += 1
                        self.say(replies.LMTP_BAD_SEQUENCE)
                        continue
                    xforward(arg, t)
                    log.debug("XFORWARD %s", arg[:MAX_COMMAND_LINE])
                    self.say(replies.LMTP_OK)
                elif verb == "MAIL":
                    if not greeted or t.sender is not None:
                        errors += 1
                        self.say(replies.LMTP_BAD_SEQUENCE)
                        continue
                    parsed = path_arg(arg, "FROM")
                    if parsed is None:
                        errors += 1
                        self.say(replies.LMTP_SYNTAX)
                        continue
                    sender, params = parsed
                    size = params.get("SIZE") or "0"
                    if size.isdigit() and int(size) > self.settings.max_message_bytes:  # RFC 1870 §6.2
                        note_fallback(TOO_BIG, REFUSED_LOG)
                        self.say(replies.LMTP_TOO_BIG)
                        continue
                    t.sender = sender
                    self.say(replies.LMTP_SENDER_OK)
                elif verb == "RCPT":
                    if t.sender is None:
                        errors += 1
                        self.say(replies.LMTP_BAD_SEQUENCE)
                        continue
                    parsed = path_arg(arg, "TO")
                    if parsed is None or not parsed[0]:
                        errors += 1
                        self.say(replies.LMTP_SYNTAX)
                        continue
                    if len(t.recipients) >= self.settings.max_recipients:
                        self.say(replies.LMTP_TOO_MANY_RECIPIENTS)
                        continue
                    t.recipients.append(parsed[0])
                    self.say(replies.LMTP_RECIPIENT_OK)
                elif verb == "DATA":
                    if t.sender is None or not t.recipients:  # RFC 2033 §4.2: no recipient, 503
                        errors += 1
                        self.say(replies.LMTP_BAD_SEQUENCE)
                        continue
                    self.say(replies.LMTP_GO_AHEAD)
                    self.transaction(t, self.read_data())
                    t = Transaction()
                elif verb == "RSET":
                    t = Transaction()
                    self.say(replies.LMTP_OK)
                elif verb == "NOOP":
                    self.say(replies.LMTP_OK)
                elif verb == "QUIT":
                    self.say(replies.LMTP_BYE)
                    return self.messages
                else:
                    errors += 1
                    self.say(replies.LMTP_UNKNOWN_COMMAND)
        except _Timeout:
            note_fallback(TIMED_OUT, REFUSED_LOG)
            self._last(replies.LMTP_TIMEOUT)
            log.warning("LMTP client timed out (pipe.lmtp.command_timeout_seconds / data_timeout_seconds); "
                        "connection closed, nothing of its open transaction stored")
        except _Interrupted:
            self._last(replies.LMTP_SHUTTING_DOWN)
        except _Yield:
            self._last(replies.LMTP_YIELD)
            log.debug("LMTP connection idle between transactions closed: a new one waited for a worker")
        except (_Closed, OSError):
            pass
        return self.messages

    def _last(self, r: Reply) -> None:
        try:
            self.say(r)
            self.flush()
        except OSError:
            pass

    def transaction(self, t: Transaction, data: bytes | None) -> None:
        """One reply per recipient (RFC 2033 §4.2), in RCPT order; each recipient's copy
        gets the pipe's whole deadline (``pipe.deadline_seconds``), as one pipe(8) run."""
        assert t.sender is not None
        self.messages += 1
        if data is None:
            log.warning("LMTP message over pipe.lmtp.max_message_bytes (%d): 552 for %d recipient(s) (%s), "
                        "drained, not kept", self.settings.max_message_bytes, len(t.recipients),
                        ", ".join(t.recipients[:5]))
            note_fallback(TOO_BIG, REFUSED_LOG)
            for _ in t.recipients:
                self.say(replies.LMTP_TOO_BIG)
            self.flush()
            return
        sender = t.sender or NULL_SENDER
        # pipe(8)'s flag R writes this line (MAILER-DAEMON for the null sender): the same bytes,
        # so a bounce moved from one transport to the other keeps its dedupe key.
        raw = f"Return-Path: <{sender}>\n".encode("utf-8", "surrogateescape") + data
        for recipient in t.recipients:
            started = time.time()
            try:
                code, said = self.deliver(recipient, sender, t.client_address, raw, started)
            except Exception:  # noqa: BLE001 - a failure is a retry, never a lost bounce (main.main
                # turns its own into 75 and counts them; this is for a bug around it)
                log.exception("LMTP delivery failed; Postfix will retry")
                note_tempfail(time.time() - started)  # bouncetrack_pipe_runs_total{outcome="tempfail"}
                code, said = EX_TEMPFAIL, ""
            lines = " | ".join(line for line in said.splitlines() if line) or "(nothing said)"
            log.log(logging.INFO if code == 0 else logging.WARNING,
                    "bounce handled via LMTP (client %s%s): exit %d in %.0f ms: %s",
                    "unknown" if t.client_address is None else t.client_address or "local",
                    f", queue id {t.ident}" if t.ident else "", code, (time.time() - started) * 1000, lines)
            self.say(replies.LMTP_STORED if code == 0 else replies.LMTP_TEMPFAIL)
            self.flush()  # each recipient's reply as soon as its bounce is stored


def pipe_deliver(config_path: str, runtime: "tuple[Config, KeyRing] | None") -> Deliver:
    """What the pipe server's child does for one bounce, for one LMTP recipient: the pipe's
    :func:`.main.main` with the message handed in, its stderr captured."""
    from .main import main

    def deliver(recipient: str, sender: str, client: str | None, raw: bytes, started: float) -> tuple[int, str]:
        argv = ["--config", config_path]
        if client is not None:
            argv.append(f"--client-address={client}")
        said = io.StringIO()
        sys.stderr = said
        try:
            code = main([*argv, "--", recipient, sender], raw=raw, started=started, fallback=runtime)
        finally:
            sys.stderr = sys.__stderr__
        return code, said.getvalue()

    return deliver


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class Worker:
    """One pre-forked worker: accept, serve the connection, again; exit to be replaced."""

    def __init__(self, listener: socket.socket, settings: LmtpConfig, deliver: Deliver) -> None:
        self.listener = listener
        self.settings = settings
        self.deliver = deliver
        self.stop_requested = False
        self.session: Session | None = None
        self._rss_at: tuple[int, float] = (-1, 0.0)  # (messages served, peak RSS then)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop_requested = True
        if self.session is not None and self.session.waiting:
            raise _Interrupted()  # idle between commands: close now

    def run(self) -> int:
        """Serve until stopped, retired or the listener fails; the exit code of the process."""
        keep_stores_open()  # one store connection and the configuration kept across our messages
        try:
            return self._serve()
        finally:
            close_kept_stores()

    def _serve(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGHUP, self._stop)  # the server replaces us: finish the connection first
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.listener.settimeout(ACCEPT_POLL_SECONDS)
        hostname = socket.gethostname() or "bouncetrack"
        served = 0
        while not self.stop_requested:
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, InterruptedError):
                continue
            except OSError as exc:
                log.error("LMTP accept failed: %s", exc)
                return 1
            # Postfix keeps a connection for many deliveries (its connection cache): a worker
            # due for replacement ends the one in hand at a transaction's end (421 4.3.2:
            # lmtp(8) drops a cached connection that fails its RSET and opens another).
            self.session = session = Session(
                conn, self.settings, self.deliver,
                lambda: self.stop_requested or self._retiring(served + session.messages) is not None, hostname,
                self.listener)
            try:
                served += session.run()
            finally:
                self.session = None
                conn.close()
            why = self._retiring(served)
            if why is not None:
                log.info("LMTP worker retiring after %d messages: %s", served, why)
                break
        return 0

    def _retiring(self, served: int) -> str | None:
        """Why this worker should be replaced now, or None."""
        if served >= self.settings.messages_per_worker:
            return "pipe.lmtp.messages_per_worker"
        if self._rss_at[0] != served:  # asked before every command: the RSS looked at once per message
            self._rss_at = served, peak_rss_mb()
        if self._rss_at[1] > self.settings.worker_max_rss_mb:
            return f"peak RSS {self._rss_at[1]:.0f} MB > pipe.lmtp.worker_max_rss_mb"
        return None


def listen(path: Path) -> socket.socket:
    """The LMTP socket: mode 0666 inside a directory that only Postfix's group may enter
    (``bouncetrack:postfix 0750``), as the milter's socket: the postfix user's lmtp(8)
    connects, the directory keeps others out."""
    return listen_unix(path, 0o111, "LMTP server")


class Pool:
    """The pipe server's side: the listening socket and its workers (forked, replaced)."""

    def __init__(self, settings: LmtpConfig, config_path: str,
                 runtime: Callable[[], "tuple[Config, KeyRing] | None"]) -> None:
        self.settings = settings  # the server replaces it at a reload (all but the socket)
        self.config_path = config_path
        self.runtime = runtime  # the server's last good configuration and keys, read at each fork
        self.listener: socket.socket | None = None
        self.workers: set[int] = set()
        self.last_spawn = 0.0
        self.close_in_workers: list[socket.socket] = []

    def start(self, close_in_workers: Sequence[socket.socket] = ()) -> None:
        """Listen and fork the workers; ``close_in_workers``: the server's other sockets."""
        self.close_in_workers = list(close_in_workers)
        self.listener = listen(self.settings.socket)
        log.info("LMTP listening on %s (%d workers, messages up to %d bytes)", self.settings.socket,
                 self.settings.workers, self.settings.max_message_bytes)
        self.top_up()

    def top_up(self) -> None:
        """Fork workers until there are ``workers`` (paced when they keep dying)."""
        if self.listener is None:
            return
        missing = self.settings.workers - len(self.workers)
        if missing <= 0 or time.monotonic() - self.last_spawn < RESPAWN_PAUSE_SECONDS:
            return
        for _ in range(missing):
            self.last_spawn = time.monotonic()
            try:
                pid = os.fork()
            except OSError as exc:  # EAGAIN, ENOMEM: tried again at the next loop
                log.error("cannot fork an LMTP worker: %s", exc)
                return
            if pid == 0:
                code = 1
                try:
                    for inherited in self.close_in_workers:
                        inherited.close()
                    runtime = self.runtime()
                    code = Worker(self.listener, self.settings, pipe_deliver(self.config_path, runtime)).run()
                except BaseException:  # noqa: BLE001 - never back into the server's loop
                    log.exception("LMTP worker failed")
                finally:
                    os._exit(code)
            self.workers.add(pid)

    def reaped(self, pid: int, status: int) -> bool:
        """A child exited: True when it was one of our workers (replaced by :meth:`top_up`)."""
        if pid not in self.workers:
            return False
        self.workers.discard(pid)
        if os.waitstatus_to_exitcode(status) != 0:
            log.error("LMTP worker %d exited with %d; replaced", pid, os.waitstatus_to_exitcode(status))
        return True

    def replace_all(self) -> None:
        """After a reload: each worker finishes its connection and exits; new ones start
        from the new configuration."""
        for pid in list(self.workers):
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                self.workers.discard(pid)

    def close(self) -> None:
        """Stop accepting: close and remove the socket, ask every worker to stop."""
        if self.listener is not None:
            self.listener.close()
            self.listener = None
            try:
                self.settings.socket.unlink()
            except OSError:
                pass
        for pid in list(self.workers):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                self.workers.discard(pid)
