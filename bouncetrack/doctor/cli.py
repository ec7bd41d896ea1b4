"""``bouncetrack doctor``: one line per check, OK / WARN / FAIL / SKIP, exit 1 on FAIL.

Probes (I/O) are here; verdicts are in :mod:`.checks`, DNS in :mod:`.dnscheck`.

Checks, in order:

1. config: the YAML file loads and validates (everything else needs it); its mode:
   WARN when it holds secrets (webhook secrets, API token hashes, a store password)
   and every user can read it, or every user can write it.
2. milter socket: connect to the unix socket and do the milter negotiation
   (SMFIC_OPTNEG); the answer must be a milter's, asking for CHGFROM (ours does).
3. postfix: effective main.cf values and the ``bouncepipe`` master.cf entry
   (``postconf -c DIR``), and the bounce domain's route as Postfix looks it up
   (``postmap -q`` on each transport map, first hit wins). Our milter socket is
   looked up where each smtpd and cleanup of master.cf opens it: relative to
   ``queue_directory``, or under it for a chrooted service (the chroot column).
   With ``pipe.transport: lmtp`` (issue 21): the ``bouncelmtp`` service, the LMTP socket
   where that service opens it (chrooted or not), and an LHLO answered there.
4. pipe user: exists; as that user (``runuser``): the interpreter runs and imports the
   pipe, the config and the VERP key are readable.
5. store: as the pipe user, the SQLite store opens read-write and takes a write lock
   (``BEGIN IMMEDIATE``), and its directory is writable (for -wal/-shm). A
   PostgreSQL store (``postgresql://``): connect with the pipe's store timeout,
   then, in a transaction that is rolled back, insert a row into raw_reports (the
   pipe's first write), or create a table when the schema does not exist yet.
6. DNS (dnspython): MX of the bounce domain points at this host; SPF of the bounce
   domain authorises this host; DMARC alignment of each tracked sender domain.
"""

from __future__ import annotations

# Lazy imports: a command imports what it runs when it runs, so that every `bouncetrack` command
# starts without the others' dependencies (PyYAML, FastAPI, libmilter, psycopg, flanker).

import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

import click

from ..ops import postfix_wiring as wiring
from ..core.config import DEFAULT_CONFIG_PATH, TRANSPORT_LMTP, Config, ConfigError
from ..milter.probe import SMFIF_CHGFROM
from ..milter.probe import negotiate
from .checks import (
    FAIL,
    OK,
    SKIP,
    SOCKET_MISSING,
    SOCKET_OTHER,
    SOCKET_OURS,
    SOCKET_UNKNOWN,
    WARN,
    Result,
    config_mode_result,
    config_secrets,
    exit_code,
    lmtp_results,
    postfix_results,
    store_file_results,
)

# ---------------------------------------------------------------------------
# 1. config


def check_config(path: str) -> tuple[Result, Config | None]:
    from ..core.config_loader import load_config

    try:
        config = load_config(path)
    except ConfigError as exc:
        return Result("config", FAIL, f"{path}: " + "; ".join(str(p) for p in exc.problems),
                      f"fix the file (bouncetrack check-config {path})"), None
    return Result("config", OK, f"{path} is valid (bounce domain {config.bounce_domain})"), config


def check_config_mode(config: Config) -> list[Result]:
    """1b. The config file's mode against the secrets it holds (:func:`checks.config_mode_result`)."""
    try:
        mode = os.stat(config.path).st_mode
    except OSError:
        return []
    return [config_mode_result(str(config.path), mode, config_secrets(config))]


# ---------------------------------------------------------------------------
# 2. milter


def check_milter(config: Config, timeout: float = 5.0) -> Result:
    """2. The milter answers the negotiation on ``milter_socket`` within ``timeout`` per step."""
    path = str(config.milter_socket)
    name = "milter socket"
    fix = "start the milter (systemctl start bouncetrack-milter) and check its log"
    if not os.path.exists(path):
        return Result(name, FAIL, f"{path} does not exist: Postfix tempfails every message (451)", fix)
    try:
        version, actions, _ = negotiate(path, timeout)
    except PermissionError as exc:
        return Result(name, FAIL, f"{path}: {exc}", "run doctor as root, or check the socket's mode (0660 or looser)")
    except (OSError, ValueError) as exc:
        return Result(name, FAIL, f"{path} does not answer the milter negotiation: {exc}", fix)
    if not actions & SMFIF_CHGFROM:
        return Result(name, WARN, f"{path} answers (milter protocol {version}) but does not ask for CHGFROM: "
                      "not the bouncetrack milter?", "check smtpd_milters and milter_socket")
    parent = Path(path).parent
    try:
        st = parent.stat()
        group = _group_name(st.st_gid)
        if group != "postfix" and not st.st_mode & 0o001:
            return Result(name, WARN, f"answers, but {parent} is group {group} mode {st.st_mode & 0o777:o}: "
                          "the postfix user may not reach the socket",
                          f"chgrp postfix {parent}; chmod 0750 {parent} (the milter unit's ExecStartPre creates it so)")
    except OSError:
        pass
    return Result(name, OK, f"{path} answers the milter negotiation (protocol {version}, CHGFROM requested)")


def _group_name(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


# ---------------------------------------------------------------------------
# 3. postfix


def check_postfix(config: Config, postfix_dir: Path, pipe_user: str) -> list[Result]:
    from ..ops.install import InstallError, main_values, master_entry, queue_directory, service_overrides, services

    if not (postfix_dir / "main.cf").is_file():
        return [Result("postfix", SKIP, f"no {postfix_dir}/main.cf (pass --postfix-dir)")]
    if shutil.which("postconf") is None and not os.path.exists("/usr/sbin/postconf"):
        return [Result("postfix", SKIP, "postconf is not installed")]
    try:
        main = main_values(postfix_dir)
        master = master_entry(postfix_dir)
        queue = queue_directory(postfix_dir)
        all_services = services(postfix_dir)
        overrides = service_overrides(postfix_dir)
    except InstallError as exc:
        return [Result("postfix", FAIL, str(exc), "fix main.cf/master.cf (postfix check)")]
    try:
        address: str | None = wiring.milter_address(str(config.milter_socket), queue, all_services)
        wiring_error = ""
    except wiring.WiringError as exc:
        address, wiring_error = None, str(exc)
    lookup = transport_lookup(postfix_dir, main.get("transport_maps", ""), config.bounce_domain)
    lmtp = config.pipe.lmtp
    install = f"bouncetrack install --postfix-dir {postfix_dir} --config {Path(config.path).resolve()}"
    lmtp_entry = master_entry(postfix_dir, f"{wiring.LMTP_SERVICE}/unix")
    lmtp_chroot = bool(lmtp_entry and lmtp_entry.split()[4:5] in (["y"], ["yes"]))
    try:
        lmtp_address: str | None = wiring.lmtp_address(str(lmtp.socket), queue, lmtp_chroot)
        lmtp_fix = install
    except wiring.WiringError as exc:
        lmtp_address, lmtp_fix = None, str(exc)
    want = None
    if config.pipe.transport == TRANSPORT_LMTP and lmtp_address is not None:
        want = wiring.lmtp_nexthop(lmtp_address)
    results = postfix_results(
        main, master, bounce_domain=config.bounce_domain, milter_socket=str(config.milter_socket),
        config_path=str(Path(config.path).resolve()), pipe_user=pipe_user, transport_lookup=lookup,
        config_dir=str(postfix_dir), milter_address=address, services=all_services, queue_directory=queue,
        probe=lambda path: probe_socket(path, str(config.milter_socket)), wiring_error=wiring_error,
        overrides=overrides, transport_want=want,
    )
    if config.pipe.transport == TRANSPORT_LMTP:
        results += lmtp_results(
            main, lmtp_entry, socket_path=str(lmtp.socket), address=lmtp_address, queue_directory=queue,
            overrides=overrides, probe=lambda path: probe_socket(path, str(lmtp.socket)), answers=lmtp_answers,
            workers=lmtp.workers, max_recipients=lmtp.max_recipients, fix=lmtp_fix)
    return results


def lmtp_answers(path: str, timeout: float = 5.0) -> str | None:
    """None when an LMTP server at ``path`` greets and answers LHLO with 250 (RFC 2033 §4.1),
    else what went wrong."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            reader = sock.makefile("rb")
            greeting = reader.readline(1024)
            if not greeting.startswith(b"220"):
                return f"greeted with {greeting[:100]!r}, not 220"
            sock.sendall(b"LHLO doctor.bouncetrack\r\n")
            while True:
                line = reader.readline(1024)
                if not line.startswith(b"250"):
                    return f"answered LHLO with {line[:100]!r}"
                if line[3:4] != b"-":
                    break
            sock.sendall(b"QUIT\r\n")
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def probe_socket(path: str, milter_socket: str) -> str:
    """What lies at ``path`` (the milter socket as a Postfix daemon resolves it): the
    milter's own socket ``milter_socket`` (the very file), nothing, something else, or
    unknown (no permission to look)."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return SOCKET_MISSING
    except PermissionError:
        return SOCKET_UNKNOWN
    if not stat.S_ISSOCK(st.st_mode):
        return SOCKET_OTHER
    try:
        mine = os.stat(milter_socket)
    except PermissionError:
        return SOCKET_UNKNOWN
    except OSError:
        return SOCKET_OTHER
    return SOCKET_OURS if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino) else SOCKET_OTHER


def transport_lookup(postfix_dir: Path, maps: str, domain: str) -> str | None:
    """What transport_maps give for ``domain`` (first map with an answer), as Postfix does."""
    for m in wiring.split_list(maps):
        if m.startswith("$"):
            continue
        proc = subprocess.run(["/usr/sbin/postmap", "-c", str(postfix_dir), "-q", domain, m],
                              capture_output=True, text=True, check=False, timeout=30)
        if proc.returncode == 0 and proc.stdout.strip():
            return proc.stdout.strip()
    return None


# ---------------------------------------------------------------------------
# 4./5. pipe user, config and store access

_AS_USER = r"""
import json, os, sys
cfg, secret, db, client = sys.argv[1:5]
res = {"python": sys.executable}
try:
    import bouncetrack.bounce_pipe.main  # noqa: F401
    res["import"] = "ok"
except Exception as exc:
    res["import"] = repr(exc)
for key, path in (("config", cfg), ("secret", secret), ("client", client)):
    try:
        with open(path, "rb") as f:
            f.read(1)
        res[key] = "ok"
    except OSError as exc:
        res[key] = str(exc)
if db:
    if not os.path.exists(db):
        d = os.path.dirname(db)
        res["store"] = "missing" if os.access(d, os.X_OK) else "cannot enter directory " + d
    else:
        try:
            import sqlite3
            con = sqlite3.connect("file:" + db + "?mode=rw", uri=True, timeout=5)
            con.execute("BEGIN IMMEDIATE")
            con.rollback()
            con.close()
            res["store"] = "ok" if os.access(os.path.dirname(db), os.W_OK) else "dir-not-writable"
        except Exception as exc:
            res["store"] = str(exc)
print(json.dumps(res))
"""


def check_pipe_user(config: Config, pipe_user: str, python: str) -> list[Result]:
    try:
        pwd.getpwnam(pipe_user)
    except KeyError:
        return [Result("pipe user", FAIL, f"user {pipe_user} does not exist: pipe(8) cannot run the bounce pipe",
                       f"useradd --system --user-group --no-create-home --shell /usr/sbin/nologin {pipe_user} "
                       "(or systemd-sysusers systemd/bouncetrack.sysusers.conf)")]
    if os.geteuid() != 0:
        return [Result("pipe user", SKIP, f"{pipe_user} exists; run doctor as root to test access as that user")]
    db = config.store_url[len("sqlite:///"):] if config.store_url.startswith("sqlite:///") else ""
    from ..ops.install import default_pipe_client

    client = default_pipe_client()
    argv = ["runuser", "-u", pipe_user, "--", python, "-c", _AS_USER,
            str(Path(config.path).resolve()), str(config.secret_file), db, client]
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, env=env, cwd="/")
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [Result("pipe user", FAIL, f"cannot run {python} as {pipe_user}: {exc}", "check runuser and the interpreter")]
    try:
        res = json.loads(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return [Result("pipe user", FAIL, f"{python} does not run as {pipe_user}: "
                       f"{(proc.stderr or proc.stdout).strip()[-300:]}",
                       "the interpreter and the code must be readable by that user (a venv outside /root, "
                       "built from /usr/bin/python3)")]
    out: list[Result] = []
    if res.get("import") != "ok":
        out.append(Result("pipe user", FAIL, f"as {pipe_user}, {python} cannot import the pipe: {res.get('import')}",
                          "install bouncetrack where that user can read it (e.g. /opt/bouncetrack/venv)"))
    else:
        out.append(Result("pipe user", OK, f"{pipe_user} runs {python} and imports the pipe"))
    if res.get("client") == "ok":
        out.append(Result("pipe reads pipe client", OK, f"{client} is readable by {pipe_user}"))
    else:
        # python -S client.py exits 2 when it cannot open the file: pipe(8) would bounce the bounce.
        out.append(Result("pipe reads pipe client", FAIL, f"{pipe_user} cannot read {client}: {res.get('client')} "
                          "(pipe(8) would bounce every bounce)",
                          f"make {client} and its directories readable by {pipe_user}"))
    for key, path, what in (("config", config.path, "config file"), ("secret", config.secret_file, "VERP key")):
        if res.get(key) == "ok":
            out.append(Result(f"pipe reads {what}", OK, f"{path} is readable by {pipe_user}"))
        else:
            out.append(Result(f"pipe reads {what}", FAIL, f"{pipe_user} cannot read {path}: {res.get(key)} "
                              "(the pipe exits 75, bounces stay queued)",
                              f"make {path} and its directories readable by {pipe_user} "
                              f"({'chown ' + pipe_user + ' and mode 0600' if key == 'secret' else 'e.g. mode 0644'})"))
    if _is_postgres(config.store_url):
        pass  # check_pg_store, from doctor's own process (a network connection, not file modes)
    elif not db:
        out.append(Result("store", SKIP, f"{config.store_url.split('://')[0]} store: not checked by doctor"))
    elif res.get("store") == "ok":
        out.append(Result("store", OK, f"{db} is writable by {pipe_user}"))
    elif res.get("store") == "missing":
        out.append(Result("store", WARN, f"{db} does not exist yet", "start the milter once (it creates the store)"))
    elif res.get("store") == "dir-not-writable":
        out.append(Result("store", FAIL, f"{pipe_user} cannot write {Path(db).parent} (SQLite needs it for -wal/-shm)",
                          f"chown {pipe_user} {Path(db).parent}"))
    else:
        out.append(Result("store", FAIL, f"{pipe_user} cannot write {db}: {res.get('store')}",
                          f"chown {pipe_user}: {db}*; a locked store means a long transaction elsewhere"))
    return out


def check_store_files(config: Config) -> list[Result]:
    """The SQLite store's files and their modes (:func:`checks.store_file_results`)."""
    if not config.store_url.startswith("sqlite:///"):
        return []
    db = config.store_url[len("sqlite:///"):]
    modes: dict[str, int] = {}
    for path in (db, db + "-wal", db + "-shm"):
        try:
            modes[path] = os.stat(path).st_mode & 0o777
        except OSError:
            continue  # missing (-wal/-shm between connections, or no store yet)
    return store_file_results(modes)


def _is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def check_pg_store(config: Config) -> Result:
    """5. (PostgreSQL) the store answers and takes a write, in a rolled-back transaction.

    The connect, statement and lock timeouts are the pipe's (its store timeout at
    the configured deadline), so a server too slow for the pipe fails here too.
    """
    import math

    from ..core.redact import redact_url

    url = config.store_url
    name = redact_url(url)
    timeout = max(1.0, min(10.0, config.pipe.deadline_seconds - 1))  # as bounce_pipe.process
    try:
        import psycopg
        from psycopg import errors as pg_errors
    except ImportError as exc:
        return Result("store", FAIL, f"{name}: psycopg 3 is not installed ({exc})",
                      "pip install 'psycopg[binary]' into bouncetrack's venv")
    ms = max(1, int(timeout * 1000))
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=max(2, math.ceil(timeout)),
                               application_name="bouncetrack-doctor")
    except psycopg.Error as exc:
        return Result("store", FAIL, f"cannot connect to {name} within {timeout:g}s: {str(exc).strip()}",
                      "is the server running and reachable? check the URL, pg_hba.conf and the password")
    try:
        with conn.transaction(force_rollback=True):
            conn.execute(f"SET LOCAL statement_timeout = {ms}; SET LOCAL lock_timeout = {ms}".encode())
            if conn.execute("SELECT to_regclass('raw_reports') IS NOT NULL").fetchone() == (True,):
                conn.execute(
                    "INSERT INTO raw_reports (dedupe_key, sha256, size, compressed, received_at) "
                    "VALUES (%s, '', 0, NULL, 0)", (f"doctor-probe-{os.getpid()}",))
                return Result("store", OK, f"{name} accepts writes (probe rolled back)")
            conn.execute("CREATE TABLE bouncetrack_doctor_probe (x integer)")
        return Result("store", WARN, f"{name}: schema not created yet (the database accepts it)",
                      "start the milter once (it creates the tables)")
    except psycopg.Error as exc:
        hint = "grant the store's user INSERT/UPDATE/DELETE on bouncetrack's tables (CREATE on a fresh database)"
        if isinstance(exc, pg_errors.ReadOnlySqlTransaction):
            hint = "the URL names a read-only server (a replica?): point it at the primary"
        elif isinstance(exc, (pg_errors.LockNotAvailable, pg_errors.QueryCanceled)):
            hint = f"a write waited more than {timeout:g}s: a long transaction elsewhere holds a lock"
        return Result("store", FAIL, f"{name} refuses a write: {str(exc).strip()}", hint)
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# 6. DNS


def local_addresses() -> list[str]:
    """This host's global (non-loopback, non-link-local) addresses."""
    import ipaddress

    found: list[str] = []
    try:
        proc = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True, timeout=10, check=False)
        for iface in json.loads(proc.stdout or "[]"):
            for info in iface.get("addr_info", []):
                found.append(str(info.get("local", "")))
    except (OSError, ValueError, subprocess.TimeoutExpired):
        try:
            found = [str(i[4][0]) for i in socket.getaddrinfo(socket.gethostname(), None)]
        except OSError:
            found = []
    out = []
    for a in found:
        try:
            ip = ipaddress.ip_address(a)
        except ValueError:
            continue
        if not (ip.is_loopback or ip.is_link_local or ip.is_unspecified) and a not in out:
            out.append(a)
    return out


def check_dns(config: Config, nameserver: str | None, expect_ips: Sequence[str]) -> list[Result]:
    from ..core.resolver import parse_nameserver
    from .dnscheck import DnsPythonResolver, dns_results

    host, port = parse_nameserver(nameserver) if nameserver else (None, 53)
    expected = list(expect_ips) or local_addresses()
    return dns_results(DnsPythonResolver(host, port), config, expected, explicit_expected=bool(expect_ips))


# ---------------------------------------------------------------------------
# The command


def run_checks(config_path: str, *, postfix_dir: Path | None, pipe_user: str, python: str,
               nameserver: str | None, expect_ips: Sequence[str], dns: bool = True,
               echo: Callable[[str], None] = print) -> list[Result]:
    results: list[Result] = []

    def emit(rs: list[Result]) -> None:
        for r in rs:
            results.append(r)
            echo(r.line())

    first, config = check_config(config_path)
    emit([first])
    if config is None:
        return results
    emit(check_config_mode(config))
    emit([check_milter(config)])
    if postfix_dir is not None:
        emit(check_postfix(config, postfix_dir, pipe_user))
    emit(check_pipe_user(config, pipe_user, python))
    emit(check_store_files(config))
    if _is_postgres(config.store_url):
        emit([check_pg_store(config)])
    if dns:
        emit(check_dns(config, nameserver, expect_ips))
    return results


@click.command("doctor")
@click.option("--config", "config_file", default=DEFAULT_CONFIG_PATH, show_default=True,
              help="bouncetrack YAML configuration.")
@click.option("--postfix-dir", default="/etc/postfix", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Postfix configuration directory to check.")
@click.option("--pipe-user", default=wiring.PIPE_USER, show_default=True, help="User pipe(8) runs the bounce pipe as.")
@click.option("--python", default=sys.executable, show_default=True, help="Interpreter the pipe runs with.")
@click.option("--nameserver", default=None, help="DNS server IP[:port] (default: the system's resolvers).")
@click.option("--expect-ip", "expect_ips", multiple=True,
              help="This host's public address(es) for the MX/SPF checks (default: local addresses).")
@click.option("--no-dns", is_flag=True, help="Skip the DNS checks.")
def doctor_command(config_file: str, postfix_dir: Path, pipe_user: str, python: str, nameserver: str | None,
                   expect_ips: tuple[str, ...], no_dns: bool) -> None:
    """Check config, milter, Postfix wiring, pipe user, store and DNS.

    One line per check: OK, WARN (works, but fragile or not fully checked), FAIL (with
    how to fix it) or SKIP. Exit status 1 when anything FAILs.
    """
    results = run_checks(config_file, postfix_dir=postfix_dir, pipe_user=pipe_user, python=python,
                         nameserver=nameserver, expect_ips=expect_ips, dns=not no_dns, echo=click.echo)
    counts = {v: sum(r.verdict == v for r in results) for v in (OK, WARN, FAIL, SKIP)}
    click.echo(", ".join(f"{n} {v}" for v, n in counts.items() if n))
    raise SystemExit(exit_code(results))
