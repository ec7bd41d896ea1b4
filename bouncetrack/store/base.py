"""The store's write-side records: what the milter and the pipe hand to a store.

Records are plain frozen dataclasses; timestamps are UTC seconds since the
epoch (float). Only what the bounce pipe needs is defined here, because the pipe
imports this module once per bounce; the read-side records live in
:mod:`bouncetrack.store.views` and the queries in :mod:`bouncetrack.store.sql`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class StoreUnavailable(Exception):
    """The store cannot be used right now (locked, down, disk full).

    The pipe turns this into exit 75 so that Postfix retries; the milter into a
    4xx so that the client retries.
    """


# The send API's Message-IDs start with this (``<bt.`` + what ``make_msgid`` makes): the
# store indexes only those (migration 11's partial index, SEND_API_MESSAGE_ID), for the
# send API's lookup of the message it just submitted, instead of every tracked message's
# (issue 20: that index cost the journal writer a random B-tree insert per message).
SEND_API_MESSAGE_ID_PREFIX = "<bt."


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
    queue_id: str | None = None  # the original message's Postfix queue id (messages.queue_id)


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
class StoreOutcome:
    stored: bool  # False: duplicate, already stored earlier (idempotent retry), or over quota
    event_ids: tuple[str, ...] = field(default_factory=tuple)
    over_quota: bool = False  # not stored: the sending host's untrusted reports of the day are used up


# The pipe's guards (issue 16): store_report counts them in metric_pipe_guards;
# the names are bounce_pipe/guard.py's. This one the store applies itself.
UNTRUSTED_OVER_QUOTA = "untrusted_over_quota"
DAY_SECONDS = 86400


@dataclass(frozen=True)
class UntrustedQuota:
    """A report without a valid token: stored only while ``host`` has stored fewer
    than ``per_day`` such reports this UTC day (issue 16); else nothing is stored
    and the run is counted under :data:`UNTRUSTED_OVER_QUOTA`."""

    host: str  # the SMTP client that handed it to Postfix; "local", or "unknown"
    per_day: int


# Metrics (issue 5): the pipe's runs are counted by store_report in the report's
# transaction, by duration bucket; the read side is in views and sql.
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


# =============================================================================
# Suppression list (issue 6, suppression section; owner: suppression).
#
# One list per sender domain of (domain, lower-cased recipient address). The
# pipe adds to it inside store_report's transaction (``suppress=``); the CLI
# and the API list, add and remove; the milter keeps an in-memory index fed by
# the change feed (``seq`` grows with every insert, update and removal, and a
# removal keeps its row as a tombstone so that the feed carries it).
# =============================================================================

# Row ids are signed 64-bit integers in both backends (SQLite INTEGER, PostgreSQL
# bigint): a larger number from a request is refused at the edge (400), never
# handed to a driver that would raise OverflowError (issue 16).
MAX_ROW_ID = 2**63 - 1

# Why an address is on the list (``Suppression.reason``).
REASON_HARD_BOUNCE = "hard_bounce"
REASON_COMPLAINT = "complaint"
REASON_SOFT_BOUNCES = "soft_bounces"
REASON_MANUAL = "manual"
REASON_FORGOTTEN = "forgotten"  # a tombstone left by `bouncetrack forget` (address replaced by a pseudonym)


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

