"""``bouncetrack check-address ADDR…``: can these addresses receive mail? (issue 19)

One tab-separated line per address: the address (canonical form; the input, escaped,
when its syntax failed), the verdict (valid, invalid, suppressed, unknown), the check
that failed (syntax, domain, provider, suppression, dns; ``-`` when valid) and why.
``-`` reads the addresses from stdin, one a line (``#`` comments and blank lines
skipped), and answers as it reads. Exit status: 0 when every address is valid, 1
otherwise. DNS only (MX, A/AAAA): never a connection to port 25. See
:mod:`bouncetrack.validation`.
"""

from __future__ import annotations

# Lazy imports: a command imports what it runs when it runs, so that every `bouncetrack` command
# starts without the others' dependencies (PyYAML, FastAPI, libmilter, psycopg, flanker).

import json
import sys
from typing import Iterator

import click


def _inputs(addresses: tuple[str, ...]) -> Iterator[str]:
    if addresses != ("-",):
        yield from addresses
        return
    for line in sys.stdin:
        item = line.rstrip("\r\n") if len(line) < 10_000 else line[:10_000]
        if item.strip() and not item.lstrip().startswith("#"):
            yield item


def _shown(text: str) -> str:
    """One line of output whatever the input held (control characters escaped)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:200])


@click.command("check-address")
@click.option("--config", "config_file", default=None,
              help="YAML configuration: its validation: settings, and the store for --domain.")
@click.option("--domain", "domains", multiple=True,
              help="Also check this sender domain's suppression list (repeatable; needs --config).")
@click.option("--nameserver", default=None, help="Ask this DNS server (IP or IP:port) instead of the system's.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="DNS timeout in seconds (default: validation.dns_timeout, 5).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line instead of tab-separated text.")
@click.argument("addresses", nargs=-1, required=True)
def check_address_command(config_file: str | None, domains: tuple[str, ...], nameserver: str | None,
                          timeout: float | None, as_json: bool, addresses: tuple[str, ...]) -> None:
    """Check ADDRESS… (or - for stdin): syntax, the domain's MX/A records, the mailbox
    provider's rules and, with --domain, the suppression lists."""
    from ..core.addresses import AddressError, parse_domain
    from ..core.config import ValidationConfig
    from . import VALID, build_validator, store_suppressed

    settings = ValidationConfig()
    store = None
    if config_file is not None:
        from ..core.config_loader import load_or_exit

        config = load_or_exit(config_file, status=2)
        settings = config.validation
    scope: list[str] = []
    for d in domains:
        try:
            scope.append(parse_domain(d))
        except AddressError as exc:
            raise click.BadParameter(f"{d[:100]!r}: {exc}", param_hint="--domain") from None
    if scope:
        if config_file is None:
            raise click.UsageError("--domain needs --config (the store holding the suppression lists)")
        from ..store import StoreUnavailable, open_store

        try:
            store = open_store(config.store_url)
        except StoreUnavailable as exc:
            raise click.ClickException(str(exc)) from None
    validator = build_validator(settings, nameserver=nameserver, timeout=timeout,
                                suppressed=store_suppressed(store, scope) if store is not None else None)
    ok = True
    try:
        for raw in _inputs(addresses):
            v = validator.check(raw)
            ok = ok and v.verdict == VALID
            if as_json:
                click.echo(json.dumps(v.as_dict(), ensure_ascii=True))
            else:
                click.echo("\t".join((v.address or _shown(raw), v.verdict, v.check or "-", _shown(v.reason))))
    finally:
        if store is not None:
            store.close()
    sys.exit(0 if ok else 1)
