"""What the classifier returns: small immutable value classes, JSON-ready.

Plain classes with ``__slots__`` rather than dataclasses: the bounce pipe imports this once
per process, and ``dataclasses`` (with ``inspect``) costs more to import than a classification.

The JSON shape (``Report.to_json``) is the one ``shared/corpus/score.py`` reads:
``{"file", "kind", "recipients": [{"address", "action", "status", "reason",
"hard", "reply_code", "diagnostic"}]}``.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Report kinds.
BOUNCE = "bounce"
COMPLAINT = "complaint"
AUTO_REPLY = "auto_reply"
DELIVERY_REPORT = "delivery_report"  # delayed, delivered, relayed, expanded: not a bounce
NOT_BOUNCE = "not_bounce"

# Reasons whose failure is the address itself (Sisimai's hard bounces).
HARD_REASONS = frozenset({"userunknown", "hostunknown", "hasmoved", "notaccept"})


class _Frozen:
    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        names: tuple[str, ...] = self.__slots__
        return all(getattr(self, k) == getattr(other, k) for k in names)

    def __repr__(self) -> str:
        names: tuple[str, ...] = self.__slots__
        inner = ", ".join(f"{k}={getattr(self, k)!r}" for k in names)
        return f"{type(self).__name__}({inner})"


class RecipientResult(_Frozen):
    __slots__ = ("address", "action", "status", "reason", "hard", "reply_code", "diagnostic",
                 "remote_mta", "original_recipient", "feedback_type")

    address: str | None
    action: str | None  # failed | delayed | delivered | relayed | expanded
    status: str | None  # RFC 3463, e.g. "5.1.1"
    reason: str  # taxonomy, "undefined" when nothing better is known
    hard: bool
    reply_code: str | None  # e.g. "550"
    diagnostic: str | None
    remote_mta: str | None
    original_recipient: str | None  # RFC 3464 Original-Recipient, when given
    feedback_type: str | None  # ARF Feedback-Type (complaints)

    def __init__(
        self,
        address: str | None,
        action: str | None,
        status: str | None,
        reason: str,
        hard: bool,
        reply_code: str | None,
        diagnostic: str | None,
        remote_mta: str | None = None,
        original_recipient: str | None = None,
        feedback_type: str | None = None,
    ) -> None:
        s = object.__setattr__
        s(self, "address", address)
        s(self, "action", action)
        s(self, "status", status)
        s(self, "reason", reason)
        s(self, "hard", hard)
        s(self, "reply_code", reply_code)
        s(self, "diagnostic", diagnostic)
        s(self, "remote_mta", remote_mta)
        s(self, "original_recipient", original_recipient)
        s(self, "feedback_type", feedback_type)

    __hash__ = None  # type: ignore[assignment]

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


class Report(_Frozen):
    __slots__ = ("kind", "recipients", "detector", "original_message_id", "original_return_path",
                 "original_headers", "envelope_id", "guessed")

    kind: str
    recipients: tuple[RecipientResult, ...]
    detector: str | None  # which detector produced it (for debugging)
    # From the returned original message (headers or full), when present:
    original_message_id: str | None
    original_return_path: str | None  # used to find the VERP token of complaints
    original_headers: dict[str, str]  # a few, lower-case keys
    envelope_id: str | None  # RFC 3464 Original-Envelope-Id (our ENVID = token)
    guessed: bool  # the report names no recipient: taken from the original's headers

    def __init__(
        self,
        kind: str,
        recipients: tuple[RecipientResult, ...] = (),
        detector: str | None = None,
        original_message_id: str | None = None,
        original_return_path: str | None = None,
        original_headers: dict[str, str] | None = None,
        envelope_id: str | None = None,
        guessed: bool = False,
    ) -> None:
        s = object.__setattr__
        s(self, "kind", kind)
        s(self, "recipients", recipients)
        s(self, "detector", detector)
        s(self, "original_message_id", original_message_id)
        s(self, "original_return_path", original_return_path)
        s(self, "original_headers", {} if original_headers is None else original_headers)
        s(self, "envelope_id", envelope_id)
        s(self, "guessed", guessed)

    __hash__ = None  # type: ignore[assignment]

    def to_json(self, file: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if file is not None:
            out["file"] = file
        out["kind"] = self.kind
        out["recipients"] = [r.to_json() for r in self.recipients]
        return out
