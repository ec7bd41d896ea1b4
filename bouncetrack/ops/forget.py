"""Forgetting one address (issue 16): ``bouncetrack forget ADDRESS`` and ``DELETE /v1/addresses/{address}``.

What goes, in one transaction (:meth:`bouncetrack.store.sql.SQLStore.forget_address`,
SQLite and PostgreSQL alike):

- every event whose recipient or reported recipient is the address (compared
  case-insensitively), with its outbox jobs (a webhook not yet sent is not sent);
- the raw report bodies of those events (the report rows stay, bodiless, to keep
  deduplicating retries; a report about several recipients loses its body for all);
- the recipient rows of tracked messages naming it (address or ORCPT);
- its suppression entries, which become tombstones whose address is a pseudonym
  (:func:`bouncetrack.suppression.forgotten_address`, a 64-bit hash of domain and
  address) with a new change number: milters follow the change feed and stop
  suppressing it within their refresh interval, and the row no longer names it.

What stays: counters without addresses (metrics, daily sent counts), messages
themselves (sender, token, Message-ID), and raw reports of other events that
merely mention the address. The answer says how many rows of each kind went.
"""

from __future__ import annotations

# Lazy imports: a command imports what it runs when it runs, so that every `bouncetrack` command
# starts without the others' dependencies (PyYAML, FastAPI, libmilter, psycopg, flanker).

import time
from dataclasses import fields
from typing import Sequence

import click

from ..core.config import DEFAULT_CONFIG_PATH
from ..store.interfaces import Store
from ..store.views import ForgetCounts
from ..suppression import forgotten_address


def forget(store: Store, address: str, domains: Sequence[str] | None, now: float | None = None) -> ForgetCounts:
    """Delete what ``store`` holds about ``address`` (the list key: lower-case) within ``domains``
    (None: every domain, unattributed events included); the counts of what went."""
    return store.forget_address(address, domains, time.time() if now is None else now, forgotten_address)


def counts_dict(counts: ForgetCounts) -> dict[str, int]:
    return {f.name: int(getattr(counts, f.name)) for f in fields(counts)}


@click.command("forget")
@click.argument("address")
@click.option("--config", "config_file", default=DEFAULT_CONFIG_PATH, show_default=True, help="YAML configuration.")
@click.option("--domain", "domains", multiple=True, help="Only within this sender domain (repeatable; default: all).")
def forget_command(address: str, config_file: str, domains: tuple[str, ...]) -> None:
    """Delete everything the store holds about ADDRESS; print what went (tab-separated)."""
    from ..core.addresses import AddressError, parse_address, parse_domain
    from ..core.config_loader import load_or_exit
    from ..store import StoreUnavailable, open_store

    try:
        key = parse_address(address).key
        scope = tuple(parse_domain(d) for d in domains) or None
    except AddressError as exc:
        raise click.ClickException(f"{address!r}: {exc}") from None
    config = load_or_exit(config_file)
    try:
        store = open_store(config.store_url)
        try:
            counts = forget(store, key, scope)
        finally:
            store.close()
    except StoreUnavailable as exc:
        raise click.ClickException(str(exc)) from None
    for name, n in counts_dict(counts).items():
        click.echo(f"deleted\t{name}\t{n}")
