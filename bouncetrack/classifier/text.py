"""Generic reader for human-readable bounce bodies.

Most non-DSN bounces share one shape: a preamble, then per recipient an address on its own
line (or ``<addr>:`` followed by text), then the SMTP reply or an explanation. This module
finds those recipient entries and their diagnostic paragraphs; family detectors specialise
it with their own markers. Scanning is bounded (``MAX_LINES``) and uses simple regexes only.
"""

from __future__ import annotations

import re

from .lazy import lazy_re

from .common import ADDR_RE, QUOTED_ADDR_RE, first_address, is_daemon, is_envelope_address
from .view import ParsedView, parse_fields

MAX_LINES = 400
# A line that *is* a recipient entry: "addr", "<addr>", "<addr>:", "addr: text", "   addr (...)",
# "-- addr", "* [addr]: text", "Recipient: [SMTP:addr]" (MailEnable, Exchange).
_ENTRY_RE = lazy_re(
    r"^\s*(?:[-*>•]{1,2}\s*)?(?:(?:recipient|to|address|rcpt|user|e-?mail|mailbox)(?:\s+address)?\s*:\s*)?"
    r"[\"'\[]?<?(?:mailto:|smtp:)?(" + ADDR_RE.pattern + r")>?[\"'\]]?"
    r"(?:\s*(?:\.{3}|[:,;]|\s-\s|$)|\s+[(\[]|\s+on\s|(?-i:\s+(?=[A-Z]))|\s+<[^<>@\s]+@[^<>\s]+>\s*$)",
    re.IGNORECASE,
)
# The sender's side of a transcript or a trace (RFC 5321 §4.1.1.2 MAIL FROM, Exim's
# envelope-from=, Received: ... envelope-from): the address on such a line is never the failed one.
_SENDER_LINE_RE = lazy_re(r"^\s*(?:>>>\s*|in:\s*)?(?:mail\s+)?from\s*:\s*<|envelope-from|\bmail\s+from\s*:", re.IGNORECASE)
# Prose that names an address as advice, not as the failed one ("try emailing to NAME@...",
# "contact helpdesk@...", "e.g. user@...", "write to ..."): a sentence match right after it is no entry.
_SUGGESTION_RE = lazy_re(r"(?:\btry\b|\be\.g\.|for example|such as|\bcontact\b|write to|instead of)[^@.;]{0,40}$",
                         re.IGNORECASE)
_RCPT_TO_RE = lazy_re(r"RCPT\s+TO\s*:\s*<?(" + ADDR_RE.pattern + r")", re.IGNORECASE)
# A short reason, a colon, then the address alone in angle brackets, nothing after:
# "User's mailbox is full: <addr>" (Prodigy/SBC, and many small MTAs alike).
# (A quoted header of the original, "Message-id: <...>", "From: <...>", is not such a line.)
_REASON_THEN_ADDR_RE = lazy_re(
    r"^\s*(?!(?:message-id|in-reply-to|references|from|sender|reply-to|return-path|resent-[a-z-]+|x-[a-z-]+)\s*:)"
    r"[A-Za-z][^@<>:]{2,80}:\s*<(" + ADDR_RE.pattern + r")>\s*\.?\s*$", re.IGNORECASE)
# A Sendmail session transcript names each failed recipient as "550 <addr>... text" (its
# savemail.c/usersmtp.c wording; V5 sendmail prefixes "554 " to a quoted "550 ...").
_TRANSCRIPT_RE = lazy_re(
    r"^\s*(?:<<<\s*)?[245]\d\d[ -](?:[245]\.\d{1,3}\.\d{1,3}\s+)?<(" + ADDR_RE.pattern + r")>\.\.\.")
# Sentences that name the failed recipient inline.
_FAILED_TO_RE = lazy_re(
    r"\b(?:delivery to|deliver(?:ing|ed)? (?:your |the )?(?:message|mail|e-?mail)? ?to|not (?:be )?delivered to|"
    r"delivery (?:has )?failed(?: to| for)?|failed (?:recipient|to deliver to)|could not reach|"
    r"(?:undeliverable|failed|unknown|invalid|rejected|bad) (?:recipient|address|user|mailbox)(?:\(?s\)?)?|"
    r"recipient(?:\(s\))?|following address(?:\(?es\)?)?|addressed(?: to|,)|sent (?:(?:a |an |your )?(?:mail|message|e-?mail) )?to|mailbox|user|"
    r"the address|the recipient|userid|user id|generated from|for|to)\s*:?\s*[\"'(\[]?<?(" + ADDR_RE.pattern + r")",
    re.IGNORECASE,
)


class Entry:
    """One recipient named in a text bounce, with the lines that explain it."""

    __slots__ = ("address", "lines", "strong", "index")

    def __init__(self, address: str, lines: list[str] | None = None, strong: bool = True, index: int = 0) -> None:
        self.address = address
        self.lines: list[str] = [] if lines is None else lines
        self.strong = strong
        self.index = index  # line number of the entry in report_lines()


_ORIG_HEADER_RE = lazy_re(
    r"^(?:Received|Return-Path|Message-I[Dd]|DKIM-Signature|MIME-Version|Date|From|To|Subject|"
    r"Content-Type|X-[A-Za-z-]+|Reply-To|User-Agent|Sender)\s*:", re.IGNORECASE)
_ORIG_ANCHOR_RE = lazy_re(r"^(?:Received|Return-Path|Message-I[Dd]|DKIM-Signature|MIME-Version|Date|From)\s*:",
                             re.IGNORECASE)
_RULE_RE = lazy_re(r"^[\W_]*$")


def report_lines(view: ParsedView) -> list[str]:
    """The report's own text, cut where an inline copy of the original's headers starts."""
    cached = view._cache.get("lines")
    if isinstance(cached, list):
        return cached
    out: list[str] = []
    run_start = -1
    run_len = 0
    anchored = False
    header_match = _ORIG_HEADER_RE.compiled().match  # bound once: this loop runs per line
    for line in view.report_text.split("\n")[: MAX_LINES * 2]:
        if header_match(line):
            if run_len == 0:
                run_start = len(out)
                anchored = False
            run_len += 1
            anchored = anchored or bool(_ORIG_ANCHOR_RE.match(line))
            if run_len >= 3 and anchored:  # RFC 5322 §2.2 header block of the original
                if view.original is None:
                    rest = "\n".join(view.report_text.split("\n")[run_start : run_start + 100])
                    hb = parse_fields(rest)
                    if hb:
                        view.original = hb[0]
                out = out[:run_start]
                break
        elif not (run_len and line[:1] in (" ", "\t")):
            run_len = 0
        out.append(line)
        if len(out) >= MAX_LINES:
            break
    view._cache["lines"] = out
    return out


def _excluded(view: ParsedView) -> set[str]:
    cached = view._cache.get("excluded")
    if isinstance(cached, set):
        return cached
    ex: set[str] = set()
    for name in ("from", "to", "reply-to", "sender", "return-path"):
        a = first_address(view.headers.get(name))
        if a:
            ex.add(a.lower())
    if view.original:
        a = first_address(view.original.get("from"))
        if a:
            ex.add(a.lower())
        a = first_address(view.original.get("return-path"))
        if a:
            ex.add(a.lower())
    view._cache["excluded"] = ex
    return ex


def _own_to(view: ParsedView) -> set[str]:
    a = first_address(view.headers.get("to"))
    return {a.lower()} if a else set()


def entries(view: ParsedView) -> list[Entry]:
    """Recipient entries with their diagnostic lines, in order of appearance."""
    cached = view._cache.get("entries")
    if isinstance(cached, list):
        return cached
    ex = _excluded(view)
    found: dict[str, Entry] = {}
    order: list[Entry] = []
    cur: Entry | None = None
    # Session transcript lines (">>> MAIL From:", "<<< 550 ...") seen before any recipient
    # is named: they explain the first one named after them (Sendmail's transcript order).
    pending: list[str] = []
    rule_match, entry_match = _RULE_RE.compiled().match, _ENTRY_RE.compiled().match  # bound once: per line
    for idx, line in enumerate(report_lines(view)):
        s = line.strip()
        if not s:
            if cur is not None and cur.lines:
                cur = None
            continue
        if rule_match(s):  # "=====", "-----": decoration, not content
            continue
        if "@" in s:
            m = entry_match(line)
            addr = None
            strong = False
            whole = False  # keep the whole line: it names the SMTP command or the reply
            mq = QUOTED_ADDR_RE.search(line) if '"@' in line else None
            if mq is not None and (m is None or mq.start() <= m.start(1)):
                addr, strong = mq.group(0), True  # "a..b"@host, quotes kept (RFC 5322 §3.4.1)
            elif m is not None:
                addr, strong = m.group(1), True
            else:
                m2 = _RCPT_TO_RE.search(line) or _TRANSCRIPT_RE.match(line) or _REASON_THEN_ADDR_RE.match(line)
                if m2 is not None:
                    addr, strong, whole = m2.group(1), True, True
                else:
                    m3 = _FAILED_TO_RE.search(line)
                    if m3 is not None and not _SUGGESTION_RE.search(line, max(0, m3.start(1) - 60), m3.start(1)):
                        addr = m3.group(1)
            if addr is not None and (is_envelope_address(addr) or (("rom" in line or "ROM" in line)
                                                                   and _SENDER_LINE_RE.search(line))):
                addr = None  # a system's envelope address, or the sender in a transcript
            if addr is not None:
                addr = addr.strip(".")
                key = addr.lower()
                if key in found:
                    cur = found[key]
                    if strong and not cur.strong:
                        cur.strong = True
                    cur.lines.append(s)
                    continue
                # The bounce's own To/From name the sender, unless the address stands as an
                # entry of its own (a message sent to oneself bounces too).
                if (key not in ex or (strong and key in _own_to(view) and s.lstrip("<\"'-*> ").lower().startswith(key))) \
                        and not is_daemon(addr):
                    e = Entry(addr, [], strong, idx)
                    rest = s[s.lower().find(key) + len(key):].lstrip(">]\"' :;,.").strip()
                    if whole or (rest and not strong):
                        rest = s
                    if whole and pending:
                        e.lines.extend(pending)
                        pending = []
                    if rest:
                        e.lines.append(rest)
                    found[key] = e
                    order.append(e)
                    cur = e
                    continue
            elif found:
                # a line naming an already known recipient belongs to it
                for m4 in ADDR_RE.finditer(s):
                    hit = found.get(m4.group(0).strip(".").lower())
                    if hit is not None:
                        cur = hit
                        break
        if cur is not None:
            cur.lines.append(s)
        elif s.startswith((">>> ", "<<< ")) and len(pending) < 8:
            pending.append(s)
    strong_entries = [e for e in order if e.strong]
    result = strong_entries if strong_entries else order
    view._cache["entries"] = result
    return result


# Site gateways of the early 2000s (AOL's "Mail Delivery Problem", university directory
# gateways) list failed mailboxes by bare local part under a heading, one per line, maybe
# followed by the reason: "\tscreenname", " userx    No matches to nameserver query".
_BARE_LIST_HEAD_RE = lazy_re(
    r"(?:following|these) (?:recipients?|addresses|users?|mailbox(?:es)?)\b.{0,80}(?:could not be delivered|"
    r"failed|undeliverable|:)|not delivered to the following", re.IGNORECASE)
_BARE_NAME_RE = lazy_re(r"^[ \t]+([A-Za-z][A-Za-z0-9._-]{0,63})(?:[ \t]{2,}(\S.{0,200}))?[ \t]*$")
# Second-level labels under which organisations register (example.co.uk, example.com.au).
_SECOND_LEVEL = frozenset({"co", "com", "net", "org", "ac", "edu", "gov", "ne", "or", "go", "gr", "ad", "ed", "lg"})


def org_domain(host: str) -> str:
    """The registered domain of a host name, by the usual rule (last two labels, three under a
    country's second level: mr2.its.yale.edu -> yale.edu, mx.example.co.uk -> example.co.uk)."""
    labels = host.lower().strip(".").split(".")
    if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in _SECOND_LEVEL:
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


def bare_name_entries(view: ParsedView) -> list[Entry]:
    """Recipients a gateway lists by bare local part, as addresses at the registered domain of
    the notice's sender (AOL: ``screenname`` -> ``screenname@aol.com``); [] when none."""
    sender = first_address(view.from_)
    if sender is None or "." not in sender.rsplit("@", 1)[1]:
        return []
    domain = org_domain(sender.rsplit("@", 1)[1])
    out: list[Entry] = []
    heading: str | None = None
    for idx, line in enumerate(report_lines(view)):
        if heading is None:
            if _BARE_LIST_HEAD_RE.search(line):
                heading = line.strip()
            continue
        if not line.strip():
            if out:
                break
            continue
        m = _BARE_NAME_RE.match(line)
        if m is None:
            break
        out.append(Entry(m.group(1) + "@" + domain, [heading] + ([m.group(2).strip()] if m.group(2) else []), True, idx))
        if len(out) >= 50:
            break
    return out


def diagnostic_for(view: ParsedView, addr: str) -> str | None:
    """The human-readable diagnostic the body gives for ``addr`` (used to enrich DSNs)."""
    key = addr.lower()
    for e in entries(view):
        if e.address.lower() == key:
            return " ".join(e.lines)[:1000] or None
    if is_daemon(addr):
        # "postmaster@..." is never an entry of its own; the report may still explain it
        # on an "addr: text" line (OpenSMTPD, Postfix)
        for line in report_lines(view):
            s = line.strip()
            if s.lower().lstrip("<").startswith(key):
                rest = s[s.lower().find(key) + len(key):].lstrip(">\"' :;,.").strip()
                return rest[:1000] or None
    return None


def text_after(view: ParsedView, entry: Entry, limit: int = 2000) -> str:
    lines = report_lines(view)[entry.index + 1 : entry.index + 60]
    return " ".join(x.strip() for x in lines if x.strip() and not _RULE_RE.match(x.strip()))[:limit]


def whole_text(view: ParsedView, limit: int = 3000) -> str:
    return " ".join(x.strip() for x in report_lines(view) if x.strip())[:limit]
