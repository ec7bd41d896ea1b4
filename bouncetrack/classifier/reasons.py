"""Reason taxonomy: (diagnostic, status, reply code, SMTP command, action) -> reason.

The labels we are measured against are Sisimai's, so the decision follows the way Sisimai
decides (its ``reason`` package: a first pass of probes in a fixed order that weigh the
status code and the SMTP command against message phrases, then a fallback pass on phrases
alone, then the status class, then the reply code). The phrases are data (``phrases.py``);
the order and the rules are below, each with the reason it exists:

* a failure answered to ``RCPT`` that says "user unknown" is about the address; the same
  words after ``DATA`` (or from a content filter that never says which command) are the
  filter's verdict on the message: ``filtered``, not a hard bounce;
* a specific status (RFC 3463) decides unless a more specific phrase contradicts it;
* "X.7.X" without better evidence is a security refusal, "X.6.X" a content error.

Everything here is plain strings and dicts: no regex is compiled at import (the pipe is a
new process per bounce); the three small code finders compile on first use.
"""

from __future__ import annotations

from .lazy import lazy_re
from .model import HARD_REASONS

# --- status codes ---------------------------------------------------------------------------

# RFC 3463 / RFC 5248 enhanced status codes -> reason, as Sisimai reads them (one code per
# entry; codes not listed, e.g. "X.0.0" or "4.4.0", say nothing specific).
_STATUS_NAMES = """
2.1.5 delivered
4.1.6 hasmoved 4.1.7 rejected 4.1.8 rejected 4.1.9 systemerror 4.2.1 blocked 4.2.2 mailboxfull
4.2.3 exceedlimit 4.2.4 filtered 4.3.1 systemfull 4.3.2 notaccept 4.3.3 systemerror
4.3.5 systemerror 4.4.1 expired 4.4.2 networkerror 4.4.3 systemerror 4.4.4 networkerror
4.4.5 systemfull 4.4.6 networkerror 4.4.7 expired 4.4.8 networkerror 4.5.3 systemerror
4.5.5 systemerror 4.6.0 contenterror 4.6.2 contenterror 4.6.5 contenterror 4.7.1 blocked
4.7.2 blocked 4.7.5 securityerror 4.7.6 securityerror 4.7.7 securityerror 4.7.12 securityerror
4.7.15 securityerror 4.7.16 mesgtoobig 4.7.24 authfailure 4.7.25 requireptr 4.7.26 authfailure
5.1.0 userunknown 5.1.1 userunknown 5.1.2 hostunknown 5.1.3 userunknown 5.1.4 filtered
5.1.6 hasmoved 5.1.7 rejected 5.1.8 rejected 5.1.9 systemerror 5.1.10 notaccept 5.2.0 filtered
5.2.1 filtered 5.2.2 mailboxfull 5.2.3 exceedlimit 5.2.4 filtered 5.3.0 systemerror
5.3.1 systemfull 5.3.2 notaccept 5.3.3 systemerror 5.3.4 mesgtoobig 5.3.5 systemerror
5.4.0 networkerror 5.4.3 systemerror 5.4.4 hostunknown 5.5.2 syntaxerror 5.5.3 toomanyconn
5.5.4 systemerror 5.5.5 systemerror 5.5.6 syntaxerror 5.6.0 contenterror 5.6.1 contenterror
5.6.2 contenterror 5.6.3 contenterror 5.6.5 contenterror 5.6.6 contenterror 5.6.7 contenterror
5.6.8 contenterror 5.6.9 contenterror 5.7.0 securityerror 5.7.1 securityerror 5.7.2 securityerror
5.7.3 securityerror 5.7.4 securityerror 5.7.5 securityerror 5.7.6 securityerror
5.7.7 securityerror 5.7.8 securityerror 5.7.9 securityerror 5.7.10 securityerror
5.7.11 securityerror 5.7.13 suspend 5.7.14 securityerror 5.7.15 securityerror 5.7.16 mesgtoobig
5.7.17 hasmoved 5.7.18 hasmoved 5.7.19 securityerror 5.7.20 authfailure 5.7.21 authfailure
5.7.22 authfailure 5.7.23 authfailure 5.7.24 authfailure 5.7.25 requireptr 5.7.26 authfailure
5.7.27 notaccept 5.7.28 spamdetected 5.7.29 authfailure 5.7.30 failedstarttls
"""
_STATUS_NAME: dict[str, str] = {}


def status_name(status: str | None) -> str:
    """The reason an RFC 3463 code names by itself ('' when it names none)."""
    if not status:
        return ""
    if not _STATUS_NAME:
        it = iter(_STATUS_NAMES.split())
        _STATUS_NAME.update(zip(it, it))
    return _STATUS_NAME.get(status, "")


# Reason -> the status to report when the message carries none (RFC 3463 §3 codes).
_INFER_STATUS: dict[str, str] = {
    "userunknown": "1.1", "hostunknown": "1.2", "hasmoved": "1.6", "notaccept": "1.10",
    "mailboxfull": "2.2", "filtered": "2.1", "suspend": "2.1", "exceedlimit": "2.3",
    "mesgtoobig": "3.4", "systemfull": "3.1", "systemerror": "3.0", "networkerror": "4.1",
    "toomanyconn": "4.5", "expired": "4.7", "syntaxerror": "5.2", "contenterror": "6.0",
    "notcompliantrfc": "6.0", "norelaying": "7.1", "blocked": "7.1", "rejected": "7.1",
    "spamdetected": "7.1", "policyviolation": "7.1", "virusdetected": "7.1",
    "securityerror": "7.0", "authfailure": "7.26", "requireptr": "7.25",
    "failedstarttls": "7.10", "speeding": "7.1", "badreputation": "7.1",
    "mailererror": "3.0",
}

STATUS_RE = lazy_re(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d]|\.\d)")
# A reply code at the start of a line or after "said:", "error:", ...; followed by space,
# hyphen (RFC 5321 §4.2.1 multi-line) or end.
REPLY_RE = lazy_re(r"(?:^|[\s:;(\[\"'<>=])([245][0-5]\d)(?=[ \-]|$)", 8)  # re.MULTILINE


def _pseudo(st: str) -> bool:
    """Sisimai-internal "X.0.9NN" codes are not RFC 3463 codes."""
    return st[1:5] == ".0.9" and len(st) == 7


def find_status(text: str) -> str | None:
    """First RFC 3463 enhanced status code in free text (not an IP address or version)."""
    if "." not in text:
        return None
    for m in STATUS_RE.finditer(text):
        st = m.group(0)
        if _pseudo(st):
            continue
        start = m.start()
        # reject parts of dotted quads "10.5.1.1" / "192.0.2.1" and versions "v5.1.0"
        if start > 0 and text[start - 1] in ".vV":
            continue
        return st
    return None


def find_reply_code(text: str) -> str | None:
    m = REPLY_RE.search(text)
    return m.group(1) if m else None


# --- SMTP command ---------------------------------------------------------------------------

# Commands as MTAs quote them in diagnostics ("in reply to RCPT TO command", ">>> DATA",
# "after MAIL FROM:"); upper case only, so words in prose ("data", "mail from") do not count.
_COMMANDS = ("HELO", "EHLO", "STARTTLS", "AUTH PLAIN", "AUTH LOGIN", "AUTH CRAM-", "AUTH DIGEST-",
             "MAIL F", "RCPT", "RCPT T", "DATA", "QUIT", "XFORWARD")


def find_command(text: str | None) -> str | None:
    """The SMTP command (RFC 5321 §4.1) a rejection answered, as quoted in the text.

    When several appear the one latest in the session order wins (a transcript quoting
    ``RCPT TO`` then ``DATA`` failed at DATA). Bare words need a non-alphanumeric border
    (``DATABASE@`` is not ``DATA``).
    """
    if not text or len(text) < 4:
        return None
    found: list[str] = []
    padded = " " + text + " "
    for c in _COMMANDS:
        p = text.find(c)
        if p < 0:
            continue
        if " " not in c:
            before, after = padded[p], padded[p + len(c) + 1]
            if before.isalnum() or after.isalnum() or before == "@" or after == "@":
                continue
        head = c[:4]
        if any(f.startswith(head) for f in found):
            continue
        found.append({"STAR": "STARTTLS", "XFOR": "XFORWARD"}.get(head, head))
    if found:
        return found[-1]
    # qmail and others describe the step in words
    for words, cmd in _COMMAND_WORDS:
        if words in text:
            return cmd
    return None


_COMMAND_WORDS = (("does not like recipient", "RCPT"), ("sender was rejected", "MAIL"),
                  ("my name was rejected", "HELO"), ("didn't like our DATA", "DATA"),
                  ("did not like our final DATA", "DATA"), ("did not like our DATA", "DATA"))


# --- phrase tests ---------------------------------------------------------------------------


# reason -> (exclude, contains, ordered), filled from ``phrases`` on first use
_TABLE: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[tuple[str, ...], ...]]] = {}


def _load_phrases() -> None:
    from .phrases import CONTAINS, EXCLUDE, ORDERED  # data, loaded on first use

    for r in set(CONTAINS) | set(ORDERED) | set(EXCLUDE):
        _TABLE[r] = (EXCLUDE.get(r, ()), CONTAINS.get(r, ()), ORDERED.get(r, ()))


def included(reason: str, low: str) -> bool:
    """Does the lower-cased text carry a phrase of ``reason`` (``phrases.py``)?"""
    if not low:
        return False
    table = _TABLE.get(reason)
    if table is None:
        if not _TABLE:
            _load_phrases()
        table = _TABLE.get(reason, ((), (), ()))
    exclude, contains, ordered = table
    for x in exclude:
        if x in low:
            return False
    for s in contains:
        if s in low:
            return True
    for seq in ordered:
        pos = 0
        for s in seq:
            i = low.find(s, pos)
            if i < 0:
                break
            pos = i + len(s)
        else:
            return True
    return False


# Reasons that a format-specific table may propose but the general rules may still refine.
RETRY = frozenset({"undefined", "onhold", "systemerror", "securityerror", "expired",
                   "networkerror", "hostunknown", "userunknown"})
_IN_REPLY = {"RCPT": " (in reply to rcpt to command)", "MAIL": " (in reply to mail from command)",
             "DATA": " (in reply to end of data command)"}
_BEFORE_DATA = frozenset({"CONN", "EHLO", "HELO", "MAIL", "RCPT"})

# First pass: status code and command weighed against phrases, in this order.
_FIRST = ("mailboxfull", "mesgtoobig", "exceedlimit", "suspend", "hasmoved", "norelaying",
          "authfailure", "userunknown", "filtered", "requireptr", "notcompliantrfc",
          "badreputation", "contenterror", "rejected", "hostunknown", "spamdetected",
          "speeding", "toomanyconn", "blocked")
# Second pass: phrases alone.
_SECOND = ("mailboxfull", "authfailure", "badreputation", "speeding", "spamdetected",
           "virusdetected", "policyviolation", "norelaying", "systemerror", "networkerror",
           "suspend", "contenterror", "systemfull", "notaccept", "expired", "failedstarttls",
           "securityerror", "suppressed", "mailererror")


class _Fact:
    __slots__ = ("low", "status", "sname", "reply", "command", "preset", "memo")

    def __init__(self, low: str, status: str, reply: str, command: str, preset: str) -> None:
        self.low = low
        self.status = status
        self.sname = status_name(status)
        self.reply = reply
        self.command = command
        self.preset = preset
        self.memo: dict[str, bool] = {}

    def has(self, reason: str) -> bool:
        r = self.memo.get(reason)
        if r is None:
            r = self.memo[reason] = included(reason, self.low)
        return r


def _probe(f: _Fact, reason: str) -> bool:
    """Is ``reason`` established by the status/command/reply code plus the phrases?"""
    if f.preset == reason:
        return True
    sname, cmd = f.sname, f.command
    if reason in ("mailboxfull", "exceedlimit", "requireptr", "toomanyconn", "blocked", "authfailure"):
        return sname == reason or f.has(reason)
    if reason == "mesgtoobig":
        if sname == "mesgtoobig":
            return True
        if sname == "exceedlimit" or f.status == "5.2.3":
            return False
        return f.has(reason)
    if reason == "suspend":
        return f.reply == "525" or f.has(reason)
    if reason in ("hasmoved", "notcompliantrfc", "badreputation", "speeding"):
        return f.has(reason)
    if reason == "norelaying":
        if f.preset in ("securityerror", "systemerror", "undefined") or cmd in ("CONN", "EHLO", "HELO"):
            return False
        return f.has(reason)
    if reason == "userunknown":
        if sname == "suspend":
            return False
        if sname == "userunknown":
            # "5.1.1" unless the text says something more specific about another cause
            return not any(f.has(r) for r in ("norelaying", "blocked", "mailboxfull", "hasmoved",
                                               "rejected", "notaccept"))
        # RFC 5321 §3.3: only an answer to RCPT TO is about the address itself.
        return cmd == "RCPT" and f.has("userunknown")
    if reason == "filtered":
        if sname == "suspend":
            return False
        if sname == "filtered":
            return f.has("userunknown") or f.has("filtered")
        # A refusal of the content, after DATA or by a filter that does not say the
        # command: "no such user" from it is its verdict on the message.
        if cmd in _BEFORE_DATA:
            return False
        return f.has("filtered") or f.has("userunknown")
    if reason == "contenterror":
        if _probe(f, "spamdetected"):
            return False
        return sname == "contenterror" or f.has(reason)
    if reason == "rejected":
        sn = sname or "undefined"
        if sn == "rejected":
            return True
        if cmd == "MAIL":
            return f.has(reason)
        if cmd == "DATA":
            return sn != "userunknown" and f.has(reason)
        if sn in ("undefined", "onhold", "securityerror", "systemerror"):
            return f.has(reason)
        return False
    if reason == "hostunknown":
        if sname == "hostunknown":
            return not f.has("networkerror")
        return f.has(reason)
    if reason == "spamdetected":
        if not f.status:
            return False
        if sname == "spamdetected":
            return True
        if cmd in _BEFORE_DATA:
            return False
        return f.has(reason)
    return False


def _syntax_reply(reply: str) -> bool:
    # RFC 5321 §4.2.2: 500-504 / 400-40x answer a malformed or unknown command.
    return len(reply) == 3 and reply.isdigit() and (400 < int(reply) < 408 or 500 < int(reply) < 508)


def _second_pass(f: _Fact, action: str, diag_type: str) -> str:
    if f.preset and f.preset not in ("undefined", "onhold"):
        return f.preset
    sname = f.sname
    if sname == "" or sname in RETRY or diag_type == "SMTP":
        for r in _SECOND:
            if f.has(r):
                return r
        if sname:
            return sname
        cls = f.status[:3]
        if cls in ("5.6", "4.6"):
            return "contenterror"  # RFC 3463 §3.7 media/content
        if cls in ("5.7", "4.7"):
            return "securityerror"  # RFC 3463 §3.8 security or policy
        if diag_type.startswith("X-UNIX"):
            return "mailererror"
        if _syntax_reply(f.reply):
            return "syntaxerror"
        if action in ("delayed", "expired"):
            return "expired"
        if f.command in ("EHLO", "HELO"):
            return "blocked"
    return sname


def decide(
    diagnostic: str | None,
    status: str | None,
    reply_code: str | None,
    *,
    command: str | None = None,
    action: str | None = None,
    preset: str | None = None,
    diag_type: str = "SMTP",
) -> str:
    """The reason for one recipient.

    ``preset`` is a reason a format-specific table already proposed (kept unless it is one
    of the weak ``RETRY`` reasons); ``diag_type`` the RFC 3464 §2.3.6 diagnostic type.
    """
    preset = preset or ""
    if preset and preset not in RETRY:
        return preset
    status = status or ""
    if status.startswith("2."):
        return "delivered"  # RFC 3463 §3.1: 2.X.X success
    low = " ".join(diagnostic.lower().split())[:4000] if diagnostic else ""
    if command is None and diagnostic:
        command = find_command(diagnostic)
    if low and command in _IN_REPLY and "in reply to" not in low:
        # Postfix words the phase as "(in reply to RCPT TO command)"; phrases collected
        # from its reports carry it, so a reply known to answer RCPT reads the same way.
        low += _IN_REPLY[command]
    f = _Fact(low, status, reply_code or "", command or "", preset)
    diag_type = (diag_type or "SMTP").upper()
    if diag_type in ("SMTP", ""):
        for r in _FIRST:
            if _probe(f, r):
                return r
    r = _second_pass(f, (action or "").lower(), diag_type)
    if r in ("", "undefined", "onhold"):
        if action == "delayed":
            return "expired"
        if included("vacation", low):
            return "vacation"
        if low:
            return "onhold"
        return preset if preset else "undefined"
    return r


def classify_reason(diagnostic: str | None, status: str | None, reply_code: str | None) -> str:
    """Short form of ``decide``: codes not given are read from the text."""
    text = diagnostic or ""
    return decide(text, status or find_status(text), reply_code or find_reply_code(text))


def is_temporary(text: str) -> bool:
    code = find_status(text) or find_reply_code(text) or ""
    low = text.lower()
    return code.startswith("4") or " temporar" in low or " persistent" in low


def is_hard(reason: str, evidence: str = "") -> bool:
    """A failure of the address itself (user/host unknown, moved); a null MX unless 4xx."""
    if reason != "notaccept":
        return reason in HARD_REASONS
    if not evidence:
        return True
    code = find_status(evidence) or find_reply_code(evidence) or ""
    return code.startswith("5") or not is_temporary(evidence)


def infer_status(reason: str, reply_code: str | None, temporary: bool | None = None) -> str | None:
    """A status for a report that has none (RFC 3463 §3.1 class from the reply code)."""
    detail = _INFER_STATUS.get(reason)
    if detail is None:
        return None
    if reply_code and reply_code[0] in "45":
        cls = reply_code[0]
    elif temporary is not None:
        cls = "4" if temporary else "5"
    elif reason in ("toomanyconn", "speeding"):
        cls = "4"
    else:
        cls = "5"
    return f"{cls}.{detail}"


def reason_from_status(status: str | None) -> str | None:
    return status_name(status) or None


__all__ = [
    "classify_reason", "decide", "find_command", "find_reply_code", "find_status", "included",
    "infer_status", "is_hard", "reason_from_status", "status_name",
]
