"""The one log format of every bouncetrack process (issue 15).

Every long-running process (milter, pipe server, worker, API) and the pipe log
one line per record to stderr (journald or the container runtime keeps it)::

    2026-12-07T13:05:42.120Z bouncetrack-milter[4242] INFO tracked queue_id=4Xk9Qn1vZtz3Jb token=… sender_domain=example.com recipients=2

timestamp (ISO 8601, UTC, milliseconds), process name and pid, level, message;
continuation lines of a record (a traceback) are indented.
uvicorn's loggers (``uvicorn``, ``uvicorn.error``, ``uvicorn.access``) use the
same handler. Every line goes through :func:`bouncetrack.core.redact.redact_text`
(access tokens, webhook secrets, session cookies, passwords never reach a log).
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Iterable

from .redact import redact_text

FORMAT = "%(asctime)s %(program)s[%(process)d] %(levelname)s %(message)s"


class Formatter(logging.Formatter):
    """FORMAT with a UTC millisecond timestamp, and every secret masked."""

    def __init__(self, program: str) -> None:
        super().__init__(FORMAT)
        self.program = program
        self._second = -1
        self._second_text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        # The seconds' text changes once a second: made then, not per record (the
        # milter logs a line per message, issue 20). A race between two threads
        # only makes the same text twice.
        second = int(record.created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._second_text}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        """One record; the lines after its first (a configuration error's list, a
        traceback) are indented, so every line at the margin starts a record. A record
        of :func:`log_lines` is its lines, each with the record's prefix, as if each
        had been logged alone."""
        record.program = self.program
        text = super().format(record)
        lines: list[str] | None = getattr(record, "lines", None)
        if lines is not None:
            prefix = text[: len(text) - len(record.message)]  # FORMAT ends with the message
            text = "\n".join(prefix + line.replace("\n", "\n    ") for line in lines)
            return redact_text(text)
        return redact_text(text).replace("\n", "\n    ")


# log_lines' records stay below PIPE_BUF (4096 bytes): the handler writes each with one
# write(2), which a pipe (or journald's stream) never interleaves with another process's
# lines. A line's prefix (time, program[pid], level) takes at most _PREFIX_ROOM.
LINES_BYTES = 3500
_PREFIX_ROOM = 96


def log_lines(logger: logging.Logger, level: int, lines: Iterable[str]) -> None:
    """Log each of ``lines`` at ``level`` as a line of its own, as ``logger.log(level,
    line)`` for each would, at a fraction of the cost: one record a few dozen lines
    (issue 20: the journal writer's line per tracked message cost a record, a format,
    a redaction and a ``write(2)`` each). The lines are redacted as every line is; a
    line's own line breaks are indented as in any record. Handlers other than
    :func:`setup`'s see one record whose message is the lines joined."""
    if not logger.isEnabledFor(level):
        return
    batch: list[str] = []
    size = 0
    for line in lines:
        room = len(line) + _PREFIX_ROOM
        if batch and size + room > LINES_BYTES:
            logger.log(level, "\n".join(batch), extra={"lines": batch})
            batch, size = [], 0
        batch.append(line)
        size += room
    if batch:
        logger.log(level, "\n".join(batch), extra={"lines": batch})


def setup(process: str, level: str | int = "INFO") -> logging.Handler:
    """Send every logger's records (uvicorn's included) to stderr in :data:`FORMAT`.

    ``process`` names the program: ``milter`` -> ``bouncetrack-milter``. Replaces
    any handler set before (calling it twice, or after ``basicConfig``, is safe).
    """
    # FORMAT names no source line, thread or multiprocessing name: don't collect them
    # for every record (the logging HOWTO's "Optimization"; a line per message in the
    # milter, issue 20). Tracebacks do not depend on them.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Formatter(f"bouncetrack-{process}"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    return handler


def uvicorn_log_config() -> dict[str, Any]:
    """``log_config`` for uvicorn.run that leaves its loggers to :func:`setup`."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": True},
        },
    }


__all__ = ["FORMAT", "Formatter", "log_lines", "setup", "uvicorn_log_config"]
