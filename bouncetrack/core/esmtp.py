"""ESMTP envelope details: addresses and the DSN parameters of RFC 3461.

Pure functions, shared by the milter (which rewrites DSN parameters), the send
API (which builds them) and the pipe (which reads ORCPT back from reports).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Iterable

# RFC 3461 §4.1: NOTIFY is NEVER alone, or a comma list of SUCCESS, FAILURE, DELAY.
NOTIFY_VALUES = frozenset({"NEVER", "SUCCESS", "FAILURE", "DELAY"})
RET_VALUES = frozenset({"FULL", "HDRS"})  # RFC 3461 §4.3

# What a tracked message asks for: failures and delays, headers only (the spec).
TRACKED_NOTIFY = "FAILURE,DELAY"
TRACKED_RET = "HDRS"


class DsnSyntaxError(ValueError):
    """A DSN parameter that RFC 3461 does not allow."""


def parse_params(params: Iterable[str]) -> dict[str, str | None]:
    """ESMTP parameters ``["RET=FULL", "SMTPUTF8"]`` → ``{"RET": "FULL", "SMTPUTF8": None}``.

    Keywords are case-insensitive (RFC 5321 §4.1.2 esmtp-keyword); the first
    occurrence wins, as Postfix does.
    """
    out: dict[str, str | None] = {}
    for param in params:
        for word in param.split():
            key, sep, value = word.partition("=")
            out.setdefault(key.upper(), value if sep else None)
    return out


def format_params(params: dict[str, str | None]) -> str:
    """The inverse of :func:`parse_params`, as one space-separated string."""
    return " ".join(k if v is None else f"{k}={v}" for k, v in params.items())


def parse_notify(value: str) -> tuple[str, ...]:
    """Validate a NOTIFY value; raise :class:`DsnSyntaxError` with the reason."""
    items = tuple(v.strip().upper() for v in value.split(","))
    if not value or any(not v for v in items):
        raise DsnSyntaxError(f"empty NOTIFY item in {value!r}")
    unknown = [v for v in items if v not in NOTIFY_VALUES]
    if unknown:
        raise DsnSyntaxError(f"unknown NOTIFY value {unknown[0]!r}: use NEVER, SUCCESS, FAILURE, DELAY")
    # RFC 3461 §4.1: "NEVER ... MUST NOT be combined with any other keyword".
    if "NEVER" in items and len(items) > 1:
        raise DsnSyntaxError("NOTIFY=NEVER must be the only value: NEVER cannot be combined with "
                             "SUCCESS, FAILURE or DELAY (RFC 3461 §4.1)")
    if len(set(items)) != len(items):
        raise DsnSyntaxError(f"repeated NOTIFY value in {value!r}: a NOTIFY keyword is listed twice")
    return items


def parse_ret(value: str) -> str:
    """Validate a RET value (RFC 3461 §4.3); raise :class:`DsnSyntaxError` with the reason."""
    ret = value.strip().upper()
    if ret not in RET_VALUES:
        raise DsnSyntaxError(f"RET must be FULL or HDRS (RFC 3461 §4.3), not {value!r}")
    return ret


def xtext_encode(text: str) -> str:
    """RFC 3461 §4: xtext, "+" and "=" and anything outside "!".."~" as +HH."""
    if text.isascii() and text.isprintable() and " " not in text and "+" not in text and "=" not in text:
        return text  # the common address: nothing to encode
    out = []
    for byte in text.encode("utf-8"):
        if 33 <= byte <= 126 and byte not in (43, 61):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


_XTEXT_HEX = re.compile(r"\+([0-9A-Fa-f]{2})")


def xtext_decode(text: str) -> str:
    raw = _XTEXT_HEX.sub(lambda m: chr(int(m.group(1), 16)), text)
    try:
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return raw


def orcpt_for(address: str) -> str:
    """The ORCPT value naming ``address`` (RFC 3461 §4.2, addr-type rfc822)."""
    return "rfc822;" + xtext_encode(address)


def orcpt_address(orcpt: str) -> str | None:
    """The address inside an ORCPT value, or None if it is not an rfc822 one."""
    kind, sep, value = orcpt.partition(";")
    if not sep or kind.strip().lower() not in ("rfc822", "utf-8"):
        return None
    return xtext_decode(value.strip()) or None


@dataclass(frozen=True)
class Address:
    """An envelope address split for policy decisions; ``domain`` lower-cased."""

    text: str  # without angle brackets, as given
    local: str
    domain: str


# RFC 5321 §4.1.2: Path = "<" [ A-d-l ":" ] Mailbox ">". Source routes are obsolete
# (RFC 5321 §4.1.2 / Appendix C) but still legal: drop them.
_SOURCE_ROUTE = re.compile(r"^@[^:]+:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DOMAIN = re.compile(r"^(?:\[[^\]\s]+\]|[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*)$")


def strip_path(raw: str) -> str:
    """``<a@b>`` → ``a@b``; tolerant of missing brackets and surrounding spaces."""
    text = raw.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    return _SOURCE_ROUTE.sub("", text) if text.startswith("@") else text


@functools.lru_cache(maxsize=4096)
def parse_address(raw: str) -> Address | None:
    """Parse an envelope address; None for the null sender or anything malformed.

    Malformed means: no "@", empty local part, control characters, or a domain
    that is not a hostname or address literal (RFC 5321 §4.1.2). Memoised (bounded):
    the milter parses the same senders message after message; Address is frozen.
    """
    text = strip_path(raw)
    if not text or _CONTROL.search(text):
        return None
    local, sep, domain = text.rpartition("@")
    if not sep or not local or not domain:
        return None
    domain = domain.rstrip(".").lower()
    if len(domain) > 255 or not _DOMAIN.match(domain):
        try:
            ascii_domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return None
        if not _DOMAIN.match(ascii_domain):
            return None
    return Address(text=text, local=local, domain=domain)


def return_path_allowed(mail_from: str, bounce: str) -> bool:
    """Whether ``bounce`` (a Return-Path / the send API's ``bounce``) may replace ``mail_from``.

    The one rule (issue 16), held by the send endpoint and the milter alike: the
    bounce address must be in the envelope sender's own domain, whose sender
    checks the MTA (or the API token) already passed; another domain would let
    one tenant send with another tenant's bounce address. The null path ``<>``
    (no bounces at all) names no domain and is allowed. Both are bare addresses
    (no angle brackets); domains compare case-insensitively, a trailing dot aside.
    """
    if not bounce:
        return True
    mine = mail_from.rpartition("@")[2].lower().rstrip(".")
    theirs = bounce.rpartition("@")[2].lower().rstrip(".")
    return bool(mine) and mine == theirs
