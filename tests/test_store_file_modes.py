"""Store files 0600 whatever the umask (issue 16): the SQLite database, its -wal and
-shm, created by the pipe, the CLI, the milter and the API, each under ``umask 000``;
and ``doctor``'s warning about store files readable by others.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from fastapi.testclient import TestClient

from bouncetrack.api.app import create_app
from bouncetrack.core.config import Config
from bouncetrack.core.config_loader import load_config
from bouncetrack.doctor.checks import OK, WARN
from bouncetrack.doctor.cli import check_store_files
from bouncetrack.store.sqlite import STORE_FILE_MODE, SQLiteStore
from bouncetrack.core.tokens import hash_api_token, load_keyring
from tests.configkit import write_config

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "tok-modes"


@pytest.fixture()
def config(tmp_path: Path) -> Config:
    etc = tmp_path / "etc"
    etc.mkdir()
    first = write_config(etc, f"""\
        domains:
          a.test: {{api_tokens: ["{hash_api_token(TOKEN)}"], suppression: {{policy: reject}}}}
        """)
    # the store in a directory of its own, created by whoever opens the store first
    first.path.write_text(first.path.read_text().replace(f"sqlite:///{etc}/bt.db", f"sqlite:///{tmp_path}/state/bt.db"))
    config = load_config(first.path)
    load_keyring(config)  # the key file exists before the processes start
    return config


def db_path(config: Config) -> Path:
    return Path(config.store_url.removeprefix("sqlite:///"))


@pytest.fixture()
def umask_000() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def modes(db: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in db.parent.iterdir() if p.name.startswith(db.name)}


def run_umask_000(argv: list[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, cwd=ROOT, preexec_fn=lambda: os.umask(0), capture_output=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_store_open_in_process_umask_000(config: Config, umask_000: None) -> None:
    store = SQLiteStore.from_url(config.store_url)
    try:
        db = db_path(config)
        # while a connection is open, WAL mode keeps -wal and -shm beside the file
        assert modes(db) == {"bt.db": 0o600, "bt.db-wal": 0o600, "bt.db-shm": 0o600}
        assert stat.S_IMODE(db.parent.stat().st_mode) == 0o750
    finally:
        store.close()
    assert STORE_FILE_MODE == 0o600


def test_api_creates_the_store_0600(config: Config, umask_000: None) -> None:
    with TestClient(create_app(config)) as c:
        assert c.get("/v1/suppressions", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert set(modes(db_path(config)).values()) == {0o600}


def test_cli_creates_the_store_0600(config: Config) -> None:
    proc = run_umask_000([sys.executable, "-m", "bouncetrack", "purge", "--config", str(config.path), "--dry-run"])
    assert proc.returncode == 0, proc.stderr
    assert set(modes(db_path(config)).values()) == {0o600}


def test_pipe_creates_the_store_0600(config: Config, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    report = b"From: MAILER-DAEMON@remote.test\r\nTo: b+x@bounce.test\r\nSubject: failure\r\n\r\nnot a DSN\r\n"
    proc = subprocess.run(
        [sys.executable, "-m", "bouncetrack.bounce_pipe", "--config", str(config.path), "b+x@bounce.test", ""],
        input=report, cwd=ROOT, capture_output=True, timeout=60, preexec_fn=lambda: os.umask(0),
        env={**os.environ, "PYTHONPATH": str(ROOT), "BOUNCETRACK_CACHE_DIR": str(cache)},
    )
    assert proc.returncode in (0, 75), proc.stderr
    assert db_path(config).exists()
    assert set(modes(db_path(config)).values()) == {0o600}


def test_milter_creates_the_store_0600(config: Config) -> None:
    # Under umask 000 (the runner sets it itself later, for its socket); the suppression
    # list (policy reject) makes the milter open the store as it starts.
    proc = subprocess.Popen([sys.executable, "-m", "bouncetrack", "milter", "--config", str(config.path)],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=lambda: os.umask(0),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not (db_path(config).exists() and config.milter_socket.exists()):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
            assert time.monotonic() < deadline, "the milter did not start"
            time.sleep(0.1)
        assert set(modes(db_path(config)).values()) == {0o600}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def test_doctor_warns_about_store_files_readable_by_others(config: Config) -> None:
    assert check_store_files(config) == []  # no store yet: nothing to say
    SQLiteStore.from_url(config.store_url).close()
    (result,) = check_store_files(config)
    assert result.verdict == OK
    db_path(config).chmod(0o644)
    (result,) = check_store_files(config)
    assert result.verdict == WARN and f"{db_path(config)} 0644" in result.why
    assert result.fix == f"chmod 600 {db_path(config)}"
