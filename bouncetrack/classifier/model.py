"""What the classifier returns: plain frozen dataclasses, JSON-ready.

The JSON shape (``Report.to_json``) is the one ``shared/corpus/score.py`` reads:
``{"file", "kind", "recipients": [{"address", "action", "status", "reason",
"hard", "reply_code", "diagnostic"}]}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Report kinds.
BOUNCE = "bounce"
COMPLAINT = "complaint"
AUTO_REPLY = "auto_reply"
DELIVERY_REPORT = "delivery_report"  # delayed, delivered, relayed, expanded: not a bounce
NOT_BOUNCE = "not_bounce"

# Reasons whose failure is the address itself (Sisimai's hard bounces).
HARD_REASONS = frozenset({"userunknown", "hostunknown", "hasmoved", "notaccept"})


@dataclass(frozen=True)
class RecipientResult:
    address: str | None
    action: str | None  # failed | delayed | delivered | relayed | expanded
    status: str | None  # RFC 3463, e.g. "5.1.1"
    reason: str  # taxonomy, "undefined" when nothing better is known
    hard: bool
    reply_code: str | None  # e.g. "550"
    diagnostic: str | None
    remote_mta: str | None = None
    original_recipient: str | None = None  # RFC 3464 Original-Recipient, when given
    feedback_type: str | None = None  # ARF Feedback-Type (complaints)

    def to_json(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "action": self.action,
            "status": self.status,
            "reason": self.reason,
            "hard": self.hard,
            "reply_code": self.reply_code,
            "diagnostic": self.diagnostic,
        }


@dataclass(frozen=True)
class Report:
    kind: str
    recipients: tuple[RecipientResult, ...] = ()
    detector: str | None = None  # which detector produced it (for debugging)
    # From the returned original message (headers or full), when present:
    original_message_id: str | None = None
    original_return_path: str | None = None  # used to find the VERP token of complaints
    original_headers: dict[str, str] = field(default_factory=dict)  # a few, lower-case keys
    envelope_id: str | None = None  # RFC 3464 Original-Envelope-Id (our ENVID = token)

    def to_json(self, file: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if file is not None:
            out["file"] = file
        out["kind"] = self.kind
        out["recipients"] = [r.to_json() for r in self.recipients]
        return out
