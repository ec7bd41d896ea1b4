"""``bouncetrack pipe-server``: the click command (registered by bouncetrack.cli)."""

from __future__ import annotations

# Lazy imports: a command imports what it runs when it runs, so that every `bouncetrack` command
# starts without the others' dependencies (PyYAML, FastAPI, libmilter, psycopg, flanker).

from pathlib import Path

import click

from ..core.config import DEFAULT_CONFIG_PATH


@click.command("pipe-server")
@click.option("--socket", "socket_path", required=True, type=click.Path(path_type=Path),
              help="Unix socket the pipe client (master.cf) connects to, e.g. /run/bouncetrack/pipe.sock")
@click.option("--config", "config_path", default=DEFAULT_CONFIG_PATH, show_default=True, type=click.Path(path_type=Path),
              help="YAML configuration: read only to warm up the store backend; each bounce reads it anew.")
@click.option("--log-level", default="INFO", help="DEBUG, INFO, WARNING…")
def pipe_server_command(socket_path: Path, config_path: Path | None, log_level: str) -> None:
    """Serve the bounce pipe warm: Postfix's pipe client hands each bounce over a unix socket."""
    from ..core.logsetup import setup
    from .server import serve

    setup("pipe-server", log_level)
    raise SystemExit(serve(socket_path.absolute(), str(config_path) if config_path else None))
