"""Helpers shared by the detectors: address parsing and building a RecipientResult."""

from __future__ import annotations

import re

from . import reasons
from .model import RecipientResult

ADDR_RE = re.compile(
    r"(?<![A-Za-z0-9.!#$%&'*+/=?^_`{|}~-])"
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-][A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{0,63}"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?\.){1,10}[A-Za-z][A-Za-z0-9-]{0,62}"
)
_TYPE_PREFIX_RE = re.compile(r"^\s*(?:rfc822|x-[a-z0-9-]{1,30}|utf-8|unknown)\s*;\s*", re.IGNORECASE)
_DIAG_TYPE_RE = re.compile(r"^\s*[a-z][a-z0-9-]{0,30}\s*;\s*", re.IGNORECASE)
_NON_RCPT_LOCAL = re.compile(r"^(?:mailer-daemon|postmaster|maildelivery|mail-daemon|double-bounce|"
                             r"bounces?|noreply|no-reply|root)$", re.IGNORECASE)


# The SMTP command a rejection answered (RFC 5321 §4.2): a refusal after the message data
# is about the content, not the address, even if it says "user unknown".
_DATA_MARKS = (">>> data", "end of data", "after data", "did not like our data",
               "did not like our final data", "while sending the message", "while sending data")
_RCPT_MARKS = ("rcpt to", "in reply to rcpt", "after rcpt", "does not like recipient")


def data_phase(text: str) -> bool:
    low = text[:8000].lower()
    return any(m in low for m in _DATA_MARKS) and not any(m in low for m in _RCPT_MARKS)


def first_address(value: str | None) -> str | None:
    """The first mail address in a header/field value, bare and without a type prefix."""
    if not value:
        return None
    v = _TYPE_PREFIX_RE.sub("", value)
    m = ADDR_RE.search(v)
    if m is None:
        return None
    return m.group(0).strip(".")


def is_daemon(addr: str) -> bool:
    return bool(_NON_RCPT_LOCAL.match(addr.split("@", 1)[0]))


def strip_diag_type(value: str | None) -> str | None:
    """RFC 3464 §2.3.6: "diagnostic-type; text" -> text."""
    if not value:
        return None
    return _DIAG_TYPE_RE.sub("", value).strip() or None


def clean_status(value: str | None) -> str | None:
    """RFC 3464 §2.3.4: Status is "d.d.d" possibly followed by a comment."""
    if not value:
        return None
    m = reasons.STATUS_RE.search(value)
    return m.group(0) if m else None


def make_recipient(
    address: str | None,
    *,
    action: str | None = None,
    status: str | None = None,
    reply_code: str | None = None,
    diagnostic: str | None = None,
    remote_mta: str | None = None,
    original_recipient: str | None = None,
    temporary: bool | None = None,
    reason: str | None = None,
    in_data: bool = False,
) -> RecipientResult:
    diag = " ".join(diagnostic.split())[:1000] if diagnostic else None
    status = clean_status(status)
    text_status = reasons.find_status(diag) if diag else None
    # The remote server's own enhanced code in the diagnostic (RFC 3464 §2.3.6) is more
    # specific than the reporting MTA's summary Status (§2.3.4): prefer it.
    if text_status and not text_status.startswith("2"):
        status = text_status
    if reply_code is None and diag:
        reply_code = reasons.find_reply_code(diag)
    if action:
        action = action.strip().lower().split()[0] if action.strip() else None
    if reason is None:
        if action in ("delivered", "relayed", "expanded") or (status and status[0] == "2"):
            reason = "delivered"
        else:
            reason = reasons.classify_reason(diag, status, reply_code)
            if action == "delayed" and reason in ("undefined", "onhold", "networkerror", "systemerror"):
                reason = "expired"
            # RFC 3464 §2.3.3/§2.3.4: a *failed* action with a transient (4.X.X) status
            # means the MTA gave up retrying: the message expired in the queue.
            elif (action in (None, "failed") and status and status[0] == "4"
                  and (reason in ("undefined", "onhold", "systemerror")
                       or (reason == "networkerror" and "timed out" in (diag or "").lower()))):
                reason = "expired"
            elif reason == "userunknown" and in_data and not (status and status[2:5] == "1.1"):
                reason = "filtered"
    if status is None:
        if temporary is None and action == "delayed":
            temporary = True
        status = reasons.infer_status(reason, reply_code, temporary)
    if action is None:
        action = "delivered" if reason == "delivered" else "failed"
    return RecipientResult(
        address=address,
        action=action,
        status=status,
        reason=reason,
        # RFC 3463 §3.1: a 4.X.X status is persistent-transient; never a hard bounce.
        hard=reasons.is_hard(reason) and not (status is not None and status.startswith("4")),
        reply_code=reply_code,
        diagnostic=diag,
        remote_mta=remote_mta,
        original_recipient=original_recipient,
    )
