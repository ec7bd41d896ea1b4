"""Forward the original bounce by SMTP to a domain's forward address.

The raw report as the pipe received it is sent on, unchanged except for a few
headers prepended to it:

* ``X-Bounce-Type`` / ``X-Bounce-Severity`` / ``X-Bounce-Reason`` /
  ``X-Bounce-Status`` / ``X-Bounce-Recipient`` / ``X-Bounce-Message-ID``: the
  classification, for mailbox filters. Values are sanitised (control
  characters including CR/LF removed, length bounded, non-ASCII RFC 2047
  encoded) so a crafted bounce cannot inject header lines.
* ``Auto-Submitted: auto-generated`` (RFC 3834 §5): no vacation responder or
  other automaton should answer it.
* ``X-Bouncetrack-Forwarded: 1``: loop detection. The pipe still stores a
  message carrying it but never queues it for forwarding (a forward address
  that itself bounces back to a VERP address must not be forwarded again).

Headers of those names already in the original are removed first: a forged
``X-Bounce-Type: bounce`` inside a bounce must not reach the mailbox filter,
and RFC 3834 allows one ``Auto-Submitted``. ``Return-Path`` is removed too
(the final delivery adds the real one).

The envelope sender is null (``MAIL FROM:<>``, RFC 5321 §4.5.5): if the forward
address itself fails, the resulting bounce is discarded instead of looping back
into the bounce domain.

Mail goes to ``outbox.smtp_host:smtp_port`` (normally the local Postfix) in
plain SMTP; that relay does the rest.
"""

from __future__ import annotations

import re
import smtplib
from email.header import Header

from ..store.base import BounceEvent

LOOP_HEADER = "X-Bouncetrack-Forwarded"
_REMOVED = ("x-bounce-", "x-bouncetrack-forwarded", "auto-submitted", "return-path")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")
_MAX_VALUE = 256  # characters of one header value we add
_FIELD_NAME = re.compile(rb"^[!-9;-~]+[ \t]*:")  # RFC 5322 §3.6.8 ftext, then ":"


def clean_value(value: str | None) -> str:
    """A header value that cannot break out of its line (CR/LF and controls removed)."""
    if not value:
        return ""
    text = _CONTROL.sub(" ", value)
    text = " ".join(text.split())[:_MAX_VALUE]
    if text.isascii():
        return text
    # RFC 2047 encoded-words; folded with CRLF + space, which is a legal continuation.
    return Header(text, "utf-8").encode(linesep="\r\n")


def classification_headers(event: BounceEvent) -> list[tuple[str, str]]:
    """The headers we prepend, in order; values already sanitised."""
    headers = [
        ("X-Bounce-Type", clean_value(event.type) or "unknown"),
        ("X-Bounce-Severity", "hard" if event.hard else "soft"),
        ("X-Bounce-Reason", clean_value(event.reason) or "undefined"),
    ]
    for name, value in (
        ("X-Bounce-Status", event.status),
        ("X-Bounce-Recipient", event.recipient),
        ("X-Bounce-Message-ID", event.original_message_id),
    ):
        cleaned = clean_value(value)
        if cleaned:
            headers.append((name, cleaned))
    headers.append(("Auto-Submitted", "auto-generated"))  # RFC 3834 §5
    headers.append((LOOP_HEADER, "1"))
    return headers


def _lines(raw: bytes) -> list[bytes]:
    """Lines without their endings; any of CRLF / LF accepted (pipe(8) gives LF)."""
    text = raw.replace(b"\r\n", b"\n")
    if text.endswith(b"\n"):
        text = text[:-1]
    return text.split(b"\n") if text else []


def build_forward(raw: bytes, event: BounceEvent) -> bytes:
    """The message to send: our headers, the original minus the removed ones, CRLF endings."""
    lines = _lines(raw)
    kept: list[bytes] = []
    i = 0
    dropping = False
    # Header section: field lines and their continuations, up to the first empty line.
    while i < len(lines):
        line = lines[i]
        if line == b"":
            break
        if line[:1] in (b" ", b"\t") and i > 0:  # RFC 5322 §2.2.3 folding
            if not dropping:
                kept.append(line)
            i += 1
            continue
        if not _FIELD_NAME.match(line):  # not a header: the rest is body
            break
        name = line.split(b":", 1)[0].strip().lower().decode("ascii", "replace")
        dropping = name.startswith(_REMOVED[0]) or name in _REMOVED[1:]
        if not dropping:
            kept.append(line)
        i += 1
    body = lines[i:]
    if body and body[0] == b"":
        body = body[1:]
    out = [f"{name}: {value}".encode("ascii") for name, value in classification_headers(event)]
    out.extend(kept)
    out.append(b"")
    out.extend(body)
    return b"\r\n".join(out) + b"\r\n"


def send(
    message: bytes,
    to_addr: str,
    host: str,
    port: int,
    *,
    timeout: float = 30.0,
) -> None:
    """Submit ``message`` to ``to_addr`` with a null envelope sender.

    Raises :class:`smtplib.SMTPException` or :class:`OSError` on any failure
    (the worker retries); returns only when the relay accepted the message.
    """
    with smtplib.SMTP(host, port, timeout=timeout) as client:
        client.ehlo_or_helo_if_needed()
        options: list[str] = []
        if not message.isascii() and client.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")  # RFC 6152
        # sendmail raises SMTPRecipientsRefused when the only recipient is refused.
        client.sendmail("", [to_addr], message, mail_options=options)  # "" -> MAIL FROM:<>


def forward(
    raw: bytes,
    event: BounceEvent,
    to_addr: str,
    host: str,
    port: int,
    *,
    timeout: float = 30.0,
) -> None:
    """Build and send the forward of one report (see :func:`build_forward`, :func:`send`)."""
    send(build_forward(raw, event), to_addr, host, port, timeout=timeout)


__all__ = ["LOOP_HEADER", "build_forward", "classification_headers", "clean_value", "forward", "send"]
