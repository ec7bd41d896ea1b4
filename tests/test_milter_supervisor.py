"""The ``bouncetrack milter`` supervisor (milter/runner.py) as a real process, without Postfix.

Its guarantees: a SIGHUP reload never restarts the libmilter child (its socket keeps
accepting; the journal writer is restarted beside it), and SIGTERM stops all three
processes promptly, each saying so. A CI run once saw both broken: the SIGTERM a
reload sent a journal writer forked a moment before ran the supervisor's own stop
handler in it, which killed the libmilter child (mail tempfailed for the 1 s of its
restart); and a writer whose SIGTERM handler set a threading.Event while its main
thread was inside that Event's wait() deadlocked, so neither it nor the supervisor
ever stopped.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from bouncetrack.harness.stack import wait_accepting
from tests.configkit import write_config
from tests.services import ROOT

STOP_LINES = ("journal writer stopped", "milter child stopped", "bouncetrack milter stopped")


class Milter:
    def __init__(self, tmp_path: Path) -> None:
        self.config = write_config(tmp_path, "domains:\n  tracked.test: {tracking: true}\n")
        self.path = tmp_path / "bouncetrack.yaml"
        self.original = self.path.read_text()
        self.domains_only = self.original.replace("domains:\n", "domains:\n  reload-only.test: {tracking: true}\n", 1)
        # A second store: the journal writer is restarted only when the store changes.
        self.variant = self.domains_only.replace("/bt.db", "/bt-variant.db", 1)
        assert self.original != self.domains_only != self.variant
        self.log = tmp_path / "milter.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bouncetrack", "milter", "--config", str(self.path), "--log-level", "INFO"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}, cwd="/")
        why = wait_accepting(self.config.milter_socket, self.proc, 60)
        assert why is None, f"milter {why}:\n{self.text()}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def write(self, text: str) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)  # atomically, as an editor does

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM to the process group, as systemd and the harness send it."""
        os.killpg(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


@pytest.fixture()
def milter(tmp_path: Path) -> Iterator[Milter]:
    m = Milter(tmp_path)
    try:
        yield m
    finally:
        if m.proc.poll() is None:
            m.kill()


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_sighup_storm_never_restarts_the_libmilter_child_and_stop_completes(milter: Milter) -> None:
    refused: list[str] = []
    done = threading.Event()

    def connect_all_along() -> None:
        # What Postfix's smtpd does for each session: a refused or missing socket is a 451.
        while not done.is_set():
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.connect(str(milter.config.milter_socket))
            except OSError as exc:
                refused.append(repr(exc))
            time.sleep(0.002)

    t = threading.Thread(target=connect_all_along)
    t.start()
    try:
        for i in range(200):
            milter.write(milter.variant if i % 2 == 0 else milter.original)
            os.kill(milter.proc.pid, signal.SIGHUP)
            time.sleep(0.002 if i % 4 else 0.03)  # bursts: the next SIGHUP lands on a writer just forked
        # Every reload is taken (SIGHUPs coalesce while one runs) and the writer restarted.
        wait_for(lambda: milter.text().count("journal writer stopped") >= 3, 60, milter.text()[-3000:])
        time.sleep(0.5)
    finally:
        done.set()
        t.join()
    text = milter.text()
    assert milter.proc.poll() is None, text[-3000:]
    assert len(re.findall(r"milter child \d+ started", text)) == 1, text[-3000:]
    assert "exited with" not in text and "reload refused" not in text, text[-3000:]
    assert not refused, refused[:5]

    assert milter.stop() == 0
    text = milter.text()
    for line in STOP_LINES:
        assert line in text, (line, text[-3000:])
    assert not milter.config.milter_socket.exists()


@pytest.mark.parametrize("delay", [0.0, 0.02])
def test_a_stop_right_after_a_reload_completes_with_every_stop_line(milter: Milter, delay: float) -> None:
    """SIGTERM lands while the reload restarts the journal writer (killed, being forked,
    or just started): every process still stops and says so."""
    for round_ in range(3):
        milter.write(milter.variant if round_ % 2 == 0 else milter.original)
        os.kill(milter.proc.pid, signal.SIGHUP)
        time.sleep(0.02)
    time.sleep(delay)
    assert milter.stop() == 0, milter.text()[-3000:]
    text = milter.text()
    for line in STOP_LINES:
        assert line in text, (line, text[-3000:])
    assert "SIGKILL" not in text, text[-3000:]


def test_a_reload_that_keeps_the_store_keeps_the_journal_writer(milter: Milter) -> None:
    """Only a new store restarts the writer: a restart replays the open journal segment
    and repeats its "tracked" lines, so a reload of the domains must not cause one."""
    for round_ in range(4):
        milter.write(milter.domains_only if round_ % 2 == 0 else milter.original)
        os.kill(milter.proc.pid, signal.SIGHUP)
        wait_for(lambda: milter.text().count("configuration reloaded") >= round_ + 1, 60, milter.text()[-3000:])
    text = milter.text()
    assert len(re.findall(r"journal writer \d+ started", text)) == 1, text[-3000:]
    assert "journal writer stopped" not in text, text[-3000:]
    milter.write(milter.variant)
    os.kill(milter.proc.pid, signal.SIGHUP)
    wait_for(lambda: len(re.findall(r"journal writer \d+ started", milter.text())) == 2, 60, milter.text()[-3000:])
    assert milter.stop() == 0, milter.text()[-3000:]
