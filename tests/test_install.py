"""`bouncetrack install` / `uninstall` (issue 6) and the systemd units.

Pure rules of bouncetrack.ops.postfix_wiring first; then install/uninstall against a real
Postfix config directory written by the harness's PrivatePostfix (needs root and
Postfix; `postfix check` must pass after install); then `systemd-analyze verify`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from bouncetrack.ops import postfix_wiring as wiring
from bouncetrack.core.config import Config
from bouncetrack.core.config_loader import load_config

CHECKOUT = Path(__file__).resolve().parent.parent
SOCK = "/run/bouncetrack/milter.sock"
OURS = wiring.milter_entry(SOCK)


# --- pure --------------------------------------------------------------------------


def test_split_list_keeps_brace_groups() -> None:
    v = "inet:127.0.0.1:8891,{ unix:/a/b, default_action=accept }  unix:/c"
    assert wiring.split_list(v) == ["inet:127.0.0.1:8891", "{ unix:/a/b, default_action=accept }", "unix:/c"]
    assert wiring.split_list("") == []


def test_our_milter_is_appended_never_replacing_the_operators() -> None:
    assert wiring.with_milter("", SOCK) == OURS
    assert wiring.with_milter("inet:127.0.0.1:8891", SOCK) == f"inet:127.0.0.1:8891, {OURS}"
    once = wiring.with_milter("inet:127.0.0.1:8891 unix:/x", SOCK)
    assert wiring.with_milter(once, SOCK) == once  # idempotent
    # a plain entry for our socket is normalised in place, not duplicated
    assert wiring.with_milter(f"unix:{SOCK}, inet:[::1]:1", SOCK) == f"{OURS}, inet:[::1]:1"
    assert wiring.without_milter(once, SOCK) == "inet:127.0.0.1:8891, unix:/x"


def test_our_milter_entry_tempfails_and_speaks_protocol_6_whatever_the_globals() -> None:
    eff = wiring.effective_milter_settings(OURS, {"milter_default_action": "accept", "milter_protocol": "2"})
    assert eff == {"default_action": "tempfail", "protocol": "6"}
    assert wiring.effective_milter_settings(f"unix:{SOCK}", {"milter_default_action": "accept"})["default_action"] == "accept"


def test_drop_headers_and_relay_domains() -> None:
    assert wiring.drop_headers_without_return_path("bcc, content-length, resent-bcc, return-path") == \
        "bcc, content-length, resent-bcc"
    assert wiring.drop_headers_without_return_path("Return-Path") == ""
    # the effective default of old compatibility levels is kept literally
    assert wiring.with_item("$mydestination", "bounce.test") == "$mydestination, bounce.test"
    assert wiring.with_item("Bounce.Test", "bounce.test") == "Bounce.Test"
    assert wiring.with_item("hash:/x", "texthash:/ours", first=True) == "texthash:/ours, hash:/x"


def _wanted(**kw: object) -> wiring.Wanted:
    base: dict[str, object] = dict(bounce_domain="bounce.test", milter_socket=SOCK, config_path="/etc/bouncetrack/config.yaml",
                                   bouncetrack_bin="/opt/bouncetrack/venv/bin/bouncetrack", config_dir="/etc/postfix",
                                   size_limit=10240000)
    base.update(kw)
    return wiring.Wanted(**base)  # type: ignore[arg-type]


def test_plan_is_empty_once_applied() -> None:
    w = _wanted()
    current = {"smtpd_milters": "inet:127.0.0.1:8891", "message_drop_headers": "bcc, content-length, resent-bcc, return-path",
               "relay_domains": "", "transport_maps": ""}
    p = wiring.plan(current, None, w)
    assert set(p.main) == set(wiring.MAIN_PARAMS)
    assert p.master is not None and "user=bouncetrack" in p.master and "size=10240000" in p.master
    assert p.master.endswith("argv=/opt/bouncetrack/venv/bin/bouncetrack pipe --config /etc/bouncetrack/config.yaml "
                             "--client-address=${client_address} ${recipient} ${sender}")
    after = {**current, **p.main}
    # postconf -M prints the entry with its own spacing: still "the same"
    assert wiring.plan(after, "  ".join(p.master.split(" ")), w).empty


def test_master_entry_starts_the_pipe_client_as_install_writes_it() -> None:
    client = "/opt/bouncetrack/src/bouncetrack/bounce_pipe/client.py"
    assert wiring.master_entry(_wanted(pipe_client=client)).endswith(
        f"argv=/opt/bouncetrack/venv/bin/python -S {client} --socket /run/bouncetrack-pipe/pipe.sock "
        "--config /etc/bouncetrack/config.yaml --client-address=${client_address} ${recipient} ${sender}")
    with pytest.raises(wiring.WiringError):
        wiring.master_entry(_wanted(pipe_client="/opt/my dir/client.py"))
    from bouncetrack.ops.install import default_pipe_client

    assert Path(default_pipe_client()).is_file()  # the installed package's own client


def test_master_entry_refuses_paths_pipe_cannot_quote() -> None:
    with pytest.raises(wiring.WiringError):
        wiring.master_entry(_wanted(config_path="/etc/my config.yaml"))


def test_revert_value_keeps_the_operators_later_edits() -> None:
    w = _wanted()
    installed = f"inet:1, {OURS}"
    assert wiring.revert_value("smtpd_milters", installed, installed, "inet:1", w) == "inet:1"
    assert wiring.revert_value("smtpd_milters", installed, installed, None, w) is None
    assert wiring.revert_value("smtpd_milters", f"{installed}, inet:2", installed, "inet:1", w) == "inet:1, inet:2"
    assert wiring.revert_value("relay_domains", "a.test, bounce.test, b.test", "a.test, bounce.test", "a.test", w) == \
        "a.test, b.test"


# --- against a real Postfix config directory -------------------------------------------


def _postfix_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (postconf/postfix check on a private config directory)"
    if not os.path.exists("/usr/sbin/postconf"):
        return "Postfix is not installed (run ./scripts/bootstrap)"
    return None


needs_postfix = pytest.mark.skipif(_postfix_unavailable() is not None, reason=_postfix_unavailable() or "")


@pytest.fixture()
def pfdir(tmp_path: Path) -> Path:
    """A private Postfix config dir that already has an operator milter and transport map."""
    from bouncetrack.harness.postfix import PrivatePostfix

    pf = PrivatePostfix(tmp_path / "pf", routes={"remote.test": "smtp:[127.0.0.1]:2526"},
                        extra={"smtpd_milters": "inet:127.0.0.1:8891", "milter_default_action": "accept"})
    pf.write()
    return pf.config_dir


@pytest.fixture()
def config(tmp_path: Path) -> Config:
    path = tmp_path / "bt" / "config.yaml"
    path.parent.mkdir()
    path.write_text(f"bounce_domain: bounce.test\nmilter_socket: {tmp_path}/run/milter.sock\n"
                    f"secret_file: {tmp_path}/bt/verp.key\nstore: sqlite:///{tmp_path}/bt/bt.db\n"
                    "domains:\n  tracked.test: {tracking: true}\n")
    return load_config(path)


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def _postconf(d: Path, *args: str) -> str:
    return subprocess.run(["postconf", "-c", str(d), *args], capture_output=True, text=True, check=True).stdout.strip()


@needs_postfix
def test_install_wires_everything_and_postfix_check_passes(pfdir: Path, config: Config) -> None:
    from bouncetrack.ops.install import install, postfix_check

    out: list[str] = []
    assert install(config, pfdir, bouncetrack_bin="/opt/bouncetrack/venv/bin/bouncetrack", echo=out.append)
    assert postfix_check(pfdir)[0]
    sock = config.milter_socket
    assert _postconf(pfdir, "-h", "smtpd_milters") == f"inet:127.0.0.1:8891, {wiring.milter_entry(str(sock))}"
    assert _postconf(pfdir, "-h", "non_smtpd_milters") == wiring.milter_entry(str(sock))
    # the operator's global setting for *their* milter is untouched
    assert _postconf(pfdir, "-h", "milter_default_action") == "accept"
    assert "return-path" not in _postconf(pfdir, "-h", "message_drop_headers")
    assert _postconf(pfdir, "-h", "relay_domains") == "remote.test, bounce.test"
    assert _postconf(pfdir, "-h", "transport_maps").startswith(f"texthash:{pfdir}/{wiring.TRANSPORT_FILE}, ")
    assert _postconf(pfdir, "-h", "bouncepipe_destination_recipient_limit") == "1"
    entry = _postconf(pfdir, "-M", "bouncepipe/unix").split()
    assert entry[:8] == ["bouncepipe", "unix", "-", "n", "n", "-", "10", "pipe"]
    assert "user=bouncetrack" in entry and f"--config" in entry and str(config.path) in entry
    # the transport lookup Postfix itself will do
    q = subprocess.run(["postmap", "-c", str(pfdir), "-q", "bounce.test", f"texthash:{pfdir}/{wiring.TRANSPORT_FILE}"],
                       capture_output=True, text=True)
    assert q.stdout.strip() == "bouncepipe:"
    assert len(list(pfdir.glob("main.cf.bouncetrack-backup-*"))) == 1


@needs_postfix
def test_dry_run_prints_the_diff_and_writes_nothing(pfdir: Path, config: Config) -> None:
    from bouncetrack.ops.install import install

    before = _snapshot(pfdir)
    out: list[str] = []
    assert install(config, pfdir, dry_run=True, echo=out.append)
    text = "\n".join(out)
    assert "+relay_domains = remote.test, bounce.test" in text and "+bouncepipe unix" in text
    assert f"+bounce.test {wiring.SERVICE}:" in text
    assert _snapshot(pfdir) == before


@needs_postfix
def test_install_twice_changes_nothing_and_uninstall_restores_bytes(pfdir: Path, config: Config) -> None:
    from bouncetrack.ops.install import install, uninstall

    before = _snapshot(pfdir)
    assert install(config, pfdir, echo=lambda s: None)
    after_first = _snapshot(pfdir)
    out: list[str] = []
    assert not install(config, pfdir, echo=out.append)
    assert "nothing to change" in out[0]
    assert _snapshot(pfdir) == after_first  # no second backup, nothing rewritten
    assert uninstall(pfdir, echo=lambda s: None)
    restored = {k: v for k, v in _snapshot(pfdir).items() if ".bouncetrack-backup-" not in k}
    assert restored == before
    assert not uninstall(pfdir, echo=lambda s: None)  # nothing left to undo


@needs_postfix
def test_uninstall_after_operator_edits_removes_only_ours(pfdir: Path, config: Config) -> None:
    from bouncetrack.ops.install import install, postfix_check, uninstall

    before = _postconf(pfdir, "-n")
    install(config, pfdir, echo=lambda s: None)
    ours = wiring.milter_entry(str(config.milter_socket))
    _postconf(pfdir, "-e", f"smtpd_milters=inet:127.0.0.1:8891, {ours}, inet:127.0.0.1:9999", "myhostname=mx2.test")
    subprocess.run(["postconf", "-c", str(pfdir), "-M", "-e", "extra/unix=extra unix - - n - - discard"], check=True)
    out: list[str] = []
    uninstall(pfdir, echo=out.append)
    assert any("changed since install" in line for line in out)
    want = before.replace("myhostname = mx.harness.test", "myhostname = mx2.test").replace(
        "smtpd_milters = inet:127.0.0.1:8891", "smtpd_milters = inet:127.0.0.1:8891, inet:127.0.0.1:9999")
    assert sorted(_postconf(pfdir, "-n").splitlines()) == sorted(want.splitlines())
    assert _postconf(pfdir, "-M", "bouncepipe/unix") == ""
    assert _postconf(pfdir, "-M", "extra/unix") != ""
    assert not (pfdir / wiring.TRANSPORT_FILE).exists() and not (pfdir / wiring.STATE_FILE).exists()
    assert postfix_check(pfdir)[0]


@needs_postfix
def test_hash_map_is_postmapped_and_removed(pfdir: Path, config: Config) -> None:
    from bouncetrack.ops.install import install, postfix_check, uninstall

    install(config, pfdir, map_type="hash", echo=lambda s: None)
    assert (pfdir / f"{wiring.TRANSPORT_FILE}.db").exists()
    assert _postconf(pfdir, "-h", "transport_maps").startswith(f"hash:{pfdir}/{wiring.TRANSPORT_FILE}")
    assert postfix_check(pfdir)[0]
    uninstall(pfdir, echo=lambda s: None)
    assert not (pfdir / f"{wiring.TRANSPORT_FILE}.db").exists()


@needs_postfix
def test_cli_install_and_uninstall(pfdir: Path, config: Config) -> None:
    from click.testing import CliRunner

    from bouncetrack.cli import build_cli

    runner = CliRunner()
    r = runner.invoke(build_cli(), ["install", "--postfix-dir", str(pfdir), "--config", str(config.path), "--dry-run"])
    assert r.exit_code == 0, r.output
    assert "dry run: nothing written" in r.output
    r = runner.invoke(build_cli(), ["install", "--postfix-dir", str(pfdir), "--config", str(config.path)])
    assert r.exit_code == 0 and "postfix check: ok" in r.output, r.output
    r = runner.invoke(build_cli(), ["uninstall", "--postfix-dir", str(pfdir)])
    assert r.exit_code == 0 and "restored byte for byte" in r.output, r.output
    r = runner.invoke(build_cli(), ["install", "--postfix-dir", str(pfdir / "nope"), "--config", str(config.path)])
    assert r.exit_code == 1 and "not a Postfix config directory" in r.output


# --- systemd units ------------------------------------------------------------------------

UNITS = sorted((CHECKOUT / "systemd").glob("*.service"))


def test_units_exist_with_hardening() -> None:
    names = {u.name for u in UNITS}
    assert {"bouncetrack-milter.service", "bouncetrack-api.service", "bouncetrack-worker.service"} <= names
    for unit in UNITS:
        text = unit.read_text()
        for line in ("User=bouncetrack", "ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes",
                     "CapabilityBoundingSet=", "SystemCallFilter=@system-service"):
            assert f"\n{line}" in text, f"{unit.name}: {line}"
    milter = (CHECKOUT / "systemd" / "bouncetrack-milter.service").read_text()
    # The socket directory under Postfix's queue directory (a chrooted smtpd sees it),
    # created before any sandboxed step, and where the default config puts the socket.
    from bouncetrack.core.config_loader import DEFAULT_MILTER_SOCKET

    pre = [line for line in milter.splitlines() if line.startswith("ExecStartPre=")]
    assert pre[0] == f"ExecStartPre=+/usr/bin/install -d -o bouncetrack -g postfix -m 0750 {Path(DEFAULT_MILTER_SOCKET).parent}"
    assert f" {Path(DEFAULT_MILTER_SOCKET).parent} " in milter.split("\nReadWritePaths=")[1].splitlines()[0] + " "
    assert not any(line.startswith("RuntimeDirectory") for line in milter.splitlines())
    assert "CacheDirectory=bouncetrack" in milter


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart= exists: point the units at this venv's program.
    program = Path(os.environ.get("VIRTUAL_ENV", "/opt/bouncetrack/venv")) / "bin" / "bouncetrack"
    if not program.exists():
        pytest.skip(f"{program} does not exist")
    copies = []
    for unit in UNITS:
        dst = tmp_path / unit.name
        dst.write_text(unit.read_text().replace("/opt/bouncetrack/venv/bin/bouncetrack", str(program)))
        copies.append(str(dst))
    proc = subprocess.run(["systemd-analyze", "verify", *copies], capture_output=True, text=True)
    problems = [line for line in (proc.stderr + proc.stdout).splitlines()
                if "bouncetrack" in line or "Unknown" in line or "Failed" in line]
    assert proc.returncode == 0 and not problems, proc.stderr + proc.stdout


# --- end to end: a Postfix wired only by `install` tracks mail and pipes bounces -------------


@pytest.mark.postfix
def test_installed_wiring_tracks_and_pipes_through_real_postfix(make_stack: object) -> None:
    import sqlite3
    from typing import Any

    from bouncetrack.ops.install import install, uninstall
    from bouncetrack.core.tokens import load_keyring, mint, new_token_id, verp_address

    program = "/opt/bouncetrack/venv/bin/bouncetrack"
    if not os.path.exists(program):
        pytest.skip(f"{program} does not exist")
    st: Any = make_stack(with_milter=True, pipe="real")  # type: ignore[operator]
    pf = st.postfix
    # Strip the harness's own wiring: no milter, no bounce pipe, no route for the bounce domain.
    pf.milter_socket, pf.pipe_argv = None, None
    pf.routes = {k: v for k, v in pf.routes.items() if k != st.bounce_domain}
    pf.write()
    assert "bouncepipe" not in pf.postconf("-M")
    config = load_config(st.config_path)
    install(config, pf.config_dir, bouncetrack_bin=program, echo=lambda s: None)
    pf.reload()

    r = st.send("info@tracked.test", ["unknown-e2e@remote.test"])
    assert r.accepted, r

    def event() -> Any:
        if not st.db_path.exists():
            return None
        db = sqlite3.connect(st.db_path, timeout=10)
        try:
            return db.execute("SELECT token_status, recipient, type FROM events").fetchall() or None
        except sqlite3.OperationalError:
            return None
        finally:
            db.close()

    rows = st.wait_for(event, 40, flush_every=2.0)
    assert rows == [("valid", "unknown-e2e@remote.test", "bounce")]
    # pipe(8) logs the delivery after the pipe has exited: the row can be there first.
    assert st.wait_for(lambda: "relay=bouncepipe" in pf.log_text() or None, 20)

    good = verp_address(config, mint(load_keyring(config, create=False), new_token_id()))
    forged = good[:2] + ("a" if good[2] != "a" else "b") + good[3:]
    r = st.send("", [forged, f"fbl@{config.bounce_domain}"])
    assert r.rcpts[forged][0] == 550 and r.rcpts[f"fbl@{config.bounce_domain}"][0] == 250

    uninstall(pf.config_dir, echo=lambda s: None)
    assert "bouncepipe" not in pf.postconf("-M")
