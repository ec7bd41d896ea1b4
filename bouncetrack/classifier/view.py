"""The parsed view: one walk over the MIME tree, shared by every detector.

Parsing happens once (``email.parser.BytesParser`` with the default compat32 policy:
``email.policy`` costs ~20 ms of import time in the per-bounce pipe process, HACKING.md).
Detectors only read this view, so a bounce is walked once however many detectors look.
All text is decoded with ``errors="replace"`` and capped, so no detector sees unbounded or
undecodable input.
"""

from __future__ import annotations

import re

from . import boundary
from .lazy import lazy_re
from email.message import Message
from email.parser import BytesParser

boundary.install()  # no regular expression compiled per multipart (issue 21: CPU per bounce)

# How much of each text part detectors may scan; bounces put the failure near the top.
TEXT_CAP = 96 * 1024
# Nested message/rfc822 (bounces of bounces) beyond this depth are not descended into.
MAX_DEPTH = 6
MAX_PARTS = 200

Fields = dict[str, str]

_FIELD_RE = lazy_re(r"^([A-Za-z][A-Za-z0-9-]{0,60})[ \t]*:[ \t]*(.*)$")
_ENCODED_WORD_RE = lazy_re(r"=\?([^?\s]{1,40})\?([bBqQ])\?([^?\s]{0,2000})\?=")

# Lines that start the copy of the original message in non-MIME bounces (qmail, Exim,
# Sendmail-era MTAs, webmail providers). Matched case-insensitively against stripped lines.
ORIGINAL_MARKERS = lazy_re(
    r"^[-=*_>\s\[(]*(?:"
    r"below this line is a copy of the message"
    r"|(?:the |a |this is a )?(?:copy of )?(?:the |your )?(?:original|returned|unsent|undelivered|rejected) "
    r"(?:message|mail|e-?mail)(?:'s)?(?: headers?| text| body)?"
    r"|(?:the )?message (?:headers?|text|body) (?:follows?|below)"
    r"|(?:the )?headers? (?:of|from) (?:the |your )?(?:original )?message"
    r"|(?:a )?copy of (?:the |your )?message"
    r"|content-type: message/rfc822"
    r")\b[^.@]{0,30}[\s:.\-=*_\])]*$",
    re.IGNORECASE,
)


_RULE_LINE_RE = lazy_re(r"^[-=*_#~]{3,}\s*$")  # "=====" separator lines around a copied original


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded-words, tolerantly (unknown charsets, bad base64)."""
    if "=?" not in value:
        return value
    import base64
    import binascii
    import quopri

    def one(m: re.Match[str]) -> str:
        charset, enc, text = m.group(1), m.group(2).lower(), m.group(3)
        try:
            if enc == "b":
                data = base64.b64decode(text + "=" * (-len(text) % 4))
            else:
                data = quopri.decodestring(text.replace("_", " ").encode("ascii", "replace"), header=True)
            return _decode_bytes(data, charset.split("*", 1)[0])
        except (ValueError, binascii.Error):
            return m.group(0)

    return _ENCODED_WORD_RE.sub(one, value)


def _decode_bytes(data: bytes, charset: str | None) -> str:
    cs = (charset or "").strip().strip('"').lower() or "us-ascii"
    if cs in ("us-ascii", "ascii", "unknown-8bit", "x-unknown", "8bit"):
        cs = "utf-8"
    try:
        return data.decode(cs, errors="replace")
    except (LookupError, ValueError):
        return data.decode("utf-8", errors="replace")


_SURROGATE_RE = lazy_re("[\udc80-\udcff]")


def clean_header(v: object) -> str:
    """A compat32 header value (str, or Header for 8-bit) as tidy text; never raises."""
    s = v if isinstance(v, str) else str(v)
    if not s.isascii() and _SURROGATE_RE.search(s):
        s = s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return decode_words(" ".join(s.split()))


# Fields that may repeat within one block, all values kept (joined by ", "):
# RFC 5965 §3.2 Original-Rcpt-To (one per recipient of a multi-recipient complaint).
MULTI_FIELDS = frozenset({"original-rcpt-to"})


def parse_fields(text: str) -> list[Fields]:
    """Parse blank-line separated blocks of ``Name: value`` fields (RFC 3464 §2.1 layout).

    Tolerant: continuation lines (RFC 5322 §2.2.3 folding) are unfolded, lines that are not
    fields are ignored, field names are lower-cased, the first occurrence wins.
    """
    blocks: list[Fields] = []
    cur: Fields = {}
    last: str | None = None
    field_match = _FIELD_RE.compiled().match  # bound once: this loop runs per line
    for line in text.splitlines():
        if not line.strip():
            if cur:
                blocks.append(cur)
                cur = {}
            last = None
            continue
        if line[0] in " \t":
            if last is not None:
                cur[last] = (cur[last] + " " + line.strip()).strip()
            continue
        m = field_match(line)
        if m is None:
            last = None
            continue
        name = m.group(1).lower()
        if name in cur:
            if name in MULTI_FIELDS:
                cur[name] += ", " + m.group(2).strip()
                last = None
                continue
            # a repeated field starts a new block when the writer forgot the blank line
            if name in ("final-recipient", "original-recipient") and "action" in cur:
                blocks.append(cur)
                cur = {}
            else:
                last = None
                continue
        cur[name] = m.group(2).strip()
        last = name
    if cur:
        blocks.append(cur)
    return blocks


# Headers detectors read as tidy text; the others are kept raw (cheap), first one wins.
_CLEAN = frozenset({"subject", "from", "to", "reply-to", "sender", "return-path", "message-id",
                    "x-failed-recipients", "auto-submitted", "precedence", "delivered-to",
                    "x-original-to", "original-recipient", "original-rcpt-to", "date"})
_SKIP = frozenset({"received", "dkim-signature", "arc-seal", "arc-message-signature",
                   "x-google-dkim-signature", "arc-authentication-results", "authentication-results",
                   "received-spf", "x-received"})


def _header_map(msg: Message) -> Fields:
    out: Fields = {}
    raw_headers: list[tuple[str, object]] = getattr(msg, "_headers", [])
    for k, v in raw_headers:  # compat32's raw pairs: no policy round trip per header
        lk = k.lower()
        if lk in out or lk in _SKIP:
            continue
        out[lk] = clean_header(v) if lk in _CLEAN else (v if isinstance(v, str) else str(v))
    return out


def _fields_of(msg: Message) -> Fields:
    out: Fields = {}
    for k, v in msg.items():
        k = k.lower()
        if k not in out:
            out[k] = " ".join(str(v).split())
        elif k in MULTI_FIELDS:
            out[k] += ", " + " ".join(str(v).split())
    return out


def _payload_text(part: Message) -> str:
    """Decoded text of a leaf part, capped, never raising."""
    try:
        data = part.get_payload(decode=True)
    except Exception:  # noqa: BLE001
        data = None
    if not isinstance(data, bytes):
        p = part.get_payload()
        if isinstance(p, str):
            data = p.encode("utf-8", "surrogateescape")
        else:
            return ""
    data = data[:TEXT_CAP]
    try:
        charset = part.get_content_charset()
    except Exception:  # noqa: BLE001
        charset = None
    text = _decode_bytes(data, charset)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


_TAG_RE = lazy_re(r"<(?:br|p|div|tr|li|h\d)\b[^>]{0,500}>", re.IGNORECASE)
_ANYTAG_RE = lazy_re(r"<[^<>]{0,2000}>")
_ENTITY = {"&lt;": "<", "&gt;": ">", "&amp;": "&", "&nbsp;": " ", "&quot;": '"', "&#39;": "'"}
_ENTITY_RE = lazy_re(r"&(?:lt|gt|amp|nbsp|quot|#39);")


def html_to_text(html: str) -> str:
    html = re.sub(r"(?is)<(script|style)\b.{0,20000}?</\1>", " ", html)
    text = _TAG_RE.sub("\n", html)
    text = _ANYTAG_RE.sub("", text)
    return _ENTITY_RE.sub(lambda m: _ENTITY[m.group(0)], text)


class ParsedView:
    """Everything detectors look at, computed once per message."""

    __slots__ = (
        "msg", "headers", "subject", "from_", "content_type", "report_type",
        "texts", "html_texts", "ds_blocks", "feedback", "original", "original_text",
        "nested", "body", "report_text", "_cache",
    )

    def __init__(self, msg: Message, depth: int = 0) -> None:
        self.msg = msg
        self.headers: Fields = {}
        # compat32 keeps (name, raw value) pairs; the first occurrence of a name wins.
        self.headers = _header_map(msg)
        self.subject = self.headers.get("subject", "")
        self.from_ = self.headers.get("from", "")
        try:
            self.content_type = msg.get_content_type()
            self.report_type = (msg.get_param("report-type") or "")
        except Exception:  # noqa: BLE001
            self.content_type, self.report_type = "text/plain", ""
        if not isinstance(self.report_type, str):
            self.report_type = ""
        self.report_type = self.report_type.lower().strip()
        self.texts: list[str] = []  # text/plain parts of the report itself, in order
        self.html_texts: list[str] = []
        # RFC 3464 §2.1: one per-message block followed by per-recipient blocks.
        self.ds_blocks: list[Fields] = []
        self.feedback: Fields | None = None  # RFC 5965 §3.1 message/feedback-report
        self.original: Fields | None = None  # headers of the returned original message
        self.original_text: str = ""  # text of the original, for non-MIME bounces
        self.nested: list[Message] = []  # attached messages (maybe bounces themselves)
        self._walk(msg, depth, [0])
        if not self.texts and self.html_texts:
            self.texts = [html_to_text(h)[:TEXT_CAP] for h in self.html_texts]
        self.body = "\n".join(self.texts)[: 2 * TEXT_CAP]
        self.report_text = self.body  # the body without the copy of the original
        self._cache: dict[str, object] = {}
        self._original_from_text()

    def hosts(self) -> str:
        """The Received chain of the bounce, lower-cased (who relayed it: provider hints)."""
        cached = self._cache.get("hosts")
        if isinstance(cached, str):
            return cached
        try:
            rcv = " ".join(str(v) for v in (self.msg.get_all("received") or [])[:12])
        except Exception:  # noqa: BLE001
            rcv = ""
        out = rcv.lower()
        self._cache["hosts"] = out
        return out

    def _walk(self, part: Message, depth: int, count: list[int]) -> None:
        count[0] += 1
        if count[0] > MAX_PARTS or depth > MAX_DEPTH:
            return
        try:
            ctype = part.get_content_type()
        except Exception:  # noqa: BLE001
            ctype = "text/plain"
        if part.is_multipart():
            payload = part.get_payload()
            if not isinstance(payload, list):
                return
            if ctype in ("message/rfc822", "message/global") or ctype.startswith("message/"):
                if ctype in ("message/delivery-status", "message/global-delivery-status"):
                    # compat32 parses each block into a sub-message of headers
                    # (re-split: a block may hold several recipients without blank lines)
                    text = "\n\n".join(
                        "\n".join(f"{k}: {v}" for k, v in sub.items())
                        for sub in payload if isinstance(sub, Message))
                    self.ds_blocks.extend(parse_fields(text))
                    return
                if ctype == "message/feedback-report":
                    for sub in payload:
                        if isinstance(sub, Message) and self.feedback is None:
                            self.feedback = _fields_of(sub)
                    return
                for sub in payload:
                    if isinstance(sub, Message):
                        self._attached(sub, depth)
                return
            for sub in payload:
                if isinstance(sub, Message):
                    self._walk(sub, depth, count)
            return
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            # RFC 3464 §2.1 / RFC 6533 §6.2; not parsed into blocks when malformed
            self.ds_blocks.extend(parse_fields(_payload_text(part)))
            return
        if ctype == "message/feedback-report":
            blocks = parse_fields(_payload_text(part))
            if blocks and self.feedback is None:
                self.feedback = blocks[0]
            return
        if ctype in ("text/rfc822-headers", "message/rfc822-headers", "text/rfc822-header"):
            # RFC 6522 §3 (was RFC 3462): the returned headers
            if self.original is None:
                hb = parse_fields(_payload_text(part))
                if hb:
                    self.original = hb[0]
            return
        if ctype in ("message/rfc822", "message/global"):
            text = _payload_text(part)
            if self.original is None:
                hb = parse_fields(text)
                if hb:
                    self.original = hb[0]
            return
        if ctype == "text/plain" or ctype == "text/html" or not ctype.startswith(("image/", "application/", "audio/", "video/", "model/", "font/")):
            disp = str(part.get("content-disposition", "")).lower()
            text = _payload_text(part)
            if ctype == "text/html":
                self.html_texts.append(text)
            elif ctype.startswith(("text/", "multipart/")) or ctype in ("message/partial", "application/octet-stream"):
                if "final-recipient:" in text.lower()[:4096] and not self.ds_blocks and "attachment" in disp:
                    self.ds_blocks.extend(parse_fields(text))
                else:
                    self.texts.append(text)

    def _attached(self, sub: Message, depth: int) -> None:
        self.nested.append(sub)
        if self.original is None:
            self.original = _header_map(sub)

    def _original_from_text(self) -> None:
        """Non-MIME bounces: find the copy of the original after a marker line."""
        body = self.body
        lines = body.split("\n", 1500)[:1500]
        for i, line in enumerate(lines):
            s = line.strip()
            if len(s) > 90 or not s:
                continue
            if ORIGINAL_MARKERS.match(s):
                self.report_text = "\n".join(lines[:i])
                if self.original is None:
                    tail = lines[i + 1 : i + 200]
                    if sum(1 for ln in tail[:12] if ln.startswith(">")) >= 3:
                        # the copy quoted with "> " (old gateways): unquote it to read its headers
                        tail = [ln[1:].lstrip(" ") if ln.startswith(">") else ln for ln in tail]
                    rest = "\n".join(ln for ln in tail if not _RULE_LINE_RE.match(ln)).lstrip("\n")
                    hb = parse_fields(rest)
                    if hb:
                        self.original = hb[0]
                        self.original_text = rest
                return


def parse(raw: bytes, depth: int = 0) -> ParsedView:
    msg = BytesParser().parsebytes(raw)
    return ParsedView(msg, depth)
