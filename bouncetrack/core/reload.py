"""One reload story for every long-running process (issue 15): SIGHUP re-reads the YAML.

Each process (milter, pipe server, worker, API) calls :func:`reload_config` when it
gets SIGHUP (``systemctl reload``: every unit has ``ExecReload=/bin/kill -HUP
$MAINPID``). A configuration that does not load (YAML error, invalid value,
unreadable key file) is refused with one ERROR line and the running one is kept;
a good one is applied and logged. What a process can only take at start (the
addresses and sockets it listens on, the store it holds open) is named in a
WARNING line and applied at the next restart; README's "Reloading" table lists
it per process.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import FrameType
from typing import Callable, Sequence, TypeVar

from .config import Config, ConfigError
from .redact import config_secrets, register
from .tokens import KeyFileError

T = TypeVar("T")

# Configuration keys each process reads only at start.
RESTART_ONLY: dict[str, tuple[str, ...]] = {
    "milter": ("milter_socket", "milter_metrics_listen", "milter_journal"),
    "api": ("api_listen",),
    "worker": ("store_url",),
    # Its pipe socket is a command-line option; every bounce opens the store anew. Whether it
    # listens on LMTP, and where, is read at start (issue 21); the rest of pipe.lmtp applies
    # to the workers it starts after a reload (it replaces them all).
    "pipe-server": ("pipe.transport", "pipe.lmtp.socket"),
}

REFUSED = "reload refused, keeping the running configuration"


def load(config_path: str | Path) -> Config:
    """The configuration at ``config_path``, validated (raises ConfigError or OSError)."""
    # PyYAML only when a reload happens: the pipe server and the milter import this module at start.
    from .config_loader import load_config

    return load_config(config_path)


def reload_config(
    config_path: str | Path,
    current: Config | None,
    apply: Callable[[Config], T],
    restart_only: Sequence[str],
    log: logging.Logger,
) -> T | None:
    """Load ``config_path``; when it is valid, ``apply`` it and return what apply returned.

    ``current`` is the running configuration (None: none loaded yet).

    A configuration that fails to load, or that ``apply`` refuses by raising
    ConfigError, OSError or KeyFileError (e.g. its key file is unreadable), is
    logged as refused and None is returned: the process keeps ``current``.
    """
    try:
        new = load(config_path)
        result = apply(new)
    except (ConfigError, OSError, KeyFileError) as exc:
        log.error("%s (%s):\n%s", REFUSED, config_path, exc)
        return None
    for key in restart_only:
        if current is not None and _get(new, key) != _get(current, key):
            log.warning("%s changed: takes effect at the next restart", key)
    register(config_secrets(new))
    log.info("configuration reloaded from %s", config_path)
    return result


def _get(config: Config, dotted: str) -> object:
    """The value of a dotted key (``pipe.lmtp.socket``) of a configuration."""
    value: object = config
    for name in dotted.split("."):
        value = getattr(value, name)
    return value


def on_sighup(callback: Callable[[], object]) -> None:
    """Run ``callback`` on SIGHUP (main thread only, as every signal handler)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        callback()

    signal.signal(signal.SIGHUP, handler)


__all__ = ["REFUSED", "RESTART_ONLY", "load", "on_sighup", "reload_config"]
