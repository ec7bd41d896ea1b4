"""``bouncetrack check-config``: validate a configuration file (exit 1 on problems)."""

from __future__ import annotations

import click

from ..core.config import Config
from ..core.config_loader import load_or_exit
from ..core.known_secrets import known_secret_problems
from ..core.redact import redact_url


def config_summary(config: Config) -> str:
    """One line: bounce domain, store, domains tracked/untracked, default tracking."""
    tracked = sorted(d for d, p in config.domains.items() if p.tracking)
    untracked = sorted(d for d, p in config.domains.items() if not p.tracking)
    n = len(config.domains)
    return (
        f"bounce domain {config.bounce_domain}, store {redact_url(config.store_url)}, "
        f"{n} domain{'s' if n != 1 else ''} (tracked: {', '.join(tracked) or 'none'}; "
        f"untracked: {', '.join(untracked) or 'none'}), "
        f"default tracking {'on' if config.default.tracking else 'off'}"
    )


@click.command("check-config")
@click.argument("file", type=click.Path(dir_okay=True, path_type=str))
def check_config(file: str) -> None:
    """Validate a config FILE (exit 1 on problems).

    Prints "ok" and a summary, or every problem, one per line, on stderr; API
    tokens and webhook secrets everybody knows (examples, "test") are problems.
    """
    config = load_or_exit(file)
    known = known_secret_problems(config)
    for line in known:  # issue 16: a secret everybody knows is refused
        click.echo(f"{file}: {line}", err=True)
    if known:
        raise SystemExit(1)
    click.echo(f"ok: {file}: {config_summary(config)}")
