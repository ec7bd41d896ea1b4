"""``bouncetrack api``: serve the HTTP API with uvicorn."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import DEFAULT_CONFIG_PATH


@click.command("api")
@click.option("--config", "config_path", default=DEFAULT_CONFIG_PATH, show_default=True, type=click.Path(path_type=Path),
              help="YAML configuration")
@click.option("--listen", default=None, help="host:port (default: api_listen from the configuration)")
def api_command(config_path: Path, listen: str | None) -> None:
    """Serve the HTTP API (download, send, dashboard, /metrics)."""
    import uvicorn

    from ..config import ConfigError
    from ..config_loader import load_config
    from .app import create_app
    from .server import server_config

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise click.ClickException(f"invalid configuration:\n{exc}") from None
    host, _, port = (listen or config.api_listen).rpartition(":")
    uvicorn.Server(server_config(create_app(config), config, host or "127.0.0.1", int(port))).run()
