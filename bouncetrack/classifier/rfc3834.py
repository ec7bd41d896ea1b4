"""RFC 3834 automatic responses: vacation / out-of-office replies and challenge-response
messages (not bounces)."""

from __future__ import annotations

import re

from .lazy import lazy_re

from .common import ADDR_RE, field_address, first_address, is_daemon, is_envelope_address
from .detectors.base import DAEMON_FROM_RE
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


# Challenge-response systems (TMDA, qconfirm, Spam Arrest, Boxbe, Bluebottle, Mailinblack,
# ChoiceMail, EarthLink spamBlocker, Sendio, a site's "whitelist" gate) answer a message with
# a request that the sender prove to be a person or ask to be let in. The message waits; no
# delivery failed and the address is good: an automatic response (RFC 3834 §2, "personal
# responses"), never a bounce, even when it is shaped as a DSN (Boxbe sends one).
CHALLENGE = "challenge"
_CHALLENGE_HEADERS = ("x-boxbe-", "x-bluebottle-", "x-tmda", "x-spamarrest", "x-spam-arrest",
                      "x-challenge", "x-mailinblack", "x-choicemail", "x-sendio", "x-qconfirm")
_CHALLENGE_FROM_RE = lazy_re(
    r"@(?:[a-z0-9-]+\.)*(?:boxbe|spamarrest|bluebottle|mailinblack|choicemail|digiportal|sendio)\.(?:com|net|fr)\b"
    r"|\bconfirm-[^@\s]*@|-confirm(?:ation)?[-+=][^@\s]*@",  # TMDA/qconfirm's reply-to-confirm address
    re.IGNORECASE,
)
_CHALLENGE_FROM_WORDS = ("boxbe", "spamarrest", "bluebottle", "mailinblack", "choicemail", "digiportal", "sendio",
                         "confirm")
_CHALLENGE_BODY_RE = lazy_re(
    r"(?:prove|verify|confirm|show)(?: to us)?(?: that)? you(?:'re| are) (?:a )?(?:real |live )?(?:human|person|not a (?:ro)?bot)"
    r"|(?:added?|adds?|put) (?:yourself |you |your (?:e-?mail )?address )?(?:to|on) (?:my|the recipient'?s?|our|his|her) "
    r"(?:\w+ ){0,2}(?:allowed|approved|accepted|trusted|guest|white|safe) ?(?:senders? )?list"
    r"[\s\S]{0,200}?(?:https?://|click|reply|visit|link)"  # a request to act, not a rejection's advice
    r"|(?:list of|among) (?:my |the recipient'?s? )?(?:allowed|approved|accepted|trusted|safe) senders"
    r"|only (?:from )?(?:senders|people|addresses) (?:i have|i've|who have been|that have been) (?:approved|verified|accepted)"
    r"|(?:requires?|awaiting|pending|needs?) (?:your )?(?:sender )?(?:confirmation|verification)\b[^\n]{0,80}(?:https?://|click|reply|visit)"
    r"|(?:spam ?arrest|boxbe|bluebottle|mailinblack|choicemail|tagged message delivery agent|\btmda\b|qconfirm|spamblocker)"
    r"[^\n]{0,80}(?:protect|verif|confirm|approv|guest list|challenge)"
    r"|(?:^|\W)(?:this is a|one-time|automated) (?:challenge|verification) (?:message|request|e-?mail)"
    r"|your (?:message|e-?mail) (?:has been|was|is being) (?:held|waitlisted|quarantined)\b[^.]{0,80}(?:until|pending) (?:you|your|the sender)",
    re.IGNORECASE | re.MULTILINE,
)


_CHALLENGE_WORDS = ("human", "person", "robot", "allowed", "approved", "accepted", "trusted", "guest",
                    "white", "safe", "confirmation", "verification", "challenge", "waitlisted", "held",
                    "quarantined", "arrest", "boxbe", "bluebottle", "mailinblack", "choicemail", "tmda",
                    "tagged message", "qconfirm", "spamblocker")
_NAMED_RCPT_RE = lazy_re(r"\b(?:delivered to|e-?mail to|message to|mailbox of|to:)\s*<?(" + ADDR_RE.pattern + r")",
                         re.IGNORECASE)


def _may_be_protected(addr: str) -> bool:
    """Not a daemon, an envelope address or a challenge system's own (confirm/noreply) address."""
    local = addr.rsplit("@", 1)[0].lower()
    return not (is_daemon(addr) or is_envelope_address(addr) or "confirm" in local or local in ("noreply", "no-reply"))


def challenge(view: ParsedView) -> Report | None:
    """A challenge-response request, or None. Cheap marks first: a screening service's
    From; a DSN's remote replies; no mail system's notice (daemon From); then the service's
    headers or one search of the report's own text (not the returned original)."""
    h = view.headers
    frm = view.from_[:300]
    low = frm.lower()
    if any(w in low for w in _CHALLENGE_FROM_WORDS) and _CHALLENGE_FROM_RE.search(frm):
        pass  # a screening service's or a confirm address's own message
    elif view.ds_blocks:
        # a DSN-shaped challenge states it in the remote server's reply (RFC 3464 §2.3.6)
        head = " ".join(b.get("diagnostic-code", "") for b in view.ds_blocks[:20]).lower()
        if not any(w in head for w in _CHALLENGE_WORDS) or not _CHALLENGE_BODY_RE.search(head):
            return None
    elif DAEMON_FROM_RE.search(frm):
        return None  # a mail system's own notice, not a person's or a screening service's
    elif not any(k.startswith(_CHALLENGE_HEADERS) for k in h):
        head = view.report_text[:5000].lower()
        # a word every phrase needs, found by substring tests, before the costlier search
        if not any(w in head for w in _CHALLENGE_WORDS) or not _CHALLENGE_BODY_RE.search(head):
            return None
    # The mailbox that asks: the report's recipient field, the original's To, else the sender.
    addr = None
    for b in view.ds_blocks:
        addr = field_address(b.get("final-recipient")) or field_address(b.get("original-recipient"))
        if addr:
            break
    if addr is None and view.original:
        addr = first_address(view.original.get("to"))
    if addr is None:
        # the protected mailbox named in the request ("has not yet been delivered to vera@...",
        # "You sent an email to gus@..."); never the challenge's own sender or reply address
        own = {a.lower() for a in (first_address(h.get("to")), first_address(h.get("reply-to"))) if a}
        for m in _NAMED_RCPT_RE.finditer(view.report_text[:3000]):
            a = m.group(1)
            if a.lower() not in own and _may_be_protected(a):
                addr = a
                break
    if addr is None:
        sender = first_address(view.from_)
        addr = sender if sender and _may_be_protected(sender) else None
    rcpt = RecipientResult(
        address=addr, action=None, status=None, reason=CHALLENGE, hard=False,
        reply_code=None, diagnostic=view.subject[:200] or None,
    )
    return Report(kind=AUTO_REPLY, recipients=(rcpt,), detector="challenge")
