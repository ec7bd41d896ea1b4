"""The pipe's tempfail log: one fixed-size record per run that exited 75.

A run that could not reach the store (locked, down, full: the usual reasons
for exit 75) cannot count itself in the store, so it appends one record to
``<cache dir>/pipe-tempfail.log`` instead, best-effort: a failure to write is
ignored (the bounce stays queued either way, and the retry is counted when it
succeeds). The API's collector reads the file at scrape time as
``bouncetrack_pipe_runs_total{outcome="tempfail"}`` and its durations.

Records are ``f"{unix_seconds:010d} {duration:12.6f}\\n"`` (24 bytes), written
with one ``write`` on an ``O_APPEND`` descriptor, so concurrent pipes never
interleave. Truncating the file resets the counter (Prometheus copes with
counter resets). Standard library only: the pipe imports this.
"""

from __future__ import annotations

import os
import time

from ..bounce_pipe.client import append_record, cache_dir  # stdlib only, like this module

FILENAME = "pipe-tempfail.log"
RECORD_LEN = 24


def path(directory: str | None = None) -> str:
    """The log in ``directory``, by default the pipe's cache directory (the client's fallback
    log is there too, found the same way)."""
    return os.path.join(directory or cache_dir(), FILENAME)


def note_tempfail(seconds: float, directory: str | None = None) -> None:
    """Append one record; never raises (the pipe is already failing)."""
    record = f"{int(time.time()):010d} {min(max(seconds, 0.0), 99999.0):12.6f}\n".encode()
    append_record(path(directory), record)


def read_durations(directory: str | None = None, max_bytes: int = 16 << 20) -> tuple[int, list[float]]:
    """(count, durations) from the log; a missing file is (0, []).

    Past ``max_bytes`` only the count is derived (from the size), so a scrape
    stays cheap however long a store outage lasted.
    """
    try:
        with open(path(directory), "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > max_bytes:
                return size // RECORD_LEN, []
            data = fh.read()
    except OSError:
        return 0, []
    durations = []
    for line in data.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                durations.append(float(parts[1]))
            except ValueError:
                continue
    return len(durations), durations
