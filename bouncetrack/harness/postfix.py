"""A private, throw-away Postfix instance on loopback for the tests and the demo.

Everything lives under one base directory; the system instance (``/etc/postfix``) is
never read or written: every command gets ``-c DIR`` (``postfix``, ``postconf``,
``postqueue``, ``postsuper``) or ``-C DIR`` (``sendmail``). Needs root.

Layout under ``base``::

    etc/      main.cf, master.cf, transport (texthash)   (config_directory)
    spool/    queue_directory, root 0755; Postfix creates its subdirectories
    data/     data_directory, owned by postfix
    log/      postfix.log (maillog_file, written by postlogd)

Measured on this machine (Debian 12, Postfix 3.7.11, as root, no systemd):

- Start: ``postfix -c DIR start`` until smtpd answers on its port takes 2.0–2.5 s, fresh
  instance or not; nearly all of it is the ``postfix check`` that ``start`` runs first
  (``postfix check`` alone: 2.3 s; the master is up ~0.1 s after that). A whole
  :class:`~bouncetrack.harness.stack.Stack` (staging, milter, Postfix) is up in ~2.5 s.
- Stop: SIGTERM to the master (what ``postfix stop`` sends) and it is gone in ~0.05 s.
  Two traps: (1) the master is re-parented to PID 1, which in a container reaps it
  late, so it lingers as a *zombie* for ~1.5 s and ``kill(pid, 0)`` still succeeds;
  :func:`pid_alive` counts a zombie as dead. (2) ``postfix stop`` itself polls with
  1 s sleeps. Leftovers get SIGKILL on the master's process group (it is a session leader).
- ``postfix -c DIR`` / ``postqueue -c`` / ``postsuper -c`` / ``sendmail -C`` as root work
  without ``alternate_config_directories`` and even when ``/etc/postfix/main.cf`` does
  not exist (Debian's "No configuration" install): that list is only consulted for
  non-root users of the set-gid commands (postconf(5) ``config_directory``). So the
  harness never edits the default instance, and it neither needs nor disturbs a running
  system Postfix (own config, queue, data dir, port; only the binaries are shared).
- Timers (all accept time units; checked with ``postconf -c DIR`` and ``postfix check``):
  ``queue_run_delay = 1s``, ``minimal_backoff_time = 1s``, ``maximal_backoff_time = 2s``:
  deferred mail is retried within 1–2 s instead of 5–70 min (kept equal so Postfix does
  not warn that queue_run_delay exceeds minimal_backoff_time); tests can also
  :meth:`PrivatePostfix.flush`.
  ``maximal_queue_lifetime`` / ``bounce_queue_lifetime``: ``1h`` here, constructor
  arguments; ``0`` means "try once, then bounce" (postconf(5)): a 452 becomes a
  non-delivery DSN with ``Status: 4.2.2`` ~0.1 s after the attempt.
  ``delay_warning_time``: ``0h`` (off) by default. The smallest value is ``1s`` (a bare
  number means hours); with ``1s`` the "delayed" DSN goes out with the *first*
  deferral (qmgr compares the arrival time, in whole seconds, with the warn time), so a
  greylisted recipient yields a delay notice at once. bounce(8) then logs harmless
  warnings that ``delay_warning_time_hours`` / ``maximal_queue_lifetime_days`` round to
  zero in its built-in template.
- The pipe's ``${sender}`` of a DSN (null envelope sender) is ``MAILER-DAEMON``: that is
  pipe(8)'s default ``null_sender``; ``bouncepipe_destination_recipient_limit = 1`` so
  ``${recipient}`` is always one address.
- ``notify_classes`` is empty: there is no local delivery in the harness, so postmaster
  notices would only bounce around; problems are in the log file instead.
- ``in_flow_delay = 0s`` and no smtpd error sleeps, so benchmarks measure the milter,
  not Postfix's own throttling.

``packaged=True`` (issue 15) builds the instance from the distribution's own files
instead, as an operator's host has them, chroot on:

- main.cf: ``/usr/share/postfix/main.cf.debian`` (plus ``main.cf.tls`` when the snakeoil
  key exists), then what Debian's postinst sets for an "Internet Site"
  (:data:`DEBIAN_POSTINST`, its ``set_postconf`` lines with their debconf defaults;
  ``newaliases`` becomes ``postalias`` of the instance's own copy of ``/etc/aliases``),
  then only what a private instance on loopback needs (:meth:`PrivatePostfix.packaged_overrides`:
  its directories, the port, routes to the fake MX, no DNS, no local delivery, fast retries);
- master.cf: ``/usr/share/postfix/master.cf.dist`` (the file postinst copies to
  ``/etc/postfix/master.cf``, identical to ``master.cf.proto``), byte for byte but for the
  ``smtp inet`` service renamed to the private port: ``smtpd``, ``cleanup`` and most
  others keep chroot ``y``;
- start: ``/usr/lib/postfix/configure-instance.sh`` populates the chroot (``etc/resolv.conf``,
  ``etc/hosts``, ``etc/services``, nsswitch, the NSS libraries ...) before ``postfix start``,
  as Debian's ``postfix@.service`` does (``ExecStartPre``); it reads the instance from
  ``MAIL_CONFIG``. Measured here: 0.2 s, 3 MB.

Neither the milter nor the bounce pipe is wired: ``bouncetrack install`` does that, and
:meth:`PrivatePostfix.start` is then called with ``write=False`` so it keeps install's edits.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .fakemx import free_port

POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
POSTQUEUE = "/usr/sbin/postqueue"
POSTSUPER = "/usr/sbin/postsuper"
SENDMAIL = "/usr/sbin/sendmail"
POSTALIAS = "/usr/sbin/postalias"

# The distribution's packaged configuration (Debian 12, package postfix).
DEBIAN_MAIN_CF = Path("/usr/share/postfix/main.cf.debian")
DEBIAN_MAIN_CF_TLS = Path("/usr/share/postfix/main.cf.tls")
DEBIAN_MASTER_CF = Path("/usr/share/postfix/master.cf.dist")
DEBIAN_SNAKEOIL_KEY = Path("/etc/ssl/private/ssl-cert-snakeoil.key")
DEBIAN_CONFIGURE_INSTANCE = Path("/usr/lib/postfix/configure-instance.sh")
#: What Debian's postinst (/var/lib/dpkg/info/postfix.postinst) sets on a new main.cf for
#: the "Internet Site" type, with its debconf defaults, in its order ({etc}: the config dir).
DEBIAN_POSTINST: tuple[tuple[str, str], ...] = (
    ("smtpd_relay_restrictions", "permit_mynetworks permit_sasl_authenticated defer_unauth_destination"),
    ("myhostname", "mx.harness.test"),
    ("alias_maps", "hash:{etc}/aliases"),
    ("alias_database", "hash:{etc}/aliases"),
    ("mydestination", "$myhostname, localhost.localdomain, localhost"),
    ("relayhost", ""),
    ("mynetworks", "127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128"),
    ("mailbox_size_limit", "0"),
    ("recipient_delimiter", "+"),
    ("inet_interfaces", "all"),
    ("inet_protocols", "all"),
)


def packaged_unavailable() -> str | None:
    """Why a :class:`PrivatePostfix` cannot be built from the packaged files here, or None."""
    for path in (DEBIAN_MAIN_CF, DEBIAN_MASTER_CF, DEBIAN_CONFIGURE_INSTANCE):
        if not path.exists():
            return f"{path} does not exist (Debian's postfix package)"
    return None

#: Services the harness needs (no local delivery, no TLS, no postscreen).
#: qmgr's wakeup is 10 s, not the stock 300 s: a new queue file reaches qmgr by a trigger
#: (a connect to public/qmgr) that Postfix sends best effort; when qmgr is too busy to
#: accept it (a 500-DSN storm), the file waits in incoming until the next trigger or
#: wakeup. The test storm's last DSN once waited past its 120 s drain that way (Postfix's
#: behaviour, not bouncetrack's: nothing had reached the pipe yet).
_MASTER_CF = """\
# Generated by bouncetrack.harness.postfix: a private instance, chroot off everywhere.
# service   type  private unpriv  chroot  wakeup  maxproc command + args
{smtpd_listen} inet n - n - - smtpd
pickup      unix  n       -       n       60      1       pickup
cleanup     unix  n       -       n       -       0       cleanup
qmgr        unix  n       -       n       10      1       qmgr
rewrite     unix  -       -       n       -       -       trivial-rewrite
bounce      unix  -       -       n       -       0       bounce
defer       unix  -       -       n       -       0       bounce
trace       unix  -       -       n       -       0       bounce
verify      unix  -       -       n       -       1       verify
flush       unix  n       -       n       1000?   0       flush
proxymap    unix  -       -       n       -       -       proxymap
proxywrite  unix  -       -       n       -       1       proxymap
smtp        unix  -       -       n       -       -       smtp
relay       unix  -       -       n       -       -       smtp
showq       unix  n       -       n       -       -       showq
error       unix  -       -       n       -       -       error
retry       unix  -       -       n       -       -       error
discard     unix  -       -       n       -       -       discard
anvil       unix  -       -       n       -       1       anvil
scache      unix  -       -       n       -       1       scache
postlog     unix-dgram n  -       n       -       1       postlogd
"""


def pid_alive(pid: int) -> bool:
    """True if ``pid`` is a live process. A zombie counts as dead: the master is
    re-parented to PID 1, which in a container may reap it late (measured: the
    stopped master stayed a zombie ~1.5 s, which made every stop look slow)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def group_alive(pgid: int) -> bool:
    """True while any live (non-zombie) process is in process group ``pgid``."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # state ppid pgrp ...
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


@dataclass
class QueueEntry:
    """One message of ``postqueue -j`` (the fields the tests use, plus the raw dict)."""

    queue_id: str
    queue_name: str  # "incoming" | "active" | "deferred" | "hold" | "maildrop"
    sender: str
    recipients: list[dict[str, Any]]  # {"address": ..., "delay_reason": ...}
    raw: dict[str, Any] = field(repr=False)


class PostfixError(RuntimeError):
    pass


class PrivatePostfix:
    """A private Postfix instance under ``base`` (see the module docstring).

    ``routes``: transport_maps entries, domain → transport (``smtp:[127.0.0.1]:2526``,
    ``bouncepipe:``); their domains become ``relay_domains``.
    ``pipe_argv``: argv of the ``bouncepipe`` pipe(8) service (``${recipient} ${sender}``
    are appended), run as ``pipe_user``; None leaves the service out.
    ``milter_socket``: wires ``smtpd_milters``/``non_smtpd_milters`` to it.
    ``extra``: more main.cf settings, applied last.
    ``services``: more master.cf lines (unless ``packaged``), e.g. our lmtp service.
    """

    def __init__(
        self,
        base: Path | str,
        *,
        routes: Mapping[str, str],
        pipe_argv: Sequence[str] | None = None,
        pipe_user: str = "bouncetrack",
        milter_socket: Path | str | None = None,
        port: int | None = None,
        maximal_queue_lifetime: str = "1h",
        bounce_queue_lifetime: str = "1h",
        delay_warning_time: str = "0h",
        extra: Mapping[str, str] | None = None,
        packaged: bool = False,
        services: Sequence[str] = (),
    ) -> None:
        self.packaged = packaged
        self.services = list(services)  # more master.cf lines (e.g. the bouncelmtp service)
        self.base = Path(base).resolve()
        self.config_dir = self.base / "etc"
        self.queue_dir = self.base / "spool"
        self.data_dir = self.base / "data"
        self.log_dir = self.base / "log"
        self.log_file = self.log_dir / "postfix.log"
        self.routes = dict(routes)
        self.pipe_argv = list(pipe_argv) if pipe_argv is not None else None
        self.pipe_user = pipe_user
        self.milter_socket = Path(milter_socket) if milter_socket is not None else None
        self.host = "127.0.0.1"
        self.port = port or free_port(self.host)
        self.maximal_queue_lifetime = maximal_queue_lifetime
        self.bounce_queue_lifetime = bounce_queue_lifetime
        self.delay_warning_time = delay_warning_time
        self.extra = dict(extra or {})
        self._started = False

    # --- configuration ---------------------------------------------------------
    def main_cf(self) -> dict[str, str]:
        """The main.cf settings, in order."""
        relay = sorted({d for d in self.routes if not d.startswith(".")})
        cf: dict[str, str] = {
            "compatibility_level": "3.6",
            "config_directory": str(self.config_dir),
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "maillog_file": str(self.log_file),
            "maillog_file_prefixes": str(self.log_dir),
            "inet_interfaces": self.host,
            "inet_protocols": "ipv4",
            "myhostname": "mx.harness.test",
            "mydomain": "harness.test",
            "myorigin": "$myhostname",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "relay_domains": ", ".join(relay),
            "transport_maps": f"texthash:{self.config_dir / 'transport'}",
            "default_transport": "error:no route in the harness",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "biff": "no",
            "append_dot_mydomain": "no",
            "smtpd_peername_lookup": "no",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_error_sleep_time": "0s",
            "smtpd_soft_error_limit": "1000",
            "smtpd_hard_error_limit": "1000",
            "in_flow_delay": "0s",
            "smtp_dns_support_level": "disabled",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "smtp_connect_timeout": "5s",
            **self._retry_times(),
            "notify_classes": "",
        }
        if self.pipe_argv is not None:
            # One recipient per pipe run so ${recipient} is a single address.
            cf["bouncepipe_destination_recipient_limit"] = "1"
        if self.milter_socket is not None:
            cf.update(
                {
                    "smtpd_milters": f"unix:{self.milter_socket}",
                    "non_smtpd_milters": f"unix:{self.milter_socket}",
                    "milter_protocol": "6",
                    "milter_default_action": "tempfail",
                    "milter_connect_timeout": "5s",
                    "milter_command_timeout": "10s",
                    # Postfix's default list also drops Return-Path before milters see it;
                    # the spec's rule (Return-Path header -> envelope sender) needs it kept
                    # for the milter, which removes it itself (conf/postfix/main.cf).
                    "message_drop_headers": "bcc, content-length, resent-bcc",
                }
            )
        cf.update(self.extra)
        return cf

    def _retry_times(self) -> dict[str, str]:
        """Fast retries and this instance's queue lifetimes: the same in both configurations."""
        return {
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "maximal_queue_lifetime": self.maximal_queue_lifetime,
            "bounce_queue_lifetime": self.bounce_queue_lifetime,
            "delay_warning_time": self.delay_warning_time,
        }

    def master_cf(self) -> str:
        text = _MASTER_CF.format(
            smtpd_listen=f"{self.host}:{self.port}"
        )
        if self.pipe_argv is not None:
            argv = " ".join(self.pipe_argv)
            text += (
                f"bouncepipe  unix  -       n       n       -       -       pipe\n"
                f"  flags=Rq user={self.pipe_user} argv={argv} --client-address=${{client_address}} "
                "${recipient} ${sender}\n"
            )
        return text + "".join(f"{line}\n" for line in self.services)

    def packaged_overrides(self) -> dict[str, str]:
        """With ``packaged``: what the private instance changes in Debian's main.cf, and
        nothing else (its own directories and log, loopback and its port, routes to the
        fake MX, no DNS, no local delivery, no postmaster notices, fast retries)."""
        return {
            "config_directory": str(self.config_dir),
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "maillog_file": str(self.log_file),
            "maillog_file_prefixes": str(self.log_dir),
            "inet_interfaces": self.host,
            "inet_protocols": "ipv4",
            "transport_maps": f"texthash:{self.config_dir / 'transport'}",
            "default_transport": "error:no route in the harness",
            "local_transport": "error:no local delivery in the harness",
            "smtp_dns_support_level": "disabled",
            "notify_classes": "",
            **self._retry_times(),
            **self.extra,
        }

    def _make_dirs(self) -> None:
        for d in (self.config_dir, self.queue_dir, self.log_dir):
            d.mkdir(parents=True, exist_ok=True)
            os.chown(d, 0, 0)
            d.chmod(0o755)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.data_dir, "postfix", "postfix")
        self.data_dir.chmod(0o700)

    def _write_transport(self) -> None:
        path = self.config_dir / "transport"
        path.write_text("".join(f"{d} {t}\n" for d, t in self.routes.items()))
        path.chmod(0o644)

    def _write_packaged(self) -> None:
        """main.cf and master.cf from the distribution's files (see the module docstring)."""
        self._make_dirs()
        etc = self.config_dir
        main = DEBIAN_MAIN_CF.read_text()
        if DEBIAN_SNAKEOIL_KEY.exists():  # as postinst: TLS with the snakeoil certificate
            main += DEBIAN_MAIN_CF_TLS.read_text()
        (etc / "main.cf").write_text(main)
        postinst = [f"{k}={v.format(etc=etc)}" for k, v in DEBIAN_POSTINST]
        self._run([POSTCONF, "-c", str(etc), "-e", *postinst])
        shutil.copyfile("/etc/aliases", etc / "aliases")
        self._run([POSTCONF, "-c", str(etc), "-e", *(f"{k}={v}" for k, v in self.packaged_overrides().items())])
        # smtp inet -> the private port; every column and line else as packaged.
        master, n = re.subn(r"(?m)^smtp(?=\s+inet\b)", f"{self.host}:{self.port}", DEBIAN_MASTER_CF.read_text(), count=1)
        if n != 1:
            raise PostfixError(f"{DEBIAN_MASTER_CF} has no 'smtp inet' service")
        (etc / "master.cf").write_text(master)
        self._write_transport()
        for name in ("main.cf", "master.cf", "aliases"):
            (etc / name).chmod(0o644)
        self._run([POSTALIAS, "-c", str(etc), f"hash:{etc / 'aliases'}"])

    def configure_chroot(self) -> None:
        """Populate the chroot as Debian's own instance set-up does: run
        ``configure-instance.sh`` for this instance (``MAIL_CONFIG``)."""
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "MAIL_CONFIG": str(self.config_dir), "LANG": "C"}
        proc = subprocess.run([str(DEBIAN_CONFIGURE_INSTANCE), "-"], capture_output=True, text=True, env=env,
                              timeout=60, check=False)
        if proc.returncode != 0:
            raise PostfixError(f"{DEBIAN_CONFIGURE_INSTANCE} exited {proc.returncode}: {proc.stderr or proc.stdout}")

    def write(self) -> None:
        """(Re)write the whole instance configuration and its directories."""
        if self.packaged:
            self._write_packaged()
            return
        self._make_dirs()
        main = "".join(f"{k} = {v}\n" for k, v in self.main_cf().items())
        (self.config_dir / "main.cf").write_text(
            "# Generated by bouncetrack.harness.postfix (private test instance).\n" + main
        )
        (self.config_dir / "master.cf").write_text(self.master_cf())
        self._write_transport()
        for name in ("main.cf", "master.cf"):
            (self.config_dir / name).chmod(0o644)

    def set_routes(self, routes: Mapping[str, str], *, reload: bool = True) -> None:
        """Replace the transport map (and, unless ``packaged``, relay_domains); reload a
        running instance. A packaged instance keeps its main.cf and master.cf."""
        self.routes = dict(routes)
        if self.packaged:
            self._write_transport()
        else:
            self.write()
        if reload and self.running():
            self.reload()

    # --- commands --------------------------------------------------------------
    def _run(self, argv: Sequence[str], *, check: bool = True, input: bytes | None = None,
             timeout: float = 60.0) -> subprocess.CompletedProcess[bytes]:
        env = dict(os.environ)
        env.pop("MAIL_CONFIG", None)
        proc = subprocess.run(list(argv), input=input, capture_output=True, timeout=timeout,
                              env=env, check=False)
        if check and proc.returncode != 0:
            raise PostfixError(
                f"{' '.join(argv)} exited {proc.returncode}: "
                f"{proc.stderr.decode(errors='replace').strip()}"
            )
        return proc

    def postconf(self, *args: str) -> str:
        return self._run([POSTCONF, "-c", str(self.config_dir), *args]).stdout.decode()

    def start(self, timeout: float = 30.0, *, write: bool = True) -> None:
        """Write the configuration (unless ``write`` is false: keep what is there, e.g.
        after ``bouncetrack install``), start the master, wait until smtpd answers. A
        ``packaged`` instance has its chroot populated first."""
        if os.geteuid() != 0:
            raise PostfixError("the private Postfix instance needs root")
        if self.running():
            self.stop()
        if write:
            self.write()
        if self.packaged:
            self.configure_chroot()
        self._run([POSTFIX, "-c", str(self.config_dir), "start"])
        self._started = True
        self._wait_smtp(timeout)

    def _wait_smtp(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=2) as s:
                    s.settimeout(5)
                    if s.recv(512).startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        return
            except OSError as exc:
                last = exc
            time.sleep(0.05)
        raise PostfixError(f"smtpd on {self.host}:{self.port} not answering: {last}\n"
                           f"{self.log_tail()}")

    def master_pid(self) -> int | None:
        """The master's pid if its pid file names a live process."""
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def running(self) -> bool:
        return self.master_pid() is not None

    def reload(self) -> None:
        self._run([POSTFIX, "-c", str(self.config_dir), "reload"])

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the instance (SIGTERM to the master, as ``postfix stop`` does, without
        its 1 s polling sleeps); SIGKILL its process group if it lingers. Never raises."""
        pid = self.master_pid()
        if pid is None:
            return
        # What `postfix stop` does, minus its one-second sleeps: SIGTERM to the master,
        # which terminates its children and exits (measured: gone in ~0.1 s).
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
        deadline = time.monotonic() + timeout
        pgid = pid
        # The master is a session leader (setsid): its group holds every child, and the
        # children may still be exiting after the master is gone: wait for the group.
        while time.monotonic() < deadline and group_alive(pgid):
            time.sleep(0.05)
        if group_alive(pgid):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                try:
                    os.kill(pgid, signal.SIGKILL)
                except OSError:
                    pass
            end = time.monotonic() + 3.0
            while time.monotonic() < end and group_alive(pgid):
                time.sleep(0.05)
        self._started = False

    def abort(self) -> None:
        """Immediate stop (``postfix abort``), then SIGKILL as in :meth:`stop`."""
        if self.master_pid() is not None:
            self._run([POSTFIX, "-c", str(self.config_dir), "abort"], check=False)
        self.stop(timeout=3.0)

    # --- queue -----------------------------------------------------------------
    def flush(self) -> None:
        """Ask the qmgr to retry deferred mail now (``postqueue -f``)."""
        self._run([POSTQUEUE, "-c", str(self.config_dir), "-f"])

    def queue(self) -> list[QueueEntry]:
        """The queue, parsed from ``postqueue -j`` (one JSON object per line)."""
        out = self._run([POSTQUEUE, "-c", str(self.config_dir), "-j"]).stdout.decode()
        entries = []
        for line in out.splitlines():
            if not line.strip():
                continue
            raw = json.loads(line)
            entries.append(QueueEntry(
                queue_id=str(raw.get("queue_id", "")),
                queue_name=str(raw.get("queue_name", "")),
                sender=str(raw.get("sender", "")),
                recipients=list(raw.get("recipients", [])),
                raw=raw,
            ))
        return entries

    def wait_queue_empty(self, timeout: float = 30.0, *, flush: bool = True) -> None:
        """Wait until the queue is empty, flushing deferred mail every second."""
        deadline = time.monotonic() + timeout
        next_flush = 0.0
        while True:
            entries = self.queue()
            if not entries:
                return
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError(f"queue not empty after {timeout:.1f}s: {entries}")
            if flush and now >= next_flush:
                self.flush()
                next_flush = now + 1.0
            time.sleep(0.1)

    def delete_all(self) -> None:
        """Empty the queue (``postsuper -d ALL``)."""
        self._run([POSTSUPER, "-c", str(self.config_dir), "-d", "ALL"], check=False)

    # --- logs --------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def describe_queue(self, limit: int = 10) -> list[str]:
        """What is left in the incoming, active and deferred queues, for a failure's report:
        per file its queue, id, whether cleanup finished it (the execute bit, which qmgr
        waits for), size, mtime age, and this instance's log lines that name it."""
        log = self.log_text().splitlines()
        out: list[str] = []
        for q in ("incoming", "active", "deferred"):
            for root, _dirs, files in os.walk(self.queue_dir / q):
                for name in sorted(files)[:limit]:
                    try:
                        st = os.stat(os.path.join(root, name))
                    except FileNotFoundError:
                        continue  # moved meanwhile
                    done = "complete" if st.st_mode & 0o100 else "NOT complete (no +x)"
                    out.append(f"{q}/{name}: {done}, {st.st_size} bytes, mtime {time.time() - st.st_mtime:.0f} s ago")
                    out.extend(f"    {line}" for line in log if f" {name}: " in line or f" {name} " in line)
        return out

    # --- local submission ----------------------------------------------------------
    def sendmail(
        self,
        sender: str,
        recipients: Sequence[str],
        data: bytes,
        *,
        notify: str | None = None,
        ret: str | None = None,
        envid: str | None = None,
        extra_args: Sequence[str] = (),
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[bytes]:
        """Submit locally via this instance's ``sendmail -C DIR`` (postdrop → pickup;
        ``non_smtpd_milters`` see it). ``-N``/``-R``/``-V`` carry the DSN options."""
        argv = [SENDMAIL, "-C", str(self.config_dir), "-i", "-f", sender]
        if notify:
            argv += ["-N", notify]
        if ret:
            argv += ["-R", ret]
        if envid:
            argv += ["-V", envid]
        argv += [*extra_args, "--", *recipients]
        return self._run(argv, input=data, timeout=timeout)
