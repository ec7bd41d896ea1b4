"""The one JSON shape of a bounce event, shared by the webhook and the download API.

Every consumer (webhook receivers, API clients, the CLI) sees the same keys with
the same meaning, so the mapping from :class:`~bouncetrack.store.base.BounceEvent`
lives here and nowhere else. Adding a key is backwards compatible; renaming or
removing one is not (bump :data:`SCHEMA_VERSION`).

Import cost matters: the pipe may import this module, so it uses only ``time``
(no ``datetime``, no ``json``).

Example (a hard bounce)::

    {
      "event_id": "3f2b9c0e8d5a4e1f9b7c6d5e4f3a2b1c",
      "type": "bounce",
      "hard": true,
      "severity": "hard",
      "reason": "userunknown",
      "status": "5.1.1",
      "reply_code": "550",
      "diagnostic": "smtp; 550 5.1.1 <bob@example.net>: Recipient address rejected",
      "recipient": "bob@example.net",
      "reported_recipient": "bob@example.net",
      "action": "failed",
      "remote_mta": "dns; mx.example.net",
      "original_sender": "news@example.com",
      "original_message_id": "<20240501120000.1234@example.com>",
      "token": "aebagbafaydqqcikbmgq2dq4",
      "token_status": "valid",
      "flagged": false,
      "feedback_type": null,
      "domain": "example.com",
      "received_at": "2024-05-01T12:00:05.250Z",
      "sent_at": "2024-05-01T12:00:00.000Z",
      "queue_id": "4Xk9Qn1vZtz3Jb"
    }

``queue_id`` (added in issue 15, a backwards-compatible addition within version 1)
is the original message's Postfix queue id as the milter saw it: the key to find the
message in the mail log (``grep 4Xk9Qn1vZtz3Jb /var/log/mail.log``); null when the
event is not attributed to a message.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only, keeps the import cheap
    from ..store.base import BounceEvent

SCHEMA_VERSION = 1

# The values of "type"; anything else from the store is reported as "unknown".
EVENT_TYPES = ("bounce", "complaint", "delay", "delivered", "auto_reply", "unknown")


def iso_utc(ts: float | None) -> str | None:
    """``1714564805.25`` -> ``"2024-05-01T12:00:05.250Z"`` (ISO 8601, UTC, millisecond precision)."""
    if ts is None:
        return None
    whole = int(ts // 1)
    millis = int(round((ts - whole) * 1000))
    if millis >= 1000:  # rounding carried into the next second
        whole, millis = whole + 1, millis - 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{millis:03d}Z"


def event_to_json(event: "BounceEvent") -> dict[str, Any]:
    """The JSON-ready dict for one event (values are str, bool or None only).

    ``severity`` duplicates ``hard`` as a word because most receivers switch on
    a string; ``hard`` stays for those that want a boolean. ``flagged`` events
    (the report's recipient and the token's recipient disagree) are delivered
    like any other but should be treated with care by the receiver.
    """
    etype = event.type if event.type in EVENT_TYPES else "unknown"
    return {
        "event_id": event.event_id,
        "type": etype,
        "hard": bool(event.hard),
        "severity": "hard" if event.hard else "soft",
        "reason": event.reason,
        "status": event.status,
        "reply_code": event.reply_code,
        "diagnostic": event.diagnostic,
        "recipient": event.recipient,
        "reported_recipient": event.reported_recipient,
        "action": event.action,
        "remote_mta": event.remote_mta,
        "original_sender": event.original_sender,
        "original_message_id": event.original_message_id,
        "token": event.token,
        "token_status": event.token_status,
        "flagged": bool(event.flagged),
        "feedback_type": event.feedback_type,
        "domain": event.domain,
        "received_at": iso_utc(event.received_at),
        "sent_at": iso_utc(event.sent_at),
        "queue_id": event.queue_id,
    }


__all__ = ["EVENT_TYPES", "SCHEMA_VERSION", "event_to_json", "iso_utc"]
