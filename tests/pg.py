"""A private PostgreSQL cluster for the test session (Debian's ``postgresql`` package).

``initdb`` into a temporary directory as the ``postgres`` user (PostgreSQL
refuses to run as root), ``pg_ctl start`` on a free loopback port with its unix
socket in that directory, trust authentication on loopback only. The system
cluster (``/var/lib/postgresql``, port 5432) is never touched. Stopped and
removed at the end of the session (and at interpreter exit, should the session
die first).

Use the ``pg_url`` fixture (a fresh, empty database per test) or ``pg_cluster``
(the cluster, to create databases yourself). Both skip, with the reason, when
the binaries, root, the ``postgres`` user or psycopg are missing.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from typing import Iterator

import pytest


def _bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return os.path.dirname(found[-1]) if found else None


def unavailable() -> str | None:
    """Why a private cluster cannot run here, or None."""
    if _bindir() is None:
        return "PostgreSQL binaries missing (/usr/lib/postgresql/*/bin/initdb; apt-get install postgresql)"
    if os.geteuid() != 0:
        return "a private PostgreSQL cluster needs root (initdb runs as the postgres user)"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no 'postgres' system user (installed by Debian's postgresql package)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg 3 is not installed (pip install 'psycopg[binary]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    bindir: str
    directory: str
    port: int
    # Tests trade durability for speed (fsync off); a benchmark measures PostgreSQL as
    # deployed: fsync and synchronous_commit on, the defaults.
    durable: bool = False
    _stopped: bool = False

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, prefix: str = "bt") -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.url(name)

    def _as_postgres(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv],
            capture_output=True, text=True, timeout=120, check=False, cwd="/",
        )

    def start(self) -> None:
        data = os.path.join(self.directory, "data")
        proc = self._as_postgres(
            os.path.join(self.bindir, "initdb"), "-D", data, "-U", "postgres",
            "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync",
        )
        if proc.returncode != 0:
            raise RuntimeError(f"initdb failed: {proc.stdout}{proc.stderr}")
        self.start_server()

    def start_server(self) -> None:
        """``pg_ctl start`` on the initialised data directory (also after :meth:`stop_server`)."""
        data = os.path.join(self.directory, "data")
        opts = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c max_connections=200"
        if not self.durable:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        proc = self._as_postgres(
            os.path.join(self.bindir, "pg_ctl"), "-D", data, "-o", opts,
            "-l", os.path.join(self.directory, "server.log"), "-w", "-t", "60", "start",
        )
        if proc.returncode != 0:
            log = ""
            try:
                with open(os.path.join(self.directory, "server.log")) as fh:
                    log = fh.read()[-2000:]
            except OSError:
                pass
            raise RuntimeError(f"pg_ctl start failed: {proc.stdout}{proc.stderr}{log}")

    def stop_server(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m mode``: the server goes away (sessions terminated), data kept;
        :meth:`start_server` brings it back on the same port (fault tests: a restart)."""
        data = os.path.join(self.directory, "data")
        proc = self._as_postgres(os.path.join(self.bindir, "pg_ctl"), "-D", data, "-m", mode, "-w", "stop")
        if proc.returncode != 0:
            raise RuntimeError(f"pg_ctl stop failed: {proc.stdout}{proc.stderr}")

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        data = os.path.join(self.directory, "data")
        if os.path.isdir(data):
            self._as_postgres(os.path.join(self.bindir, "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.directory, ignore_errors=True)


def start_cluster(*, durable: bool = False) -> Cluster:
    bindir = _bindir()
    assert bindir is not None
    # Not under pytest's tmp_path: /tmp/pytest-of-root is 0700 and postgres must enter it.
    directory = tempfile.mkdtemp(prefix="bouncetrack-pg-")
    os.chmod(directory, 0o700)
    pw = pwd.getpwnam("postgres")
    os.chown(directory, pw.pw_uid, pw.pw_gid)
    cluster = Cluster(bindir, directory, _free_port(), durable)
    atexit.register(cluster.stop)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    return cluster


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: Cluster) -> str:
    return pg_cluster.create_database()
