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

The file outlives the store (it is in the cache directory, not the state
directory): records older than the store's creation are not counted (``since``),
so a fresh store never shows an earlier install's tempfails.
"""

from __future__ import annotations

import os
import time
from typing import BinaryIO

from .client import append_record, cache_dir  # stdlib only, like this module

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


def first_record_since(fh: BinaryIO, size: int, record_len: int, since: float) -> int:
    """The byte offset of the first fixed-size record stamped at or after ``since``.

    Records start with ``%010d`` epoch seconds and are appended in time order (to
    the second: concurrent writers may swap within one), so a binary search over
    record boundaries finds it in a few reads however long the file.
    """
    lo, hi = 0, size // record_len
    second = int(since)  # stamps are whole seconds: a record of the store's first second counts
    while lo < hi:
        mid = (lo + hi) // 2
        fh.seek(mid * record_len)
        stamp = fh.read(10)
        if stamp.isdigit() and int(stamp) < second:
            lo = mid + 1
        else:
            hi = mid
    return lo * record_len


def read_durations(directory: str | None = None, max_bytes: int = 16 << 20,
                   since: float = 0.0) -> tuple[int, list[float]]:
    """(count, durations) of the records stamped at or after ``since``; a missing file is (0, []).

    Past ``max_bytes`` only the count is derived (from the size), so a scrape
    stays cheap however long a store outage lasted.
    """
    try:
        with open(path(directory), "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            start = first_record_since(fh, size, RECORD_LEN, since) if since > 0 else 0
            if size - start > max_bytes:
                return (size - start) // RECORD_LEN, []
            fh.seek(start)
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
