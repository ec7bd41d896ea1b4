"""The pipe client and the warm pipe server: same exit codes as the pipe, nothing lost.

Real processes: ``bouncetrack pipe-server`` on a unix socket, the client started as
Postfix starts it (``python -S client.py --socket S --config F RCPT SENDER``), real
SQLite stores. Every way the server can be missing or fail must end with the bounce
stored once by the full pipe, or with exit 75 for Postfix to retry. Behind the real
Postfix the harness runs the same pair (test_pipe_postfix.py).
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bouncetrack.bounce_pipe.client import MAGIC, NO_SERVER, SERVER_LOST, parse_answer, request
from bouncetrack.bounce_pipe.server import parse_request
from bouncetrack.core.config import Config
from bouncetrack.harness.stack import wait_accepting
from bouncetrack.metrics import pipe_fallback
from tests import mailgen
# config: the pipe tests' fixture (a tracked domain, an 8 s deadline), re-exported for pytest.
from tests.test_pipe import assert_clean_output, events, record
from tests.test_pipe import config as config  # noqa: F401
from tests.test_pipe import pipe_env as _env

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "bouncetrack" / "bounce_pipe" / "client.py"
BT = [sys.executable, "-m", "bouncetrack"]


def _wait_listening(path: Path, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    why = wait_accepting(path, proc, timeout)
    assert why is None, f"pipe server {why}: {proc.stderr.read().decode() if proc.stderr else ''}"


@pytest.fixture()
def server(config: Config, tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    sock = tmp_path / "run" / "pipe.sock"
    proc = subprocess.Popen(
        [*BT, "pipe-server", "--socket", str(sock), "--config", str(config.path)],
        cwd=ROOT, env=_env(config), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        _wait_listening(sock, proc)
        yield sock, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()


def fallbacks(config: Config) -> dict[str, int]:
    """The client's fallback log, by reason (in the pipe's cache directory)."""
    return pipe_fallback.read_counts(_env(config)["BOUNCETRACK_CACHE_DIR"])


def run_client(config: Config, sock: Path, recipient: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    # As master.cf runs it: -S, by path, from an unrelated directory.
    return subprocess.run(
        [sys.executable, "-S", str(CLIENT), "--socket", str(sock), "--config", str(config.path), recipient, ""],
        input=data, capture_output=True, cwd="/", timeout=60, env=_env(config),
    )


def test_the_server_stores_and_the_client_relays_code_and_words(config: Config, server: tuple[Path, subprocess.Popen[bytes]]) -> None:
    sock, _ = server
    verp, _ = record(config, "unknown-1@remote.test")
    data = mailgen.dsn(verp, "unknown-1@remote.test")
    first = run_client(config, sock, verp, data)
    assert first.returncode == 0, first.stderr
    assert_clean_output(first)
    assert b"bouncetrack pipe: stored: 1 event(s), token valid, bounce" in first.stderr
    again = run_client(config, sock, verp, data)  # Postfix's retry after a lost answer
    assert again.returncode == 0 and b"already stored" in again.stderr
    (event,) = events(config)
    assert event["token_status"] == "valid" and event["reason"] == "userunknown"


def test_forged_token_and_garbage_are_stored_as_such_through_the_server(config: Config, server: tuple[Path, subprocess.Popen[bytes]]) -> None:
    sock, _ = server
    verp, _ = record(config, "unknown-1@remote.test")
    forged = verp.replace(verp.split("+")[1][:4], "aaaa")
    assert run_client(config, sock, forged, mailgen.dsn(forged, "unknown-1@remote.test")).returncode == 0
    assert run_client(config, sock, verp, b"\x00\xff not a message at all").returncode == 0
    statuses = sorted(e["token_status"] for e in events(config))
    assert statuses[0] in ("forged", "malformed") and len(statuses) == 2


def test_store_locked_is_exit_75_through_the_server(config: Config, server: tuple[Path, subprocess.Popen[bytes]]) -> None:
    sock, _ = server
    verp, _ = record(config, "unknown-1@remote.test")
    data = mailgen.dsn(verp, "unknown-1@remote.test")
    lock = sqlite3.connect(config.store_url.removeprefix("sqlite:///"), isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        out = run_client(config, sock, verp, data)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert out.returncode == 75, out.stderr
    assert_clean_output(out)
    assert b"Postfix will retry" in out.stderr
    assert run_client(config, sock, verp, data).returncode == 0  # the retry
    assert len(events(config)) == 1


def test_no_server_the_full_pipe_stores_it(config: Config, tmp_path: Path) -> None:
    verp, _ = record(config, "unknown-1@remote.test")
    out = run_client(config, tmp_path / "nobody-listens.sock", verp, mailgen.dsn(verp, "unknown-1@remote.test"))
    assert out.returncode == 0, out.stderr
    assert len(events(config)) == 1
    assert fallbacks(config) == {NO_SERVER: 1, SERVER_LOST: 0}  # for /metrics (test_metrics.py)


def _fake_server(path: Path, behaviour: str) -> threading.Thread:
    """A server that fails the way a crashed child does: reads the request, then closes."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        if behaviour == "read-then-close":
            while conn.recv(65536):
                pass
        elif behaviour == "half-answer":
            while conn.recv(65536):
                pass
            conn.sendall(b"0")  # no newline: not an answer
        conn.close()  # "close-at-once": reset while the client sends
        listener.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("behaviour", ["read-then-close", "half-answer", "close-at-once"])
def test_a_server_that_goes_away_hands_over_to_the_full_pipe(config: Config, tmp_path: Path, behaviour: str) -> None:
    verp, _ = record(config, "unknown-1@remote.test")
    sock = tmp_path / "dying.sock"
    thread = _fake_server(sock, behaviour)
    big = mailgen.dsn(verp, "unknown-1@remote.test") + b"\r\n" + b"x" * 2_000_000  # larger than socket buffers
    out = run_client(config, sock, verp, big)
    thread.join(10)
    assert out.returncode == 0, out.stderr
    (event,) = events(config)
    assert event["token_status"] == "valid" and event["recipient"] == "unknown-1@remote.test"
    assert fallbacks(config) == {NO_SERVER: 0, SERVER_LOST: 1}


def test_server_socket_is_private_refuses_a_second_server_and_replaces_a_stale_socket(
    config: Config, server: tuple[Path, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    sock, proc = server
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    second = subprocess.run([*BT, "pipe-server", "--socket", str(sock)],
                            cwd=ROOT, env=_env(config), capture_output=True, timeout=60)
    assert second.returncode != 0 and b"another pipe server is listening" in second.stderr
    os.killpg(proc.pid, signal.SIGKILL)  # leaves the socket file behind
    proc.wait(10)
    assert sock.exists()
    again = subprocess.Popen([*BT, "pipe-server", "--socket", str(sock)],
                             cwd=ROOT, env=_env(config), stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_listening(sock, again)
        again.send_signal(signal.SIGTERM)  # a clean stop removes the socket
        assert again.wait(20) == 0
        assert not sock.exists()
    finally:
        if again.poll() is None:
            os.killpg(again.pid, signal.SIGKILL)


def test_wire_format_round_trip_and_refusals() -> None:
    raw = b"Subject: x\r\n\r\n\x00\xff body"
    started, args, message = parse_request(request(1700000000.25, ["--config", "/e/c.yaml", "b+x@b.test", ""], raw))
    assert (started, args, message) == (1700000000.25, ["--config", "/e/c.yaml", "b+x@b.test", ""], raw)
    for bad in (b"", b"GET / HTTP/1.0\r\n", MAGIC + b"12", MAGIC + b"99\nshort", MAGIC + b"x\n"):
        with pytest.raises(ValueError):
            parse_request(bad)
    assert parse_answer(b"75\nbouncetrack pipe: not stored") == (75, b"bouncetrack pipe: not stored")
    assert parse_answer(b"0\n") == (0, b"")
    for incomplete in (b"", b"0", b"x\n", b"-1\n"):
        assert parse_answer(incomplete) is None


@settings(max_examples=300, deadline=None)
@given(
    started=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    args=st.lists(st.text(alphabet=st.characters(exclude_characters="\x00", exclude_categories=["Cs"])),
                  max_size=6),
    message=st.binary(max_size=2048),
)
def test_wire_format_round_trips_any_arguments_and_bytes(started: float, args: list[str], message: bytes) -> None:
    assert parse_request(request(started, args, message)) == (started, args, message)


def test_client_failures_of_its_own_are_exit_75_never_a_bounce(config: Config, tmp_path: Path) -> None:
    # pipe(8) bounces the bounce on any status but 0, 75 and 71: usage errors and a
    # missing interpreter for the fallback must say 75.
    usage = subprocess.run([sys.executable, "-S", str(CLIENT), "b+x@bounce.test"], input=b"x",
                           capture_output=True, timeout=30, env=_env(config))
    assert usage.returncode == 75 and b"usage" in usage.stderr and usage.stdout == b""
    verp, _ = record(config, "unknown-1@remote.test")
    code = ("import sys, runpy; sys.executable = '/nonexistent/python'; "
            f"sys.argv = ['client.py', '--socket', '{tmp_path}/none.sock', '--config', '{config.path}', '{verp}', '']; "
            f"runpy.run_path('{CLIENT}', run_name='__main__')")
    no_python = subprocess.run([sys.executable, "-S", "-c", code], input=b"x", capture_output=True, timeout=30,
                               env=_env(config))
    assert no_python.returncode == 75 and b"cannot run the full pipe" in no_python.stderr


def test_a_broken_configuration_is_refused_and_bounces_use_the_last_good_one(
        config: Config, tmp_path: Path) -> None:
    """Issue 15: the server holds the configuration and keys it loaded at start (and at each
    SIGHUP); while the file does not load, its bounces use those instead of exit 75."""
    sock, log = tmp_path / "run" / "pipe.sock", tmp_path / "pipe-server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*BT, "pipe-server", "--socket", str(sock), "--config", str(config.path)],
                                cwd=ROOT, env=_env(config), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        _wait_listening(sock, proc)
        good = config.path.read_text()
        config.path.write_text(good + "\ndomains: [\n")
        verp, _ = record(config, "unknown-1@remote.test")
        answer = run_client(config, sock, verp, mailgen.dsn(verp, "unknown-1@remote.test"))
        assert answer.returncode == 0, answer.stderr
        assert b"using the pipe server's last good one" in answer.stderr
        assert b"stored: 1 event(s), token valid" in answer.stderr
        (event,) = events(config)
        assert event["domain"] == "tracked.test" and event["token_status"] == "valid"

        def wait_log(fragment: str) -> None:
            deadline = time.monotonic() + 30
            while fragment not in log.read_text():
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)

        os.kill(proc.pid, signal.SIGHUP)
        wait_log("reload refused, keeping the running configuration")
        config.path.write_text(good)
        os.kill(proc.pid, signal.SIGHUP)
        wait_log("configuration reloaded from")
        assert proc.poll() is None  # SIGHUP no longer kills it
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        text = log.read_text()
        assert "bounce handled: exit 0" in text and "bouncetrack pipe-server stopped" in text
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
