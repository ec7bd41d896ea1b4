"""Retention (issue 6): what ``bouncetrack purge`` and the worker delete, and when.

Three kinds of rows age out, each after its own period:

* raw report bodies after ``pipe.raw_retention_days`` (the row and its dedupe
  key stay while an event references it);
* events after ``retention.events_days``, with their delivered or dead outbox
  jobs, and then the raw_reports rows no remaining event references. An event
  whose delivery is still pending is kept (it is counted as such);
* tracked messages after ``retention.messages_days`` that no remaining event
  references, with their recipients.

The store deletes in batches of ``retention.batch_size`` rows, one short
transaction each, so the milter and the pipes never wait long. Metric counters
on /metrics are cumulative totals kept by insert/update triggers; deleting rows
does not lower them (there are no delete triggers). The outbox gauges (pending,
dead) count the jobs that are left, so purged dead jobs leave the dead gauge.

The worker runs :func:`purge` once a day when ``retention.automatic`` is on (off by
default: an upgrade never starts deleting stored events by itself). Pure apart from
the store calls; no click here (the worker imports it).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..core.config import Config
from ..store.interfaces import Store
from ..store.views import PurgeCounts

DAY = 86400.0


@dataclass(frozen=True)
class Cutoffs:
    """Epoch seconds; rows strictly older go. None: that kind is kept forever."""

    raw_before: float | None
    events_before: float | None
    messages_before: float | None


def cutoffs(config: Config, now: float) -> Cutoffs:
    r = config.retention
    return Cutoffs(
        raw_before=now - config.pipe.raw_retention_days * DAY,
        events_before=None if r.events_days is None else now - r.events_days * DAY,
        messages_before=None if r.messages_days is None else now - r.messages_days * DAY,
    )


def dry_run(store: Store, cut: Cutoffs) -> PurgeCounts:
    """What :func:`purge` would delete now, deleting nothing."""
    return store.purge_counts(cut.events_before, cut.messages_before, cut.raw_before)


def purge(store: Store, cut: Cutoffs, batch: int = 1000) -> PurgeCounts:
    """Delete what is past the cutoffs; returns what went.

    Order matters for the counts to match :func:`dry_run`: bodies first, then
    events (and the report rows they leave unreferenced), then messages (which
    the purged events may have been the last to reference).
    """
    total = PurgeCounts()
    if cut.raw_before is not None:
        total += PurgeCounts(raw_bodies=store.purge_raw_before(cut.raw_before, batch))
    if cut.events_before is not None:
        total += store.purge_events_before(cut.events_before, batch)
    if cut.messages_before is not None:
        total += store.purge_messages_before(cut.messages_before, batch)
    return total


__all__ = ["Cutoffs", "DAY", "cutoffs", "dry_run", "purge"]
