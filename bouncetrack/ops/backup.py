"""``bouncetrack backup --config F DEST``: an online, consistent copy of a SQLite store.

SQLite's backup API copies the database page by page inside one read transaction
(``pages=-1``: one step). In WAL mode a reader never blocks the writers, so the
milter, the pipe and the worker go on while the copy is made, and the copy is the
database as of one instant: every transaction in it whole, none half. A copy made
with ``cp`` while they write (the ``-wal`` file holds the newest pages) can miss
committed transactions or be torn.

The copy is written beside DEST, checked (``PRAGMA quick_check`` and
``foreign_key_check``), flushed to disk and renamed into place, mode 0600: a
failed backup never leaves a partial file under DEST's name.

A PostgreSQL store is backed up with PostgreSQL's own tools (``pg_dump``); README's
"Backup and restore" gives the commands.
"""

from __future__ import annotations

# Lazy imports: a command imports what it runs when it runs, so that every `bouncetrack` command
# starts without the others' dependencies (PyYAML, FastAPI, libmilter, psycopg, flanker).

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import click

from ..core.config import DEFAULT_CONFIG_PATH


@dataclass(frozen=True)
class BackupResult:
    dest: Path
    size: int
    schema_version: int
    events: int
    messages: int
    seconds: float


class BackupError(Exception):
    """The copy could not be made or did not check out; nothing is left under DEST."""


def backup_sqlite(source: str, dest: Path, *, timeout: float = 30.0) -> BackupResult:
    """Copy the SQLite database at ``source`` to ``dest`` (which must not exist), online.

    Guarantee: on success ``dest`` is a complete, checked copy of ``source`` as of one
    instant; on failure nothing exists at ``dest``.
    """
    if dest.exists():
        raise BackupError(f"{dest} exists: choose a new file (a backup never overwrites)")
    if not Path(source).is_file():
        raise BackupError(f"no SQLite store at {source}")
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.partial")
    started = time.monotonic()
    # Opened read-write (WAL readers need the -shm); the backup only reads it.
    src = sqlite3.connect(source, timeout=timeout)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        dst = sqlite3.connect(tmp)
        try:
            src.backup(dst, pages=-1)  # one step: one read transaction, a consistent copy
            problems = [r[0] for r in dst.execute("PRAGMA quick_check").fetchall() if r[0] != "ok"]
            problems += [repr(r) for r in dst.execute("PRAGMA foreign_key_check").fetchall()]
            if problems:
                raise BackupError(f"the copy does not check out: {'; '.join(problems[:5])}")
            version = dst.execute("SELECT max(version) FROM schema_migrations").fetchone()[0]
            events = dst.execute("SELECT count(*) FROM events").fetchone()[0]
            messages = dst.execute("SELECT count(*) FROM messages").fetchone()[0]
        finally:
            dst.close()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        directory = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except (sqlite3.Error, OSError) as exc:
        raise BackupError(f"backup of {source} failed: {exc}") from exc
    finally:
        src.close()
        for leftover in (tmp, Path(f"{tmp}-journal")):
            try:
                leftover.unlink()
            except FileNotFoundError:
                pass
    return BackupResult(dest, dest.stat().st_size, int(version or 0), int(events), int(messages),
                        time.monotonic() - started)


@click.command("backup")
@click.option("--config", "config_file", default=DEFAULT_CONFIG_PATH, show_default=True, help="YAML configuration.")
@click.argument("dest", type=click.Path(path_type=Path))
def backup_command(config_file: str, dest: Path) -> None:
    """Copy the SQLite store to DEST while bouncetrack runs (consistent, checked, mode 0600)."""
    from ..core.config_loader import load_or_exit
    from ..core.redact import redact_url
    from ..store.sqlite import parse_url

    config = load_or_exit(config_file)
    if not config.store_url.startswith("sqlite:"):
        raise click.ClickException(
            f"the store is {redact_url(config.store_url)}: back it up with pg_dump "
            "(README: Backup and restore)")
    try:
        result = backup_sqlite(parse_url(config.store_url), dest.absolute())
    except BackupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"backed up to {result.dest}: {result.size} bytes, schema version {result.schema_version}, "
               f"{result.events} events, {result.messages} messages, {result.seconds:.1f} s")


__all__ = ["BackupError", "BackupResult", "backup_command", "backup_sqlite"]
