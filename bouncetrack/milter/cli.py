"""``bouncetrack milter``: the click command (registered by bouncetrack.cli)."""

from __future__ import annotations

# Lazy imports: a command imports what it runs when it runs, so that every `bouncetrack` command
# starts without the others' dependencies (PyYAML, FastAPI, libmilter, psycopg, flanker).

from pathlib import Path

import click

from ..core.config import DEFAULT_CONFIG_PATH


@click.command("milter")
@click.option("--config", "config_path", default=DEFAULT_CONFIG_PATH, show_default=True, type=click.Path(path_type=Path),
              help="YAML configuration")
@click.option("--no-supervisor", is_flag=True, help="Run libmilter in this process (no SIGHUP reload).")
@click.option("--log-level", default=None, help="Override the configured log level (DEBUG, INFO, …).")
def milter_command(config_path: Path, no_supervisor: bool, log_level: str | None) -> None:
    """Run the tracking milter on the configured unix socket."""
    from ..core.logsetup import setup
    from .runner import main

    setup("milter", log_level or "INFO")
    raise SystemExit(main(config_path.resolve(), foreground_child=no_supervisor))
