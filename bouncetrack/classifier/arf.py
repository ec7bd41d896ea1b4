"""RFC 5965 Abuse Reporting Format (feedback loops): spam complaints."""

from __future__ import annotations

import re

from .lazy import lazy_re

from .common import ADDR_RE, first_address
from .model import COMPLAINT, RecipientResult, Report
from .view import ParsedView

# Non-ARF complaint notices some providers send (plain text feedback-loop reports).
_COMPLAINT_SUBJECT_RE = lazy_re(
    r"\b(?:complaint|abuse report|spam report|feedback.loop|fbl)\b", re.IGNORECASE)


# Microsoft's Junk Mail Reporting Program (Outlook.com, Hotmail, Live, MSN) names the
# complaining mailbox in this header of the original: attached to its report, or, in its
# older form, the report *is* the original, delivered to the feedback address (Sisimai's
# ARF module reads the same header). It beats the original's To:, which may be a list.
JMRP_HEADER = "x-hmxmroriginalrecipient"

# Recipients taken from one report at most (a report listing more is cut, not refused).
MAX_RECIPIENTS = 50

# The placeholder recipient of a complaint that names none (Sisimai's convention).
UNDISCLOSED_RECIPIENT = "undisclosed-recipient-in-headers@libsisimai.org.invalid"


def matches(view: ParsedView) -> bool:
    # RFC 5965 §2: multipart/report; report-type=feedback-report
    return (view.report_type == "feedback-report" or view.feedback is not None
            or bool(_COMPLAINT_SUBJECT_RE.search(view.subject[:300])) and view.original is not None
            or JMRP_HEADER in view.headers)


def detect(view: ParsedView) -> Report | None:
    fb = view.feedback or {}
    inline_jmrp = not fb and view.report_type != "feedback-report" and JMRP_HEADER in view.headers
    if not inline_jmrp and not fb and view.report_type != "feedback-report":
        # a plain-text feedback-loop notice: the body often carries the fields anyway
        if "feedback-type:" not in view.body.lower():
            if view.original is None:
                return None
    ftype = (fb.get("feedback-type") or "").strip().lower() or None  # RFC 5965 §3.1
    if ftype is None:
        m = None if inline_jmrp else re.search(r"(?im)^feedback-type:\s*([a-z-]+)", view.body[:8000])
        ftype = m.group(1).lower() if m else "abuse"
    # An inline JMRP report is the original itself; its Return-Path is Microsoft's (the
    # report's envelope), not the original's.
    orig = {k: v for k, v in view.headers.items() if k != "return-path"} if inline_jmrp else view.original or {}
    # RFC 5965 §3.2 Original-Rcpt-To, once per recipient (every one is a complaint);
    # RFC 6650 / RFC 6449 Removal-Recipient
    addrs: list[str] = []
    for k in ("original-rcpt-to", "removal-recipient"):
        addrs = list(dict.fromkeys(a.strip(".") for a in ADDR_RE.findall(fb.get(k) or "")))[:MAX_RECIPIENTS]
        if addrs:
            break
    addr = addrs[0] if addrs else None
    if addr is None:
        addr = first_address(orig.get(JMRP_HEADER))
    if addr is None:
        addr = first_address(orig.get("to"))
    if addr is None:
        for k in ("x-original-to", "delivered-to", "envelope-to"):
            addr = first_address(orig.get(k))
            if addr:
                break
    if addr is None:
        # Nothing names the complaining recipient (the original said "To: <Undisclosed
        # Recipients>"): report Sisimai's placeholder, an RFC 2606 ".invalid" address that
        # can never match a real recipient, rather than none.
        addr = UNDISCLOSED_RECIPIENT
    rp = orig.get("return-path") or fb.get("original-mail-from")
    rcpts = tuple(RecipientResult(
        address=a, action=None, status=None, reason="feedback", hard=False,
        reply_code=None, diagnostic=None, feedback_type=ftype,
    ) for a in (addrs or [addr]))
    return Report(
        kind=COMPLAINT, recipients=rcpts, detector="arf",
        original_message_id=orig.get("message-id"), original_return_path=rp,
        original_headers={k: v for k, v in orig.items() if k in ("from", "to", "subject", "message-id", "return-path", "date")},
    )
