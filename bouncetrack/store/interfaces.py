"""The store protocols: the core :class:`Store` and the optional read-side ones.

Type-checking contracts for the SQLite and PostgreSQL stores and their callers.
Kept apart from :mod:`bouncetrack.store.base` so that the bounce pipe does not
build these Protocol classes once per bounce.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterator, Mapping, Protocol, Sequence

if TYPE_CHECKING:
    from .base import BounceEvent, MessageRecord, OutboxJob, StoreOutcome, SuppressionCandidate, UntrustedQuota
    from .views import (
        DailyCount,
        DownloadQuery,
        EventQuery,
        ForgetCounts,
        JobView,
        MetricCounts,
        PurgeCounts,
        Suppression,
        SuppressionChange,
    )


class MetricsStore(Protocol):
    def metric_counts(self, now: float) -> MetricCounts: ...


class Store(Protocol):
    # --- milter side
    def record_message(self, message: MessageRecord) -> int: ...
    def record_messages(self, messages: Sequence[MessageRecord]) -> int: ...
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
        guards: Mapping[str, int] = {},  # the pipe's guards that applied (issue 16), counted
        untrusted: UntrustedQuota | None = None,  # a report without a valid token: its quota (issue 16)
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

    # --- forgetting one address (issue 16; bouncetrack.ops.forget): in one transaction,
    # delete the events about ``address`` (lower-case; recipient or reported
    # recipient, case-insensitive) with their outbox jobs, drop the raw bodies of
    # their reports, delete the recipient rows naming it, and turn its suppression
    # entries into tombstones whose address is ``pseudonym(domain, address)``
    # (removed now, with a new change number, so milters learn of it).
    # ``domains``: only within these sender domains; None: everywhere (the CLI).
    def forget_address(
        self, address: str, domains: Sequence[str] | None, now: float, pseudonym: Callable[[str, str], str]
    ) -> "ForgetCounts": ...

    # --- the dashboard's daily sent counts (issue 5; owner: dashboard): the worker
    # rolls the messages of completed UTC days before ``until`` up into per-day
    # counts; returns the day rows written. Idempotent, safe from several workers.
    def roll_up_sent(self, until: float) -> int: ...

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


class DashboardStore(Protocol):
    # Contracts: the docstrings of bouncetrack.store.sql.SQLStore, the one implementation.
    def dashboard_sent(self, domains: Sequence[str], start: float, end: float) -> tuple[int, int]: ...
    def dashboard_daily(self, domains: Sequence[str], start: float, end: float) -> list[DailyCount]: ...
    def dashboard_top_reasons(
        self, domains: Sequence[str], start: float, end: float, limit: int = 10
    ) -> list[tuple[str, int]]: ...
    def dashboard_top_recipient_domains(
        self, domains: Sequence[str], start: float, end: float, limit: int = 10
    ) -> list[tuple[str, int]]: ...
    def dashboard_events(
        self, query: EventQuery, *, before_pk: int | None = None, after_pk: int | None = None, limit: int = 50
    ) -> list[tuple[int, BounceEvent]]: ...
    def dashboard_jobs(self, domains: Sequence[str], kind: str, limit: int = 100) -> list[JobView]: ...
    def dashboard_job_counts(self, domains: Sequence[str]) -> dict[str, int]: ...
    def dashboard_job(self, job_id: int) -> JobView | None: ...


class SuppressionStore(Protocol):
    # Contracts: the docstrings of bouncetrack.store.sql.SQLStore, the one implementation.
    def suppressions(
        self, domains: Sequence[str] | None, now: float, *, address: str | None = None, after_id: int = 0,
        limit: int = 1000, include_inactive: bool = False,
    ) -> list[Suppression]: ...
    def add_suppressions(self, entries: Sequence[Suppression]) -> int: ...
    def remove_suppressions(
        self, domains: Sequence[str] | None, addresses: Sequence[str], now: float
    ) -> list[tuple[str, str]]: ...
    def suppression_seq(self) -> int: ...
    def suppression_keys(self, now: float, batch: int = 10000) -> Iterator[list[tuple[str, str]]]: ...
    def suppression_changes(self, after_seq: int, limit: int = 10000) -> list[SuppressionChange]: ...
    def suppressions_expiring(self, after: float, until: float) -> list[tuple[str, str]]: ...
