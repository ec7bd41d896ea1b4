"""The pipe client's fallback log, read at scrape time.

The pipe client (:mod:`bouncetrack.bounce_pipe.client`) appends a record each time
it hands a bounce to the full pipe instead of the warm pipe server: none was
listening (``no-server``), or it went away before answering (``server-lost``).
The bounce is stored either way; the count tells an operator that every bounce now
pays a full interpreter start (``bench/pipe.py``: about 3 times the client's time),
and that the server should be started again. Truncating the file resets the
counter (Prometheus copes with counter resets). Records older than the store's
creation are not counted (``since``; see :mod:`bouncetrack.bounce_pipe.tempfail`).
"""

from __future__ import annotations

import os

from ..bounce_pipe.client import FALLBACK_LOG, FALLBACK_RECORD_LEN, NO_SERVER, SERVER_LOST, cache_dir
from ..bounce_pipe.tempfail import first_record_since

REASONS = (NO_SERVER, SERVER_LOST)
_CHUNK = FALLBACK_RECORD_LEN * 4096  # whole records per read


def path(directory: str | None = None, log: str = FALLBACK_LOG) -> str:
    """The log in ``directory``, by default the pipe's cache directory (where the client writes it)."""
    return os.path.join(directory or cache_dir(), log)


def read_counts(directory: str | None = None, since: float = 0.0, log: str = FALLBACK_LOG,
                reasons: tuple[str, ...] = REASONS) -> dict[str, int]:
    """Records per reason stamped at or after ``since`` (every reason present, 0 when
    none); a missing file is all 0. ``log``, ``reasons``: another log of the same format
    (the LMTP listener's refusals: ``client.REFUSED_LOG``, ``client.REFUSALS``).

    Read in whole records, so a long outage's log is counted in constant memory.
    """
    counts = dict.fromkeys(reasons, 0)
    tokens = {reason: f" {reason}".encode() for reason in reasons}
    try:
        with open(path(directory, log), "rb") as fh:
            if since > 0:
                fh.seek(first_record_since(fh, os.fstat(fh.fileno()).st_size, FALLBACK_RECORD_LEN, since))
            while chunk := fh.read(_CHUNK):
                for reason, token in tokens.items():
                    counts[reason] += chunk.count(token)
    except OSError:
        pass
    return counts
