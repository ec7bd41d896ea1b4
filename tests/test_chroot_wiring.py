"""Issue 15: the milter socket as a chrooted Postfix daemon sees it (install refuses, doctor FAILs).

Debian's packaged master.cf runs smtpd and cleanup chrooted in the queue directory; a
socket named ``unix:/run/bouncetrack/milter.sock`` is then looked for at
``<queue_directory>/run/bouncetrack/milter.sock`` and every message gets 451 4.7.1.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bouncetrack.ops import postfix_wiring as wiring
from bouncetrack.core.config import Config
from bouncetrack.core.config_loader import load_config
from bouncetrack.doctor.checks import FAIL, OK, SOCKET_MISSING, SOCKET_OURS, Result, SocketProbe, reach_result

OLD = "/run/bouncetrack/milter.sock"
Q = "/var/spool/postfix"

SERVICES = wiring.parse_services(
    "smtp       inet  n       -       y       -       -       smtpd\n"
    "submission inet  n       -       -       -       -       smtpd\n"
    "pickup     unix  n       -       y       60      1       pickup\n"
    "cleanup    unix  n       -       y       -       0       cleanup\n"
    "qmgr       unix  n       -       n       300     1       qmgr\n"
    "bouncepipe unix  -       n       n       -       10      pipe flags=Rq user=bouncetrack argv=/x ${recipient}\n"
)


def test_parse_services_reads_the_chroot_column() -> None:
    by_key = {s.key: s for s in SERVICES}
    assert by_key["smtp/inet"].chroot and by_key["smtp/inet"].command == "smtpd"
    assert not by_key["submission/inet"].chroot  # "-": n since Postfix 3.0
    assert by_key["cleanup/unix"].chroot and not by_key["bouncepipe/unix"].chroot


def test_socket_names_as_postfix_daemons_resolve_them() -> None:
    assert wiring.postfix_name(f"{Q}/bouncetrack/milter.sock", Q) == "bouncetrack/milter.sock"
    assert wiring.postfix_name(f"{Q}/bouncetrack/milter.sock", Q + "/") == "bouncetrack/milter.sock"
    assert wiring.postfix_name(OLD, Q) == OLD
    assert wiring.postfix_name("/var/spool/postfixx/m.sock", Q) == "/var/spool/postfixx/m.sock"
    # relative: under the queue directory, chrooted or not (the daemons' working directory)
    for chroot in (True, False):
        assert wiring.seen_by("bouncetrack/milter.sock", chroot=chroot, queue_directory=Q) == f"{Q}/bouncetrack/milter.sock"
    assert wiring.seen_by(OLD, chroot=True, queue_directory=Q) == f"{Q}{OLD}"
    assert wiring.seen_by(OLD, chroot=False, queue_directory=Q) == OLD


def test_milter_address_relative_under_the_queue_directory_else_refused_when_chrooted() -> None:
    assert wiring.milter_address(f"{Q}/bouncetrack/milter.sock", Q, SERVICES) == "bouncetrack/milter.sock"
    unjailed = [wiring.Service(s.name, s.type, False, s.command) for s in SERVICES]
    assert wiring.milter_address(OLD, Q, unjailed) == OLD
    with pytest.raises(wiring.WiringError) as err:
        wiring.milter_address(OLD, Q, SERVICES)
    text = str(err.value)
    assert "smtpd (smtp/inet)" in text and "cleanup (cleanup/unix)" in text and f"{Q}{OLD}" in text
    assert f"milter_socket: {Q}/bouncetrack/milter.sock" in text


def test_reinstall_replaces_the_unreachable_entry_an_earlier_install_wrote() -> None:
    old = f"inet:127.0.0.1:8891, {wiring.milter_entry(OLD)}, inet:127.0.0.1:9999"
    new = wiring.with_milter(old, "bouncetrack/milter.sock", replaces=[OLD])
    assert new == f"inet:127.0.0.1:8891, {wiring.milter_entry('bouncetrack/milter.sock')}, inet:127.0.0.1:9999"


def test_relay_domains_base_is_plain() -> None:
    # main.cf does not set it: Postfix's default is a compatibility-level expression
    assert wiring.relay_domains_base(None, "") == ""
    assert wiring.relay_domains_base(None, "mx.example.com, localhost") == "$mydestination"
    assert wiring.relay_domains_base("$mydestination, x.test", "whatever") == "$mydestination, x.test"


def test_reach_verdicts() -> None:
    def probe_from(present: dict[str, str]) -> SocketProbe:
        return lambda path: present.get(path, SOCKET_MISSING)

    kw: dict[str, Any] = dict(queue_directory=Q, fix="FIX")
    # the old path, chrooted smtpd: FAIL naming where smtpd looks, and the fix
    r = reach_result("smtpd_milters", OLD, SERVICES, milter_socket=OLD, probe=probe_from({OLD: SOCKET_OURS}), **kw)
    assert r.verdict == FAIL and f"{Q}{OLD}" in r.why and "451 4.7.1" in r.why and r.fix == "FIX"
    # the relative name: every smtpd (chrooted or not) opens the same file
    sock = f"{Q}/bouncetrack/milter.sock"
    r = reach_result("smtpd_milters", "bouncetrack/milter.sock", SERVICES, milter_socket=sock,
                     probe=probe_from({sock: SOCKET_OURS}), **kw)
    assert r.verdict == OK and "smtp/inet chrooted" in r.why and "submission/inet" in r.why
    # the very path the milter listens on, milter down: not this check's FAIL ("milter socket" has it)
    r = reach_result("non_smtpd_milters", "bouncetrack/milter.sock", SERVICES, milter_socket=sock,
                     probe=probe_from({}), **kw)
    assert r.verdict == OK


# --- a real Postfix config directory with Debian's chroot column -----------------------------


def _root_postfix() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.exists("/usr/sbin/postconf"):
        return "Postfix is not installed"
    return None


needs_postfix = pytest.mark.skipif(_root_postfix() is not None, reason=_root_postfix() or "")


def _chrooted_instance(tmp_path: Path) -> tuple[Path, Path]:
    """A private config dir whose smtpd and cleanup run chrooted, as Debian ships them."""
    from bouncetrack.harness.postfix import PrivatePostfix

    pf = PrivatePostfix(tmp_path / "pf", routes={"remote.test": "smtp:[127.0.0.1]:2526"})
    pf.write()
    for key in (f"{pf.host}:{pf.port}/inet", "cleanup/unix"):
        subprocess.run(["postconf", "-c", str(pf.config_dir), "-F", "-e", f"{key}/chroot=y"], check=True)
    return pf.config_dir, pf.queue_dir


def _config(tmp_path: Path, sock: str) -> Config:
    path = tmp_path / "config.yaml"
    path.write_text(f"bounce_domain: bounce.test\nmilter_socket: {sock}\nsecret_file: {tmp_path}/k\n"
                    f"store: sqlite:///{tmp_path}/bt.db\n")
    return load_config(path)


def _installed_under_the_queue(tmp_path: Path) -> tuple[Path, Path, Config]:
    """A chrooted instance with our milter socket's directory under its queue directory, installed."""
    from bouncetrack.ops.install import install

    config_dir, queue = _chrooted_instance(tmp_path)
    sock = queue / "bouncetrack" / "milter.sock"
    sock.parent.mkdir(parents=True)
    config = _config(tmp_path, str(sock))
    install(config, config_dir, echo=lambda s: None)
    return config_dir, sock, config


def _by_name(results: list[Result]) -> dict[str, Result]:
    return {r.name: r for r in results}


@needs_postfix
def test_doctor_fails_on_the_old_socket_path_in_a_chrooted_master_cf(tmp_path: Path) -> None:
    from bouncetrack.doctor.cli import check_postfix
    from bouncetrack.ops.install import InstallError, install

    config_dir, queue = _chrooted_instance(tmp_path)
    config = _config(tmp_path, OLD)
    # What an install before issue 15 wrote, on a Debian master.cf.
    entry = wiring.milter_entry(OLD)
    subprocess.run(["postconf", "-c", str(config_dir), "-e", f"smtpd_milters={entry}", f"non_smtpd_milters={entry}"],
                   check=True)
    rs = _by_name(check_postfix(config, config_dir, "bouncetrack"))
    for param, who in (("smtpd_milters", "smtpd"), ("non_smtpd_milters", "cleanup (cleanup/unix chrooted")):
        r = rs[f"postfix {param} chroot"]
        assert r.verdict == FAIL, r.line()
        assert who in r.why and f"{queue}{OLD}" in r.why and "451 4.7.1" in r.why, r.line()
        # the fix names the socket to configure and the install to re-run
        assert f"milter_socket: {queue}/bouncetrack/milter.sock" in r.fix, r.line()
    # install refuses that configuration with the same explanation, and writes nothing
    before = (config_dir / "main.cf").read_bytes()
    with pytest.raises((InstallError, wiring.WiringError)) as err:
        install(config, config_dir, echo=lambda s: None)
    assert f"milter_socket: {queue}/bouncetrack/milter.sock" in str(err.value)
    assert (config_dir / "main.cf").read_bytes() == before
    # the command: exit 1, the explanation, nothing written
    from click.testing import CliRunner

    from bouncetrack.cli import build_cli

    cli = CliRunner().invoke(build_cli(), ["install", "--postfix-dir", str(config_dir), "--config", str(config.path)])
    assert cli.exit_code == 1 and "chrooted" in cli.output and f"{queue}/bouncetrack/milter.sock" in cli.output, cli.output
    assert (config_dir / "main.cf").read_bytes() == before
    assert not list(config_dir.glob("*.bouncetrack-backup-*"))


@needs_postfix
def test_install_names_the_socket_relative_to_the_queue_directory_and_doctor_agrees(tmp_path: Path) -> None:
    from bouncetrack.doctor.cli import check_postfix

    config_dir, sock, config = _installed_under_the_queue(tmp_path)
    out = subprocess.run(["postconf", "-c", str(config_dir), "-h", "smtpd_milters", "non_smtpd_milters", "relay_domains"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[:2] == [wiring.milter_entry("bouncetrack/milter.sock")] * 2
    assert out[2] == "remote.test, bounce.test"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock))
    try:
        rs = _by_name(check_postfix(config, config_dir, "bouncetrack"))
    finally:
        listener.close()
    for param in ("smtpd_milters", "non_smtpd_milters"):
        assert rs[f"postfix {param}"].verdict == OK, rs[f"postfix {param}"].line()
        assert rs[f"postfix {param} chroot"].verdict == OK, rs[f"postfix {param} chroot"].line()
        assert str(sock) in rs[f"postfix {param} chroot"].why
    assert rs["postfix relay_domains"].verdict == OK


@needs_postfix
def test_doctor_warns_about_a_service_that_overrides_the_milters_without_ours(tmp_path: Path) -> None:
    from bouncetrack.doctor.cli import check_postfix

    config_dir, _, config = _installed_under_the_queue(tmp_path)
    ours = wiring.milter_entry("bouncetrack/milter.sock")
    for key, override in (("submission/inet", "inet:127.0.0.1:8891"), ("smtps/inet", ours)):
        name = key.split("/")[0]
        subprocess.run(["postconf", "-c", str(config_dir), "-M", "-e",
                        f"{key}={name} inet n - y - - smtpd -o smtpd_milters={override.replace(' ', '')}"],
                       check=True)
    rs = _by_name(check_postfix(config, config_dir, "bouncetrack"))
    r = rs["postfix submission/inet smtpd_milters"]
    assert r.verdict == "WARN" and "not tracked" in r.why and "inet:127.0.0.1:8891" in r.why, r.line()
    assert "postfix smtps/inet smtpd_milters" not in rs  # its own list includes ours


@needs_postfix
def test_install_replaces_an_absolute_entry_of_our_socket_by_the_relative_name(tmp_path: Path) -> None:
    from bouncetrack.ops.install import install

    config_dir, queue = _chrooted_instance(tmp_path)
    sock = queue / "bouncetrack" / "milter.sock"
    config = _config(tmp_path, str(sock))
    # Written by hand (or by an install before issue 15): unreachable for the chrooted smtpd.
    subprocess.run(["postconf", "-c", str(config_dir), "-e",
                    f"smtpd_milters=inet:127.0.0.1:8891, {wiring.milter_entry(str(sock))}"], check=True)
    install(config, config_dir, echo=lambda s: None)
    out = subprocess.run(["postconf", "-c", str(config_dir), "-h", "smtpd_milters"], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == f"inet:127.0.0.1:8891, {wiring.milter_entry('bouncetrack/milter.sock')}"
