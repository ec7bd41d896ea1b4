"""Turn one classified report into stored events: pure, no I/O.

Attribution rules (HACKING.md, "VERP token"): the token names the message; the
recipient is found among the message's recipients by the report's
Original-Recipient (our ORCPT), then its Final-Recipient; a single-recipient
message takes its recipient even when the report's address is unreadable. A
report address that matches none of them is stored ``flagged``. Reports whose
token does not verify, or names no message we sent, are stored as such and
never attributed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from ..core import esmtp
from ..classifier.model import AUTO_REPLY, COMPLAINT, HARD_REASONS, NOT_BOUNCE, RecipientResult, Report
from ..store.base import BounceEvent, MessageRecord, RecipientRecord
from . import guard

# Event types (the webhook's and the API's "type").
BOUNCE = "bounce"
COMPLAINT_EVENT = "complaint"
DELAY = "delay"
DELIVERED = "delivered"
AUTO_REPLY_EVENT = "auto_reply"
UNKNOWN = "unknown"

# Token statuses.
VALID = "valid"
FORGED = "forged"
EXPIRED = "expired"
UNKNOWN_TOKEN = "unknown"  # verifies, but names no message in the store
MISSING = "missing"


@dataclass(frozen=True)
class Delivery:
    """How the report reached the pipe (from Postfix's argv) and what its token said."""

    recipient: str  # the address Postfix delivered to, e.g. b+TOKEN@bounce.example.com
    sender: str  # the bounce's envelope sender, usually empty
    token: str | None
    token_status: str
    received_at: float
    dedupe_key: str


def dedupe_key(recipient: str, raw: bytes) -> str:
    """The same bounce delivered twice (Postfix retry after a crash) has the same key."""
    digest = hashlib.sha256()
    digest.update(recipient.lower().encode("utf-8", "surrogateescape"))
    digest.update(b"\0")
    digest.update(raw)
    return digest.hexdigest()


def event_id(key: str, index: int) -> str:
    """Stable across retries, so a webhook's idempotency key never changes."""
    return hashlib.sha256(f"{key}:{index}".encode()).hexdigest()[:32]


def event_type(report: Report, result: RecipientResult | None) -> str:
    if report.kind == COMPLAINT:
        return COMPLAINT_EVENT
    if report.kind == AUTO_REPLY:
        return AUTO_REPLY_EVENT
    if report.kind == NOT_BOUNCE or result is None:
        return UNKNOWN
    action = (result.action or "").lower()
    # RFC 3464 §2.3.3: only "failed" is a failure; the others are reports.
    if action == "delayed":
        return DELAY
    if action in ("delivered", "relayed", "expanded"):
        return DELIVERED
    if report.kind == "delivery_report":
        return DELAY if (result.status or "").startswith("4") else DELIVERED
    return BOUNCE


def _norm(address: str | None) -> str | None:
    if not address:
        return None
    text = address.strip()
    if ";" in text and text.split(";", 1)[0].strip().lower() in ("rfc822", "utf-8", "x-unknown"):
        text = text.split(";", 1)[1]
    address = esmtp.strip_path(text).strip('"').lower()
    # RFC 6761 §6.4: ".invalid" never names a mailbox; classifiers use it for
    # "the report names nobody" (e.g. an ARF report that redacted the recipient).
    if not address or address.endswith(".invalid"):
        return None
    return address


def _match(result: RecipientResult, recipients: tuple[RecipientRecord, ...]) -> RecipientRecord | None:
    wanted = [a for a in (_norm(result.original_recipient), _norm(result.address)) if a]
    for address in wanted:
        for rcpt in recipients:
            orcpt = esmtp.orcpt_address(rcpt.orcpt) if rcpt.orcpt else None
            if address in (rcpt.address.lower(), (orcpt or "").lower()):
                return rcpt
    return None


def build_events(report: Report, delivery: Delivery, message: MessageRecord | None) -> list[BounceEvent]:
    """One event per recipient the report names; one ``unknown`` event if it names none."""
    results: list[RecipientResult | None] = list(report.recipients) or [None]
    events = []
    for index, result in enumerate(results):
        kind = event_type(report, result)
        recipient: str | None = _norm(result.address) if result else None
        flagged = False
        if message is not None:
            match = _match(result, message.recipients) if result else None
            if match is not None:
                recipient = match.address
            elif len(message.recipients) == 1:
                only = message.recipients[0].address
                # The report names another address (or none we can read): still
                # this message's only recipient, but flagged for a human look
                # when the report did name someone else.
                flagged = recipient is not None and recipient != only.lower()
                recipient = only
            else:
                flagged = True
        reason = result.reason if result else "undefined"
        if kind == UNKNOWN:
            reason = "undefined"
        events.append(
            BounceEvent(
                event_id=event_id(delivery.dedupe_key, index),
                type=kind,
                hard=kind == BOUNCE and reason in HARD_REASONS,
                reason=reason,
                status=result.status if result else None,
                reply_code=result.reply_code if result else None,
                diagnostic=result.diagnostic if result else None,
                recipient=recipient,
                reported_recipient=_norm(result.address) if result else None,
                action=result.action if result else None,
                remote_mta=result.remote_mta if result else None,
                domain=message.sender_domain if message else None,
                original_sender=message.envelope_sender if message else None,
                original_message_id=(message.message_id if message else None) or report.original_message_id,
                token=delivery.token,
                token_status=delivery.token_status,
                flagged=flagged,
                message_pk=message.id if message else None,
                received_at=delivery.received_at,
                dedupe_key=delivery.dedupe_key,
                feedback_type=result.feedback_type if result else None,
                sent_at=message.created_at if message else None,
                queue_id=message.queue_id if message else None,
            )
        )
    return events


def bound_events(events: list[BounceEvent]) -> tuple[list[BounceEvent], int]:
    """The events one report may store, and how many were dropped (issue 16).

    A report is one message from the Internet and may name any number of
    recipients; anyone who received a tracked message holds a valid token. Kept,
    in the report's order: one event per (recipient, type) of an attributed,
    unflagged event (at most one per recipient of the message and kind); flagged
    events collapsed to one per recipient they point to, and none for a recipient
    that already has an unflagged event (a single-recipient message's DSN naming
    100,000 others gives one event), at most ``MAX_FLAGGED_EVENTS``; at most
    ``MAX_UNATTRIBUTED_EVENTS`` events of a report we cannot attribute; at most
    ``MAX_EVENTS_PER_REPORT`` in all. Event ids are unchanged (computed from the
    position in the report), so a retry keeps the same ids.
    """
    if len(events) <= 1:
        return events, 0
    kept: list[BounceEvent] = []
    seen: set[tuple[str | None, str]] = set()
    unflagged = {e.recipient for e in events if e.message_pk is not None and not e.flagged}
    flagged = unattributed = 0
    for event in events:
        if len(kept) >= guard.MAX_EVENTS_PER_REPORT:
            break
        key = (event.recipient, event.type)
        if event.message_pk is None:
            if unattributed >= guard.MAX_UNATTRIBUTED_EVENTS:
                continue
            unattributed += 1
        elif event.flagged:
            if event.recipient in unflagged or key in seen or flagged >= guard.MAX_FLAGGED_EVENTS:
                continue
            flagged += 1
        elif key in seen:
            continue
        seen.add(key)
        kept.append(event)
    return kept, len(events) - len(kept)
