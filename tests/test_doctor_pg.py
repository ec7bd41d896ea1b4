"""``bouncetrack doctor``'s store check on a PostgreSQL store (issue 6), against the
private cluster of tests/pg.py: a fresh database (schema not created yet: WARN), a
migrated one (OK, the probe row rolled back), a role that may only read (FAIL), a
server that is not there (FAIL within the timeout), and the whole command."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from bouncetrack.cli import build_cli
from bouncetrack.core.config import Config
from bouncetrack.core.config_loader import load_config_text
from bouncetrack.doctor.checks import FAIL, OK, WARN
from bouncetrack.doctor.cli import check_pg_store
from bouncetrack.store import open_store
from tests.pg import Cluster, pg_cluster  # noqa: F401  (fixture)


def config_for(tmp_path: Path, url: str) -> Config:
    text = f"bounce_domain: bounce.test\nsecret_file: {tmp_path}/verp.key\nstore: {url}\n"
    (tmp_path / "bt.yaml").write_text(text)
    return load_config_text(text, tmp_path / "bt.yaml")


def test_fresh_then_migrated_database(tmp_path: Path, pg_cluster: Cluster) -> None:
    url = pg_cluster.create_database()
    r = check_pg_store(config_for(tmp_path, url))
    assert r.verdict == WARN and "schema not created yet" in r.why, r.line()
    with psycopg.connect(url) as conn:  # the probe table was rolled back
        assert conn.execute("SELECT to_regclass('bouncetrack_doctor_probe')").fetchone() == (None,)
    open_store(url).close()  # what the milter does at start
    r = check_pg_store(config_for(tmp_path, url))
    assert r.verdict == OK and "accepts writes" in r.why, r.line()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT count(*) FROM raw_reports").fetchone() == (0,)


def test_read_only_role_fails(tmp_path: Path, pg_cluster: Cluster) -> None:
    url = pg_cluster.create_database()
    open_store(url).close()
    role = f"ro_{url.rsplit('_', 1)[-1]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN".encode())
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}".encode())
    ro_url = url.replace("postgres@", f"{role}@")
    r = check_pg_store(config_for(tmp_path, ro_url))
    assert r.verdict == FAIL and "refuses a write" in r.why and "permission denied" in r.why, r.line()


def test_server_not_there_fails_within_the_timeout(tmp_path: Path, pg_cluster: Cluster) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    started = time.monotonic()
    r = check_pg_store(config_for(tmp_path, f"postgresql://postgres@127.0.0.1:{port}/nope"))
    assert r.verdict == FAIL and "cannot connect" in r.why, r.line()
    assert time.monotonic() - started < 12


def test_doctor_command_reports_the_postgresql_store(tmp_path: Path, pg_cluster: Cluster) -> None:
    url = pg_cluster.create_database()
    open_store(url).close()
    config_for(tmp_path, url)
    r = CliRunner().invoke(build_cli(), ["doctor", "--config", str(tmp_path / "bt.yaml"), "--no-dns",
                                         "--pipe-user", "no-such-user-bt"])
    store_lines = [line for line in r.output.splitlines() if " store:" in line]
    assert store_lines and store_lines[0].startswith("OK    store:"), r.output
    assert "postgresql://postgres@127.0.0.1" in store_lines[0]
