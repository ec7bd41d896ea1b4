"""The uvicorn settings ``bouncetrack api`` serves with (tests start the same)."""

from __future__ import annotations

from typing import Any

import uvicorn

from ..core.config import Config
from .edge import Edge
from ..core.logsetup import uvicorn_log_config


def server_config(app: Any, config: Config, host: str, port: int) -> uvicorn.Config:
    """uvicorn on h11 with the request head bounded by ``api.max_header_bytes``.

    h11, not httptools: h11 refuses a request head over the limit (400, the
    connection closed, nothing more buffered); httptools buffers header fields
    of any size (issue 16: one 100 MB header stalled every request for 7 s).
    uvloop stays (the event loop, not the parser; figures in README). The app is
    served behind :class:`~bouncetrack.api.edge.Edge`: the Host allow-list and the
    failed-auth limit.
    """
    return uvicorn.Config(
        Edge(app, lambda: app.state.ctx.config, host),  # the configuration now: SIGHUP changes it
        host=host,
        port=port,
        log_level=config.log_level.lower(),
        log_config=uvicorn_log_config(),  # its loggers go to the one handler (bouncetrack.core.logsetup)
        http="h11",
        h11_max_incomplete_event_size=config.api.max_header_bytes,
        loop="uvloop",
    )
