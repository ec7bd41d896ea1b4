"""The send endpoint's pure half: JSON request → MIME message + SMTP envelope.

No I/O here: :mod:`bouncetrack.api.send` validates the caller's domains, hands
the :class:`Submission` built by :func:`compose` to the local Postfix over SMTP,
and looks up what the milter recorded.

What we put on the wire (the same for tracked and untracked domains; the milter,
not the API, decides, exactly as for an SMTP client):

- ``MAIL FROM:<envelope>`` (the ``from`` address when ``envelope`` is absent),
  with ``RET=<dsn.ret>`` when given.
- ``RCPT TO:<r> [NOTIFY=<dsn.notify>] ORCPT=rfc822;<r>`` for every recipient: ORCPT
  names the recipient as the caller gave it (RFC 3461 §4.2), so every DSN says
  whom it is about.
- ``bounce`` travels as a ``Return-Path:`` header, the spec's equivalence between
  the REST field and the SMTP header ("bounce" = "Return-Path"). The milter moves
  it into the envelope for an untracked domain and deletes it for a tracked one;
  either way it never reaches the recipient (RFC 5321 §4.4 reserves the header for
  the final delivery MTA).
- With tracking on for the sender domain the milter replaces the envelope sender
  by the VERP address and RET/NOTIFY/ENVID by its own; what we sent is ignored.

The message: ``multipart/alternative`` (text/plain + text/html) when both bodies
are given; an HTML-only request gets a text/plain alternative derived from the
HTML (:func:`html_to_text`: spam filters penalise HTML-only mail and text-only
clients deserve something readable); a text-only request is a single text/plain
part. Bodies are quoted-printable or base64 (7-bit clean), headers RFC 2047
encoded where needed, so the submission needs neither 8BITMIME nor SMTPUTF8.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from email import policy as email_policy
from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..core import addresses, esmtp
from ..store.base import SEND_API_MESSAGE_ID_PREFIX

#: Postfix's default ``smtpd_recipient_limit``: more RCPTs per transaction get 452.
MAX_RECIPIENTS = 1000
MAX_HEADER_CHARS = 2000
MAX_BODY_CHARS = 10_000_000

_CTL = re.compile(r"[\x00-\x1f\x7f]")
# What str.splitlines(), and so the email package's header check, takes for a line
# break: any of them in a header value would end the field (issue 16: U+2028 was a 500).
_LINE_BREAK = re.compile("[\n\r\v\f\x1c-\x1e\x85\u2028\u2029]")

# What we build with: CRLF line ends (SMTP) and 7-bit transfer encodings only.
_POLICY = email_policy.SMTP.clone(cte_type="7bit")


# --------------------------------------------------------------------------- checks


def _one_line(value: str) -> None:
    # Header injection: a CR or LF would start a new header field (RFC 5322 §2.2).
    if _LINE_BREAK.search(value):
        raise ValueError("must not contain CR or LF or another line break (header fields are one line)")


def _no_ctl(value: str) -> str:
    _one_line(value)
    if _CTL.search(value):
        raise ValueError("must not contain control characters")
    return value


def addr_spec(value: str) -> str:
    """Validate one bare address (``a@b.example`` or ``<a@b.example>``); return it bare,
    its domain in A-label form (:func:`bouncetrack.core.addresses.parse_address`). ASCII local
    parts only (no SMTPUTF8). Raise ValueError saying what is wrong."""
    try:
        return addresses.parse_address(value).addr_spec
    except addresses.AddressError as exc:
        raise ValueError(f"{value[:100]!r}: {exc}") from None


@dataclass(frozen=True)
class Mailbox:
    """One header address: optional display name + a validated addr-spec."""

    name: str
    address: str

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2]

    def header(self) -> HeaderAddress:
        return HeaderAddress(display_name=self.name, addr_spec=self.address)


def mailboxes(value: str) -> tuple[Mailbox, ...]:
    """Parse ``"Name <a@b>, c@d"`` (RFC 5322 §3.4 address-list); raise ValueError."""
    _no_ctl(value)
    try:
        parsed = addresses.parse_mailbox_list(value)
    except addresses.AddressError as exc:
        raise ValueError(f"{value[:100]!r}: {exc}") from None
    return tuple(Mailbox(a.display_name, a.addr_spec) for a in parsed)


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


# --------------------------------------------------------------------------- request


_NOTIFY_DOC = (
    "RCPT TO NOTIFY (RFC 3461 §4.1) for every recipient: `NEVER` alone, or a comma list "
    "of `SUCCESS`, `FAILURE`, `DELAY` without spaces. Only used when bounce tracking is "
    "disabled for the sender domain; omitted: the server's default (failures and delays), "
    "or the domain's configured DSN default."
)
_RET_DOC = (
    "MAIL FROM RET (RFC 3461 §4.3): `HDRS` (headers only) or `FULL` (the whole message) "
    "in a failure notice. Only used when bounce tracking is disabled."
)


class DsnOptions(BaseModel):
    """Delivery Status Notification options (ignored when bounce tracking is enabled)."""

    model_config = ConfigDict(extra="forbid")

    notify: str | None = Field(default=None, description=_NOTIFY_DOC, examples=["FAILURE,DELAY", "NEVER"])
    ret: str | None = Field(default=None, description=_RET_DOC, examples=["HDRS"])

    @field_validator("notify")
    @classmethod
    def _notify(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return ",".join(esmtp.parse_notify(value))
        except esmtp.DsnSyntaxError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("ret")
    @classmethod
    def _ret(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return esmtp.parse_ret(value)
        except esmtp.DsnSyntaxError as exc:
            raise ValueError(str(exc)) from None


class SendRequest(BaseModel):
    """One message to send (the spec's REST API JSON, plus `cc`, `subject`, `text`)."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
                    "envelope": "info@example.com",
                    "recipient": "recipient@example.com",
                    "from": "info@example.com",
                    "to": "recipient@example.com",
                    "subject": "Hello",
                    "html": "This is example content.",
                    "dsn": {"notify": "FAILURE", "ret": "HDRS"},
                }
            ]
        },
    )

    envelope: str | None = Field(
        default=None,
        description=(
            "Envelope sender (SMTP MAIL FROM): where bounces go when bounce tracking is "
            "disabled. Defaults to the `from` address. Ignored (replaced by a VERP "
            "address) when tracking is enabled for its domain, which decides tracking. "
            "Its domain must be one of the access token's domains."
        ),
        examples=["info@example.com"],
        max_length=MAX_HEADER_CHARS,
    )
    recipient: str | list[str] = Field(
        description=(
            f"Envelope recipient(s) (SMTP RCPT TO): one address or a list of 1 to "
            f"{MAX_RECIPIENTS}. The message goes to exactly these addresses; `to` and `cc` "
            "are only headers."
        ),
        examples=["recipient@example.com"],
    )
    from_: str = Field(
        alias="from",
        description=(
            "The From header: `info@example.com` or `Name <info@example.com>`. Its "
            "domain must be one of the access token's domains."
        ),
        examples=["Info <info@example.com>"],
        max_length=MAX_HEADER_CHARS,
    )
    to: str | list[str] = Field(
        description="The To header: one or more addresses, optionally with display names.",
        examples=["recipient@example.com"],
    )
    cc: str | list[str] | None = Field(
        None, description="The Cc header (header only: list these in `recipient` too to deliver to them)."
    )
    subject: str | None = Field(default=None, description="The Subject header (one line).", max_length=MAX_HEADER_CHARS)
    html: str | None = Field(
        default=None,
        description=(
            "HTML body. With `text` the message is multipart/alternative; alone, a "
            "text/plain alternative is derived from it. At least one of `html`, `text`."
        ),
        max_length=MAX_BODY_CHARS,
    )
    text: str | None = Field(default=None, description="Plain-text body.", max_length=MAX_BODY_CHARS)
    bounce: str | None = Field(
        default=None,
        description=(
            "Bounce address: sent as a Return-Path header, which the server moves into the "
            "envelope (MAIL FROM) when bounce tracking is disabled, so bounces go here "
            "instead of to `envelope`. Ignored when tracking is enabled. Its domain must "
            "be one of the access token's domains."
        ),
        examples=["bounce@example.com"],
        max_length=MAX_HEADER_CHARS,
    )
    dsn: DsnOptions | None = Field(
        None, description="DSN options; ignored when bounce tracking is enabled for the sender domain."
    )

    @field_validator("envelope", "bounce")
    @classmethod
    def _envelope_address(cls, value: str | None) -> str | None:
        return None if value is None else addr_spec(value)

    @field_validator("recipient")
    @classmethod
    def _recipients(cls, value: str | list[str]) -> list[str]:
        items = _as_list(value)
        if not items:
            raise ValueError("at least one recipient is required")
        if len(items) > MAX_RECIPIENTS:
            raise ValueError(f"at most {MAX_RECIPIENTS} recipients per message, got {len(items)}")
        out: list[str] = []
        seen: set[str] = set()
        for i, item in enumerate(items):
            try:
                address = addr_spec(item)
            except ValueError as exc:
                raise ValueError(f"item {i}: {exc}") from None
            if address.lower() not in seen:  # one RCPT per address
                seen.add(address.lower())
                out.append(address)
        return out

    @field_validator("from_")
    @classmethod
    def _from(cls, value: str) -> str:
        boxes = mailboxes(value)
        if len(boxes) != 1:
            raise ValueError("exactly one From address is required")
        return value

    @field_validator("to", "cc")
    @classmethod
    def _address_lists(cls, value: str | list[str] | None) -> str | list[str] | None:
        if value is None:
            return None
        items = _as_list(value)
        if not items:
            raise ValueError("at least one address is required")
        for i, item in enumerate(items):
            try:
                mailboxes(item)
            except ValueError as exc:
                raise ValueError(f"item {i}: {exc}" if isinstance(value, list) else str(exc)) from None
        return value

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: str | None) -> str | None:
        if value is None:
            return None
        _one_line(value)
        if _CTL.search(value.replace("\t", " ")):
            raise ValueError("must not contain control characters")
        return value

    @field_validator("html", "text")
    @classmethod
    def _body(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:
            raise ValueError("must not contain NUL characters")
        return value

    # --- derived values (valid after validation) ---------------------------------
    @property
    def recipients(self) -> list[str]:
        return _as_list(self.recipient)

    @property
    def from_mailbox(self) -> Mailbox:
        return mailboxes(self.from_)[0]

    @property
    def mail_from(self) -> str:
        """The envelope sender we submit with: ``envelope``, else the From address."""
        return self.envelope or self.from_mailbox.address

    def sender_fields(self) -> list[tuple[str, str]]:
        """(field name, domain) of every address that must be in the token's domains."""
        out = [("from", self.from_mailbox.domain), ("envelope", self.mail_from.rpartition("@")[2].lower())]
        if self.bounce:
            out.append(("bounce", self.bounce.rpartition("@")[2].lower()))
        return out


def cross_field_errors(request: SendRequest) -> list[dict[str, Any]]:
    """Rules spanning fields, in FastAPI's 422 error shape (``loc`` names the field)."""
    errors: list[dict[str, Any]] = []
    if not request.html and not request.text:
        for name in ("html", "text"):
            errors.append({
                "type": "missing",
                "loc": ("body", name),
                "msg": "either html or text is required (a message needs a body)",
                "input": None,
            })
    return errors


# --------------------------------------------------------------------------- message


@dataclass(frozen=True)
class Submission:
    """Everything one SMTP transaction needs."""

    mail_from: str
    mail_options: tuple[str, ...]  # e.g. ("RET=FULL",)
    recipients: tuple[str, ...]
    rcpt_options: dict[str, tuple[str, ...]]  # per recipient: NOTIFY, ORCPT
    message: bytes  # CRLF line ends, 7-bit
    message_id: str  # the Message-ID header, with angle brackets


def compose(request: SendRequest, *, now: datetime | None = None, message_id: str | None = None) -> Submission:
    """Build the MIME message and the SMTP envelope for a validated request."""
    sender = request.from_mailbox
    # Recognisable by the store, which indexes only these (SEND_API_MESSAGE_ID_PREFIX).
    msgid = message_id or SEND_API_MESSAGE_ID_PREFIX + make_msgid(domain=sender.domain)[1:]
    msg = EmailMessage(policy=_POLICY)
    if request.bounce:
        # The spec: "bounce" is the Return-Path header; the milter turns it into
        # the envelope sender (untracked) or removes it (tracked).
        msg["Return-Path"] = f"<{request.bounce}>"
    msg["From"] = sender.header()
    msg["To"] = _header_list(request.to)
    if request.cc:
        msg["Cc"] = _header_list(request.cc)
    if request.subject is not None:
        msg["Subject"] = request.subject
    msg["Date"] = format_datetime(now or datetime.now(timezone.utc))  # RFC 5322 §3.3
    msg["Message-ID"] = msgid
    msg["MIME-Version"] = "1.0"
    text = request.text if request.text else html_to_text(request.html or "")
    msg.set_content(_crlf_free(text))
    if request.html:
        msg.add_alternative(_crlf_free(request.html), subtype="html")
        for part in msg.iter_parts():
            del part["MIME-Version"]  # RFC 2045 §4: top level only; the email package adds it per part

    mail_options: list[str] = []
    notify: str | None = None
    if request.dsn is not None:
        if request.dsn.ret:
            mail_options.append(f"RET={request.dsn.ret}")  # RFC 3461 §4.3
        notify = request.dsn.notify
    rcpt_options: dict[str, tuple[str, ...]] = {}
    for rcpt in request.recipients:
        opts = [f"NOTIFY={notify}"] if notify else []  # RFC 3461 §4.1
        opts.append(f"ORCPT={esmtp.orcpt_for(rcpt)}")  # RFC 3461 §4.2
        rcpt_options[rcpt] = tuple(opts)
    return Submission(
        mail_from=request.mail_from,
        mail_options=tuple(mail_options),
        recipients=tuple(request.recipients),
        rcpt_options=rcpt_options,
        message=msg.as_bytes(policy=_POLICY),
        message_id=msgid,
    )


def _header_list(value: str | list[str]) -> tuple[HeaderAddress, ...]:
    return tuple(box.header() for item in _as_list(value) for box in mailboxes(item))


def _crlf_free(text: str) -> str:
    # The email package writes the policy's CRLF itself; bare CRs would survive.
    return text.replace("\r\n", "\n").replace("\r", "\n")


# --------------------------------------------------------------------------- html → text

_BLOCK = frozenset({
    "address", "article", "aside", "blockquote", "div", "dl", "dt", "dd", "fieldset", "figure",
    "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav",
    "ol", "p", "pre", "section", "table", "tr", "ul",
})
_PARAGRAPH = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "table"})
_SKIP = frozenset({"script", "style", "head", "title", "template", "noscript"})
# Inside a tag: its name, then attributes (a quoted value never runs past the tag's end,
# the tag being cut at its first ">" before this is applied).
_TAG_NAME = re.compile(r"(/?)([A-Za-z][A-Za-z0-9:-]*)")
_ATTR = re.compile(r"""\s*([^\s=/>"']+)(?:\s*=\s*("[^"]*"|'[^']*'|[^\s"'>]+))?""")
_SPACES = re.compile(r"\s+")


class _Text:
    """The text being built: parts, plus where the open link's text starts."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.skip: str | None = None  # inside <script>/<style>/...: its name
        self.pre = 0
        self.link: tuple[str | None, int] | None = None  # (href, index of its first part)

    def start(self, tag: str, attrs: str, self_closing: bool) -> None:
        if tag in _SKIP:
            self.skip = None if self_closing else tag
        elif tag == "br":
            self.parts.append("\n")
        elif tag in _BLOCK:
            self.parts.append("\n\n" if tag in _PARAGRAPH else "\n")
            if tag == "li":
                self.parts.append("- ")
            if tag == "pre" and not self_closing:
                self.pre += 1
        elif tag == "a":
            # HTML (§13.2.6.4.7): an <a> inside an open <a> closes it first, so link
            # texts never nest and each part is looked at by one link only.
            self.end("a")
            if not self_closing:
                self.link = (_href(attrs), len(self.parts))
        elif tag in ("td", "th"):
            self.parts.append(" ")

    def end(self, tag: str) -> None:
        if tag in _BLOCK and tag != "li":
            if tag == "pre":
                self.pre = max(0, self.pre - 1)
            self.parts.append("\n\n" if tag in _PARAGRAPH else "\n")
        elif tag == "a" and self.link is not None:
            href, first = self.link
            self.link = None
            shown = "".join(self.parts[first:]).strip()
            if href and href.startswith(("http://", "https://", "mailto:")) and href.removeprefix("mailto:") != shown:
                self.parts.append(f" ({href})" if shown else href)

    def data(self, text: str) -> None:
        text = html.unescape(text)
        self.parts.append(text if self.pre else _SPACES.sub(" ", text))


def _href(attrs: str) -> str | None:
    for m in _ATTR.finditer(attrs):
        if m[1].lower() == "href" and m[2] is not None:
            value = m[2][1:-1] if m[2][0] in "\"'" else m[2]
            return html.unescape(value.strip())
    return None


def html_to_text(body: str) -> str:
    """A readable plain-text rendering of an HTML body (for the text/plain alternative).

    Linear in the input (issue 16: the standard library's HTMLParser and nested
    links made it quadratic, 7.5 s for 1.2 MB): one pass that looks for the next
    ``<`` and the next ``>`` with ``str.find``, each found once and reused while
    valid; a ``<`` that starts no tag is text, an unterminated comment or tag
    ends the document (as in HTML's tokenizer, §13.2.5).
    """
    out = _Text()
    pos, n = 0, len(body)
    next_gt = -1  # the first ">" at or after pos, once looked for
    while pos < n:
        lt = body.find("<", pos)
        if lt < 0:
            lt = n
        if lt > pos and out.skip is None:
            out.data(body[pos:lt])
        if lt >= n:
            break
        follows = body[lt + 1 : lt + 2]
        if not (follows.isascii() and follows.isalpha()) and follows not in ("/", "!", "?"):
            if out.skip is None:  # "a < b": the "<" starts no tag, it is text
                out.data("<")
            pos = lt + 1
            continue
        if body.startswith("<!--", lt):
            close = body.find("-->", lt + 4)
            pos = n if close < 0 else close + 3
            continue
        if next_gt <= lt:
            next_gt = body.find(">", lt + 1)
            if next_gt < 0:
                next_gt = n
        if next_gt >= n:  # an unterminated tag: what follows is not text either
            break
        inner = body[lt + 1 : next_gt]
        pos = next_gt + 1
        m = _TAG_NAME.match(inner)
        if m is None:  # <!DOCTYPE>, <![CDATA[...]]>, <?xml?>, "</ >": not text
            continue
        tag = m[2].lower()
        if out.skip is not None:
            if m[1] and tag == out.skip:
                out.skip = None
            continue
        if m[1]:
            out.end(tag)
        else:
            out.start(tag, inner[m.end():], inner.endswith("/"))
    out.end("a")
    lines = [line.strip() for line in "".join(out.parts).split("\n")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    return text + "\n" if text else "\n"


def domains_outside(fields: Iterable[tuple[str, str]], allowed: Iterable[str]) -> list[tuple[str, str]]:
    """The (field, domain) pairs whose domain is not in ``allowed`` (exact, case-insensitive)."""
    allow = {d.lower() for d in allowed}
    return [(name, domain) for name, domain in fields if domain.lower() not in allow]
