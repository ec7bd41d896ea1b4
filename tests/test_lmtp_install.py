"""`bouncetrack install --transport lmtp`, `uninstall` and doctor's LMTP checks (issue 21).

The pure rules first (plan, the socket's name through a chroot, doctor's verdicts); then
install/uninstall against real Postfix configuration directories (``postconf``, ``postfix
check``): the harness's own and Debian's packaged one. The LMTP wiring delivering through
a real Postfix: tests/test_lmtp_postfix.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bouncetrack.ops import postfix_wiring as wiring
from bouncetrack.core.config import Config
from bouncetrack.core.config_loader import load_config
from bouncetrack.doctor.checks import FAIL, OK, SOCKET_MISSING, SOCKET_OTHER, SOCKET_OURS, WARN, lmtp_results
from tests.test_install import _postconf, _snapshot, _wanted, needs_postfix, pfdir  # noqa: F401 (fixture)

QUEUE = "/var/spool/postfix"
SOCKET = f"{QUEUE}/bouncetrack/lmtp.sock"
ENTRY = "bouncelmtp unix - - y - 4 lmtp -o lmtp_send_xforward_command=yes -o lmtp_connection_cache_on_demand=yes"


def test_the_lmtp_plan_routes_to_our_own_lmtp_service_and_is_empty_once_applied() -> None:
    w = _wanted(transport="lmtp", lmtp_socket="bouncetrack/lmtp.sock", lmtp_chroot=True, lmtp_workers=8,
                lmtp_max_recipients=50)
    current = {"message_drop_headers": "bcc, return-path", "relay_domains": "", "transport_maps": ""}
    p = wiring.plan(current, None, w)
    assert set(p.main) == set(wiring.MAIN_PARAMS) | set(wiring.LMTP_MAIN_PARAMS)
    assert p.main["bouncelmtp_destination_concurrency_limit"] == "4"  # half the workers: cached connections hold the rest
    assert p.main["bouncelmtp_destination_recipient_limit"] == "50"
    assert p.lmtp_master == ENTRY and p.master is not None  # the pipe stays: a switch back is one map line
    assert p.transport_text.splitlines()[-1] == "bounce.test bouncelmtp:unix:bouncetrack/lmtp.sock"
    assert wiring.plan({**current, **p.main}, p.master, w, current_lmtp_master="  ".join(ENTRY.split(" "))).empty
    # The pipe transport writes no LMTP entry and no LMTP parameters.
    plain = wiring.plan(current, None, _wanted())
    assert plain.lmtp_master is None and not set(plain.main) & set(wiring.LMTP_MAIN_PARAMS)


def test_the_lmtp_socket_is_named_relative_to_the_queue_directory() -> None:
    assert wiring.lmtp_address(SOCKET, QUEUE, chroot=True) == "bouncetrack/lmtp.sock"
    assert wiring.lmtp_address("/run/bt/lmtp.sock", QUEUE, chroot=False) == "/run/bt/lmtp.sock"
    with pytest.raises(wiring.WiringError, match=f"{QUEUE}/run/bt/lmtp.sock"):  # where a chrooted lmtp(8) looks
        wiring.lmtp_address("/run/bt/lmtp.sock", QUEUE, chroot=True)
    assert wiring.seen_by("bouncetrack/lmtp.sock", chroot=True, queue_directory=QUEUE) == SOCKET


def _doctor(entry: str | None = ENTRY, *, probe: str = SOCKET_OURS, answer: str | None = None,
            xforward: str = "yes", concurrency: str = "4") -> dict[str, tuple[str, str]]:
    results = lmtp_results(
        {"bouncelmtp_destination_concurrency_limit": concurrency, "bouncelmtp_destination_recipient_limit": "50"},
        entry, socket_path=SOCKET, address="bouncetrack/lmtp.sock", queue_directory=QUEUE,
        overrides={"bouncelmtp/unix": {"lmtp_send_xforward_command": xforward}}, probe=lambda path: probe,
        answers=lambda path: answer, workers=8, max_recipients=50, fix="bouncetrack install")
    return {r.name: (r.verdict, r.why) for r in results}


def test_doctor_verdicts_on_the_lmtp_wiring() -> None:
    ok = _doctor()
    assert ok["LMTP socket"] == (OK, f"lmtp(8) opens {SOCKET} and the pipe server answers LHLO there")
    assert ok["postfix master.cf bouncelmtp"][0] == OK and "chrooted" in ok["postfix master.cf bouncelmtp"][1]
    assert _doctor(None)["postfix master.cf bouncelmtp"][0] == FAIL
    assert _doctor("bouncelmtp unix - - y - 4 smtp")["postfix master.cf bouncelmtp"][0] == FAIL
    assert _doctor(xforward="no")["postfix master.cf bouncelmtp"][0] == WARN  # no client address: no trust
    assert _doctor(probe=SOCKET_OTHER)["LMTP socket"][0] == FAIL
    # The very path the server listens on, but nothing there or no answer: bounces deferred.
    assert _doctor(probe=SOCKET_MISSING, answer="FileNotFoundError")["LMTP socket"][0] == FAIL
    assert "deferred" in _doctor(answer="answered LHLO with b'500'")["LMTP socket"][1]
    assert _doctor(concurrency="20")["postfix bouncelmtp_destination_concurrency_limit"][0] == WARN


@pytest.fixture()
def lmtp_config(tmp_path: Path) -> Config:
    path = tmp_path / "bt" / "config.yaml"
    path.parent.mkdir()
    path.write_text(f"bounce_domain: bounce.test\nmilter_socket: {tmp_path}/pf/spool/bouncetrack/milter.sock\n"
                    f"secret_file: {tmp_path}/bt/verp.key\nstore: sqlite:///{tmp_path}/bt/bt.db\n"
                    f"pipe:\n  transport: lmtp\n  lmtp: {{socket: {tmp_path}/pf/spool/bouncetrack/lmtp.sock, workers: 6}}\n"
                    "domains:\n  tracked.test: {tracking: true}\n")
    return load_config(path)


@needs_postfix
def test_install_lmtp_then_uninstall_restores_the_files_byte_for_byte(pfdir: Path, lmtp_config: Config) -> None:  # noqa: F811
    from bouncetrack.ops.install import install, postfix_check, uninstall

    before = _snapshot(pfdir)
    out: list[str] = []
    assert install(lmtp_config, pfdir, echo=out.append, transport="lmtp")
    assert postfix_check(pfdir)[0], postfix_check(pfdir)[1]
    # The harness's master.cf has no lmtp service: ours runs unchrooted.
    assert _postconf(pfdir, "-M", "bouncelmtp/unix").split()[:8] == ["bouncelmtp", "unix", "-", "-", "n", "-", "3", "lmtp"]
    assert _postconf(pfdir, "-h", "bouncelmtp_destination_concurrency_limit") == "3"
    q = subprocess.run(["postmap", "-c", str(pfdir), "-q", "bounce.test", f"texthash:{pfdir}/{wiring.TRANSPORT_FILE}"],
                       capture_output=True, text=True)
    assert q.stdout.strip() == "bouncelmtp:unix:bouncetrack/lmtp.sock"  # under this instance's queue directory
    assert any("bounce.test -> bouncelmtp:unix:bouncetrack/lmtp.sock" in line for line in out), out
    assert any("lmtp.sock does not exist yet: (re)start the pipe server" in line for line in out), out
    assert not install(lmtp_config, pfdir, echo=lambda s: None)  # idempotent
    assert uninstall(pfdir, echo=lambda s: None)
    assert {k: v for k, v in _snapshot(pfdir).items() if ".bouncetrack-backup-" not in k} == before


@needs_postfix
def test_switching_from_pipe_to_lmtp_and_an_edited_master_cf(pfdir: Path, lmtp_config: Config, tmp_path: Path) -> None:  # noqa: F811
    from bouncetrack.ops.install import InstallError, install, uninstall

    pipe_path = tmp_path / "bt" / "pipe.yaml"
    pipe_path.write_text(lmtp_config.path.read_text().replace("transport: lmtp", "transport: pipe"))
    pipe_config = load_config(pipe_path)
    before = _snapshot(pfdir)
    # --transport must agree with pipe.transport (the pipe server reads that one): nothing written.
    with pytest.raises(InstallError, match="pipe.transport"):
        install(pipe_config, pfdir, echo=lambda s: None, transport="lmtp")
    assert _snapshot(pfdir) == before
    assert install(pipe_config, pfdir, echo=lambda s: None)
    assert _postconf(pfdir, "-M", "bouncelmtp/unix") == ""
    assert install(lmtp_config, pfdir, echo=lambda s: None)
    assert _postconf(pfdir, "-M", "bouncelmtp/unix") != "" and _postconf(pfdir, "-M", "bouncepipe/unix") != ""
    _postconf(pfdir, "-e", "myhostname=mx2.test")  # the operator edits: no byte-for-byte restore
    subprocess.run(["postconf", "-c", str(pfdir), "-M", "-e", "extra/unix=extra unix - - n - - discard"], check=True)
    out: list[str] = []
    assert uninstall(pfdir, echo=out.append)
    assert _postconf(pfdir, "-M", "bouncelmtp/unix") == "" and _postconf(pfdir, "-M", "bouncepipe/unix") == ""
    assert _postconf(pfdir, "-M", "extra/unix") != "" and _postconf(pfdir, "-h", "myhostname") == "mx2.test"
    assert _postconf(pfdir, "-n").count("bouncelmtp") == 0


@needs_postfix
def test_a_socket_a_chrooted_lmtp_cannot_reach_is_refused_before_writing(tmp_path: Path, lmtp_config: Config) -> None:
    from bouncetrack.harness.postfix import DEBIAN_MASTER_CF, packaged_unavailable
    from bouncetrack.ops.install import install

    if packaged_unavailable():
        pytest.skip(packaged_unavailable() or "")
    etc = tmp_path / "deb"
    etc.mkdir()
    shutil.copyfile(DEBIAN_MASTER_CF, etc / "master.cf")  # lmtp unix - - y - - lmtp
    (etc / "main.cf").write_text(f"queue_directory = {tmp_path}/q\ncompatibility_level = 3.6\n")
    outside = lmtp_config.path.read_text().replace(f"socket: {tmp_path}/pf/spool/bouncetrack/lmtp.sock",
                                                   "socket: /run/bouncetrack/lmtp.sock")
    lmtp_config.path.write_text(outside.replace(f"milter_socket: {tmp_path}/pf/spool", f"milter_socket: {tmp_path}/q"))
    before = _snapshot(etc)
    with pytest.raises(wiring.WiringError, match=f"{tmp_path}/q/run/bouncetrack/lmtp.sock"):
        install(load_config(lmtp_config.path), etc, echo=lambda s: None)
    assert _snapshot(etc) == before
