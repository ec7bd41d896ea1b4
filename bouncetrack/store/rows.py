"""Records <-> rows: the Python both store backends share around their own SQL.

Column lists, the parameter tuples bound for a record, the record built from a
row, and the result assembly of a few reads. Pure functions over the records of
:mod:`.base`; no SQL dialect here (placeholders, casts and statements stay in
``sqlite.py`` / ``postgres.py``), so one mapping serves both backends.

The SQLite pipe imports this module once per bounce: stdlib and ``.base`` only.
The ``int()`` casts are for PostgreSQL drivers that may hand back other integer
types; SQLite already returns ``int`` for these columns, so they change nothing
there.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .base import BounceEvent, MessageRecord, OutboxJob, RecipientRecord, SuppressionCandidate

if TYPE_CHECKING:  # read-side records: imported where built, not on the pipe's path
    from .views import DailyCount, JobView, MetricCounts, Suppression, SuppressionChange

RAW_COMPRESSION_LEVEL = 6
NEVER = -1.0e300  # a retention cutoff older than any row: "keep this kind"
FETCH_BATCH = 500
MAX_ERROR_LEN = 4000

EVENT_FIELDS = (
    "event_id",
    "type",
    "hard",
    "reason",
    "status",
    "reply_code",
    "diagnostic",
    "recipient",
    "reported_recipient",
    "action",
    "remote_mta",
    "domain",
    "original_sender",
    "original_message_id",
    "token",
    "token_status",
    "flagged",
    "message_pk",
    "received_at",
    "dedupe_key",
    "feedback_type",
    "sent_at",
    "queue_id",
)
EVENT_COLUMNS = ", ".join(EVENT_FIELDS)
# When the store was created: its first migration (metric_counts.created_at).
STORE_CREATED_SQL = "SELECT min(applied_at) FROM schema_migrations"
JOB_COLUMNS = (
    "id, event_id, channel, target, state, attempts, next_attempt_at, "
    "last_error, created_at, updated_at, lease_until"
)
MESSAGE_COLUMNS = (
    "id, token_id, token, queue_id, message_id, sender_domain, envelope_sender, "
    "verp_sender, dsn_ret, dsn_envid, created_at"
)
# INSERT INTO messages (...) takes MESSAGE_COLUMNS without id, in message_params' order.
MESSAGE_INSERT_COLUMNS = MESSAGE_COLUMNS.removeprefix("id, ")
RECIPIENT_COLUMNS = "id, address, orcpt, notify"
SUPPRESSION_COLUMNS = "id, domain, address, reason, source_event_id, created_at, expires_at, removed_at"

# Outbox jobs as the dashboard lists them (keys of DashboardStore.dashboard_jobs).
DASH_JOB_KINDS = {
    "pending": "o.state = 'pending' AND o.attempts = 0",
    "failed": "o.state = 'pending' AND o.attempts > 0",
    "dead": "o.state = 'dead'",
    "delivered": "o.state = 'delivered'",
}
DASH_JOB_KIND_CASE = "CASE " + " ".join(f"WHEN {c} THEN '{k}'" for k, c in DASH_JOB_KINDS.items()) + " END"

# --- dashboard sent counts (message_days, rolled up by the worker) -------------
DAY = 86400


def day_start(t: float) -> int:
    """The UTC day that holds ``t``, as the epoch second it starts at."""
    return int(t // DAY) * DAY


def sent_windows(start: float, end: float, rolled_until: float) -> tuple[tuple[int, int] | None, list[tuple[float, float]]]:
    """Split ``[start, end)`` into whole rolled-up days and the ranges counted live.

    Returns (the ``[first day, end day)`` to read from message_days, or None; the
    ``[lo, hi)`` created_at ranges to count from the messages). Only whole UTC days
    before ``rolled_until`` come from the roll-up, so any bounds give exact counts;
    the dashboard's (whole days) need one live range at most, from the roll-up on.
    """
    first = math.ceil(start / DAY) * DAY
    last = min(day_start(end), day_start(rolled_until))
    if first >= last:
        return None, [(start, end)] if start < end else []
    live = [(lo, hi) for lo, hi in ((start, float(first)), (float(last), end)) if lo < hi]
    return (first, last), live


def roll_up_step(rolled: float, oldest: float | None, target: int) -> int:
    """Where one roll-up transaction stops: past one day of messages, at most ``target``.

    ``oldest`` is the first message at or after ``rolled``; a gap without
    messages is crossed in the same step.
    """
    if oldest is None or oldest >= target:
        return target
    return min(target, day_start(oldest) + DAY)


_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def ascii_lower(text: str) -> str:
    """Lower-case ASCII letters only (as SQLite's lower() and domain names fold)."""
    return text.translate(_ASCII_LOWER)


def job_columns(alias: str) -> str:
    """JOB_COLUMNS qualified by a table alias (``o.id, o.event_id, …``)."""
    return ", ".join(f"{alias}.{c.strip()}" for c in JOB_COLUMNS.split(","))


# ------------------------------------------------------------ record -> params


def message_params(message: MessageRecord) -> tuple[Any, ...]:
    """The values of MESSAGE_INSERT_COLUMNS for ``message``."""
    return (
        message.token_id,
        message.token,
        message.queue_id,
        message.message_id,
        message.sender_domain,
        message.envelope_sender,
        message.verp_sender,
        message.dsn_ret,
        message.dsn_envid,
        message.created_at,
    )


def recipient_params(message_pk: int, message: MessageRecord) -> list[tuple[Any, ...]]:
    """(message_pk, address, orcpt, notify, position) per recipient, in RCPT order."""
    return [
        (message_pk, r.address, r.orcpt, r.notify, position)
        for position, r in enumerate(message.recipients)
    ]


NUL = "\x00"
REPLACEMENT_CHARACTER = "\ufffd"


def stored_text(value: Any) -> Any:
    """``value`` with every NUL replaced by U+FFFD; any other value unchanged.

    A stored event's text never holds a NUL: PostgreSQL's ``text`` cannot hold
    one (psycopg refuses the insert, and the pipe would tempfail that bounce
    forever), and SQLite's CSV rendering relies on it (``printf`` stops at a
    NUL; sqlite_download.py). A bounce whose diagnostic carries a NUL is mail
    from the wild, not a reason to lose it. The webhook and the SMTP forward
    read the stored event, so every output shows the same U+FFFD.
    """
    if type(value) is str and NUL in value:
        return value.replace(NUL, REPLACEMENT_CHARACTER)
    return value


def event_params(event: BounceEvent, raw_pk: int | None) -> tuple[Any, ...]:
    """(raw_pk, *EVENT_FIELDS) for ``event``, text without NUL (:func:`stored_text`)."""
    return (raw_pk, *(stored_text(getattr(event, f)) for f in EVENT_FIELDS))


def job_params(job: OutboxJob, now: float) -> tuple[Any, ...]:
    """Values of a new outbox row (event_id … updated_at); times unset (0) become ``now``."""
    return (
        job.event_id,
        job.channel,
        job.target,
        job.state,
        job.attempts,
        job.next_attempt_at,
        job.last_error,
        job.created_at or now,
        job.updated_at or now,
    )


def suppression_auto_params(c: SuppressionCandidate, seq: int) -> dict[str, Any]:
    """Named parameters of the pipe's suppression upsert for candidate ``c``."""
    return {
        "domain": c.domain,
        "address": c.address,
        "reason": c.reason,
        "source": c.source_event_id,
        "now": c.created_at,
        "expires": c.expires_at,
        "seq": seq,
    }


def suppression_manual_params(entries: Sequence[Suppression], seq: int) -> list[tuple[Any, ...]]:
    """Parameters of the manual suppression upsert, one change number per entry."""
    return [
        (e.domain, e.address, e.reason, e.source_event_id, e.created_at, e.expires_at, seq + i)
        for i, e in enumerate(entries)
    ]


def apply_candidates(
    candidates: Sequence[SuppressionCandidate],
    seq: int,
    soft_count: Callable[[SuppressionCandidate], int],
    upsert: Callable[[dict[str, Any]], int],
) -> int:
    """The pipe's suppression writes: each candidate whose soft-bounce rule holds
    (``soft_count`` >= its limit) is upserted; a written row takes the next
    change number. Returns rows written. The backend supplies the two statements."""
    written = 0
    for c in candidates:
        if c.soft_bounce_limit > 0 and soft_count(c) < c.soft_bounce_limit:
            continue
        n = upsert(suppression_auto_params(c, seq))
        if n:
            written += n
            seq += 1
    return written


# --------------------------------------------------------------- row -> record


def message_from_row(row: Sequence[Any], rcpts: Sequence[Sequence[Any]]) -> MessageRecord:
    """A MESSAGE_COLUMNS row with its RECIPIENT_COLUMNS rows (RCPT order)."""
    return MessageRecord(
        id=int(row[0]),
        token_id=int(row[1]),
        token=row[2],
        queue_id=row[3],
        message_id=row[4],
        sender_domain=row[5],
        envelope_sender=row[6],
        verp_sender=row[7],
        dsn_ret=row[8],
        dsn_envid=row[9],
        created_at=row[10],
        recipients=tuple(
            RecipientRecord(id=int(r[0]), address=r[1], orcpt=r[2], notify=r[3]) for r in rcpts
        ),
    )


def event_from_row(row: Sequence[Any]) -> BounceEvent:
    """An EVENT_FIELDS row."""
    values = dict(zip(EVENT_FIELDS, row))
    values["hard"] = bool(values["hard"])
    values["flagged"] = bool(values["flagged"])
    if values["message_pk"] is not None:
        values["message_pk"] = int(values["message_pk"])
    return BounceEvent(**values)


def job_from_row(
    row: Sequence[Any], *, lease_until: float | None = None, updated_at: float | None = None
) -> OutboxJob:
    """A JOB_COLUMNS row; ``lease_until``/``updated_at`` given replace the row's (a claim)."""
    return OutboxJob(
        id=int(row[0]),
        event_id=row[1],
        channel=row[2],
        target=row[3],
        state=row[4],
        attempts=int(row[5]),
        next_attempt_at=row[6],
        last_error=row[7],
        created_at=row[8],
        updated_at=row[9] if updated_at is None else updated_at,
        lease_until=row[10] if lease_until is None else lease_until,
    )


def job_view_from_row(row: Sequence[Any]) -> JobView:
    """JOB_COLUMNS then the event's domain, recipient and type."""
    from .views import JobView
    return JobView(job=job_from_row(row[:11]), domain=row[11], recipient=row[12], event_type=row[13])


def suppression_from_row(r: Sequence[Any]) -> Suppression:
    """A SUPPRESSION_COLUMNS row."""
    from .views import Suppression
    return Suppression(
        id=int(r[0]),
        domain=r[1],
        address=r[2],
        reason=r[3],
        source_event_id=r[4],
        created_at=r[5],
        expires_at=r[6],
        removed_at=r[7],
    )


def change_from_row(r: Sequence[Any]) -> SuppressionChange:
    """A (seq, domain, address, removed, expires_at) row."""
    from .views import SuppressionChange
    return SuppressionChange(int(r[0]), r[1], r[2], bool(r[3]), r[4])


# ------------------------------------------------------------- result assembly


def pending_age(now: float, oldest: float | None) -> float:
    """Seconds since the oldest pending job was created; 0 when none."""
    return max(0.0, now - oldest) if oldest is not None else 0.0


def metric_counts(
    now: float,
    events: Sequence[Sequence[Any]],
    messages: Sequence[Sequence[Any]],
    deliveries: Sequence[Sequence[Any]],
    runs: Sequence[Sequence[Any]],
    outbox: Sequence[Any],
    dead: Any,
    guards: Sequence[Sequence[Any]] = (),
    created_at: Any = None,
) -> MetricCounts:
    """MetricCounts from the counter tables' rows, the pending outbox row
    (count, due, leased, oldest created_at), the dead-job count and when the
    store was created (``min(applied_at)`` of schema_migrations)."""
    pending, due, leased, oldest = outbox
    from .views import MetricCounts
    return MetricCounts(
        events=tuple((r[0], r[1], r[2], bool(r[3]), r[4], r[5], int(r[6])) for r in events),
        messages=tuple((r[0], int(r[1])) for r in messages),
        deliveries=tuple((r[0], r[1], int(r[2])) for r in deliveries),
        pipe_runs=tuple((r[0], float(r[1]), int(r[2]), float(r[3])) for r in runs),
        pipe_guards=tuple((r[0], int(r[1])) for r in guards),
        outbox_pending=int(pending),
        outbox_due=int(due),
        outbox_leased=int(leased),
        outbox_dead=int(dead),
        outbox_oldest_pending_age=pending_age(now, oldest),
        store_created_at=float(created_at or 0.0),
    )


def outbox_stats(
    now: float, state_counts: Sequence[Sequence[Any]], due: Any, leased: Any, oldest: float | None
) -> dict[str, float]:
    """Store.outbox_stats from (state, count) rows and the pending jobs' due/leased
    counts and oldest created_at."""
    stats: dict[str, float] = {"pending": 0, "delivered": 0, "dead": 0}
    for state, count in state_counts:
        stats[state] = int(count)
    stats["due"] = int(due)
    stats["leased"] = int(leased)
    stats["oldest_pending_age"] = pending_age(now, oldest)
    return stats


def retention_cutoffs(
    events_before: float | None, messages_before: float | None, raw_before: float | None
) -> dict[str, float]:
    """Named parameters (ecut, mcut, rcut) of the retention counts; None keeps that kind."""
    return {
        "ecut": NEVER if events_before is None else events_before,
        "mcut": NEVER if messages_before is None else messages_before,
        "rcut": NEVER if raw_before is None else raw_before,
    }


def keyed_events(found: Sequence[Sequence[Any]]) -> list[tuple[int, BounceEvent]]:
    """(id, event) per ``id, *EVENT_FIELDS`` row."""
    return [(int(r[0]), event_from_row(r[1:])) for r in found]


def daily_counts(found: Sequence[Sequence[Any]]) -> list[DailyCount]:
    """DailyCount per (day, type, hard, count) row."""
    from .views import DailyCount
    return [DailyCount(day=r[0], type=r[1], hard=bool(r[2]), count=int(r[3])) for r in found]


def ranked(found: Sequence[Sequence[Any]]) -> list[tuple[str, int]]:
    """(key, count) per ranking row."""
    return [(str(r[0]), int(r[1])) for r in found]


def job_kind_counts(found: Sequence[Sequence[Any]]) -> dict[str, int]:
    """dashboard_job_counts from (kind, count) rows of DASH_JOB_KIND_CASE; every kind present."""
    counts = {kind: 0 for kind in DASH_JOB_KINDS}
    for kind, n in found:
        if kind in counts:
            counts[kind] = int(n)
    return counts
