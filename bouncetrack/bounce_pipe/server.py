"""``bouncetrack pipe-server``: the bounce pipe imported once, forking per bounce.

Postfix starts :mod:`.client` for each bounce. It costs a bare interpreter start
and hands over the bounce on a unix socket. This server has imported the parser,
the classifier and the store, and it forks a child per connection. The child runs
the very code of ``bouncetrack pipe`` (:func:`.main.main`, with the message read from
the socket), answers with the exit code and what the pipe wrote to stderr, and exits.

Why fork and not threads: every bounce gets its own process, as with pipe(8)
alone. That gives it its own deadline (SIGALRM), its own store connection, and
its own memory, freed at exit. A crash costs one bounce, which its client then
hands to the full pipe. The parent never opens the store, so no connection crosses
a fork. Configuration and keys are read by each child, as by each pipe: a change
needs no restart. The server itself holds the last good configuration and keys
(loaded at start and on SIGHUP, a broken file refused and logged): while the file
does not load, children use those instead of sending every bounce back to
Postfix's queue.

One INFO line per bounce: the pipe's own summary (token, the original message's
queue id, each event's type, recipient and id) with its exit code.

The socket is created with mode 0600. Run the server as the user of the
``bouncepipe`` service in master.cf.

With ``pipe.transport: lmtp`` (issue 21) the server also listens on ``pipe.lmtp.socket``
and keeps pre-forked LMTP workers (:mod:`.lmtp`): Postfix's lmtp(8) delivers there and no
process is started per bounce. The server forks them after its own start, replaces one that
exits, replaces them all after a reload, and passes SIGTERM on to them.
"""

from __future__ import annotations

# Lazy imports: the pipe's lean path (HACKING): a bounce imports only what its case needs (PyYAML
# only for a stale config snapshot); the pipe server imports them once before it forks (warm()).

import io
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from .client import MAGIC
from .lmtp import Pool
from .sockets import listen_unix

from ..core.config import TRANSPORT_LMTP

if TYPE_CHECKING:
    from ..core.config import Config
    from ..core.tokens import KeyRing

log = logging.getLogger("bouncetrack.pipe_server")

ACCEPT_POLL_SECONDS = 0.5  # how soon a stop request is seen
READ_TIMEOUT_SECONDS = 60.0  # a client that stops sending mid-request
DRAIN_SECONDS = 120.0  # how long a stop waits for bounces in flight
EX_TEMPFAIL = 75

_SAMPLE_DSN = (
    b"From: MAILER-DAEMON@example.net\r\nTo: b+x@bounce.example\r\nSubject: Undelivered\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\n"
    b"Reporting-MTA: dns; example.net\r\n\r\nFinal-Recipient: rfc822; x@example.org\r\nAction: failed\r\n"
    b"Status: 5.1.1\r\nDiagnostic-Code: smtp; 550 5.1.1 unknown\r\n\r\n--b--\r\n"
)


def parse_request(data: bytes) -> tuple[float, list[str], bytes]:
    """(start time, the pipe's arguments, the message) from a client's request."""
    if not data.startswith(MAGIC):
        raise ValueError("not a bouncetrack pipe request")
    length_line, newline, rest = data[len(MAGIC):].partition(b"\n")
    if not newline or not length_line.isdigit() or int(length_line) > len(rest):
        raise ValueError("truncated request")
    n = int(length_line)
    started, *args = rest[:n].split(b"\0")
    return float(started), [os.fsdecode(a) for a in args], rest[n:]


def warm(config_path: str | None) -> None:
    """Import now what every child would otherwise import per bounce."""
    from ..classifier import classify
    from . import tempfail  # noqa: F401  (imported by main on exit 75)
    from . import process  # noqa: F401

    classify(_SAMPLE_DSN)  # the classifier imports some detectors on first use
    if config_path is not None:
        from .config_snapshot import load
        from ..store import open_store  # noqa: F401

        try:
            url = load(config_path).store_url
        except Exception as exc:  # noqa: BLE001 - each child reports a bad config itself
            log.warning("configuration %s not loaded for warm-up: %s", config_path, exc)
            return
        if url.startswith(("postgresql:", "postgres:")):
            from ..store import postgres  # noqa: F401


def _recv_all(conn: socket.socket) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = conn.recv(1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def handle(conn: socket.socket, config_path: str | None = None,
           fallback: "tuple[Config, KeyRing] | None" = None) -> int:
    """One bounce, in the forked child: run the pipe, answer, return its exit code.

    ``fallback`` (the server's last good configuration and keys) serves the
    bounces whose ``--config`` is the server's own ``config_path``.
    """
    from .main import main, parse_argv

    conn.settimeout(READ_TIMEOUT_SECONDS)
    try:
        data = _recv_all(conn)
        if not data:  # a probe (bouncetrack doctor, the harness): connected, sent nothing
            return 0
        started, pipe_args, raw = parse_request(data)
    except (OSError, ValueError) as exc:
        # No answer: the client hands the bounce to the full pipe.
        log.warning("bad or unfinished request, not answered: %s", exc)
        return EX_TEMPFAIL
    if fallback is not None and config_path is not None:
        try:
            same = os.path.abspath(parse_argv(pipe_args)[0]) == os.path.abspath(config_path)
        except ValueError:
            same = False
        fallback = fallback if same else None
    said = io.StringIO()
    sys.stderr = said
    try:
        code = main(pipe_args, raw=raw, started=started, fallback=fallback)
    finally:
        sys.stderr = sys.__stderr__
    text = said.getvalue()
    conn.sendall(f"{code}\n".encode() + text.encode("utf-8", "replace"))
    lines = " | ".join(line for line in text.splitlines() if line) or "(nothing said)"
    log.log(logging.INFO if code == 0 else logging.WARNING, "bounce handled: exit %d in %.0f ms: %s",
            code, (time.time() - started) * 1000, lines)
    return code


class Server:
    """The accept loop: fork per connection, reap children, stop on SIGTERM/SIGINT,
    reload the configuration on SIGHUP."""

    def __init__(self, socket_path: Path, config_path: str | None = None,
                 runtime: "tuple[Config, KeyRing] | None" = None) -> None:
        self.socket_path = socket_path
        self.config_path = config_path
        self.runtime = runtime  # the last good configuration and keys
        self.stopping = False
        self.reload_requested = False
        self.children: set[int] = set()
        self.lmtp: Pool | None = None  # issue 21: pipe.transport lmtp, its workers

    def _hup(self, signum: int, frame: FrameType | None) -> None:
        self.reload_requested = True  # applied by the accept loop, between bounces

    def reload(self) -> None:
        from ..core.reload import RESTART_ONLY, reload_config
        from ..core.tokens import load_keyring

        self.reload_requested = False
        if self.config_path is None:
            log.warning("SIGHUP: started without --config; each bounce reads its own configuration")
            return

        def apply(new: "Config") -> bool:
            self.runtime = (new, load_keyring(new))
            if self.lmtp is not None:  # the socket stays until a restart (RESTART_ONLY)
                self.lmtp.settings = replace(new.pipe.lmtp, socket=self.lmtp.settings.socket)
            return True

        if reload_config(self.config_path, self.runtime[0] if self.runtime else None, apply,
                         RESTART_ONLY["pipe-server"], log) and self.lmtp is not None:
            self.lmtp.replace_all()  # they start again from the new configuration

    def _listen(self) -> socket.socket:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        # 0600: only our own user (the bouncepipe service's)
        listener = listen_unix(self.socket_path, 0o177, "pipe server")
        listener.settimeout(ACCEPT_POLL_SECONDS)
        return listener

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _reap(self) -> None:
        while self.children or (self.lmtp is not None and self.lmtp.workers):
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            if self.lmtp is None or not self.lmtp.reaped(pid, status):
                self.children.discard(pid)

    def _start_lmtp(self, listener: socket.socket) -> None:
        """Issue 21: with ``pipe.transport: lmtp``, the LMTP socket and its workers (lmtp.py)."""
        if self.runtime is None or self.runtime[0].pipe.transport != TRANSPORT_LMTP or self.config_path is None:
            if self.runtime is None and self.config_path is not None:
                log.error("configuration not loaded: no LMTP listener (pipe.transport is read at start)")
            return
        self.lmtp = Pool(self.runtime[0].pipe.lmtp, self.config_path, lambda: self.runtime)
        try:
            self.lmtp.start(close_in_workers=[listener])
        except (OSError, RuntimeError) as exc:  # no directory, no permission, another server
            log.error("cannot listen on the LMTP socket %s: %s", self.runtime[0].pipe.lmtp.socket, exc)
            raise SystemExit(1) from None

    def run(self) -> int:
        listener = self._listen()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        signal.signal(signal.SIGHUP, self._hup)
        log.info("pipe server listening on %s", self.socket_path)
        try:
            self._start_lmtp(listener)
            while not self.stopping:
                if self.reload_requested:
                    self.reload()
                self._reap()
                if self.lmtp is not None:
                    self.lmtp.top_up()
                try:
                    conn, _ = listener.accept()
                except (TimeoutError, InterruptedError):
                    continue
                try:
                    pid = os.fork()
                except OSError as exc:  # EAGAIN, ENOMEM: this bounce goes to the full pipe
                    log.error("cannot fork for a bounce (%s); its client runs the full pipe", exc)
                    conn.close()
                    time.sleep(0.1)
                    continue
                if pid == 0:  # the child: one bounce, then exit
                    code = EX_TEMPFAIL
                    try:
                        listener.close()
                        if self.lmtp is not None and self.lmtp.listener is not None:
                            self.lmtp.listener.close()
                        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                            signal.signal(sig, signal.SIG_DFL)
                        code = handle(conn, self.config_path, self.runtime)
                    except BaseException:  # noqa: BLE001 - never back into the accept loop
                        log.exception("pipe server child failed")
                    finally:
                        os._exit(code)
                self.children.add(pid)
                conn.close()
        finally:
            listener.close()
            try:
                self.socket_path.unlink()
            except OSError:
                pass
            if self.lmtp is not None:
                self.lmtp.close()  # each worker finishes its transaction, then exits
        deadline = time.monotonic() + DRAIN_SECONDS
        while (self.children or (self.lmtp is not None and self.lmtp.workers)) and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        log.info("bouncetrack pipe-server stopped")
        return 0


def serve(socket_path: Path, config_path: str | None = None) -> int:
    """Run the pipe server until SIGTERM/SIGINT.

    A configuration that does not load is logged, not fatal: each bounce reads its
    own (``--config`` of the pipe client) as before, and SIGHUP loads it again.
    """
    from .. import __version__
    from ..core.redact import config_secrets, register

    log.info("bouncetrack pipe-server %s starting, configuration %s", __version__, config_path or "(per bounce)")
    runtime = None
    if config_path is not None:
        from ..core.config import ConfigError
        from ..core.reload import load
        from ..core.tokens import KeyFileError, load_keyring

        try:
            config = load(config_path)
            runtime = (config, load_keyring(config))
            register(config_secrets(config))
        except (ConfigError, OSError, KeyFileError) as exc:
            log.error("configuration not loaded (each bounce reads its own; SIGHUP retries):\n%s", exc)
    warm(config_path)
    return Server(socket_path, config_path, runtime).run()
