"""``bouncetrack api``: serve the HTTP API with uvicorn."""

from __future__ import annotations

# Lazy imports: a command imports what it runs when it runs, so that every `bouncetrack` command
# starts without the others' dependencies (PyYAML, FastAPI, libmilter, psycopg, flanker).

import logging
import signal
from pathlib import Path
from types import FrameType

import click

from ..core.config import DEFAULT_CONFIG_PATH


@click.command("api")
@click.option("--config", "config_path", default=DEFAULT_CONFIG_PATH, show_default=True, type=click.Path(path_type=Path),
              help="YAML configuration")
@click.option("--listen", default=None, help="host:port (default: api_listen from the configuration)")
def api_command(config_path: Path, listen: str | None) -> None:
    """Serve the HTTP API (download, send, dashboard, /metrics); SIGHUP reloads the configuration."""
    import uvicorn

    from .. import __version__
    from ..core.config_loader import load_or_exit
    from ..core.known_secrets import known_secret_problems
    from ..core.logsetup import setup
    from ..core.redact import config_secrets, register
    from ..core.reload import RESTART_ONLY, on_sighup, reload_config
    from .app import create_app
    from .server import server_config

    config = load_or_exit(config_path)
    setup("api", config.log_level)
    register(config_secrets(config))
    log = logging.getLogger("bouncetrack.api")
    app = create_app(config)
    ctx = app.state.ctx
    # Runs in the main thread, between two steps of the event loop: requests see
    # either the old configuration or the new one, never a mix.
    on_sighup(lambda: reload_config(config_path, ctx.config, ctx.apply, RESTART_ONLY["api"], log))
    # uvicorn shuts down on SIGTERM/SIGINT, then re-raises the signal to the handler it
    # found: this one, so that the process ends normally and logs its stop line.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_quietly)
    for line in known_secret_problems(config):  # issue 16: loudly, but mail flow goes on
        log.error("%s: %s", config_path, line)
    host, _, port = (listen or config.api_listen).rpartition(":")
    log.info("bouncetrack api %s starting, configuration %s, listening on %s", __version__, config_path,
             listen or config.api_listen)
    try:
        uvicorn.Server(server_config(app, config, host or "127.0.0.1", int(port))).run()
    finally:
        log.info("bouncetrack api stopped")


def _exit_quietly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)
