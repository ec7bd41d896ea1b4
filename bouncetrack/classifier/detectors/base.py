"""The one small detector interface, and the text-bounce detector families build on."""

from __future__ import annotations

import re

from ..lazy import LazyRe, lazy_re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol
else:  # the pipe process need not import typing: at run time a plain base class
    Protocol = object

from ..common import ADDR_RE, data_phase, is_daemon, is_envelope_address, make_recipient, recipient_address
from ..model import BOUNCE, RecipientResult, Report
from ..text import Entry, bare_name_entries, entries, text_after, whole_text
from ..view import ParsedView


class Detector(Protocol):
    """A bounce format. ``matches`` is a cheap pre-check on headers/subject/from."""

    name: str

    def matches(self, view: ParsedView) -> bool: ...

    def detect(self, view: ParsedView) -> Report | None: ...


BOUNCE_SUBJECT_RE = lazy_re(
    r"undeliver|undelivered|delivery (?:status|failure|failed|problem|notification|report)|"
    r"returned (?:mail|to sender)|failure notice|mail delivery|non-?delivery|\bbounce|"
    r"could not be delivered|not delivered|delivery has failed|rejected|mail system error|"
    r"message (?:not delivered|delivery failed)|warning: message|error sending|failed delivery|"
    r"delivery notification|mail failure|nondeliverable|permanent error|delayed mail|delivery delayed",
    re.IGNORECASE,
)
# A mail system's sender (not "Delivery Hero <news@...>" nor "Bounce Fitness <info@...>": the
# words "delivery" and "bounce" count only in a mail system's phrasing or as a local part).
DAEMON_FROM_RE = lazy_re(
    r"mailer-daemon|post_?master|mail delivery (?:sub)?system|maildelivery|mail-daemon|"
    r"mail administrator|\bm?daemon\b|"  # MDaemon@host (Alt-N MDaemon)
    r"(?:mail |message )?delivery (?:sub)?system|mail delivery service|delivery status|\bbounces?(?:@|[-+])",
    re.IGNORECASE,
)
# Phrases of a failure report, scanned in the report text when headers do not say so.
FAILURE_BODY_RE = lazy_re(
    r"could not be delivered|couldn'?t be delivered|undeliverable|delivery (?:to the following|has )?failed|"
    r"permanent (?:fatal )?error|following address(?:\(?es\)?)? failed|unable to deliver|"
    r"wasn'?t able to deliver|was not delivered|not (?:be )?delivered|delivery failure|"
    r"returned to (?:the )?sender|rejected your message|could not deliver|"
    r"requested action not taken|error message below|invalid (?:user|recipient) address|"
    r"(?:is )?not a valid (?:user|recipient|mailbox|address)|no such (?:user|mailbox)|user unknown",
    re.IGNORECASE,
)
TEMP_RE = lazy_re(
    r"temporar(?:y|ily) (?:error|failure|problem)|will (?:continue|retry|keep trying|try again)|"
    r"still trying|delivery (?:is |has been )?delayed|not yet been delivered|this is (?:just )?a warning",
    re.IGNORECASE,
)


# A recipient named by the subject of a report: "... to <addr>", "Undeliverable: <addr>",
# "failure delivering to addr" (Sendmail's "Returned mail: Too many hops ..., to addr").
SUBJECT_RCPT_RE = lazy_re(
    r"(?:\bto|\bfor|undeliver(?:able|ed)(?: mail)?:|failure:|failed:)\s*[\"'<(]?(" + ADDR_RE.pattern + r")",
    re.IGNORECASE)

EXPANDED_FROM_RE = lazy_re(r"\(expanded from:?\s*<?(" + ADDR_RE.pattern + r")>?\s*\)", re.IGNORECASE)
_TEMP_WORDS = ("temporar", "will ", "still trying", "delayed", "not yet been", "warning")


def looks_like_bounce(view: ParsedView) -> bool:
    if BOUNCE_SUBJECT_RE.search(view.subject[:300]):
        return True
    if DAEMON_FROM_RE.search(view.from_[:300]):
        return True
    rp = view.headers.get("return-path", "")
    if rp.strip() in ("<>", ""):
        if "x-failed-recipients" in view.headers:
            return True
    return bool(FAILURE_BODY_RE.search(view.report_text[:6000]))


class TextDetector:
    """A human-readable bounce: recipient entries from ``text.entries`` plus hooks.

    Subclasses set ``name`` and the pre-check regexes, and may override ``entries`` /
    ``diagnostic`` / ``status_hint`` for their format.
    """

    name = "text"
    from_re: LazyRe | None = None
    subject_re: LazyRe | None = None
    header_names: tuple[str, ...] = ()
    body_re: LazyRe | None = None
    # Lower-case literal fragments, one of which every match of ``body_re`` contains: tested
    # first on the case-folded head, a cheap way past the case-insensitive search.
    body_keys: tuple[str, ...] = ()
    # Temporary failure ("will retry") detection scope.
    status_hint_re: LazyRe | None = None

    def matches(self, view: ParsedView) -> bool:
        if self.from_re is not None and self.from_re.search(view.from_[:300]):
            return True
        if self.subject_re is not None and self.subject_re.search(view.subject[:300]):
            return True
        for h in self.header_names:
            if h in view.headers:
                return True
        if self.body_re is not None:
            if self.body_keys:
                head = view._cache.get("head")
                if not isinstance(head, str):
                    head = view._cache["head"] = view.report_text[:4000].casefold()
                if not any(k in head for k in self.body_keys):
                    return False
            if self.body_re.search(view.report_text[:4000]):
                return True
        return False

    def entries(self, view: ParsedView) -> list[Entry]:
        return entries(view)

    def fallback_addresses(self, view: ParsedView) -> list[str]:
        """Where a report that names no recipient in its text still names one: Exim's
        X-Failed-Recipients, the subject ("Returned mail: ... to user@host", "Undeliverable:
        user@host"), then the To of the returned original (the address the sender used)."""
        xf = view.headers.get("x-failed-recipients")
        if xf:
            return [a for a in ADDR_RE.findall(xf) if not is_envelope_address(a)]
        m = SUBJECT_RCPT_RE.search(view.subject[:300])
        if m is not None and not is_envelope_address(m.group(1)) and not is_daemon(m.group(1)):
            return [m.group(1).strip(".")]
        if view.original:
            a = recipient_address(view.original.get("to"))
            if a:
                return [a]
        return []

    def diagnostic(self, view: ParsedView, entry: Entry | None) -> str:
        text = " ".join(entry.lines) if entry is not None else ""
        if len(text) < 8 and entry is not None:
            text = (text + " " + text_after(view, entry)).strip()
        if len(text) < 8:
            text = (text + " " + whole_text(view)).strip()
        return text

    def status_hint(self, view: ParsedView, diag: str) -> str | None:
        if self.status_hint_re is None:
            return None
        m = self.status_hint_re.search(diag)
        return m.group(1) if m else None

    def preset(self, view: ParsedView, diag: str) -> str | None:
        """A reason the format itself states (family tables are in ``providers``)."""
        return None

    def temporary(self, view: ParsedView) -> bool | None:
        for text in (view.report_text[:3000], view.subject):
            low = text.lower()
            # every TEMP_RE match holds one of these words: substring tests first (cheap)
            if any(w in low for w in _TEMP_WORDS) and TEMP_RE.search(text):
                return True
        return None

    def detect(self, view: ParsedView) -> Report | None:
        ents = self.entries(view) or bare_name_entries(view)
        pairs: list[tuple[str, Entry | None]] = [(e.address, e) for e in ents]
        guessed = not pairs
        if guessed:
            pairs = [(a, None) for a in self.fallback_addresses(view)]
        if not pairs:
            return None
        temp = self.temporary(view)
        out: list[RecipientResult] = []
        for addr, e in pairs[:50]:
            diag = self.diagnostic(view, e)
            # "(expanded from: <addr>)" (Sendmail, Postfix): the address the sender used, which
            # the pipe matches first (cf. RFC 3464 §2.3.1 Original-Recipient)
            m = EXPANDED_FROM_RE.search(" ".join(e.lines[:3])) if e is not None else None
            out.append(make_recipient(
                addr, status=self.status_hint(view, diag), diagnostic=diag, temporary=temp,
                in_data=data_phase(diag), family=self.name, hosts=view.hosts,
                preset=self.preset(view, diag), original_recipient=m.group(1) if m else None,
            ))
        return Report(kind=BOUNCE, recipients=tuple(out), detector=self.name, guessed=guessed)


class GenericText(TextDetector):
    """Any bounce-looking message: the last resort."""

    name = "generic"

    def matches(self, view: ParsedView) -> bool:
        return looks_like_bounce(view)
