"""The ``bouncetrack milter`` process.

libmilter owns SIGHUP, SIGTERM and SIGINT in the process that runs it (its
signal thread stops the milter on SIGHUP). To reload on SIGHUP without dropping
connections, the command is two processes: a small supervisor that owns the
signals, and a forked child that runs libmilter. On SIGHUP the supervisor
validates the configuration and, when it is good, tells the child over a pipe;
the child swaps its configuration between messages. When the child dies, the
supervisor starts a new one; when the supervisor dies, the child sees the pipe
close and stops.

The supervisor also forks the journal writer (issue 20,
:mod:`bouncetrack.milter.journal`): the libmilter child appends each message
record to the journal, the writer moves the records into the store in batches.
Each is restarted when it dies, and the writer restarted on every accepted reload
(it follows a new store URL). Nothing to wire: the one unit runs all three.
"""

from __future__ import annotations

# Lazy imports: `bouncetrack milter` is a supervisor that forks the libmilter child and the journal
# writer; each process imports what it runs (libmilter, the store, the metrics port when configured).

import importlib
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from ..core.config import Config, ConfigError
from ..core.redact import config_secrets, register
from ..core.reload import REFUSED, RESTART_ONLY, reload_config
from ..core.tokens import KeyFileError, KeyRing

log = logging.getLogger("bouncetrack.milter")

MILTER_NAME = "bouncetrack"
RELOAD = b"R"
RESTART_DELAY = 1.0
WRITER_NICE = 10  # the journal writer's niceness increment (run_writer)


def load_runtime(config_path: Path) -> "tuple[Config, KeyRing]":
    from ..core.config_loader import load_config
    from ..core.tokens import load_keyring

    config = load_config(config_path)
    return config, load_keyring(config)


def run_child(config_path: Path, control_fd: int | None) -> int:
    """Run libmilter in this process until stopped (SIGTERM: stops cleanly, socket removed)."""
    import Milter
    import milter as _milter

    # libmilter's signal thread takes SIGTERM/SIGINT/SIGHUP with sigwait(), which sees
    # only signals blocked in every thread: block them before our own threads start,
    # or the kernel may hand one to a thread of ours, where the default action kills
    # the process at once (the socket left behind, no stop line).
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})

    from ..store import open_store
    from .app import ACTIONS, Runtime, Shared, make_factory

    config, keyring = load_runtime(config_path)
    from .journal import JournalAppender

    shared = Shared(Runtime(config, keyring), lambda c: JournalAppender(c.milter_journal))
    # Suppression lists (issue 6): first load before listening, then a background refresh.
    from ..suppression.index import SuppressionRefresher

    refresher = SuppressionRefresher(
        shared.suppression, lambda: shared.runtime.config, lambda c: open_store(c.store_url, timeout=5.0)
    )
    refresher.start()

    def reload() -> None:
        from ..core.tokens import load_keyring

        reload_config(config_path, shared.runtime.config,
                      lambda new: shared.swap(Runtime(new, load_keyring(new))), RESTART_ONLY["milter"], log)

    if control_fd is not None:
        threading.Thread(target=_control_loop, args=(control_fd, reload, _milter.stop), daemon=True).start()

    # metrics (issue 5): served from this process (the libmilter child, where the
    # counters are), never from the supervisor; a restarted child binds it anew.
    stop_metrics: Callable[[], None] | None = None
    if config.milter_metrics_listen:
        from .metrics import serve

        try:
            stop_metrics = serve(shared, config.milter_metrics_listen)
            log.info("milter metrics on http://%s/metrics", config.milter_metrics_listen)
        except OSError as exc:  # mail flow matters more than its metrics
            log.error("milter metrics port %s: %s; running without it", config.milter_metrics_listen, exc)

    socket_path = config.milter_socket
    socket_path.parent.mkdir(parents=True, exist_ok=True)
    # Postfix (user postfix) must be able to connect; access is limited by the
    # socket's directory (bouncetrack:postfix 0750), as POSTFIX-NOTES advise.
    os.umask(0o000)
    Milter.factory = make_factory(shared)
    Milter.set_flags(ACTIONS)
    _milter.set_exception_policy(Milter.TEMPFAIL)
    log.info("milter listening on %s", socket_path)
    try:
        Milter.runmilter(MILTER_NAME, f"unix:{socket_path}", timeout=600)
    finally:
        refresher.stop()
        shared.close()
        if stop_metrics is not None:
            stop_metrics()
        # libmilter leaves its socket behind; a stale one would make Postfix's
        # connects fail with "Connection refused" instead of "No such file".
        try:
            socket_path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("could not remove the socket %s: %s", socket_path, exc)
    log.info("milter child stopped; decisions: %s", dict(shared.decisions))
    return 0


def run_writer(config_path: Path, control_fd: int | None) -> int:
    """The journal writer process: moves the milter journal into the store until
    SIGTERM, or until the supervisor is gone (``control_fd`` reads end of file)."""
    from ..store import open_store
    from .journal import JournalWriter

    # Below Postfix and the milter child (issue 20): under load, accepting mail wins the
    # cores; the writer, a few % of a core at hundreds of messages/s, still gets its share
    # (batches only grow meanwhile). Before any thread starts: Linux nices a thread (with
    # --no-supervisor, this thread), and threads inherit it.
    os.nice(WRITER_NICE)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():  # not with --no-supervisor
        # SIGTERM is taken by a thread with sigwait(), never by a handler: a handler
        # runs in the main thread between two bytecodes, and Event.set() there
        # deadlocks when it lands inside stop.wait() while the main thread holds the
        # Event's lock (the writer then never stopped, nor did its supervisor). The
        # supervisor forks us with the signal blocked (a SIGTERM sent at once waits,
        # pending, for the sigwait), and threads started from here inherit the mask.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        threading.Thread(target=_stop_on_sigterm, args=(stop,), name="sigterm", daemon=True).start()
    config, _ = load_runtime(config_path)
    if control_fd is not None:
        threading.Thread(target=_control_loop, args=(control_fd, lambda: None, stop.set), daemon=True).start()
    writer = JournalWriter(config.milter_journal, lambda: open_store(config.store_url, timeout=10.0))
    log.info("journal writer moving %s into the store", config.milter_journal)
    writer.run(stop)
    log.info("journal writer stopped; %d record(s) moved", writer.moved)
    return 0


def _stop_on_sigterm(stop: threading.Event) -> None:
    signal.sigwait({signal.SIGTERM})
    stop.set()


def _control_loop(fd: int, reload: Callable[[], None], stop: Callable[[], object]) -> None:
    while True:
        try:
            data = os.read(fd, 64)
        except OSError:
            data = b""
        if not data:  # the supervisor is gone
            log.warning("supervisor gone, stopping")
            stop()
            return
        if RELOAD in data:
            reload()


SIGNALS = frozenset({signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD})
WRITER_STOP_SECONDS = 10.0  # then SIGKILL: the journal loses nothing to a kill -9


class Supervisor:
    """Owns the signals; forks and restarts the libmilter child and the journal writer.

    No signal handler runs here: the supervisor blocks its signals for good and takes
    them one at a time with ``sigtimedwait`` in its loop, so that a signal never
    interrupts it half way through forking or reaping, and a child never runs the
    supervisor's code: a forked process inherits the handlers until it resets them,
    and the SIGTERM that a reload sent a journal writer forked a moment before made
    it run the supervisor's stop handler, which killed the libmilter child (mail
    tempfailed for the 1 s of its restart). A child is forked with the signals
    blocked; what arrives before it is ready waits, pending, for it.
    """

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.child: int | None = None
        self.control_w: int | None = None
        self.writer: int | None = None
        self.writer_w: int | None = None  # its end closes when we die: the writer stops
        self.writer_reload = False  # the writer was stopped to follow a reload
        self.store_url = ""  # the store the writer was started for (a reload changing it restarts it)
        self.child_due: float | None = None  # when to (re)start the child (time.monotonic)
        self.writer_due: float | None = None  # when to (re)start the writer
        self.writer_kill_at: float | None = None  # stopping: SIGKILL a writer still there then
        self.stopping = False
        self.exit_code = 0
        self._mask: set[int] = set()  # the mask our children get (SIGCHLD unblocked)

    def _fork(self, name: str, target: Callable[[int], int]) -> tuple[int, int]:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: no handler to reset (the supervisor has none)
            os.close(w)
            for fd in (self.control_w, self.writer_w):  # the other child's pipe: not ours to hold
                if fd is not None:
                    os.close(fd)
            # SIGHUP, SIGTERM and SIGINT stay blocked: the libmilter child's signal
            # thread and the writer's sigwait() take them.
            signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)
            code = 1
            try:
                code = target(r)
            except BaseException:
                log.exception("%s failed", name)
            finally:
                logging.shutdown()
                os._exit(code)
        os.close(r)
        log.info("%s %d started", name, pid)
        return pid, w

    def _preload(self, config: Config) -> None:
        """Import what the children run before forking them (no thread is started by
        these imports): a child or writer restarted after a crash is at work within
        milliseconds instead of after seconds of imports on a busy host. ``config``: the
        one ``main`` validated at start (not read again here)."""
        self.store_url = config.store_url
        engine = "postgres" if config.store_url.startswith("postgresql") else "sqlite"
        for module in ("Milter", "bouncetrack.milter.app", "bouncetrack.milter.journal",
                       f"bouncetrack.store.{engine}"):
            importlib.import_module(module)

    def spawn(self) -> None:
        self.child_due = None
        self.child, self.control_w = self._fork("milter child", lambda r: run_child(self.config_path, r))

    def spawn_writer(self) -> None:
        self.writer_due = None
        self.writer, self.writer_w = self._fork("journal writer", lambda r: run_writer(self.config_path, r))

    def on_hup(self) -> None:
        # Validated here, applied by the child (which logs "configuration reloaded").
        try:
            config, _ = load_runtime(self.config_path)
        except (ConfigError, OSError, KeyFileError) as exc:
            log.error("%s (%s):\n%s", REFUSED, self.config_path, exc)
            return
        register(config_secrets(config))
        if self.control_w is not None:
            try:
                os.write(self.control_w, RELOAD)
            except OSError:
                pass
        # The writer needs nothing else of the configuration: it is restarted only for a
        # new store (a restart replays the open journal segment, the store skipping what
        # it holds, and repeats that segment's "tracked" lines).
        if config.store_url != self.store_url:
            self.store_url = config.store_url
            if self.writer is not None:
                self.writer_reload = True
                self._kill(self.writer)

    @staticmethod
    def _kill(pid: int | None, sig: int = signal.SIGTERM) -> None:
        if pid:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def on_term(self) -> None:
        if not self.stopping:
            self.writer_kill_at = time.monotonic() + WRITER_STOP_SECONDS
        self.stopping = True
        self._kill(self.child)
        self._kill(self.writer)

    def _timeout(self) -> float | None:
        """Seconds until the next thing to do on a clock (None: only a signal)."""
        dues = [t for t in (self.child_due, self.writer_due) if t is not None and not self.stopping]
        if self.stopping and self.writer is not None and self.writer_kill_at is not None:
            dues.append(self.writer_kill_at)
        return max(0.0, min(dues) - time.monotonic()) if dues else None

    def _on_clock(self) -> None:
        now = time.monotonic()
        if self.stopping:
            if self.writer is not None and self.writer_kill_at is not None and now >= self.writer_kill_at:
                log.warning("journal writer %d still running %.0f s after SIGTERM: SIGKILL (the journal "
                            "keeps what it had not moved)", self.writer, WRITER_STOP_SECONDS)
                self._kill(self.writer, signal.SIGKILL)
                self.writer_kill_at = None
            return
        if self.writer_due is not None and now >= self.writer_due:
            self.spawn_writer()
        if self.child_due is not None and now >= self.child_due:
            self.spawn()

    def _alive(self) -> bool:
        return (self.child is not None or self.writer is not None
                or (not self.stopping and (self.child_due is not None or self.writer_due is not None)))

    def run(self, config: Config) -> int:
        """Supervise until SIGTERM/SIGINT; ``config`` is the configuration main() validated."""
        # Blocked before anything is forked; sigtimedwait() takes them (SIGCHLD too:
        # its default action discards it, a blocked one stays pending).
        old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        self._mask = {int(sig) for sig in old} | {int(sig) for sig in SIGNALS if sig != signal.SIGCHLD}
        self._preload(config)
        self.spawn_writer()  # first: it moves what an earlier run left in the journal
        self.spawn()
        while self._alive():
            timeout = self._timeout()
            info = signal.sigwaitinfo(SIGNALS) if timeout is None else signal.sigtimedwait(SIGNALS, timeout)
            if info is None:
                pass
            elif info.si_signo == signal.SIGHUP:
                if not self.stopping:
                    self.on_hup()
            elif info.si_signo in (signal.SIGTERM, signal.SIGINT):
                self.on_term()
            elif info.si_signo == signal.SIGCHLD:
                self._reap()
            self._on_clock()
        return self.exit_code

    def _reap(self) -> None:
        """Every child that has exited (SIGCHLDs coalesce: one may stand for several)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            code = os.waitstatus_to_exitcode(status)
            if pid == self.writer:
                self._writer_exited(pid, code)
            elif pid == self.child:
                self._child_exited(pid, code)

    def _child_exited(self, pid: int, code: int) -> None:
        if self.control_w is not None:
            os.close(self.control_w)
            self.control_w = None
        self.child = None
        if self.stopping:
            self.exit_code = 0 if code in (0, -signal.SIGTERM) else code
            return
        log.error("milter child %d exited with %s; restarting in %.0f s", pid, code, RESTART_DELAY)
        self.child_due = time.monotonic() + RESTART_DELAY

    def _writer_exited(self, pid: int, code: int) -> None:
        if self.writer_w is not None:
            os.close(self.writer_w)
            self.writer_w = None
        self.writer = None
        if self.stopping:
            return
        if self.writer_reload:
            self.writer_reload = False
            self.writer_due = time.monotonic()
        else:
            log.error("journal writer %d exited with %s; restarting in %.0f s", pid, code, RESTART_DELAY)
            self.writer_due = time.monotonic() + RESTART_DELAY


def main(config_path: Path, *, foreground_child: bool = False) -> int:
    """Entry point of ``bouncetrack milter``; refuses to start on an invalid config."""
    try:
        config, _ = load_runtime(config_path)
    except ConfigError as exc:
        print(f"bouncetrack milter: invalid configuration:\n{exc}", file=sys.stderr)
        return 78  # EX_CONFIG
    register(config_secrets(config))
    from .. import __version__

    log.info("bouncetrack milter %s starting, configuration %s", __version__, config_path)
    try:
        if foreground_child:
            # No supervisor: the journal writer runs as a thread of this process.
            threading.Thread(target=run_writer, args=(config_path, None), daemon=True).start()
            return run_child(config_path, None)
        return Supervisor(config_path).run(config)
    finally:
        log.info("bouncetrack milter stopped")
