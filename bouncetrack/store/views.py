"""Records of the read side: what the API, the dashboard, /metrics, retention and
the suppression tools exchange with a store.

Kept apart from :mod:`bouncetrack.store.base` so that the bounce pipe, which
starts once per bounce, does not define classes it never uses (HACKING.md: the
pipe's import path stays lean).
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import OutboxJob


# Download API (issue 5): what a download request selects.
@dataclass(frozen=True)
class DownloadQuery:
    """The events a download request selects: scope, time range, filters.

    ``domains`` is the token's scope (or the part of it the caller asked for);
    it is never empty and there is no "all domains". Times are UTC epoch
    seconds, ``start <= received_at < end``. ``types`` empty means any type;
    asking for "unknown" also matches stored types the event schema does not
    know (event_to_json reports those as "unknown").
    """

    domains: tuple[str, ...]
    start: float
    end: float
    types: tuple[str, ...] = ()
    hard: bool | None = None  # None: both; True: hard only; False: soft only
    reason: str | None = None
    recipient_domain: str | None = None  # lower-case ASCII domain of the recipient address


@dataclass(frozen=True)
class ForgetCounts:
    """What ``forget`` removed about one address (issue 13 of issue 16), per kind."""

    events: int = 0  # events whose recipient or reported recipient is the address
    outbox_jobs: int = 0  # their queued or past deliveries (webhook, forward)
    raw_reports: int = 0  # raw report bodies of those events, dropped (the row keeps deduplicating)
    suppressions: int = 0  # suppression entries turned into anonymous tombstones
    recipients: int = 0  # recipient rows of tracked messages


@dataclass(frozen=True)
class PurgeCounts:
    """Rows a retention purge deletes (or, for a dry run, would delete), per kind."""

    events: int = 0
    outbox_jobs: int = 0  # delivered or dead jobs of those events
    reports: int = 0  # raw_reports rows (dedupe key and any body) no remaining event references
    messages: int = 0
    recipients: int = 0
    raw_bodies: int = 0  # compressed bodies dropped past pipe.raw_retention_days (row kept)
    events_kept_pending: int = 0  # past the cutoff but kept: a delivery is still pending

    def __add__(self, other: "PurgeCounts") -> "PurgeCounts":
        return PurgeCounts(
            *(getattr(self, f) + getattr(other, f) for f in self.__dataclass_fields__)
        )


@dataclass(frozen=True)
class MetricCounts:
    """Everything /metrics reads from the store in one call (cheap: small tables)."""

    # (domain or "", type, reason, hard, token_status, feedback_type or "", count)
    events: tuple[tuple[str, str, str, bool, str, str, int], ...]
    messages: tuple[tuple[str, int], ...]  # (sender domain, messages recorded)
    deliveries: tuple[tuple[str, str, int], ...]  # (channel, delivered|retry|dead, count)
    pipe_runs: tuple[tuple[str, float, int, float], ...]  # (outcome, le, count, seconds_sum)
    outbox_pending: int
    outbox_due: int
    outbox_leased: int
    outbox_dead: int
    outbox_oldest_pending_age: float  # seconds; 0 when nothing is pending
    pipe_guards: tuple[tuple[str, int], ...] = ()  # (guard, count): the pipe's bounds (issue 16)
    # When the store was created (its first migration): the pipe's tempfail and
    # fallback logs, kept outside the store, are counted from then on (issue 15).
    store_created_at: float = 0.0


# Dashboard aggregates (issue 5): every query takes the caller's domain scope
# explicitly; ``domains=()`` selects nothing, there is no "all domains".
@dataclass(frozen=True)
class EventQuery:
    """Filters of the dashboard's event list (all optional except the scope)."""

    domains: tuple[str, ...]  # sender domains the caller may see; () selects nothing
    start: float | None = None  # received_at >= start
    end: float | None = None  # received_at < end
    type: str | None = None
    hard: bool | None = None
    reason: str | None = None
    recipient_contains: str | None = None  # case-insensitive substring of recipient


@dataclass(frozen=True)
class DailyCount:
    """Events of one type and severity received on one UTC day."""

    day: str  # "YYYY-MM-DD" (UTC)
    type: str
    hard: bool
    count: int


@dataclass(frozen=True)
class JobView:
    """An outbox job with the event fields the outbox page shows."""

    job: OutboxJob
    domain: str | None
    recipient: str | None
    event_type: str | None


# Suppression list (issue 6): one list per sender domain of (domain, lower-cased
# address); ``seq`` grows with every change and removals stay as tombstones.
@dataclass(frozen=True)
class Suppression:
    """One entry of a domain's suppression list."""

    domain: str  # sender domain, lower-case
    address: str  # recipient address, lower-case
    reason: str  # REASON_* or an operator's text
    source_event_id: str | None  # the event that put it there; None when added by hand
    created_at: float
    expires_at: float | None  # None: never expires
    removed_at: float | None = None  # set when removed (CLI/API); the row stays as a tombstone
    id: int | None = None  # set by the store

    def active(self, now: float) -> bool:
        return self.removed_at is None and (self.expires_at is None or self.expires_at > now)


@dataclass(frozen=True)
class SuppressionChange:
    """One row of the change feed the milter's index follows (``seq`` order)."""

    seq: int
    domain: str
    address: str
    removed: bool
    expires_at: float | None
