"""``bouncetrack worker`` and ``bouncetrack outbox list|replay`` (click).

:mod:`bouncetrack.cli` registers :data:`worker` and :data:`outbox` on the main
group. Exit codes follow :mod:`bouncetrack.cli`: 1 for an invalid
configuration, an unavailable store or unknown job ids (a ``ClickException``),
2 for usage errors. A running worker does not exit when the store becomes
unavailable: it logs and retries.
"""

from __future__ import annotations

# Lazy imports: a command imports what it runs when it runs, so that every `bouncetrack` command
# starts without the others' dependencies (PyYAML, FastAPI, libmilter, psycopg, flanker).

import logging
import sys
import time
from typing import Callable, Iterator, Sequence, TypeVar

import click

from ..core.config import DEFAULT_CONFIG_PATH, Config
from ..core.events import iso_utc
from ..core.known_secrets import known_secret_problems
from ..store.base import OutboxJob, StoreUnavailable
from ..store.interfaces import Store

T = TypeVar("T")


def _load(config_path: str) -> Config:
    from ..core.config_loader import load_or_exit  # PyYAML: only for the command that runs

    return load_or_exit(config_path)


def _with_store(config: Config, action: Callable[[Store], T]) -> T:
    from ..store import open_store

    try:
        store = open_store(config.store_url)
    except StoreUnavailable as exc:
        raise click.ClickException(f"store unavailable: {exc}") from exc
    try:
        return action(store)
    except StoreUnavailable as exc:
        raise click.ClickException(f"store unavailable: {exc}") from exc
    finally:
        store.close()


_config_option = click.option(
    "--config",
    "config_path",
    default=DEFAULT_CONFIG_PATH,
    show_default=True,
    type=click.Path(dir_okay=False),
    envvar="BOUNCETRACK_CONFIG",
    help="The configuration file.",
)


@click.command("worker")
@_config_option
@click.option("--once", is_flag=True, help="Deliver the jobs due now, then exit.")
def worker(config_path: str, once: bool) -> None:
    """Deliver outbox jobs (webhooks, SMTP forwards) with retries; stop on SIGTERM, reload on SIGHUP."""
    from .. import __version__
    from ..core.logsetup import setup
    from ..core.redact import config_secrets, register
    from .worker import run_worker

    config = _load(config_path)
    setup("worker", config.log_level)
    register(config_secrets(config))
    log = logging.getLogger("bouncetrack.worker")
    log.info("bouncetrack worker %s starting, configuration %s", __version__, config_path)
    for line in known_secret_problems(config):  # issue 16: loudly, but deliveries go on
        log.error("%s: %s", config_path, line)
    try:
        stats = _with_store(config, lambda store: run_worker(config, store, once=once, config_path=config_path))
    finally:
        log.info("bouncetrack worker stopped")
    if once:
        click.echo(
            f"delivered {stats.delivered}, retrying {stats.retried}, dead {stats.dead}"
            + (f", store errors {stats.store_errors}" if stats.store_errors else "")
        )
        if stats.store_errors:
            raise click.ClickException("the store was unavailable; some jobs were not processed")


@click.group("outbox")
def outbox() -> None:
    """Inspect and replay outbox jobs (webhook and SMTP deliveries)."""


def _shorten(text: str | None, width: int) -> str:
    if not text:
        return "-"
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def format_jobs(jobs: Sequence[OutboxJob]) -> Iterator[str]:
    """The ``outbox list`` table, one line per job (header first)."""
    header = ("ID", "EVENT", "CHANNEL", "TARGET", "STATE", "ATTEMPTS", "NEXT ATTEMPT", "LAST ERROR")
    rows = [
        (
            str(j.id),
            j.event_id,
            j.channel,
            _shorten(j.target, 40),
            j.state,
            str(j.attempts),
            (iso_utc(j.next_attempt_at) or "-") if j.state == "pending" else "-",
            _shorten(j.last_error, 60),
        )
        for j in jobs
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        yield "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()


@outbox.command("list")
@_config_option
@click.option("--state", type=click.Choice(["pending", "delivered", "dead"]), default=None)
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
def list_jobs(config_path: str, state: str | None, limit: int) -> None:
    """List jobs, newest first."""
    config = _load(config_path)
    jobs = _with_store(config, lambda store: store.jobs(state=state, limit=limit))
    for line in format_jobs(jobs):
        click.echo(line)


def replay(store: Store, ids: Sequence[int], all_dead: bool, now: float) -> tuple[list[int], list[int]]:
    """Make jobs pending and due now, attempts reset; returns (replayed, unknown ids)."""
    done: list[int] = []
    missing: list[int] = []
    for job_id in ids:
        (done if store.replay_job(job_id, now) else missing).append(job_id)
    if all_dead:
        while True:
            batch = [j.id for j in store.jobs(state="dead", limit=500) if j.id is not None]
            progressed = False
            for job_id in batch:
                if store.replay_job(job_id, now):
                    done.append(job_id)
                    progressed = True
            if not batch or not progressed:
                break
    return done, missing


@outbox.command("replay")
@_config_option
@click.option("--all-dead", is_flag=True, help="Replay every dead job.")
@click.argument("ids", nargs=-1, type=int)
def replay_cmd(config_path: str, all_dead: bool, ids: tuple[int, ...]) -> None:
    """Make jobs pending again (due now, attempts reset): IDs, or --all-dead."""
    if not ids and not all_dead:
        raise click.UsageError("give job IDs or --all-dead")
    config = _load(config_path)
    done, missing = _with_store(config, lambda store: replay(store, ids, all_dead, time.time()))
    click.echo(f"replayed {len(done)} job(s)" + (f": {' '.join(map(str, done))}" if done and len(done) <= 20 else ""))
    if missing:
        click.echo(f"no such job: {' '.join(map(str, missing))}", err=True)
        sys.exit(1)


__all__ = ["format_jobs", "outbox", "replay", "worker"]
