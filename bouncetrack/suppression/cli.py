"""``bouncetrack suppression list|add|remove``: the suppression lists by hand (issue 6).

An operator's tool, so unlike the API it is not scoped: without ``--domain`` it
lists, or removes from, every domain's list. The milter picks changes up within
its refresh interval (a few seconds); nothing needs reloading.
"""

from __future__ import annotations

# Lazy imports: a command imports what it runs when it runs, so that every `bouncetrack` command
# starts without the others' dependencies (PyYAML, FastAPI, libmilter, psycopg, flanker).

import sys
import time
from typing import Any

import click

from ..core.config import DEFAULT_CONFIG_PATH, SUPPRESSION_OFF, Config
from ..store.base import REASON_MANUAL
from ..store.views import Suppression
from ..core.addresses import AddressError, parse_address, parse_domain

DAY = 86400.0


def _iso(ts: float | None) -> str:
    if ts is None:
        return "never"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


HEADER = ("DOMAIN", "ADDRESS", "REASON", "LISTED", "EXPIRES", "STATE", "SOURCE_EVENT")


def _load(config_file: str) -> Config:
    from ..core.config_loader import load_or_exit  # PyYAML: only for the command that runs

    return load_or_exit(config_file)


def _open(config_file: str, config: Config | None = None) -> Any:
    from ..store import StoreUnavailable, open_store

    config = config if config is not None else _load(config_file)
    try:
        return open_store(config.store_url)
    except StoreUnavailable as exc:
        raise click.ClickException(str(exc)) from None


def check_domain_used(config: Config, domain: str) -> None:
    """Refuse a list nobody reads: ``domain`` must be under ``domains:``, or the
    ``default`` entry's policy must use the lists (then every domain's is read)."""
    if domain in config.domains or config.default.suppression.policy != SUPPRESSION_OFF:
        return
    known = ", ".join(sorted(config.domains)) or "none"
    raise click.ClickException(
        f"{domain} is not a configured domain (domains: {known}) and the default entry's "
        "suppression policy is off: nothing would ever read this list. Add the domain under "
        "domains: (with a suppression policy) first, or check its spelling.")


def _addresses(raw: tuple[str, ...]) -> list[str]:
    """The list keys of ADDRESS… (``-``: one address a line on stdin, a bulk import);
    any refusal stops the command before the store is opened."""
    out: list[str] = []
    bad: list[str] = []
    items = [line.strip() for line in sys.stdin] if raw == ("-",) else list(raw)
    for i, a in enumerate(items):
        if raw == ("-",) and (not a or a.startswith("#")):
            continue
        try:
            out.append(parse_address(a).key)
        except AddressError as exc:
            where = f"line {i + 1}: " if raw == ("-",) else ""
            bad.append(f"{where}{a[:100]!r}: {exc}")
    if bad:
        more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
        raise click.ClickException("not an email address: " + "; ".join(bad[:10]) + more)
    return list(dict.fromkeys(out))


def _domain(raw: str) -> str:
    try:
        return parse_domain(raw)
    except AddressError as exc:
        raise click.BadParameter(f"{raw[:100]!r}: {exc}", param_hint="--domain") from None


_config = click.option("--config", "config_file", default=DEFAULT_CONFIG_PATH, show_default=True, help="YAML configuration.")


@click.group("suppression")
def suppression() -> None:
    """List, add and remove suppressed recipients (per sender domain)."""


@suppression.command("list")
@_config
@click.option("--domain", "domains", multiple=True, help="Only this sender domain (repeatable); default: all.")
@click.option("--all", "include_inactive", is_flag=True, help="Also expired and removed entries.")
@click.option("--limit", type=click.IntRange(1), default=None, help="At most this many lines.")
@click.option("--no-header", is_flag=True, help="Leave out the header line (for scripts).")
@click.argument("addresses", nargs=-1)
def list_command(
    config_file: str, domains: tuple[str, ...], include_inactive: bool, limit: int | None, no_header: bool,
    addresses: tuple[str, ...],
) -> None:
    """Print entries: domain, address, reason, listed, expires, state, source event (tab-separated,
    after a header line)."""
    store = _open(config_file)
    wanted = _addresses(addresses) if addresses else [None]
    scope = [_domain(d) for d in domains] or None
    now = time.time()
    shown = 0
    if not no_header:
        click.echo("\t".join(HEADER))
    try:
        for address in wanted:
            after = 0
            while limit is None or shown < limit:
                rows: list[Suppression] = store.suppressions(
                    scope, now, address=address, after_id=after, limit=1000, include_inactive=include_inactive
                )
                for s in rows:
                    if limit is not None and shown >= limit:
                        break
                    state = "active" if s.active(now) else ("removed" if s.removed_at is not None else "expired")
                    click.echo("\t".join(
                        (s.domain, s.address, s.reason, _iso(s.created_at), _iso(s.expires_at), state,
                         s.source_event_id or "-")
                    ))
                    shown += 1
                if len(rows) < 1000:
                    break
                after = rows[-1].id or 0
    finally:
        store.close()
    if shown == 0:
        click.echo("no entries", err=True)


@suppression.command("add")
@_config
@click.option("--domain", required=True, help="Sender domain whose list gets the addresses.")
@click.option("--reason", default=REASON_MANUAL, show_default=True, help="Why (free text).")
@click.option("--expire-days", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Expire after this many days (default: never).")
@click.argument("addresses", nargs=-1, required=True)
def add_command(config_file: str, domain: str, reason: str, expire_days: float | None, addresses: tuple[str, ...]) -> None:
    """Suppress ADDRESS… for mail from --domain (replaces an existing entry); ``-`` reads
    the addresses from stdin, one a line (a bulk import: all or nothing)."""
    wanted = _addresses(addresses)
    name = _domain(domain)
    config = _load(config_file)
    check_domain_used(config, name)
    store = _open(config_file, config)
    now = time.time()
    expires = None if expire_days is None else now + expire_days * DAY
    try:
        n = store.add_suppressions([Suppression(name, a, reason, None, now, expires) for a in wanted])
    finally:
        store.close()
    click.echo(f"added {n} to {name} (expires {_iso(expires)})")


@suppression.command("remove")
@_config
@click.option("--domain", "domains", multiple=True, help="Only from this sender domain (repeatable); default: all.")
@click.argument("addresses", nargs=-1, required=True)
def remove_command(config_file: str, domains: tuple[str, ...], addresses: tuple[str, ...]) -> None:
    """Remove ADDRESS… from the lists (exit 1 when none of them was listed)."""
    wanted = _addresses(addresses)
    store = _open(config_file)
    try:
        removed = store.remove_suppressions([_domain(d) for d in domains] or None, wanted, time.time())
    finally:
        store.close()
    for domain, address in removed:
        click.echo(f"removed {address} from {domain}")
    missing = set(wanted) - {a for _, a in removed}
    for address in sorted(missing):
        click.echo(f"not listed: {address}", err=True)
    if not removed:
        sys.exit(1)
