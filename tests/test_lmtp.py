"""The pipe server's LMTP listener (issue 21) with inputs built to hurt, no Postfix.

Real processes: ``bouncetrack pipe-server`` with ``pipe.transport: lmtp`` (its pre-forked
workers on a unix socket), a raw LMTP client written here (RFC 2033: one reply per
recipient after DATA), real SQLite stores. Every bound per connection is hit on purpose:
oversized DATA (552, drained without growing the worker), an endless command line, too
many recipients, a client that sends nothing or one byte at a time (command and DATA
timeouts), too many errors; the store down gives 451 and the retry stores the bounce
once. Behind the real Postfix: tests/test_lmtp_postfix.py.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import pytest

from bouncetrack.bounce_pipe import guard
from bouncetrack.bounce_pipe.client import PROTOCOL, REFUSALS, REFUSED_LOG, TIMED_OUT, TOO_BIG
from bouncetrack.metrics import pipe_fallback
from bouncetrack.core.config import Config
from bouncetrack.harness.stack import wait_accepting
from bouncetrack.suppression import LOCAL_HOST, UNKNOWN_HOST
from tests import mailgen
from tests.configkit import write_config
from tests.test_pipe import events, record
from tests.test_pipe import pipe_env as _env

ROOT = Path(__file__).resolve().parents[1]
BT = [sys.executable, "-m", "bouncetrack"]
MAX_MESSAGE = 1 << 20
MAX_RECIPIENTS = 3
COMMAND_TIMEOUT = 2.0
DATA_TIMEOUT = 4.0
PER_WORKER = 4
T = TypeVar("T")


@pytest.fixture()
def config(tmp_path: Path) -> Config:
    return write_config(tmp_path, f"""\
        pipe:
          deadline_seconds: 4
          transport: lmtp
          lmtp:
            socket: {tmp_path}/spool/lmtp.sock
            workers: 2
            max_message_bytes: {MAX_MESSAGE}
            max_recipients: {MAX_RECIPIENTS}
            command_timeout_seconds: {COMMAND_TIMEOUT}
            data_timeout_seconds: {DATA_TIMEOUT}
            messages_per_worker: {PER_WORKER}
        domains:
          tracked.test: {{tracking: true}}
    """)


class Server:
    def __init__(self, config: Config, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.config = config
        self.proc = proc
        self.log = log
        self.socket = config.pipe.lmtp.socket

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def workers(self) -> set[int]:
        """The server's children (its LMTP workers, when no bounce is in flight on the pipe socket)."""
        found = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[1] == str(self.proc.pid) and fields[0] not in ("Z", "X"):
                found.add(int(stat.parent.name))
        return found


@pytest.fixture()
def server(config: Config, tmp_path: Path) -> Iterator[Server]:
    with running(config, tmp_path) as srv:
        yield srv


@contextlib.contextmanager
def running(config: Config, tmp_path: Path) -> Iterator[Server]:
    """``bouncetrack pipe-server`` for ``config``, its LMTP workers up (killed at the end)."""
    config.pipe.lmtp.socket.parent.mkdir(exist_ok=True)
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*BT, "pipe-server", "--socket", str(tmp_path / "pipe.sock"), "--config", str(config.path),
             "--log-level", "DEBUG"],
            cwd=ROOT, env=_env(config), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        why = wait_accepting(config.pipe.lmtp.socket, proc, 30)
        assert why is None, f"LMTP {why}: {log.read_text()}"
        srv = Server(config, proc, log)
        wait_until(lambda: len(srv.workers()) == config.pipe.lmtp.workers, 30, "the workers")
        yield srv
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def wait_until(predicate: Callable[[], T], timeout: float, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout:g} s")
        time.sleep(0.05)


class Client:
    """A raw LMTP client: every reply as (code, text), multi-line replies joined."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.reader = self.sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self) -> tuple[int, str]:
        lines = []
        while True:
            line = self.reader.readline()
            if not line:
                return 0, "(closed)"
            lines.append(line.decode().rstrip("\r\n"))
            if line[3:4] != b"-":
                return int(line[:3]), "\n".join(item[4:] for item in lines)

    def cmd(self, line: str) -> tuple[int, str]:
        try:
            self.sock.sendall(line.encode() + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered 421 and closed before this command: read it
        return self.reply()

    def lhlo(self, *xforward: str) -> None:
        assert self.cmd("LHLO test.example")[0] == 250
        for attrs in xforward:
            assert self.cmd(f"XFORWARD {attrs}") == (250, "2.0.0 Ok")

    def deliver(self, sender: str, recipients: list[str], data: bytes) -> list[tuple[int, str]]:
        """MAIL, RCPT each, DATA: the RCPT replies, then one reply per accepted recipient."""
        assert self.cmd(f"MAIL FROM:<{sender}>")[0] == 250
        out = [self.cmd(f"RCPT TO:<{r}>") for r in recipients]
        accepted = sum(code == 250 for code, _ in out)
        assert self.cmd("DATA")[0] == 354
        self.sock.sendall(stuff(data) + b".\r\n")
        return out + [self.reply() for _ in range(accepted)]

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def stuff(data: bytes) -> bytes:
    """CRLF line ends and dot-stuffing (RFC 5321 §4.5.2), ending with CRLF."""
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)


def db(config: Config) -> sqlite3.Connection:
    con = sqlite3.connect(config.store_url.removeprefix("sqlite:///"), timeout=10)
    con.row_factory = sqlite3.Row
    return con


def test_lhlo_announces_size_and_each_recipient_gets_its_own_reply(config: Config, server: Server) -> None:
    verp1, _ = record(config, "unknown-1@remote.test")
    verp2, _ = record(config, "unknown-2@remote.test")
    c = Client(server.socket)
    assert c.greeting[0] == 220
    code, text = c.cmd("LHLO test.example")
    assert code == 250 and {"PIPELINING", "ENHANCEDSTATUSCODES", "8BITMIME", f"SIZE {MAX_MESSAGE}"} <= set(
        text.splitlines()), text
    c.lhlo("SOURCE=LOCAL")
    replies = c.deliver("", [verp1, verp2], mailgen.dsn(verp1, "unknown-1@remote.test"))
    assert replies == [(250, "2.1.5 Recipient ok")] * 2 + [(250, "2.0.0 Bounce stored")] * 2
    stored = events(config)
    assert sorted((e["token_status"], e["recipient"], e["flagged"]) for e in stored) == [
        ("valid", "unknown-1@remote.test", 0), ("valid", "unknown-2@remote.test", 1)]  # 2: not its report
    # Postfix's retry after a lost answer: the same bytes, stored once (the pipe's dedupe key).
    c.lhlo("SOURCE=LOCAL")
    assert c.deliver("", [verp1], mailgen.dsn(verp1, "unknown-1@remote.test"))[-1] == (250, "2.0.0 Bounce stored")
    assert len(events(config)) == 2
    assert c.cmd("QUIT") == (221, "2.0.0 Bye")
    log = server.log_text()
    assert "bounce handled via LMTP (client local): exit 0" in log and "token valid" in log


def test_the_client_address_comes_from_xforward(config: Config, server: Server) -> None:
    # The trust rules and the untrusted-report quota key on it (issue 16): XFORWARD ADDR as
    # pipe(8)'s ${client_address}; only SOURCE=LOCAL (a DSN Postfix wrote) is local; no
    # XFORWARD at all is unknown. Reports without a valid token count per host.
    garbage = b"Subject: not a bounce\n\nhello\n"
    for attrs, host in (("NAME=mx.example ADDR=192.0.2.7", "192.0.2.7"), ("ADDR=IPV6:2001:db8::5", "2001:db8::5"),
                        ("SOURCE=LOCAL", LOCAL_HOST), (None, UNKNOWN_HOST)):
        c = Client(server.socket)
        c.lhlo(*([attrs] if attrs else []))
        assert c.deliver("", ["fbl@bounce.test"], garbage + host.encode())[-1][0] == 250
        c.close()
        hosts = {r["host"] for r in db(config).execute("SELECT host FROM untrusted_reports")}
        assert host in hosts, (host, hosts)


def test_oversized_data_is_refused_and_drained_without_growing_the_worker(config: Config, server: Server) -> None:
    verp, _ = record(config, "unknown-1@remote.test")
    c = Client(server.socket)
    c.lhlo()
    assert c.cmd(f"MAIL FROM:<> SIZE={MAX_MESSAGE + 1}") == (552, "5.3.4 Message too big")  # RFC 1870
    hwm_before = {pid: _hwm_kb(pid) for pid in server.workers()}
    assert c.cmd("MAIL FROM:<>")[0] == 250
    assert c.cmd(f"RCPT TO:<{verp}>")[0] == 250 and c.cmd("RCPT TO:<fbl@bounce.test>")[0] == 250
    assert c.cmd("DATA")[0] == 354
    line = b"x" * 998 + b"\r\n"
    chunk = line * 1024  # 1 MiB
    for _ in range(64):
        c.sock.sendall(chunk)
    c.sock.sendall(b"y" * (8 << 20) + b"\r\n")  # and one line of 8 MiB
    c.sock.sendall(b".\r\n")
    assert [c.reply(), c.reply()] == [(552, "5.3.4 Message too big")] * 2
    grown = max(_hwm_kb(pid) - hwm_before.get(pid, 0) for pid in server.workers())
    assert grown < 8 * 1024, f"a worker's peak RSS grew by {grown} kB for 72 MiB of DATA"
    # The connection goes on: the next message is stored.
    assert c.cmd("NOOP") == (250, "2.0.0 Ok")
    assert c.deliver("", [verp], mailgen.dsn(verp, "unknown-1@remote.test"))[-1] == (250, "2.0.0 Bounce stored")
    assert len(events(config)) == 1
    # Counted for /metrics (bouncetrack_lmtp_refused_total): at MAIL SIZE= and after DATA.
    assert refusals(config)[TOO_BIG] == 2


def refusals(config: Config) -> dict[str, int]:
    return pipe_fallback.read_counts(_env(config)["BOUNCETRACK_CACHE_DIR"], log=REFUSED_LOG, reasons=REFUSALS)


def _hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def test_an_endless_command_line_is_refused_and_the_connection_closed(server: Server) -> None:
    c = Client(server.socket)
    c.lhlo()
    c.sock.sendall(b"MAIL FROM:<" + b"a" * 100_000)  # no line end, ever
    assert c.reply() == (500, "5.5.2 Line too long")
    try:
        assert c.reply() == (0, "(closed)")
    except ConnectionResetError:  # closed with the rest of the line unread
        pass


def test_recipients_beyond_the_limit_get_452_and_the_rest_are_stored(config: Config, server: Server) -> None:
    verp, _ = record(config, "unknown-1@remote.test")
    c = Client(server.socket)
    c.lhlo()
    replies = c.deliver("", [verp] * MAX_RECIPIENTS + ["fbl@bounce.test"] * 20, mailgen.dsn(verp, "unknown-1@remote.test"))
    rcpt, after = replies[: MAX_RECIPIENTS + 20], replies[MAX_RECIPIENTS + 20:]
    assert rcpt == [(250, "2.1.5 Recipient ok")] * MAX_RECIPIENTS + [(452, "4.5.3 Too many recipients")] * 20
    assert after == [(250, "2.0.0 Bounce stored")] * MAX_RECIPIENTS


def test_a_report_naming_thousands_of_recipients_keeps_the_pipe_bounds(config: Config, server: Server) -> None:
    # The per-report bounds of the pipe (guard.py) apply per LMTP message: same code.
    verp, _ = record(config, "unknown-1@remote.test")
    c = Client(server.socket)
    c.lhlo("SOURCE=LOCAL")
    report = mailgen.hostile_many_recipients(verp, "unknown-1@remote.test", n=5000)
    assert len(report) < MAX_MESSAGE
    assert c.deliver("", [verp], report)[-1] == (250, "2.0.0 Bounce stored")
    assert len(events(config)) <= 1 + guard.MAX_FLAGGED_EVENTS
    counted = {r["guard"]: r["count"] for r in db(config).execute("SELECT guard, count FROM metric_pipe_guards")}
    assert counted.get(guard.EVENTS_DROPPED, 0) > 0, counted


@pytest.mark.parametrize("drip", [b"NOOP", None], ids=["one-byte-at-a-time", "silent"])
def test_a_slow_or_silent_client_is_closed_at_the_command_timeout(server: Server, drip: bytes | None) -> None:
    c = Client(server.socket)
    c.lhlo()
    started = time.monotonic()
    c.sock.settimeout(0.4)
    answer = b""
    for i in range(150):  # up to ~60 s: the server must close long before
        if drip is not None:
            try:
                c.sock.sendall(drip[i % len(drip):][:1])
            except OSError:
                break
        try:
            got = c.sock.recv(4096)
        except TimeoutError:
            continue
        answer += got
        if not got or answer.endswith(b"\r\n"):
            break
    assert answer.startswith(b"421 4.4.2"), answer
    assert time.monotonic() - started < 40
    assert refusals(server.config)[TIMED_OUT] == 1


def test_data_that_never_ends_is_closed_at_the_data_timeout(config: Config, server: Server) -> None:
    verp, _ = record(config, "unknown-1@remote.test")
    c = Client(server.socket)
    c.lhlo()
    assert c.cmd("MAIL FROM:<>")[0] == 250 and c.cmd(f"RCPT TO:<{verp}>")[0] == 250 and c.cmd("DATA")[0] == 354
    c.sock.settimeout(0.25)
    answer = b""
    for _ in range(240):  # a line every 0.25 s: never idle for the command timeout, up to ~60 s
        try:
            c.sock.sendall(b"x\r\n")
            answer += c.sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            break
        if answer.endswith(b"\r\n"):
            break
    assert answer.startswith(b"421 4.4.2"), answer
    assert events(config) == []  # nothing of the transaction


def test_sequence_errors_and_too_many_of_them(server: Server) -> None:
    c = Client(server.socket)
    assert c.cmd("MAIL FROM:<>") == (503, "5.5.1 Bad sequence of commands")  # LHLO first
    c.lhlo()
    assert c.cmd("RCPT TO:<a@bounce.test>")[0] == 503
    assert c.cmd("DATA")[0] == 503
    assert c.cmd("MAIL FROM:<>")[0] == 250
    assert c.cmd("DATA") == (503, "5.5.1 Bad sequence of commands")  # RFC 2033 §4.2: no recipient yet
    assert c.cmd("RCPT TO:bare@bounce.test") == (501, "5.5.4 Syntax error in parameters")
    assert c.cmd("RCPT TO:<a\rX-Injected: 1@bounce.test>")[0] == 501
    assert c.cmd("EHLO x") == (500, "5.5.1 Command not recognized")
    c.sock.sendall(b"VRFY x\r\n" * 30)
    got = [c.reply()]
    while got[-1][0] == 500:
        got.append(c.reply())
    assert got[-1] == (421, "4.7.0 Too many errors, closing connection"), got
    assert len(got) == 20 - 7 + 1  # after the 20th error (7 above)


def test_store_down_is_451_and_the_retry_stores_the_bounce_once(config: Config, server: Server) -> None:
    verp, _ = record(config, "unknown-1@remote.test")
    data = mailgen.dsn(verp, "unknown-1@remote.test")
    lock = sqlite3.connect(config.store_url.removeprefix("sqlite:///"), isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        c = Client(server.socket)
        c.lhlo()
        assert c.deliver("", [verp], data)[-1] == (451, "4.3.0 Bounce not stored, try again later")
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert events(config) == []
    c.lhlo()
    assert c.deliver("", [verp], data)[-1] == (250, "2.0.0 Bounce stored")  # Postfix's retry
    assert len(events(config)) == 1


def test_workers_are_replaced_after_their_messages_and_at_sighup(config: Config, server: Server) -> None:
    first = server.workers()
    verp, _ = record(config, "unknown-1@remote.test")
    for i in range(PER_WORKER * 2 + 1):  # one connection each: some worker serves PER_WORKER of them
        c = Client(server.socket)
        c.lhlo()
        assert c.deliver("", ["fbl@bounce.test"], b"Subject: %d\n\nx\n" % i)[-1][0] == 250
        c.cmd("QUIT")
        c.close()
    wait_until(lambda: "retiring after" in server.log_text(), 30, "a worker retiring")
    wait_until(lambda: len(server.workers()) == 2 and server.workers() != first, 30, "a replacement")
    before = server.workers()
    idle = Client(server.socket)  # an open connection: its worker finishes it first
    idle.lhlo()
    # A reload: three workers now; the socket moves only at a restart (reload.RESTART_ONLY).
    text = config.path.read_text()
    config.path.write_text(text.replace("workers: 2", "workers: 3").replace("/spool/lmtp.sock", "/spool/new.sock"))
    os.kill(server.proc.pid, signal.SIGHUP)
    wait_until(lambda: "configuration reloaded" in server.log_text(), 30, "the reload")
    assert "pipe.lmtp.socket changed: takes effect at the next restart" in server.log_text()
    assert idle.reply() == (421, "4.3.2 Service shutting down, try again later")  # closed while idle
    wait_until(lambda: len(server.workers()) == 3 and not server.workers() & before, 30, "all workers replaced")
    c = Client(server.socket)
    c.lhlo()
    assert c.deliver("", [verp], mailgen.dsn(verp, "unknown-1@remote.test"))[-1] == (250, "2.0.0 Bounce stored")


def test_a_worker_due_for_replacement_ends_a_long_connection_between_transactions(config: Config, server: Server) -> None:
    # Postfix's connection cache keeps one connection for many deliveries.
    c = Client(server.socket)
    c.lhlo()
    for i in range(PER_WORKER):
        assert c.deliver("", ["fbl@bounce.test"], b"Subject: %d\n\nx\n" % i)[-1] == (250, "2.0.0 Bounce stored")
    assert c.cmd("RSET") == (421, "4.3.2 Service shutting down, try again later")
    wait_until(lambda: "retiring after 4 messages: pipe.lmtp.messages_per_worker" in server.log_text(), 30)


def test_sigterm_lets_the_transaction_in_hand_finish_and_closes_idle_connections(config: Config, server: Server) -> None:
    verp, _ = record(config, "unknown-1@remote.test")
    c = Client(server.socket)
    c.lhlo()
    idle = Client(server.socket)
    idle.lhlo()
    assert oct(server.socket.stat().st_mode & 0o777) == "0o666"  # the directory keeps others out
    assert c.cmd("MAIL FROM:<>")[0] == 250 and c.cmd(f"RCPT TO:<{verp}>")[0] == 250 and c.cmd("DATA")[0] == 354
    data = stuff(mailgen.dsn(verp, "unknown-1@remote.test"))
    c.sock.sendall(data[:100])
    server.proc.send_signal(signal.SIGTERM)
    assert idle.reply() == (421, "4.3.2 Service shutting down, try again later")
    c.sock.sendall(data[100:] + b".\r\n")
    assert c.reply() == (250, "2.0.0 Bounce stored")  # the transaction in hand is finished
    assert c.reply() == (421, "4.3.2 Service shutting down, try again later")
    assert len(events(config)) == 1
    assert server.proc.wait(60) == 0
    assert not server.socket.exists()
    assert "bouncetrack pipe-server stopped" in server.log_text()


def test_no_secret_reaches_the_log(tmp_path: Path) -> None:
    # The pipe server's one log format and redaction (issue 15) cover its LMTP workers: a
    # webhook secret on the line of a broken configuration, which a bounce falls back from
    # (the server's last good one) and a SIGHUP refuses.
    secret = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"
    config = write_config(tmp_path, f"""\
        pipe: {{transport: lmtp, lmtp: {{socket: {tmp_path}/spool/lmtp.sock, workers: 1}}}}
        domains:
          tracked.test: {{tracking: true, webhook: {{url: "http://127.0.0.1:9/h", secret: {secret}}}}}
    """)
    with running(config, tmp_path) as srv:
        good = config.path.read_text()
        config.path.write_text(good.replace(f"secret: {secret}", f"secret: {secret}, [", 1))
        verp, _ = record(config, "unknown-1@remote.test")
        c = Client(srv.socket)
        c.lhlo("SOURCE=LOCAL")
        assert c.deliver("", [verp], mailgen.dsn(verp, "unknown-1@remote.test"))[-1] == (250, "2.0.0 Bounce stored")
        os.kill(srv.proc.pid, signal.SIGHUP)
        wait_until(lambda: "reload refused" in srv.log_text(), 30, "the refused reload")
        assert "configuration not loaded" in srv.log_text() and "bounce handled via LMTP" in srv.log_text()
        assert secret not in srv.log_text()


def test_an_idle_connection_gives_its_worker_to_a_waiting_one(tmp_path: Path) -> None:
    # lmtp(8) parks finished connections in its cache; each holds a worker while idle. A new
    # connection must not wait for them to expire (the command timeout here: a minute).
    config = write_config(tmp_path, f"""\
        pipe: {{transport: lmtp, lmtp: {{socket: {tmp_path}/spool/lmtp.sock, workers: 2, command_timeout_seconds: 60}}}}
    """)
    with running(config, tmp_path) as srv:
        parked = [Client(srv.socket), Client(srv.socket)]
        for c in parked:
            c.lhlo()
            assert c.deliver("", ["fbl@bounce.test"], b"Subject: %d\n\nx\n" % id(c))[-1][0] == 250
        started = time.monotonic()
        waiting = Client(srv.socket)  # its greeting comes once a parked one yields
        assert waiting.greeting[0] == 220 and time.monotonic() - started < 20
        closed = [c.reply() for c in parked if select.select([c.sock], [], [], 5)[0]]
        # One yields (two only if their random pauses end within the same instant).
        assert closed and all(x == (421, "4.3.2 Idle connection closed for a waiting one") for x in closed), closed
        waiting.lhlo()
        assert waiting.deliver("", ["fbl@bounce.test"], b"Subject: w\n\nx\n")[-1][0] == 250
        for c in (*parked, waiting):
            with contextlib.suppress(OSError):
                c.cmd("QUIT")
            c.close()
        # A connection inside a transaction is never closed for another: that one waits.
        busy = [Client(srv.socket), Client(srv.socket)]
        for c in busy:
            c.lhlo()
            assert c.cmd("MAIL FROM:<>")[0] == 250
        with pytest.raises(TimeoutError):
            Client(srv.socket, timeout=3)
        assert [c.cmd("RSET") for c in busy] == [(250, "2.0.0 Ok")] * 2


def test_refusals_reach_metrics(config: Config, server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    from bouncetrack.store import open_store
    from tests.test_metrics import parse, scrape_text, value

    open_store(config.store_url).close()  # counted from the store's creation on
    time.sleep(1.1)  # records are stamped in whole seconds
    c = Client(server.socket)
    c.lhlo()
    c.sock.sendall(b"NOOP " + b"x" * 5000 + b"\r\n")
    assert c.reply() == (500, "5.5.2 Line too long")
    samples = parse(scrape_text(config, monkeypatch))
    assert value(samples, "bouncetrack_lmtp_refused_total", reason=PROTOCOL) == 1
    assert value(samples, "bouncetrack_lmtp_refused_total", reason=TOO_BIG) == 0  # present at 0


def _data_reference(stream: bytes, limit: int) -> tuple[bytes | None, bytes]:
    """DATA as RFC 5321 §4.5.2 reads it, one line at a time (the reading before issue 21's
    bulk handling; a line without its LF is cut into pieces of DATA_PIECE octets): (the
    message with CRLF as LF, None past ``limit``; what follows the lone dot)."""
    from bouncetrack.bounce_pipe.lmtp import DATA_PIECE

    at, line_start = 0, True
    parts: list[bytes] = []
    while True:
        lf = stream.find(b"\n", at, at + DATA_PIECE)
        end = lf + 1 if lf >= 0 else at + DATA_PIECE
        piece, at = stream[at:end], end
        if line_start:
            if piece in (b".\r\n", b".\n"):
                data = b"".join(parts)
                return (data if len(data) <= limit else None), stream[at:]
            if piece.startswith(b"."):
                piece = piece[1:]
        line_start = piece.endswith(b"\n")
        parts.append(piece[:-2] + b"\n" if piece.endswith(b"\r\n") else piece)


@pytest.mark.parametrize("seed", range(6))
def test_data_is_read_as_line_by_line_unstuffing_reads_it(seed: int) -> None:
    # read_data handles the complete lines in hand at once (issue 21: CPU per bounce); the
    # message must be exactly what a line-by-line reading gives: dots, CRLF and LF, a lone
    # dot inside a line, lines longer than a read, the size limit, what follows the dot.
    import random
    import threading

    from bouncetrack.bounce_pipe.lmtp import DATA_PIECE, Session
    from bouncetrack.core.config import LmtpConfig

    rng = random.Random(seed)
    words = [b".", b"..", b"...x", b"x.", b" .", b"\r", b"a\r", b"", b"text", b"-- ", b".\r", b"x" * 70,
             b"y" * (DATA_PIECE - 1), b"z" * DATA_PIECE, b"w" * (DATA_PIECE + 5)]
    for limit in (1 << 20, 300_000, 2_000):
        lines = [b"".join(rng.choice(words) for _ in range(rng.randint(0, 3))) for _ in range(rng.randint(0, 60))]
        body = b"".join(line + rng.choice((b"\r\n", b"\n")) for line in lines)
        stream = body + rng.choice((b".\r\n", b".\n")) + b"NOOP\r\n"
        want, rest = _data_reference(stream, limit)
        a, b = socket.socketpair()
        try:
            def send(b: socket.socket = b, stream: bytes = stream) -> None:
                b.sendall(stream)
                b.shutdown(socket.SHUT_WR)

            sender = threading.Thread(target=send)
            sender.start()
            session = Session(a, LmtpConfig(max_message_bytes=limit), lambda *args: (0, ""))
            got = session.read_data()
            assert got == want, (seed, limit)
            left = bytes(session.buf)
            while chunk := a.recv(1 << 20):
                left += chunk
            assert left == rest  # what follows the dot stays for the session
            sender.join(30)
        finally:
            a.close()
            b.close()


def test_pipelined_commands_get_every_reply_in_order() -> None:
    # The replies to pipelined commands are sent together before the session waits for
    # more (RFC 2920 §3.2); each recipient's final reply leaves as soon as it is stored.
    import threading

    from bouncetrack.bounce_pipe.lmtp import Session
    from bouncetrack.core.config import LmtpConfig

    delivered: list[str] = []

    def deliver(recipient: str, sender: str, client: str | None, raw: bytes, started: float) -> tuple[int, str]:
        delivered.append(recipient)
        return (0 if recipient.startswith("ok") else 75), ""

    a, b = socket.socketpair()
    b.settimeout(30)
    session = Session(a, LmtpConfig(), deliver)
    runner = threading.Thread(target=session.run)
    runner.start()
    try:
        reader = b.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        b.sendall(b"LHLO x\r\nXFORWARD ADDR=192.0.2.1\r\nMAIL FROM:<>\r\nRCPT TO:<ok@bounce.test>\r\n"
                  b"RCPT TO:<later@bounce.test>\r\nDATA\r\n")
        got = [reader.readline() for _ in range(6 + 5)]
        assert [line[:4] for line in got] == [b"250-"] * 5 + [b"250 ", b"250 ", b"250 ", b"250 ", b"250 ", b"354 "]
        b.sendall(b"Subject: x\r\n..dot\r\n.\r\nRSET\r\nQUIT\r\n")
        assert [reader.readline()[:3] for _ in range(4)] == [b"250", b"451", b"250", b"221"]
        assert delivered == ["ok@bounce.test", "later@bounce.test"]
    finally:
        runner.join(30)
        a.close()
        b.close()
