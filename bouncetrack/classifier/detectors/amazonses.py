"""Amazon SES notifications delivered by e-mail (SNS JSON: Bounce / Complaint / Delivery).

The JSON shape is Amazon's documented notification content: ``notificationType``,
``bounce.bouncedRecipients[]`` (emailAddress, action, status, diagnosticCode),
``complaint.complainedRecipients[]``, ``delivery.recipients[]``.
"""

from __future__ import annotations

import re

from ..lazy import lazy_re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

from ..common import make_recipient, strip_diag_type
from ..model import BOUNCE, COMPLAINT, DELIVERY_REPORT, RecipientResult, Report
from ..view import ParsedView

_FROM_RE = lazy_re(r"amazonses|amazonaws|no-reply@sns", re.IGNORECASE)


class AmazonSES:
    name = "amazonses"

    def matches(self, view: ParsedView) -> bool:
        return ('"notificationType"' in view.body[:4096] or "notificationType" in view.body[:4096]) or bool(
            _FROM_RE.search(view.from_[:200]) and "{" in view.body[:4096])

    def _json(self, view: ParsedView) -> dict[str, Any] | None:
        import json  # only for the rare SES notification

        body = view.body
        i = body.find("{")
        if not 0 <= i < 8192:
            return None
        dec = json.JSONDecoder()
        try:
            obj, _ = dec.raw_decode(body[i:])
        except ValueError:
            try:  # SNS folds long lines: try again with the line breaks removed
                obj, _ = dec.raw_decode(body[i:].replace("\n", ""))
            except ValueError:
                return None
        if not isinstance(obj, dict):
            return None
        if isinstance(obj.get("Message"), str):  # an SNS envelope around the notification
            try:
                inner = json.loads(obj["Message"])
            except ValueError:
                return None
            return inner if isinstance(inner, dict) else None
        return obj

    def detect(self, view: ParsedView) -> Report | None:
        data = self._json(view)
        if data is None:
            return None
        ntype = str(data.get("notificationType") or data.get("eventType") or "").lower()
        out: list[RecipientResult] = []
        if ntype == "bounce":
            b = data.get("bounce") or {}
            temp = str(b.get("bounceType", "")).lower() == "transient"
            for r in b.get("bouncedRecipients") or []:
                if not isinstance(r, dict) or not r.get("emailAddress"):
                    continue
                out.append(make_recipient(
                    str(r["emailAddress"]), action=str(r.get("action") or "failed"),
                    status=r.get("status"), diagnostic=strip_diag_type(r.get("diagnosticCode")),
                    temporary=temp,
                ))
            return Report(kind=BOUNCE, recipients=tuple(out), detector=self.name) if out else None
        if ntype == "complaint":
            c = data.get("complaint") or {}
            ftype = c.get("complaintFeedbackType") or "abuse"
            for r in c.get("complainedRecipients") or []:
                if isinstance(r, dict) and r.get("emailAddress"):
                    out.append(RecipientResult(
                        address=str(r["emailAddress"]), action=None, status=None, reason="feedback",
                        hard=False, reply_code=None, diagnostic=None, feedback_type=str(ftype)))
            return Report(kind=COMPLAINT, recipients=tuple(out), detector=self.name) if out else None
        if ntype == "delivery":
            d = data.get("delivery") or {}
            diag = d.get("smtpResponse")
            for a in d.get("recipients") or []:
                if isinstance(a, str):
                    out.append(make_recipient(a, action="delivered", diagnostic=diag, reason="delivered"))
            return Report(kind=DELIVERY_REPORT, recipients=tuple(out), detector=self.name) if out else None
        return None
