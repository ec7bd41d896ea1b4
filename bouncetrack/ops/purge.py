"""``bouncetrack purge --config F [--dry-run]``: retention by hand (issue 6).

Prints the cutoffs, then one line per kind of row (tab-separated: verb, kind,
count), counted (``--dry-run``: nothing is deleted) or deleted. With
``retention.automatic`` the worker runs the same purge once a day; otherwise run
this from cron. See :mod:`bouncetrack.ops.retention` for what goes and what stays.
"""

from __future__ import annotations

# Lazy imports: a command imports what it runs when it runs, so that every `bouncetrack` command
# starts without the others' dependencies (PyYAML, FastAPI, libmilter, psycopg, flanker).

import time
from dataclasses import fields

import click

from . import retention
from ..core.config import DEFAULT_CONFIG_PATH


def _iso(ts: float | None) -> str:
    if ts is None:
        return "never (kept forever)"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@click.command("purge")
@click.option("--config", "config_file", default=DEFAULT_CONFIG_PATH, show_default=True, help="YAML configuration.")
@click.option("--dry-run", "dry", is_flag=True, help="Only count what would be deleted.")
@click.option("--batch-size", type=click.IntRange(1, 10000), default=None,
              help="Rows per transaction (default: retention.batch_size).")
def purge_command(config_file: str, dry: bool, batch_size: int | None) -> None:
    """Delete raw reports, events and messages past their retention periods."""
    from ..core.config_loader import load_or_exit
    from ..store import StoreUnavailable, open_store

    config = load_or_exit(config_file)
    cut = retention.cutoffs(config, time.time())
    try:
        store = open_store(config.store_url)
        try:
            if dry:
                counts = retention.dry_run(store, cut)
            else:
                counts = retention.purge(store, cut, batch_size or config.retention.batch_size)
        finally:
            store.close()
    except StoreUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    verb = "would delete" if dry else "deleted"
    click.echo(f"cutoff\traw_bodies\t{_iso(cut.raw_before)}")
    click.echo(f"cutoff\tevents\t{_iso(cut.events_before)}")
    click.echo(f"cutoff\tmessages\t{_iso(cut.messages_before)}")
    for f in fields(counts):
        if f.name == "events_kept_pending":
            click.echo(f"kept\tevents_pending_delivery\t{counts.events_kept_pending}")
        else:
            click.echo(f"{verb}\t{f.name}\t{getattr(counts, f.name)}")
