"""Helpers shared by the detectors: address parsing and building a RecipientResult."""

from __future__ import annotations

import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

from .lazy import lazy_re

from . import providers, reasons
from .model import RecipientResult

# RFC 5322 §3.2.3 atext, except that a local part never *starts* with an apostrophe
# here: text bounces quote addresses as 'user@host' far more often than a mailbox
# begins with one (o'brien@ keeps its apostrophe: the match starts at its first letter).
ADDR_RE = lazy_re(
    r"(?<![A-Za-z0-9.!#$%&*+/=?^_`{|}~-])"
    r"[A-Za-z0-9!#$%&*+/=?^_`{|}~-][A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{0,63}"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?\.){1,10}[A-Za-z][A-Za-z0-9-]{0,62}"
)
# RFC 5322 §3.4.1 also allows a quoted-string local part ("a..b"@host, "john smith"@host):
# it is kept with its quotes, exactly as written, since without them it is another address.
# A separate pattern, tried where a field or line holds '"@', so that scanning text for
# ordinary addresses keeps ADDR_RE's fast first-character test.
QUOTED_ADDR_RE = lazy_re(r'"[^"\\\r\n]{1,64}"@' + ADDR_RE.pattern.split("@", 1)[1])


def _search_addr(value: str) -> re.Match[str] | None:
    if '"@' in value:
        q = QUOTED_ADDR_RE.search(value)
        m = ADDR_RE.search(value)
        if q is not None and (m is None or q.start() <= m.start()):
            return q
        return m
    return ADDR_RE.search(value)


_TYPE_PREFIX_RE = lazy_re(r"^\s*(?:rfc822|x-[a-z0-9-]{1,30}|utf-8|unknown)\s*;\s*", re.IGNORECASE)
_DIAG_TYPE_RE = lazy_re(r"^\s*[a-z][a-z0-9-]{0,30}\s*;\s*", re.IGNORECASE)
_NON_RCPT_LOCAL = lazy_re(r"^(?:mailer-daemon|postmaster|maildelivery|mail-daemon|double-bounce|"
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
    m = _search_addr(v)
    if m is None:
        return None
    return m.group(0).strip(".")


def is_daemon(addr: str) -> bool:
    return bool(_NON_RCPT_LOCAL.match(addr.split("@", 1)[0]))


# Envelope addresses of mail systems, never a failed recipient (issue 18): they appear in
# transcripts ("MAIL FROM:<...>"), trace fields and returned headers of every report.
_ENVELOPE_LOCAL_RE = lazy_re(
    # SRS (the Sender Rewriting Scheme's SRS0=/SRS1= forms) and BATV (prvs=, msprvs1=, btv1==)
    r"^(?:srs[01][=+-]|prvs=|msprvs\d?=|btv1==)"
    # VERP, RFC-less but universal (qmail, ezmlm, Mailman, ESPs): local=domain@bounces.host
    r"|=[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?)*\.[a-z]{2,63}$"
    # list/ESP bounce handlers (bounce-123-abc@, bounces+x@) and this product's own b+TOKEN@
    r"|^bounces?[-+=._]|^(?:bnc|verp|rp|return)[-+=]|^b\+[a-z2-7]{16,}$"
    # key=value tokens of trace fields (Received: ... id=..., Authentication-Results,
    # Exim's envelope-from=) that a loose match reads as a local part
    r"|^(?:id|envelope-from|envelope-sender|smtp\.mailfrom|smtp\.helo|header\.from|helo|mailfrom|from|sender)=",
    re.IGNORECASE,
)


# Every match of the pattern without an "=" starts with one of these.
_ENVELOPE_PREFIXES = ("bounce", "bnc", "verp", "rp", "return", "b+")


def is_envelope_address(addr: str) -> bool:
    """True for an address that names a mail system's envelope (VERP, SRS, BATV, a bounce
    handler) or a trace field's ``key=value@host`` token: never a recipient of the report."""
    local = addr.rsplit("@", 1)[0]
    if "=" not in local and not local[:6].lower().startswith(_ENVELOPE_PREFIXES):
        return False  # the common case, decided without the pattern
    return not local.startswith('"') and bool(_ENVELOPE_LOCAL_RE.search(local))


_LOOSE_FIELD_ADDR_RE = lazy_re(r"^<?([^\s<>@;,]{1,64}@[A-Za-z0-9][A-Za-z0-9.-]{0,252})>?\.?$")


def field_address(value: str | None, loose: bool = True) -> str | None:
    """The recipient a DSN address field names (RFC 3464 §2.3.1/§2.3.2), envelope and VERP
    addresses refused; the field holds one address by definition, so with ``loose`` a
    malformed domain (``user@mailhub0``, no dot) is still taken when it is all it holds."""
    a = recipient_address(value)
    if a is not None or not value or not loose:
        return a
    m = _LOOSE_FIELD_ADDR_RE.match(_TYPE_PREFIX_RE.sub("", value).strip())
    if m is None or is_envelope_address(m.group(1)):
        return None
    return m.group(1)


def recipient_address(value: str | None) -> str | None:
    """The first address of a field that can be a recipient (no envelope/VERP address)."""
    if not value:
        return None
    v = _TYPE_PREFIX_RE.sub("", value)
    q = QUOTED_ADDR_RE.search(v) if '"@' in v else None
    for m in ADDR_RE.finditer(v):
        if q is not None and q.start() <= m.start():
            return q.group(0)
        a = m.group(0).strip(".")
        if not is_envelope_address(a):
            return a
    return q.group(0) if q is not None else None


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


def prefer_status(field: str | None, in_text: str | None, reply: str | None) -> str | None:
    """Choose between the Status field (RFC 3464 §2.3.4) and the code quoted in the diagnostic.

    The remote server's own code (§2.3.6) is usually more specific; the field wins when the
    quoted one is only "X.0.0"-generic, when the reply code's class agrees with the field and
    not with the quote, or when the field is already specific (5.1.1 over a vaguer quote).
    """
    if not field:
        return in_text
    if not in_text or field == in_text:
        return field
    if reply and field[0] != in_text[0]:
        if reply[0] == field[0]:
            return field
        if reply[0] == in_text[0]:
            return in_text
    if ".0.0" in field:
        return field if ".0.0" in in_text else in_text
    if ".0" in field and ".0" not in in_text:
        return in_text
    if ".0.0" in in_text:
        return field
    # codes that merely summarise (expired, too many errors, system, protocol): take the quote
    if field in ("4.4.7", "4.7.0") or field.startswith("5.3.") or field[1:4] in (".5.1", ".5.2", ".5.4", ".5.5"):
        return in_text
    if field == "5.1.1":
        return field if (".0" in in_text or in_text.startswith("5.5.")) else in_text
    if field == "5.1.3" and in_text.startswith("5.7."):
        return in_text
    return field


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
    command: str | None = None,
    preset: str | None = None,
    diag_type: str = "SMTP",
    family: str | None = None,
    hosts: str | Callable[[], str] = "",
) -> RecipientResult:
    diag = " ".join(diagnostic.split())[:1000] if diagnostic else None
    field_status = clean_status(status)
    if field_status is not None and reasons._pseudo(field_status):
        field_status = None
    text_status = reasons.find_status(diag) if diag else None
    if reply_code is None and diag:
        reply_code = reasons.find_reply_code(diag)
    status = prefer_status(field_status, text_status, reply_code)
    if action:
        action = action.strip().lower().split()[0] if action.strip() else None
    if reason is None:
        if action in ("delivered", "relayed", "expanded") or (status and status[0] == "2"):
            reason = "delivered"
        else:
            if command is None and diag:
                command = reasons.find_command(diag)
            if command is None and in_data:
                command = "DATA"
            if preset is None and diag:
                preset = providers.family_reason(family or "", diag)
            if (not preset or preset in reasons.RETRY) and diag and command in (None, "DATA"):
                # a local delivery agent's own verdict decides (Sisimai's LDA step)
                lda = providers.local_agent_reason(diag.lower())
                if lda is not None:
                    reason = lda
            if reason is None and (not preset or preset in reasons.RETRY):
                # the receiving provider's own codes (cf. Sisimai's rhost step)
                domain = address.rsplit("@", 1)[-1] if address and "@" in address else ""
                if not isinstance(hosts, str):
                    hosts = hosts()  # the Received chain, read only when needed
                prov = providers.provider_of(domain, (hosts + " " + (remote_mta or "") + " " + (diag or "")).lower())
                if prov is not None:
                    preset = providers.provider_reason(prov, diag or "", status or "", command or "") or preset
            if reason is None:
                reason = reasons.decide(diag, status, reply_code, command=command, action=action,
                                        preset=preset, diag_type=diag_type)
    # Sisimai's hard-bounce test reads the status the report gave, not one inferred here
    evidence = (status or "") + " " + (diag or "")
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
        hard=reasons.is_hard(reason, evidence),
        reply_code=reply_code,
        diagnostic=diag,
        remote_mta=remote_mta,
        original_recipient=original_recipient,
    )
