"""Which outbox jobs one stored report creates (pure; the pipe calls it).

The pipe stores the events, the raw report and these jobs in one transaction
(:meth:`Store.store_report`), so a report is either stored *and* queued for
forwarding, or neither.

Decisions:

* Only **attributed** events are forwarded: ``token_status == "valid"`` and a
  known sender domain. A forged, unknown, expired or missing token is stored
  and counted but never forwarded as a bounce of any domain - otherwise anyone
  could inject fake bounces into a customer's webhook.
* **Flagged** events (the report's recipient and the token's recipient
  disagree) are still forwarded; the payload carries ``"flagged": true`` so
  the receiver can decide.
* **Webhook**: one job per attributed event, of every type (bounce, complaint,
  delay, delivered, auto_reply, unknown). Receivers filter on ``type``;
  delivery reports (NOTIFY=SUCCESS) are useful to them and cost nothing.
* **SMTP forward**: one job per *report* (the original bounce is forwarded
  once, not once per recipient), unless every attributed event in it is a
  delivery report - a human mailbox does not want "delivered" notices, and
  before VERP rewriting the sender would have received delays and
  auto-replies, so those are forwarded. The job names the report's most
  significant event (see :func:`primary_event`); the worker takes the
  classification headers from it.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from ..core.config import DomainPolicy
from ..store.base import BounceEvent, OutboxJob

WEBHOOK = "webhook"
SMTP = "smtp"

# Most significant first: which event of a multi-recipient report names the SMTP forward.
_TYPE_RANK = {"bounce": 0, "complaint": 1, "delay": 2, "unknown": 3, "auto_reply": 4, "delivered": 5}


def is_attributed(event: BounceEvent) -> bool:
    """True when the event belongs to a domain's message (valid token, domain known)."""
    return event.token_status == "valid" and bool(event.domain)


def primary_event(events: Iterable[BounceEvent]) -> BounceEvent | None:
    """The event whose classification describes the report best: hard bounces first,
    then soft bounces, complaints, delays...; ties keep report order."""
    ranked = sorted(
        enumerate(events),
        key=lambda ie: (_TYPE_RANK.get(ie[1].type, 3), not ie[1].hard, ie[0]),
    )
    return ranked[0][1] if ranked else None


def jobs_for(
    events: Sequence[BounceEvent], policy: DomainPolicy, *, now: float = 0.0
) -> list[OutboxJob]:
    """The outbox jobs for one report's events under ``policy`` (the events' domain).

    ``now`` sets ``created_at`` and ``next_attempt_at`` (due immediately).
    """
    attributed = [e for e in events if is_attributed(e)]
    jobs: list[OutboxJob] = []
    if policy.webhook is not None:
        for e in attributed:
            jobs.append(
                OutboxJob(
                    event_id=e.event_id,
                    channel=WEBHOOK,
                    target=policy.webhook.url,
                    next_attempt_at=now,
                    created_at=now,
                    updated_at=now,
                )
            )
    if policy.forward:
        forwardable = [e for e in attributed if e.type != "delivered"]
        primary = primary_event(forwardable)
        if primary is not None:
            jobs.append(
                OutboxJob(
                    event_id=primary.event_id,
                    channel=SMTP,
                    target=policy.forward,
                    next_attempt_at=now,
                    created_at=now,
                    updated_at=now,
                )
            )
    return jobs


__all__ = ["SMTP", "WEBHOOK", "is_attributed", "jobs_for", "primary_event"]
