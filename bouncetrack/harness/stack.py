"""The whole product on loopback: private Postfix + milter + fake MX + bounce pipe.

Shared by the tests (``tests/conftest.py``) and the demo. Needs root. Typical use::

    with Stack(with_milter=True, pipe="real") as st:
        r = st.send("a@tracked.test", ["unknown-1@remote.test"])
        st.wait_for(lambda: st.bounces_in_spool(), 20)

Work directory layout (default ``/var/tmp/bouncetrack-XXXX``, 0755)::

    etc/bouncetrack.yaml   the generated configuration (0644)
    lib/                   staged package + bt.py + filespipe.py (world-readable)
    postfix/               the PrivatePostfix instance (etc/ spool/ data/ log/)
    state/                 bouncetrack 0750: verp.key (bouncetrack 0600), bouncetrack.db
    run/                   bouncetrack:postfix 0750: milter.sock
    spool/                 bouncetrack 0755: files written by the "files" pipe
    log/milter.log         the milter's stdout/stderr

Teardown (``close``) always leaves nothing running: it is idempotent, runs from
``__exit__`` (failed test, KeyboardInterrupt) and from an ``atexit`` guard.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence, TypeVar

import yaml

from ..ops import postfix_wiring as wiring
from ..core.config import TRANSPORT_LMTP, TRANSPORT_PIPE, LmtpConfig
from ..core.config_loader import load_config
from ..ops.install import install
from .fakemx import FakeMX
from .postfix import PrivatePostfix
from .stage import stage
from .users import DEFAULT_USER, ensure_cache_dir, ensure_user, gid_of

T = TypeVar("T")

VENV_PYTHON = "/opt/bouncetrack/venv/bin/python"

TRACKED = "tracked.test"
UNTRACKED = "untracked.test"
REMOTE = "remote.test"
BOUNCE_DOMAIN = "bounce.test"

PipeMode = Literal["files", "real"]
#: How Postfix hands the bounces over with ``pipe="real"`` (issue 21): pipe(8) or LMTP.
Transport = Literal["pipe", "lmtp"]
#: "harness": the harness writes main.cf/master.cf itself (chroot off, wired directly);
#: "debian": the distribution's packaged files, chroot on, wired by `bouncetrack install`.
PostfixConfig = Literal["harness", "debian"]

_live: set["Stack"] = set()
_live_lock = threading.Lock()


def _close_all() -> None:
    with _live_lock:
        stacks = list(_live)
    for st in stacks:
        st.close()


atexit.register(_close_all)


def unavailable_reason() -> str | None:
    """Why the harness cannot run on this machine (for pytest skips), or None."""
    if os.geteuid() != 0:
        return "needs root: the harness starts a private Postfix instance and creates a user"
    if not os.path.exists("/usr/sbin/postfix") or not os.path.isdir("/usr/lib/postfix/sbin"):
        return "Postfix is not installed (run ./scripts/bootstrap)"
    if shutil.which("useradd") is None:
        return "useradd not found"
    return None


def default_python() -> str:
    """The interpreter for the pipe and the milter: readable by the ``bouncetrack`` user."""
    env = os.environ.get("BOUNCETRACK_PYTHON")
    if env:
        return env
    return VENV_PYTHON if os.path.exists(VENV_PYTHON) else sys.executable


@dataclass
class SendResult:
    """Every SMTP reply of one transaction; nothing is raised for 4xx/5xx."""

    ehlo: tuple[int, str] = (0, "")
    mail: tuple[int, str] = (0, "")
    rcpts: dict[str, tuple[int, str]] = field(default_factory=dict)
    data: tuple[int, str] | None = None  # None when DATA was not reached
    error: str | None = None  # connection-level failure (refused, dropped)

    @property
    def accepted(self) -> bool:
        return self.data is not None and self.data[0] == 250

    @property
    def queue_id(self) -> str | None:
        if self.data is None or "queued as " not in self.data[1]:
            return None
        return self.data[1].rsplit("queued as ", 1)[1].split()[0]

    @property
    def codes(self) -> list[int]:
        out = [self.mail[0], *(c for c, _ in self.rcpts.values())]
        if self.data is not None:
            out.append(self.data[0])
        return out


@dataclass
class SpoolItem:
    """One message the "files" pipe received."""

    recipient: str
    sender: str
    argv: list[str]
    data: bytes
    uid: int
    path: Path
    client_address: str | None = None  # pipe(8)'s ${client_address}: "" for mail Postfix made itself


def _reply(r: tuple[int, bytes]) -> tuple[int, str]:
    return r[0], r[1].decode("utf-8", errors="replace")


def make_message(mail_from: str, rcpts: Sequence[str], subject: str = "harness test",
                 body: str = "Hello from the bouncetrack harness.\n",
                 headers: Mapping[str, str] | None = None) -> bytes:
    """A small RFC 5322 message with the usual headers."""
    hdrs = {
        "From": mail_from or "mailer-daemon@harness.test",
        "To": ", ".join(rcpts),
        "Subject": subject,
        "Date": formatdate(localtime=False),
        "Message-ID": make_msgid(domain="harness.test"),
    }
    hdrs.update(headers or {})
    head = "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    return (head + "\r\n" + body.replace("\r\n", "\n").replace("\n", "\r\n")).encode()


def wait_accepting(path: Path, proc: "subprocess.Popen[bytes]", timeout: float) -> str | None:
    """Wait until the unix socket ``path`` accepts a connection: None, or why not (the
    process exited first, or the timeout ran out). For the services the harness, the
    tests and the benchmarks start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"exited with {proc.returncode}"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.connect(str(path))
            return None
        except OSError:
            time.sleep(0.05)
    return f"socket {path} not accepting after {timeout:g} s"


def _signal_group(proc: "subprocess.Popen[bytes]", sig: int, timeout: float) -> None:
    """Send ``sig`` to ``proc``'s process group, wait ``timeout``, then SIGKILL what is left."""
    try:
        os.killpg(proc.pid, sig)
    except OSError:
        pass
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


class Stack:
    """Compose fake MX, staged package, milter and private Postfix (see module doc).

    ``workdir``: use this directory (created; kept afterwards) instead of a fresh
    temporary one under ``/var/tmp`` (removed at close unless ``keep`` or env
    ``BOUNCETRACK_KEEP=1``).
    ``with_milter``: run ``bt.py milter`` and wire Postfix to it.
    ``pipe``: ``"files"`` (filespipe.py writes to ``spool/``) or ``"real"``
    (``bt.py pipe --config CFG``).
    ``pipe_server``: with ``pipe="real"``, run ``bt.py pipe-server`` and have pipe(8) start
    the pipe client (``python -S …/bounce_pipe/client.py --socket …``), as production
    does; default: on, except with a ``pipe_wrapper`` (whose faults target the process
    that stores, the full pipe).
    ``maximal_queue_lifetime``/``bounce_queue_lifetime``/``delay_warning_time``: see
    :class:`PrivatePostfix`; ``"0"`` turns a 4xx into a bounce after one attempt.
    ``domains``: extra YAML ``domains:`` entries (name → mapping) merged over the
    defaults (``tracked.test`` tracking, ``untracked.test`` not, ``default`` not).
    ``config_extra``: top-level YAML keys added to the generated configuration.
    ``pipe_wrapper``: a script staged as ``lib/<its name>`` and run in front of the real
    pipe: pipe(8) runs ``PYTHON lib/<wrapper> *pipe_wrapper_args -- <the pipe's argv>``
    (fault injection: the wrapper may kill the pipe at a random point).
    ``postfix_config``: ``"debian"`` builds Postfix from the distribution's packaged
    main.cf/master.cf with chroot on (:class:`PrivatePostfix` ``packaged``), puts the
    milter socket under its queue directory (``spool/bouncetrack/milter.sock``, directory
    ``bouncetrack:postfix 0750``, as the milter's systemd unit does) and wires milter,
    pipe client and transport with ``bouncetrack install`` (its output in
    :attr:`install_output`; main.cf and master.cf as they were before it in
    :attr:`packaged_files`), as an operator would. Needs ``with_milter`` and ``pipe="real"``.
    ``transport``: ``"lmtp"`` (issue 21) sets ``pipe.transport: lmtp`` (``pipe.lmtp.socket`` at
    ``spool/bouncetrack/lmtp.sock`` under the queue directory, directory ``bouncetrack:postfix
    0750``, ``lmtp_workers`` workers; more ``pipe.lmtp`` keys through ``config_extra``) and routes
    the bounce domain to our lmtp service: written directly with the harness's configuration,
    by ``bouncetrack install`` with the packaged one. Needs ``pipe="real"`` and the pipe server.
    """

    def __init__(
        self,
        workdir: Path | str | None = None,
        *,
        with_milter: bool = True,
        pipe: PipeMode = "files",
        bounce_domain: str = BOUNCE_DOMAIN,
        maximal_queue_lifetime: str = "1h",
        bounce_queue_lifetime: str = "1h",
        delay_warning_time: str = "0h",
        fakemx_rules: Sequence[tuple[str, str]] | None = None,
        domains: Mapping[str, Mapping[str, Any]] | None = None,
        config_extra: Mapping[str, Any] | None = None,
        routes: Mapping[str, str] | None = None,
        postfix_extra: Mapping[str, str] | None = None,
        python: str | None = None,
        pipe_wrapper: Path | str | None = None,
        pipe_wrapper_args: Sequence[str] = (),
        pipe_server: bool | None = None,
        user: str = DEFAULT_USER,
        log_level: str = "DEBUG",
        keep: bool = False,
        postfix_config: PostfixConfig = "harness",
        transport: Transport = "pipe",
        lmtp_workers: int = 4,
    ) -> None:
        if pipe not in ("files", "real"):
            raise ValueError(f"pipe must be 'files' or 'real', not {pipe!r}")
        if postfix_config == "debian" and (not with_milter or pipe != "real"):
            raise ValueError("postfix_config='debian' needs with_milter=True and pipe='real'")
        self.postfix_config: PostfixConfig = postfix_config
        self.install_output: list[str] = []
        self.packaged_files: dict[str, bytes] = {}
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else Path(
            tempfile.mkdtemp(prefix="bouncetrack-", dir="/var/tmp"))
        self.with_milter = with_milter
        self.pipe_mode: PipeMode = pipe
        self.pipe_wrapper = Path(pipe_wrapper) if pipe_wrapper is not None else None
        self.pipe_wrapper_args = list(pipe_wrapper_args)
        self.pipe_server = (pipe == "real" and pipe_wrapper is None) if pipe_server is None else pipe_server
        if self.pipe_server and pipe != "real":
            raise ValueError("pipe_server needs pipe='real'")
        if transport not in (TRANSPORT_PIPE, TRANSPORT_LMTP) or (transport == TRANSPORT_LMTP and not self.pipe_server):
            raise ValueError("transport must be 'pipe' or 'lmtp'; 'lmtp' needs pipe='real' and the pipe server")
        self.transport: Transport = transport
        self.lmtp_workers = lmtp_workers
        self.bounce_domain = bounce_domain
        self.python = python or default_python()
        self.user = user
        self.log_level = log_level
        self.keep = keep or os.environ.get("BOUNCETRACK_KEEP") == "1"
        self.lib = self.workdir / "lib"
        self.config_path = self.workdir / "etc" / "bouncetrack.yaml"
        self.state_dir = self.workdir / "state"
        self.run_dir = self.workdir / "run"
        self.spool_dir = self.workdir / "spool"
        self.log_dir = self.workdir / "log"
        self.milter_log = self.log_dir / "milter.log"
        self.secret_file = self.state_dir / "verp.key"
        self.db_path = self.state_dir / "bouncetrack.db"
        self.milter_journal = self.state_dir / "milter-journal"  # issue 20
        self.milter_socket = self.run_dir / "milter.sock"
        self.pipe_socket = self.run_dir / "pipe.sock"
        self.pipe_server_log = self.log_dir / "pipe-server.log"
        self._domains = {k: dict(v) for k, v in (domains or {}).items()}
        self._config_extra = dict(config_extra or {})
        self.fakemx = FakeMX(rules=fakemx_rules)
        self.postfix = PrivatePostfix(
            self.workdir / "postfix",
            routes={},  # set in start(), once the fake MX port and the pipe argv are known
            pipe_argv=[],
            pipe_user=user,
            milter_socket=self.milter_socket if with_milter and postfix_config == "harness" else None,
            maximal_queue_lifetime=maximal_queue_lifetime,
            bounce_queue_lifetime=bounce_queue_lifetime,
            delay_warning_time=delay_warning_time,
            extra={**(wiring.lmtp_main(lmtp_workers, self._lmtp_option("max_recipients"))
                      if transport == TRANSPORT_LMTP and postfix_config == "harness" else {}),
                   **(postfix_extra or {})},
            packaged=postfix_config == "debian",
            services=[wiring.lmtp_master_entry(False, lmtp_workers)] if transport == TRANSPORT_LMTP else [],
        )
        if postfix_config == "debian":
            # Where a chrooted smtpd/cleanup can reach it (HACKING.md "Socket locations").
            self.milter_socket = self.postfix.queue_dir / "bouncetrack" / "milter.sock"
        # Issue 21: where a chrooted lmtp(8) reaches it too, named relative to the queue directory.
        self.lmtp_socket = self.postfix.queue_dir / "bouncetrack" / "lmtp.sock"
        self._routes_extra = dict(routes or {})
        self._milter: subprocess.Popen[bytes] | None = None
        self._pipe_server: subprocess.Popen[bytes] | None = None
        self._closed = False
        self._started = False

    # --- lifecycle ---------------------------------------------------------------
    def __enter__(self) -> "Stack":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def start(self) -> "Stack":
        """Bring everything up; on any failure (or ^C) tear down what was started."""
        if os.geteuid() != 0:
            raise PermissionError("the harness needs root (private Postfix, users)")
        with _live_lock:
            _live.add(self)
        try:
            self._prepare()
            self.fakemx.start()
            packaged = self.postfix_config == "debian"
            bounce_route = (wiring.lmtp_nexthop(wiring.postfix_name(str(self.lmtp_socket), str(self.postfix.queue_dir)))
                            if self.transport == TRANSPORT_LMTP else "bouncepipe:")
            self.postfix.routes = {
                REMOTE: f"smtp:[127.0.0.1]:{self.fakemx.port}",
                **({} if packaged else {self.bounce_domain: bounce_route}),
                **self._routes_extra,
            }
            if packaged:
                self._install_into_packaged()
            else:
                self.postfix.pipe_argv = self.pipe_argv()
            if self.with_milter:
                self.start_milter()
            if self.pipe_server:
                self.start_pipe_server()
            self.postfix.start(write=not packaged)
            self._started = True
        except BaseException:
            self.close()
            raise
        return self

    def _prepare(self) -> None:
        uid, gid = ensure_user(self.user)
        ensure_cache_dir(uid, gid)
        postfix_gid = gid_of("postfix")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        for d in (self.config_path.parent, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
            d.chmod(0o755)
        stage(self.lib, python=self.python)
        if self.pipe_wrapper is not None:
            staged = self.lib / self.pipe_wrapper.name
            shutil.copyfile(self.pipe_wrapper, staged)
            staged.chmod(0o644)
        for d, owner, group, mode in (
            (self.state_dir, uid, gid, 0o750),
            (self.run_dir, uid, postfix_gid, 0o750),
            (self.spool_dir, uid, gid, 0o755),
        ):
            d.mkdir(parents=True, exist_ok=True)
            os.chown(d, owner, group)
            d.chmod(mode)
        if not self.secret_file.exists():
            fd = os.open(self.secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
        os.chown(self.secret_file, uid, gid)
        self.secret_file.chmod(0o600)
        self.config_path.write_text(self.config_yaml())
        self.config_path.chmod(0o644)
        if self.transport == TRANSPORT_LMTP:  # as for the milter's (systemd/bouncetrack-pipe-server.service)
            self.lmtp_socket.parent.mkdir(parents=True, exist_ok=True)
            os.chown(self.lmtp_socket.parent, uid, postfix_gid)
            self.lmtp_socket.parent.chmod(0o750)

    def _install_into_packaged(self) -> None:
        """Write the packaged configuration, make the milter's socket directory under the
        queue directory (what systemd/bouncetrack-milter.service's ExecStartPre does) and
        run ``bouncetrack install`` against it."""
        self.postfix.write()
        sock_dir = self.milter_socket.parent
        sock_dir.mkdir(exist_ok=True)
        os.chown(sock_dir, ensure_user(self.user)[0], gid_of("postfix"))
        sock_dir.chmod(0o750)
        self.packaged_files = {n: (self.postfix.config_dir / n).read_bytes() for n in ("main.cf", "master.cf")}
        self.run_install()

    def run_install(self) -> bool:
        """``bouncetrack install`` against this stack's Postfix, with the stack's pipe client,
        pipe server socket and interpreter (output appended to :attr:`install_output`);
        True when it changed something."""
        return install(load_config(self.config_path), self.postfix.config_dir,
                       bouncetrack_bin=str(Path(self.python).parent / "bouncetrack"),
                       pipe_socket=str(self.pipe_socket),
                       pipe_client=str(self.lib / "bouncetrack" / "bounce_pipe" / "client.py"),
                       echo=self.install_output.append, transport=self.transport)

    def config_yaml(self) -> str:
        """The generated configuration (schema: conf/example.yaml)."""
        domains: dict[str, Any] = {
            TRACKED: {"tracking": True},
            UNTRACKED: {"tracking": False},
        }
        domains.update(self._domains)
        domains.setdefault("default", {"tracking": False})
        cfg: dict[str, Any] = {
            "bounce_domain": self.bounce_domain,
            "verp_prefix": "b",
            "secret_file": str(self.secret_file),
            "store": f"sqlite:///{self.db_path}",
            "milter_socket": str(self.milter_socket),
            "milter_journal": str(self.milter_journal),
            "log_level": self.log_level,
            "domains": domains,
        }
        extra = dict(self._config_extra)
        if self.transport == TRANSPORT_LMTP:
            pipe = dict(extra.pop("pipe", None) or {})
            pipe["lmtp"] = {"socket": str(self.lmtp_socket), "workers": self.lmtp_workers, **(pipe.get("lmtp") or {})}
            cfg["pipe"] = {**pipe, "transport": TRANSPORT_LMTP}
        cfg.update(extra)
        return "# Generated by bouncetrack.harness.stack\n" + yaml.safe_dump(
            cfg, sort_keys=False, default_flow_style=False)

    def _lmtp_option(self, name: str) -> int:
        """A ``pipe.lmtp`` number of the configuration this stack writes (``config_extra`` or the default)."""
        given = ((self._config_extra.get("pipe") or {}).get("lmtp") or {}).get(name)
        return int(given) if given is not None else int(getattr(LmtpConfig(), name))

    def pipe_argv(self) -> list[str]:
        if self.pipe_mode == "files":
            argv = [self.python, str(self.lib / "filespipe.py"), str(self.spool_dir)]
        elif self.pipe_server:
            argv = [self.python, "-S", str(self.lib / "bouncetrack" / "bounce_pipe" / "client.py"),
                    "--socket", str(self.pipe_socket), "--config", str(self.config_path)]
        else:
            argv = [self.python, str(self.lib / "bt.py"), "pipe", "--config", str(self.config_path)]
        if self.pipe_wrapper is not None:
            argv = [self.python, str(self.lib / self.pipe_wrapper.name), *self.pipe_wrapper_args,
                    "--", *argv]
        return argv

    def close(self) -> None:
        """Stop everything; idempotent and never raises."""
        if self._closed:
            return
        self._closed = True
        try:
            self.kill_milter()
        except Exception:  # noqa: BLE001
            pass
        try:
            self.kill_pipe_server()
        except Exception:  # noqa: BLE001
            pass
        try:
            self.postfix.stop()
        except Exception:  # noqa: BLE001
            pass
        self.fakemx.stop()
        with _live_lock:
            _live.discard(self)
        if self._own_workdir and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # --- services (milter, pipe server) --------------------------------------------
    def _spawn(self, argv: list[str], log_path: Path, socket_path: Path, timeout: float,
               what: str) -> "subprocess.Popen[bytes]":
        """Start ``argv`` as the unprivileged user in its own process group, output to
        ``log_path``; return once ``socket_path`` accepts. On exit or timeout: kill it,
        raise with its log."""
        log = open(log_path, "ab")
        try:
            proc = subprocess.Popen(
                argv, user=self.user, group=self.user, extra_groups=[],
                cwd=str(self.workdir), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"},
            )
        finally:
            log.close()
        why = wait_accepting(socket_path, proc, timeout)
        if why is None:
            return proc
        _signal_group(proc, signal.SIGKILL, 5.0)
        error = RuntimeError if why.startswith("exited") else TimeoutError
        raise error(f"{what} {why}:\n{log_path.read_text(errors='replace')[-4000:]}")

    # --- pipe server ---------------------------------------------------------------
    def start_pipe_server(self, timeout: float = 20.0) -> None:
        """Start ``bt.py pipe-server`` as the pipe's user; wait until its socket accepts."""
        if self._pipe_server is not None and self._pipe_server.poll() is None:
            return
        self._pipe_server = self._spawn(
            [self.python, str(self.lib / "bt.py"), "pipe-server", "--socket", str(self.pipe_socket),
             "--config", str(self.config_path), "--log-level", self.log_level],
            self.pipe_server_log, self.pipe_socket, timeout, "pipe server")
        if self.transport == TRANSPORT_LMTP:
            why = wait_accepting(self.lmtp_socket, self._pipe_server, timeout)
            if why is not None:
                self.kill_pipe_server()
                raise RuntimeError(f"pipe server's LMTP {why}:\n"
                                   f"{self.pipe_server_log.read_text(errors='replace')[-4000:]}")

    def stop_pipe_server(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Stop the pipe server (SIGTERM: it finishes bounces in flight); SIGKILL after ``timeout``."""
        proc, self._pipe_server = self._pipe_server, None
        if proc is not None:
            _signal_group(proc, sig, timeout)

    def reload_pipe_server(self) -> None:
        """SIGHUP: the pipe server re-reads its configuration (and replaces its LMTP workers)."""
        if self._pipe_server is not None:
            os.kill(self._pipe_server.pid, signal.SIGHUP)

    def kill_pipe_server(self) -> None:
        """SIGKILL the pipe server and its children (its socket file stays: stale)."""
        self.stop_pipe_server(signal.SIGKILL, 5.0)

    # --- milter --------------------------------------------------------------------
    def milter_argv(self) -> list[str]:
        return [self.python, str(self.lib / "bt.py"), "milter", "--config", str(self.config_path),
                "--log-level", self.log_level]

    def start_milter(self, timeout: float = 20.0) -> None:
        """Start the milter as the unprivileged user; wait until its socket accepts."""
        if self.milter_running():
            return
        if self.milter_socket.exists() or self.milter_socket.is_symlink():
            self.milter_socket.unlink()  # stale, from a killed milter
        self._milter = self._spawn(self.milter_argv(), self.milter_log, self.milter_socket, timeout, "milter")

    def milter_running(self) -> bool:
        return self._milter is not None and self._milter.poll() is None

    def stop_milter(self, timeout: float = 15.0) -> None:
        """SIGTERM (libmilter takes 4–6 s to exit), SIGKILL after ``timeout``."""
        self._signal_milter(signal.SIGTERM, timeout)

    def kill_milter(self) -> None:
        """SIGKILL the milter's whole process group at once (socket file stays: stale)."""
        self._signal_milter(signal.SIGKILL, 5.0)

    def _signal_milter(self, sig: int, timeout: float) -> None:
        proc, self._milter = self._milter, None
        if proc is not None:
            _signal_group(proc, sig, timeout)  # also any child the supervisor left behind

    def reload_milter(self) -> None:
        """SIGHUP: the milter re-reads its configuration."""
        if self._milter is not None:
            os.kill(self._milter.pid, signal.SIGHUP)

    # --- sending -------------------------------------------------------------------
    def send(
        self,
        mail_from: str,
        rcpts: Sequence[str],
        data: bytes | str | None = None,
        *,
        mail_options: Sequence[str] = (),
        rcpt_options: Mapping[str, Sequence[str]] | Sequence[str] = (),
        timeout: float = 30.0,
    ) -> SendResult:
        """One SMTP transaction with the private Postfix; returns every reply.

        ``rcpt_options``: per recipient (mapping) or the same list for all.
        """
        if data is None:
            data = make_message(mail_from, rcpts)
        elif isinstance(data, str):
            data = data.encode()
        res = SendResult()
        try:
            with smtplib.SMTP(self.postfix.host, self.postfix.port, timeout=timeout) as s:
                res.ehlo = _reply(s.ehlo("client.harness.test"))
                res.mail = _reply(s.mail(mail_from, list(mail_options)))
                if res.mail[0] != 250:
                    s.rset()
                    return res
                for r in rcpts:
                    opts = (rcpt_options.get(r, ()) if isinstance(rcpt_options, Mapping)
                            else rcpt_options)
                    res.rcpts[r] = _reply(s.rcpt(r, list(opts)))
                if not any(c == 250 or c == 251 for c, _ in res.rcpts.values()):
                    s.rset()
                    return res
                res.data = _reply(s.data(data))
        except (smtplib.SMTPException, OSError) as exc:
            res.error = f"{type(exc).__name__}: {exc}"
        return res

    def send_local(self, mail_from: str, rcpts: Sequence[str], data: bytes | str | None = None,
                   *, notify: str | None = None, ret: str | None = None,
                   envid: str | None = None) -> subprocess.CompletedProcess[bytes]:
        """Submit via the instance's sendmail (pickup; ``non_smtpd_milters`` apply)."""
        if data is None:
            data = make_message(mail_from, rcpts)
        elif isinstance(data, str):
            data = data.encode()
        return self.postfix.sendmail(mail_from, rcpts, data, notify=notify, ret=ret, envid=envid)

    # --- observing -------------------------------------------------------------------
    def bounces_in_spool(self) -> list[SpoolItem]:
        """Messages the "files" pipe received, oldest first."""
        items = []
        for meta_path in sorted(self.spool_dir.glob("*.json")):
            try:
                meta = json.loads(meta_path.read_text())
                data = meta_path.with_suffix(".eml").read_bytes()
            except (OSError, ValueError):
                continue
            items.append(SpoolItem(meta["recipient"], meta["sender"], list(meta["argv"]),
                                   data, int(meta["uid"]), meta_path.with_suffix(".eml"),
                                   meta.get("client_address")))
        return items

    def clear_spool(self) -> None:
        for p in self.spool_dir.iterdir():
            p.unlink()

    def wait_for(self, predicate: Callable[[], T], timeout: float = 20.0, *,
                 interval: float = 0.1, flush_every: float | None = 2.0) -> T:
        """Poll ``predicate()`` until truthy and return its value; TimeoutError otherwise.
        Every ``flush_every`` seconds the deferred queue is flushed, so retries happen."""
        deadline = time.monotonic() + timeout
        next_flush = time.monotonic() + (flush_every or 0)
        while True:
            value = predicate()
            if value:
                return value
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError(f"condition not met within {timeout:.1f}s")
            if flush_every and now >= next_flush and self.postfix.running():
                try:
                    self.postfix.flush()
                except Exception:  # noqa: BLE001
                    pass
                next_flush = now + flush_every
            time.sleep(interval)

    def milter_log_text(self) -> str:
        try:
            return self.milter_log.read_text(errors="replace")
        except OSError:
            return ""

    def logs(self) -> str:
        """Postfix's and the milter's logs, for assertions and for dumping on failure."""
        return (f"===== postfix log ({self.postfix.log_file}) =====\n{self.postfix.log_text()}\n"
                f"===== milter log ({self.milter_log}) =====\n{self.milter_log_text()}\n")

    def reset(self) -> None:
        """Between tests: empty the queue, the spool and the fake MX's records."""
        self.postfix.delete_all()
        self.clear_spool()
        self.fakemx.clear()
