"""Bounces over LMTP behind the real Postfix (issue 21): no process per bounce, nothing lost.

``Stack(transport="lmtp")``: the pipe server listens on LMTP (``pipe.transport: lmtp``) and
the bounce domain is routed to our lmtp(8) service, ``bouncelmtp:unix:bouncetrack/lmtp.sock``
(relative to the queue directory). With the harness's configuration first (chroot off),
then with Debian's packaged one (chroot on), wired by ``bouncetrack install --transport
lmtp`` and checked by ``doctor``. Real SMTP sessions make Postfix bounce, Postfix's bounce
daemon writes the DSNs, lmtp(8) delivers them: each one stored exactly once, through a
store outage (451, deferred, stored after) and a pipe server that is killed and started
again (deferred while it is gone). The LMTP bounds themselves: tests/test_lmtp.py.
"""

from __future__ import annotations

import sqlite3
import zlib
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from bouncetrack.ops import postfix_wiring as wiring
from bouncetrack.bounce_pipe.client import DEFAULT_CACHE_DIR as CACHE_DIR
from bouncetrack.harness.postfix import packaged_unavailable
from bouncetrack.harness.stack import REMOTE, TRACKED, Stack
from bouncetrack.metrics import pipe_fallback
from tests import mailgen
from tests.storeview import rows
from tests.test_pipe_postfix import record_message

from .conftest import harness_unavailable
from .test_debian_postfix import _chrooted_pids

pytestmark = pytest.mark.postfix

PER_WORKER = 4
STACK_OPTIONS = {
    "with_milter": True,
    "pipe": "real",
    "transport": "lmtp",
    "config_extra": {"pipe": {"deadline_seconds": 4, "lmtp": {"messages_per_worker": PER_WORKER}}},
}


@pytest.fixture(autouse=True)
def clean(stack: Any) -> None:
    stack.reset()


def bounces(stack: Stack, prefix: str) -> list[sqlite3.Row]:
    return [e for e in rows(stack.db_path) if e["recipient"].startswith(prefix) and e["type"] == "bounce"]


def lmtp_lines(stack: Stack, status: str) -> list[str]:
    return [line for line in stack.postfix.log_text().splitlines()
            if "postfix/lmtp" in line and "lmtp.sock" in line and f"status={status}" in line]


def reconcile(stack: Stack, sent: list[str], prefix: str, timeout: float = 120) -> None:
    """Every recipient that bounced has exactly one bounce event, attributed; Postfix's queue is empty."""
    stack.wait_for(lambda: len(bounces(stack, prefix)) >= len(sent) or None, timeout)
    stack.postfix.wait_queue_empty(60)
    got = sorted(e["recipient"] for e in bounces(stack, prefix))
    assert got == sorted(sent), f"lost {sorted(set(sent) - set(got))}, duplicated {len(got) - len(set(got))}"
    assert {e["token_status"] for e in bounces(stack, prefix)} == {"valid"}


def test_bounces_arrive_over_lmtp_without_a_process_per_bounce(stack: Stack) -> None:
    fallbacks_before = sum(pipe_fallback.read_counts(CACHE_DIR).values())
    server_log_before = len(stack.pipe_server_log.read_text())
    sent = []
    for i in range(24):
        rcpt = f"unknown-lmtp-{i}@{REMOTE}"
        r = stack.send(f"news@{TRACKED}", [rcpt, f"ok-lmtp-{i}@{REMOTE}"])
        assert r.accepted, r
        sent.append(rcpt)
        if i == 12:  # a reload in the middle of the traffic: workers replaced, nothing lost
            stack.reload_pipe_server()
    reconcile(stack, sent, "unknown-lmtp-")
    assert len(lmtp_lines(stack, "sent")) >= len(sent)
    assert "250 2.0.0 Bounce stored" in lmtp_lines(stack, "sent")[-1]
    server_log = stack.pipe_server_log.read_text()[server_log_before:]
    # One line per bounce with the token and the original's queue id; no fork per bounce,
    # no pipe client, no full pipe.
    handled = [line for line in server_log.splitlines() if "bounce handled via LMTP (client local): exit 0" in line]
    assert all("token=" in line and "queue_id=" in line for line in handled)
    tokens = {line.split("token=")[1].split()[0] for line in handled}
    assert len(tokens) == len(sent), server_log[-3000:]
    assert "bounce handled: exit" not in server_log
    assert sum(pipe_fallback.read_counts(CACHE_DIR).values()) == fallbacks_before
    # The report as pipe(8) (flag R) hands it over: the same bytes, so the same dedupe key.
    raw = zlib.decompress(rows(stack.db_path, "raw_reports")[-1]["compressed"])
    assert raw.startswith(b"Return-Path: <MAILER-DAEMON>\nReceived: by ") and b"\r" not in raw
    assert "retiring after" in server_log and "configuration reloaded" in server_log
    # Workers replaced mid-traffic (after PER_WORKER messages, at the reload) close their
    # connections between transactions (421 4.3.2): lmtp(8) checks a cached connection with
    # RSET before it reuses one and opens another; only a command sent at the very moment
    # of the close is deferred. A bounce faster than the milter's journal writer has the
    # pipe store the record from the journal; only one it could not read there would get
    # 451 4.3.0, as the pipe's exit 75 (issue 20). Both are delivered at the retry
    # (reconciled above).
    deferred = lmtp_lines(stack, "deferred")
    assert all("421 4.3.2" in line or "451 4.3.0" in line for line in deferred), deferred
    if any("451 4.3.0" in line for line in deferred):
        assert "still in the milter's journal" in server_log


def test_a_report_from_an_smtp_client_carries_its_address(stack: Stack) -> None:
    # The trust rules read the client address (issue 16): a report that came in over SMTP
    # reaches the server with XFORWARD ADDR, as pipe(8)'s ${client_address}; Postfix's own
    # DSNs come as local (the first test).
    verp = record_message(stack, "unknown-remote@remote.test")
    report = mailgen.dsn(verp, "unknown-remote@remote.test")
    r = stack.send("", [verp], report)
    assert r.accepted, r
    reconcile(stack, ["unknown-remote@remote.test"], "unknown-remote")
    # ... and XFORWARD IDENT, the report's queue id here, which Postfix's lmtp line names too.
    assert stack.wait_for(lambda: f"bounce handled via LMTP (client 127.0.0.1, queue id {r.queue_id}): exit 0" in
                          stack.pipe_server_log.read_text() or None, 30)


def test_store_locked_the_bounce_is_deferred_then_stored_once(stack: Stack) -> None:
    verdict = {"reply": "451 4.3.2 try again later"}
    stack.fakemx.rule = lambda a: verdict["reply"] if a.startswith("locked-lmtp") else None
    try:
        assert stack.send(f"info@{TRACKED}", [f"locked-lmtp@{REMOTE}"]).accepted
        stack.fakemx.wait_for(lambda f: f.for_rcpt(f"locked-lmtp@{REMOTE}"), 20)
        stack.wait_for(lambda: not stack.postfix.queue() or [q for q in stack.postfix.queue() if q.queue_name == "deferred"]
                       or None, 30)  # the message waits for the MX (its record is in the store by then)
        earlier = len(lmtp_lines(stack, "deferred"))
        lock = sqlite3.connect(stack.db_path, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        try:
            verdict["reply"] = f"550 5.1.1 <locked-lmtp@{REMOTE}>: user unknown"
            stack.postfix.flush()
            # The server cannot store it: 451 4.3.0 for that recipient, Postfix defers it.
            deferred = stack.wait_for(lambda: [x for x in lmtp_lines(stack, "deferred")[earlier:] if "451 4.3.0" in x], 60)
            assert "Bounce not stored, try again later" in deferred[0]
            assert stack.postfix.queue(), "the bounce must still be in Postfix's queue"
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        reconcile(stack, [f"locked-lmtp@{REMOTE}"], "locked-lmtp")
    finally:
        stack.fakemx.rule = None


def test_pipe_server_gone_the_bounces_wait_in_the_queue(stack: Stack) -> None:
    stack.kill_pipe_server()  # its socket file stays: lmtp(8) gets "connection refused"
    try:
        sent = [f"unknown-gone-{i}@{REMOTE}" for i in range(3)]
        for rcpt in sent:
            assert stack.send(f"info@{TRACKED}", [rcpt]).accepted
        stack.wait_for(lambda: len(lmtp_lines(stack, "deferred")) >= 1 or None, 60, flush_every=None)
        assert not bounces(stack, "unknown-gone-") and stack.postfix.queue()
    finally:
        stack.start_pipe_server()
    reconcile(stack, sent, "unknown-gone-")


# ---------------------------------------------------------------------------
# Debian's packaged configuration, chroot on, wired by `bouncetrack install --transport lmtp`


@pytest.fixture(scope="module")
def debian() -> Iterator[Stack]:
    reason = harness_unavailable() or packaged_unavailable()
    if reason:
        pytest.skip(reason)
    with Stack(postfix_config="debian", pipe="real", transport="lmtp") as st:
        yield st


def _connects_as(user: str, path: Path) -> bool:
    code = "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])"
    return subprocess.run(["runuser", "-u", user, "--", "/usr/bin/python3", "-c", code, str(path)],
                          capture_output=True, timeout=30).returncode == 0


def test_debian_chrooted_lmtp_install_doctor_bounce_and_uninstall(debian: Stack) -> None:
    from bouncetrack.core.config_loader import load_config
    from bouncetrack.doctor.cli import check_postfix
    from bouncetrack.ops.install import uninstall

    st, pf = debian, debian.postfix
    # Install wrote our lmtp service, chrooted as Debian's lmtp, and the relative name.
    assert pf.postconf("-Fh", "bouncelmtp/unix/chroot", "lmtp/unix/chroot").split() == ["y", "y"]
    nexthop = wiring.lmtp_nexthop("bouncetrack/lmtp.sock")
    assert (pf.config_dir / wiring.TRANSPORT_FILE).read_text().splitlines()[-1] == f"{st.bounce_domain} {nexthop}"
    assert pf.postconf("-P", "bouncelmtp/unix/lmtp_send_xforward_command").strip().endswith("= yes")
    # Only Postfix's group gets in: bouncetrack:postfix 0750 around a 0666 socket.
    directory = st.lmtp_socket.parent.stat()
    assert oct(directory.st_mode & 0o777) == "0o750" and directory.st_gid == pf_gid()
    assert _connects_as("postfix", st.lmtp_socket) and not _connects_as("nobody", st.lmtp_socket)

    r = st.send(f"news@{TRACKED}", [f"unknown-deb-lmtp@{REMOTE}"])
    assert r.accepted, (r, st.logs())
    reconcile(st, [f"unknown-deb-lmtp@{REMOTE}"], "unknown-deb-lmtp")
    assert [e["queue_id"] for e in bounces(st, "unknown-deb-lmtp")] == [r.queue_id]
    assert _chrooted_pids(pf.queue_dir, "lmtp"), "no chrooted lmtp(8)"  # it idles a while after delivering

    rs = {x.name: x for x in check_postfix(load_config(st.config_path), pf.config_dir, st.user)}
    for name in ("postfix transport", "LMTP socket", "postfix master.cf bouncelmtp"):
        assert rs[name].verdict == "OK", rs[name].line()
    assert nexthop in rs["postfix transport"].why and "chrooted" in rs["postfix master.cf bouncelmtp"].why
    st.stop_pipe_server()
    try:
        rs = {x.name: x for x in check_postfix(load_config(st.config_path), pf.config_dir, st.user)}
        assert rs["LMTP socket"].verdict == "FAIL", rs["LMTP socket"].line()
    finally:
        st.start_pipe_server()

    assert uninstall(pf.config_dir, echo=lambda s: None)
    for name in ("main.cf", "master.cf"):
        assert (pf.config_dir / name).read_bytes() == st.packaged_files[name], name


def pf_gid() -> int:
    import grp

    return grp.getgrnam("postfix").gr_gid
