"""RFC 3834 automatic responses: vacation / out-of-office replies (not bounces)."""

from __future__ import annotations

import re

from .lazy import lazy_re

from .common import first_address
from .model import AUTO_REPLY, RecipientResult, Report
from .view import ParsedView

_SUBJECT_RE = lazy_re(
    r"^\s*(?:(?:re|aw|fwd?)\s*:\s*)?(?:auto(?:matic)?[ -]?(?:reply|response|antwort|answer|respuesta|r[ée]ponse)|"
    r"auto:|out of (?:the )?office|vacation|on vacation|away from (?:the )?office|abwesenheit|"
    r"absence|autoreply|i am (?:away|out)|r[ée]ponse automatique|risposta automatica|"
    r"ausser haus|out of office|fuera de la oficina|congés)",
    re.IGNORECASE,
)
_BODY_RE = lazy_re(
    r"out of (?:the )?office|on (?:vacation|holiday|leave)|away from (?:my|the) (?:desk|office|email)|"
    r"limited access to (?:my )?e-?mail|i (?:am|will be) (?:currently )?(?:away|out)|auto(?:matic|mated)? reply|"
    r"i'?ll (?:respond|reply|get back)|will (?:respond|reply) (?:to your (?:message|email) )?(?:as soon|when|upon)",
    re.IGNORECASE,
)


def matches(view: ParsedView) -> bool:
    h = view.headers
    auto = h.get("auto-submitted", "").strip().lower()
    # RFC 3834 §5.1: auto-replied marks a response; auto-generated is used by DSNs too.
    if auto.startswith("auto-replied"):
        return True
    if "x-autoreply" in h or "x-autorespond" in h or "x-autoresponder" in h:
        return True
    prec = h.get("precedence", "").strip().lower()
    if prec == "auto_reply":
        return True
    if h.get("x-auto-response-suppress") and _SUBJECT_RE.search(view.subject):
        return True
    return bool(_SUBJECT_RE.search(view.subject[:300]))


def detect(view: ParsedView) -> Report | None:
    if not (_SUBJECT_RE.search(view.subject[:300]) or _BODY_RE.search(view.body[:4000])
            or view.headers.get("auto-submitted", "").lower().startswith("auto-replied")
            or "x-autoreply" in view.headers):
        return None
    # The responder is the recipient the auto-reply speaks for (RFC 3834 §3.1.5 From).
    addr = first_address(view.headers.get("from"))
    rcpt = RecipientResult(
        address=addr, action=None, status=None, reason="vacation", hard=False,
        reply_code=None, diagnostic=view.subject[:200] or None,
    )
    return Report(kind=AUTO_REPLY, recipients=(rcpt,), detector="rfc3834")
