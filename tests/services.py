"""The API and the worker as real processes (``bouncetrack api``/``worker``), beside a harness stack.

Beside a stack they run as the stack's user from its staged copy (``lib/bt.py``), as
the milter and the pipe server do (a store file created by root would lock the milter
out); alone, as the test's user from this checkout. Each has its own log file, so that
a test can signal it (SIGHUP, SIGTERM) and read what it logged.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent

# The one log format (bouncetrack/core/logsetup.py): timestamp, process[pid], level, message.
LOG_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z bouncetrack-(?P<process>[a-z-]+)\[(?P<pid>\d+)\] "
    r"(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL) (?P<message>.*)$"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """One ``bouncetrack`` command running in the background, output to ``log``."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None,
                 stack: Any = None) -> None:
        self.log = log
        environment = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {})}
        command = [sys.executable, "-m", "bouncetrack"]
        user: str | None = None
        if stack is not None:
            command, user = [stack.python, str(stack.lib / "bt.py")], stack.user
            environment = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([*command, *args], stdout=out, user=user, group=user,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=environment, cwd="/")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def hup(self) -> None:
        os.kill(self.proc.pid, signal.SIGHUP)

    def wait_log(self, predicate: Callable[[str], bool], timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            if predicate(text):
                return text
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.log.name}: exited {self.proc.returncode}:\n{text[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.log.name}: not seen within {timeout} s:\n{text[-3000:]}")
            time.sleep(0.1)

    def count(self, fragment: str) -> int:
        return self.text().count(fragment)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)


def start_api(config: Path, log: Path, stack: Any = None) -> tuple[Service, str]:
    """``bouncetrack api`` on a free port; returns it and its base URL once it answers."""
    port = free_port()
    api = Service(["api", "--config", str(config), "--listen", f"127.0.0.1:{port}"], log, stack=stack)
    api.wait_log(lambda t: "Uvicorn running" in t or "Application startup complete" in t)
    return api, f"http://127.0.0.1:{port}"


def start_worker(config: Path, log: Path, stack: Any = None) -> Service:
    worker = Service(["worker", "--config", str(config)], log, stack=stack)
    worker.wait_log(lambda t: "worker" in t and "starting" in t)
    return worker


def format_problems(text: str) -> list[str]:
    """Lines of a log that neither start a record in the one format nor continue one (indented)."""
    return [line for line in text.splitlines() if line and not LOG_LINE.match(line) and not line.startswith(" ")]


def rewrite(path: Path, text: str) -> None:
    """Replace a configuration file atomically, keeping its mode and owner (as an editor does)."""
    st = path.stat()
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.chmod(tmp, st.st_mode & 0o7777)
    os.chown(tmp, st.st_uid, st.st_gid)
    os.replace(tmp, path)
