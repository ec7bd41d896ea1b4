"""Issue 15: bouncetrack on the distribution's own Postfix configuration, chroot on.

The harness builds a private instance from Debian's packaged ``main.cf.debian`` (plus what
its postinst sets) and ``master.cf.dist`` (``smtp inet n - y``: smtpd, cleanup and most
daemons chrooted into the queue directory), populates the chroot with Debian's own
``configure-instance.sh``, and lets ``bouncetrack install`` wire milter, pipe and
transport, as an operator would (``Stack(postfix_config="debian")``). Then real SMTP:
tracked and untracked mail is delivered, a bounce from the fake MX is tracked end to end
(stored, forwarded to a webhook receiver that verifies the signature), and ``uninstall``
gives back both packaged files byte for byte.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from bouncetrack.ops import postfix_wiring as wiring
from bouncetrack.harness.postfix import packaged_unavailable
from bouncetrack.harness.stack import REMOTE, TRACKED, UNTRACKED, Stack
from bouncetrack.harness.webhook_receiver import WebhookReceiver

from .conftest import harness_unavailable

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

pytestmark = pytest.mark.postfix


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET) as rx:
        yield rx


@pytest.fixture(scope="module")
def own_stack(receiver: WebhookReceiver) -> Iterator[Stack]:
    reason = harness_unavailable() or packaged_unavailable()
    if reason:
        pytest.skip(reason)
    domains = {TRACKED: {"tracking": True, "webhook": {"url": receiver.url, "secret": SECRET}}}
    with Stack(postfix_config="debian", pipe="real", domains=domains) as st:
        yield st


def _chrooted_pids(queue_dir: Path, daemon: str) -> list[int]:
    """Live processes of ``daemon`` whose root directory is the queue directory."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.readlink(proc / "exe") == f"/usr/lib/postfix/sbin/{daemon}" and \
                    os.readlink(proc / "root") == str(queue_dir):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _events(db: Path) -> list[tuple[Any, ...]]:
    if not db.exists():
        return []
    con = sqlite3.connect(db, timeout=10)
    try:
        return con.execute("SELECT token_status, recipient, type, hard, queue_id FROM events ORDER BY id").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def test_packaged_config_is_chrooted_and_installed_relative_to_the_queue_directory(own_stack: Stack) -> None:
    st = own_stack
    pf = st.postfix
    # The files as packaged: master.cf.dist, smtp renamed to the private port only.
    assert st.packaged_files["master.cf"].decode().replace(f"{pf.host}:{pf.port}", "smtp", 1) \
        == Path("/usr/share/postfix/master.cf.dist").read_text()
    chroot = pf.postconf("-Fh", f"{pf.host}:{pf.port}/inet/chroot", "cleanup/unix/chroot").split()
    assert chroot == ["y", "y"]
    # What install wrote: the socket relative to the queue directory, a plain relay_domains.
    entry = wiring.milter_entry("bouncetrack/milter.sock")
    assert pf.postconf("-h", "smtpd_milters", "non_smtpd_milters").splitlines() == [entry, entry]
    assert pf.postconf("-h", "relay_domains").strip() == st.bounce_domain
    assert st.milter_socket == pf.queue_dir / "bouncetrack" / "milter.sock"
    # The chroot was populated by Debian's configure-instance.sh.
    for name in ("etc/hosts", "etc/resolv.conf", "etc/services", "etc/nsswitch.conf"):
        assert (pf.queue_dir / name).is_file(), name


def test_tracked_and_untracked_mail_and_a_bounce_end_to_end(own_stack: Stack, receiver: WebhookReceiver) -> None:
    st = own_stack
    r = st.send(f"news@{TRACKED}", [f"unknown-deb@{REMOTE}", f"ok-deb@{REMOTE}"])
    assert r.accepted and r.queue_id is not None, (r, st.logs())
    queue_id = r.queue_id
    u = st.send(f"info@{UNTRACKED}", [f"ok2-deb@{REMOTE}"])
    assert u.accepted, (u, st.logs())
    # Accepted by a chrooted smtpd (no 451 4.7.1: it reached the milter through the chroot).
    assert _chrooted_pids(st.postfix.queue_dir, "smtpd"), "no chrooted smtpd"
    assert "connect to Milter service" not in st.postfix.log_text()

    # Delivered: the tracked one with the VERP sender, the untracked one untouched.
    wanted = (f"ok-deb@{REMOTE}", f"ok2-deb@{REMOTE}")

    def senders_of(mx: Any) -> dict[str, str] | None:
        got = {t.accepted[0]: t.mail_from for t in mx.delivered() if t.accepted and t.accepted[0] in wanted}
        return got if len(got) == 2 else None

    senders = st.fakemx.wait_for(senders_of, 30)
    assert senders[f"ok-deb@{REMOTE}"].startswith("b+") and senders[f"ok-deb@{REMOTE}"].endswith(f"@{st.bounce_domain}")
    assert senders[f"ok2-deb@{REMOTE}"] == f"info@{UNTRACKED}"

    # The fake MX refused unknown-deb: Postfix's DSN goes to the VERP address, pipe(8) runs
    # the pipe client, the pipe server stores it, attributed.
    rows = st.wait_for(lambda: _events(st.db_path) or None, 40)
    assert rows == [("valid", f"unknown-deb@{REMOTE}", "bounce", 1, queue_id)], rows
    assert st.wait_for(lambda: "relay=bouncepipe" in st.postfix.log_text() or None, 20)
    assert "status=sent (delivered via bouncepipe service" in st.postfix.log_text()
    # ... through the pipe server (pipe(8) is not chrooted: the client reached its socket),
    # not the client's fallback: the server logged the bounce after its start line.
    server_log = st.pipe_server_log.read_text().splitlines()
    started = max(i for i, line in enumerate(server_log) if "listening on" in line)
    assert server_log[started + 1:], server_log

    # Forwarded: the worker delivers the event to the webhook, signed.
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.run([sys.executable, "-m", "bouncetrack", "worker", "--once", "--config", str(st.config_path)],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert receiver.wait_for(1, 20), proc.stderr
    body = receiver.accepted()[0].json()
    assert receiver.accepted()[0].verified
    assert f"unknown-deb@{REMOTE}" in str(body) and queue_id in str(body)


def test_doctor_sees_the_socket_through_the_chroot(own_stack: Stack) -> None:
    from bouncetrack.core.config_loader import load_config
    from bouncetrack.doctor.cli import check_postfix

    st = own_stack
    rs = {r.name: r for r in check_postfix(load_config(st.config_path), st.postfix.config_dir, st.user)}
    for param in ("smtpd_milters", "non_smtpd_milters"):
        r = rs[f"postfix {param} chroot"]
        assert r.verdict == "OK" and "chrooted in" in r.why and str(st.milter_socket) in r.why, r.line()
    # pipe(8) unchrooted (a WARN here only says the harness staged its own pipe client)
    assert rs["postfix master.cf bouncepipe"].verdict != "FAIL", rs["postfix master.cf bouncepipe"].line()


def test_milter_down_postfix_tempfails_and_the_api_probe_says_so(own_stack: Stack, tmp_path: Path) -> None:
    """The outage the alert is for: all mail 451 4.7.1, the milter's own metrics gone, and
    the API's /metrics (bouncetrack_milter_up) telling it."""
    from fastapi.testclient import TestClient

    from bouncetrack.api.app import create_app
    from bouncetrack.core.config_loader import load_config

    st = own_stack
    config = load_config(st.config_path)

    def milter_up() -> float:
        os.environ["BOUNCETRACK_CACHE_DIR"] = str(tmp_path)
        try:
            with TestClient(create_app(config)) as client:
                text = client.get("/metrics").text
        finally:
            del os.environ["BOUNCETRACK_CACHE_DIR"]
        line = next(x for x in text.splitlines() if x.startswith("bouncetrack_milter_up "))
        return float(line.split()[1])

    assert milter_up() == 1.0
    st.stop_milter()
    try:
        r = st.send(f"info@{UNTRACKED}", [f"ok3-deb@{REMOTE}"])
        assert not r.accepted and any(code == 451 for code in r.codes), r
        assert milter_up() == 0.0
    finally:
        st.start_milter()
    assert milter_up() == 1.0
    assert st.send(f"info@{UNTRACKED}", [f"ok4-deb@{REMOTE}"]).accepted


def test_uninstall_gives_back_the_packaged_files_byte_for_byte(own_stack: Stack) -> None:
    from bouncetrack.ops.install import uninstall

    st = own_stack
    etc = st.postfix.config_dir
    assert (etc / "main.cf").read_bytes() != st.packaged_files["main.cf"]
    assert uninstall(etc, echo=lambda s: None)
    for name in ("main.cf", "master.cf"):
        assert (etc / name).read_bytes() == st.packaged_files[name], name
    assert not (etc / wiring.TRANSPORT_FILE).exists()


def test_the_issue_15_outage_reproduced_diagnosed_and_repaired() -> None:
    """The milter named by an absolute path, as before issue 15: the chrooted smtpd cannot
    reach it, every message gets 451 4.7.1 while the milter runs; doctor FAILs naming the
    path smtpd looked at; ``install`` again puts the relative name in its place."""
    from bouncetrack.core.config_loader import load_config
    from bouncetrack.doctor.cli import check_postfix

    reason = harness_unavailable() or packaged_unavailable()
    if reason:
        pytest.skip(reason)
    with Stack(postfix_config="debian", pipe="real") as st:
        pf = st.postfix
        absolute = wiring.milter_entry(str(st.milter_socket))
        pf.postconf("-e", f"smtpd_milters={absolute}", f"non_smtpd_milters={absolute}")
        pf.reload()
        r = st.send(f"info@{UNTRACKED}", [f"ok5-deb@{REMOTE}"])
        assert not r.accepted and any(code == 451 for code in r.codes), r
        assert st.wait_for(lambda: "connect to Milter service" in pf.log_text() or None, 10)
        config = load_config(st.config_path)
        rs = {x.name: x for x in check_postfix(config, pf.config_dir, st.user)}
        fail = rs["postfix smtpd_milters chroot"]
        assert fail.verdict == "FAIL" and f"{pf.queue_dir}{st.milter_socket}" in fail.why, fail.line()
        assert st.run_install()
        entry = wiring.milter_entry("bouncetrack/milter.sock")
        assert pf.postconf("-h", "smtpd_milters", "non_smtpd_milters").splitlines() == [entry, entry]
        pf.reload()
        assert st.send(f"info@{UNTRACKED}", [f"ok6-deb@{REMOTE}"]).accepted
        rs = {x.name: x for x in check_postfix(config, pf.config_dir, st.user)}
        assert rs["postfix smtpd_milters chroot"].verdict == "OK"
