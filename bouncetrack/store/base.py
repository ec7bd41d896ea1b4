"""The store interface: what the milter, the pipe, the worker and the API need.

One small interface with an SQLite implementation (default) and, later, a
PostgreSQL one chosen by the store URL. Records are plain frozen dataclasses;
timestamps are UTC seconds since the epoch (float).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence


class StoreUnavailable(Exception):
    """The store cannot be used right now (locked, down, disk full).

    The pipe turns this into exit 75 so that Postfix retries; the milter into a
    4xx so that the client retries.
    """


@dataclass(frozen=True)
class RecipientRecord:
    address: str  # the envelope recipient as the client gave it
    orcpt: str | None  # ORCPT as given by the client ("rfc822;addr"), or the one we added
    notify: str | None  # NOTIFY as the client gave it (e.g. "NEVER", "FAILURE,DELAY")
    id: int | None = None  # set by the store


@dataclass(frozen=True)
class MessageRecord:
    """One message as the milter saw it, before and after rewriting."""

    token_id: int  # the id inside the VERP token (random 63-bit, unique)
    token: str  # the VERP token (also sent as ENVID)
    queue_id: str | None  # Postfix queue id
    message_id: str | None  # Message-ID header
    sender_domain: str
    envelope_sender: str  # original MAIL FROM
    verp_sender: str  # the rewritten MAIL FROM
    dsn_ret: str | None  # original RET
    dsn_envid: str | None  # original ENVID
    recipients: tuple[RecipientRecord, ...]
    created_at: float
    id: int | None = None  # set by the store


@dataclass(frozen=True)
class BounceEvent:
    """One classified report for one recipient; the shape the webhook and the API share."""

    event_id: str  # uuid4 hex, stable: also the webhook idempotency key
    type: str  # bounce | complaint | delay | delivered | auto_reply | unknown
    hard: bool
    reason: str  # taxonomy of shared/corpus/README.md, "undefined" when unknown
    status: str | None  # RFC 3463 "5.1.1"
    reply_code: str | None  # "550"
    diagnostic: str | None
    recipient: str | None  # the recipient this event is attributed to
    reported_recipient: str | None  # the recipient the report itself names
    action: str | None  # RFC 3464 Action
    remote_mta: str | None
    domain: str | None  # sender domain of the original message
    original_sender: str | None  # original envelope sender
    original_message_id: str | None  # Message-ID of the original message
    token: str | None
    token_status: str  # valid | forged | unknown | missing | expired
    flagged: bool  # report's recipient and token's recipient disagree
    message_pk: int | None  # messages.id when attributed
    received_at: float
    dedupe_key: str  # same bounce delivered twice -> same key -> stored once
    feedback_type: str | None = None  # ARF Feedback-Type for complaints
    sent_at: float | None = None  # when the original message was recorded


# =============================================================================
# Queries for the API (issue 5, download section; owner: download API).
# What a download request selects; the Store methods are at the end of Store.
# =============================================================================


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


# ====================================================== end of download section


@dataclass(frozen=True)
class OutboxJob:
    event_id: str
    channel: str  # "webhook" | "smtp"
    target: str  # URL or forward address
    id: int | None = None
    state: str = "pending"  # pending | delivered | dead
    attempts: int = 0
    next_attempt_at: float = 0.0
    last_error: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    lease_until: float | None = None  # a worker holds the job until then (set by the store)


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
class StoreOutcome:
    stored: bool  # False: duplicate, already stored earlier (idempotent retry)
    event_ids: tuple[str, ...] = field(default_factory=tuple)


# =============================================================================
# Metrics (issue 5, Prometheus section; owner: metrics).
#
# Counters kept by the store (migration 3: tables filled by triggers, and the
# pipe's runs upserted by store_report in the report's transaction), read by
# the API's /metrics collector at scrape time. A separate protocol, like the
# dashboard's: the collector checks for :class:`MetricsStore` at run time.
# =============================================================================

# Upper bounds (seconds) of the pipe-duration histogram buckets. Stored rows
# name their bucket by this bound, so changing it only affects new runs.
PIPE_DURATION_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, float("inf")
)


def pipe_bucket(seconds: float) -> float:
    """The upper bound of the histogram bucket ``seconds`` falls into."""
    for bound in PIPE_DURATION_BUCKETS:
        if seconds <= bound:
            return bound
    return PIPE_DURATION_BUCKETS[-1]


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


class MetricsStore(Protocol):
    def metric_counts(self, now: float) -> MetricCounts: ...


# ============================================================ end of metrics


class Store(Protocol):
    # --- milter side
    def record_message(self, message: MessageRecord) -> int: ...
    def message_by_token_id(self, token_id: int) -> MessageRecord | None: ...

    # --- send API side: the message the milter recorded for a submission it just saw
    def message_by_message_id(self, message_id: str, queue_id: str | None = None) -> MessageRecord | None: ...

    # --- pipe side: events, raw report and outbox jobs in ONE transaction
    def store_report(
        self,
        events: Sequence[BounceEvent],
        raw: bytes,
        jobs: Sequence[OutboxJob],
        dedupe_key: str,
        *,
        pipe_started: float | None = None,  # metrics: count this pipe run (issue 5)
        suppress: Sequence["SuppressionCandidate"] = (),  # suppression list (issue 6), same transaction
    ) -> StoreOutcome: ...

    def raw_report(self, event_id: str) -> bytes | None: ...
    def event(self, event_id: str) -> BounceEvent | None: ...
    def events_between(
        self, start: float, end: float, domains: Sequence[str] | None = None
    ) -> Iterator[BounceEvent]: ...

    # --- outbox
    def claim_jobs(self, now: float, limit: int, lease_seconds: float) -> list[OutboxJob]: ...
    def job_delivered(self, job_id: int, now: float) -> None: ...
    def job_failed(self, job_id: int, now: float, error: str, next_attempt_at: float | None) -> None: ...
    def jobs(self, state: str | None = None, limit: int = 100) -> list[OutboxJob]: ...
    def replay_job(self, job_id: int, now: float) -> bool: ...
    def outbox_stats(self, now: float) -> dict[str, float]: ...

    # --- retention: drop raw bodies received before cutoff, keep events; returns count
    def purge_raw_before(self, cutoff: float, batch: int = 1000) -> int: ...

    # --- retention of events and messages (issue 6, retention section; owner: retention).
    # Cutoffs are epoch seconds (rows strictly older go); None leaves that kind alone.
    # Every purge works in batches of ``batch`` rows, one short transaction each.
    # An event with a pending outbox job is never deleted (nor its job); its
    # delivered/dead jobs go with it. A message goes only when no remaining event
    # references it (its recipients go with it); a raw_reports row only when no
    # remaining event references it and it was received before the events cutoff.
    # Metric counters are cumulative: deleting rows never lowers them (no delete
    # triggers; the outbox gauges count what is left).
    def purge_counts(
        self, events_before: float | None, messages_before: float | None, raw_before: float | None
    ) -> "PurgeCounts": ...
    def purge_events_before(self, cutoff: float, batch: int = 1000) -> "PurgeCounts": ...
    def purge_messages_before(self, cutoff: float, batch: int = 1000) -> "PurgeCounts": ...
    # --- end of retention section

    def close(self) -> None: ...

    # --- queries for the API (issue 5, download section; owner: download API) --
    # Keyset pagination on events.id (ids only grow: pages never shift while
    # new events arrive); ``after_id`` is the last id of the previous page.
    # ``fmt`` "json": the text of event_to_json(event) per row; "csv": one CSV
    # record (no line end) with event_to_json's keys as columns, formula-safe.
    def events_page(
        self, query: DownloadQuery, after_id: int = 0, limit: int = 1000
    ) -> list[tuple[int, BounceEvent]]: ...
    def iter_events(self, query: DownloadQuery, after_id: int = 0) -> Iterator[tuple[int, BounceEvent]]: ...
    def rendered_page(
        self, query: DownloadQuery, fmt: str, after_id: int = 0, limit: int = 1000
    ) -> list[tuple[int, str]]: ...
    def iter_rendered(
        self, query: DownloadQuery, fmt: str, after_id: int = 0, batch: int = 2000
    ) -> Iterator[list[tuple[int, str]]]: ...
    # --- end of download section


# =============================================================================
# Dashboard aggregates (issue 5, dashboard section; owner: dashboard).
#
# Read-only queries behind the server-rendered dashboard. They are a separate
# protocol, not part of :class:`Store`, so that a store without them (a future
# PostgreSQL one) still satisfies the core interface; the dashboard checks for
# :class:`DashboardStore` at run time. Every query takes the caller's domain
# scope explicitly: ``domains=()`` selects nothing, there is no "all domains".
# =============================================================================


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


class DashboardStore(Protocol):
    def dashboard_sent(self, domains: Sequence[str], start: float, end: float) -> tuple[int, int]:
        """(messages, recipients) the milter recorded with ``start <= created_at < end``."""
        ...

    def dashboard_daily(self, domains: Sequence[str], start: float, end: float) -> list[DailyCount]: ...

    def dashboard_top_reasons(
        self, domains: Sequence[str], start: float, end: float, limit: int = 10
    ) -> list[tuple[str, int]]: ...

    def dashboard_top_recipient_domains(
        self, domains: Sequence[str], start: float, end: float, limit: int = 10
    ) -> list[tuple[str, int]]: ...

    def dashboard_events(
        self,
        query: EventQuery,
        *,
        before_pk: int | None = None,
        after_pk: int | None = None,
        limit: int = 50,
    ) -> list[tuple[int, BounceEvent]]:
        """Events newest first as (events.id, event); keyset pages on events.id."""
        ...

    def dashboard_jobs(self, domains: Sequence[str], kind: str, limit: int = 100) -> list[JobView]: ...

    def dashboard_job_counts(self, domains: Sequence[str]) -> dict[str, int]: ...

    def dashboard_job(self, job_id: int) -> JobView | None: ...


# =============================================================================
# Suppression list (issue 6, suppression section; owner: suppression).
#
# One list per sender domain of (domain, lower-cased recipient address). The
# pipe adds to it inside store_report's transaction (``suppress=``); the CLI
# and the API list, add and remove; the milter keeps an in-memory index fed by
# the change feed (``seq`` grows with every insert, update and removal, and a
# removal keeps its row as a tombstone so that the feed carries it).
# =============================================================================

# Why an address is on the list (``Suppression.reason``).
REASON_HARD_BOUNCE = "hard_bounce"
REASON_COMPLAINT = "complaint"
REASON_SOFT_BOUNCES = "soft_bounces"
REASON_MANUAL = "manual"


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
class SuppressionCandidate:
    """What the pipe asks store_report to put on the list (pure rules: bouncetrack.suppression).

    With ``soft_bounce_limit`` > 0 the entry is written only when the store
    counts at least that many soft bounces of (domain, address) received since
    ``soft_since`` (this report's events included: they are inserted first).
    An entry already active is kept (its expiry only ever moves later); a
    removed or expired one is put back.
    """

    domain: str
    address: str
    reason: str
    source_event_id: str
    created_at: float
    expires_at: float | None
    soft_bounce_limit: int = 0
    soft_since: float = 0.0


@dataclass(frozen=True)
class SuppressionChange:
    """One row of the change feed the milter's index follows (``seq`` order)."""

    seq: int
    domain: str
    address: str
    removed: bool
    expires_at: float | None


class SuppressionStore(Protocol):
    def suppressions(
        self,
        domains: Sequence[str] | None,
        now: float,
        *,
        address: str | None = None,
        after_id: int = 0,
        limit: int = 1000,
        include_inactive: bool = False,
    ) -> list[Suppression]:
        """Entries of ``domains`` (``()`` selects nothing, None every domain: CLI only)
        in id order, keyset on id; active ones unless ``include_inactive``."""
        ...

    def add_suppressions(self, entries: Sequence[Suppression]) -> int:
        """Put entries on the list by hand (replacing what is there); returns how many."""
        ...

    def remove_suppressions(
        self, domains: Sequence[str] | None, addresses: Sequence[str], now: float
    ) -> list[tuple[str, str]]:
        """Remove active entries (tombstones); returns the (domain, address) removed.
        ``domains=None``: at every domain (CLI only)."""
        ...

    def suppression_seq(self) -> int:
        """The newest change number (0 when the list was never written)."""
        ...

    def suppression_keys(self, now: float, batch: int = 10000) -> Iterator[list[tuple[str, str]]]:
        """Every active (domain, address), in batches (the milter's full load)."""
        ...

    def suppression_changes(self, after_seq: int, limit: int = 10000) -> list[SuppressionChange]:
        """Changes with seq > ``after_seq``, in seq order."""
        ...

    def suppressions_expiring(self, after: float, until: float) -> list[tuple[str, str]]:
        """(domain, address) of entries whose expires_at is in (after, until], not removed."""
        ...


# ========================================================= end of suppression
