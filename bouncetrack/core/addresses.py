"""Addresses and domain names typed by people: the one parser (issue 19).

Used by the YAML config (forward and feedback addresses, the bounce and tracked
domains), the send API (``envelope``, ``recipient``, ``to``, ``cc``, ``from``,
``bounce``), the suppression CLI and API, the API's filters and the address
validation (:mod:`bouncetrack.validation`). The milter's SMTP path
(:func:`bouncetrack.core.esmtp.parse_address`) and the classifier keep their own fast
parsing: their budgets are per message.

Guarantee: a value is either refused with :class:`AddressError`, whose text says
what is wrong (the caller adds the field's name), or returned in one canonical
form: the local part as given (dot-atom or quoted string, ASCII), the domain
lower-cased in its ASCII (``xn--``) form, IDN converted (IDNA 2008, UTS #46
mapping). Nothing with a control character (NUL, CR, LF, ...), a comment, more
than the RFC's lengths, a trailing dot, a non-ASCII local part (SMTPUTF8 is not
sent) or a non-LDH domain label comes back.

Two layers, one verdict. Most addresses are a dot-atom at an ASCII host name:
those are checked here by two regular expressions (about 1 µs). Everything else
(quoted local parts, display names, IDN, lists) goes to flanker's RFC 5322
grammar (``flanker.addresslib.address.parse``, strict mode), and the same checks
of lengths and labels follow. The fast path only accepts what flanker accepts
with the same result (``tests/test_addresses.py`` checks this property), so a
value gets the same answer whichever layer ran. flanker is imported on the first
value the fast path cannot decide (about 0.2 s: it pulls in ``flanker.mime``), so
that the milter and the pipe, which load the configuration at start-up, do not
pay for it with an ordinary configuration.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Any

# RFC 5321 §4.5.3.1.1: local part at most 64 octets; §4.5.3.1.2: domain at most 255,
# a label at most 63 (RFC 1035 §2.3.4; 253 characters in presentation form);
# §4.5.3.1.3: a path at most 256 octets with its angle brackets, so 254 for the address.
MAX_LOCAL = 64
MAX_DOMAIN = 253
MAX_LABEL = 63
MAX_ADDRESS = 254
# RFC 5322 §2.1.1: a header line at most 998 characters: a list of mailboxes as well.
MAX_MAILBOX_LIST = 998

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_FAST_LOCAL = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*\Z")  # RFC 5322 §3.2.3 dot-atom
# An ASCII LDH label (RFC 1035 §2.3.1, RFC 1123 §2.1) that is not an A-label or
# reserved (RFC 5891 §4.2.3.1: "--" at positions 3 and 4): those go to IDNA.
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
# C0 controls, DEL, and the Unicode line breaks NEL, LS and PS: none belongs in an address.
_CONTROL = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")


class AddressError(ValueError):
    """The value is not acceptable; ``str(exc)`` says why (without the field's name)."""


@dataclass(frozen=True)
class Address:
    """One parsed address: ``local@domain`` with an optional display name."""

    local: str
    domain: str  # lower-case ASCII (A-labels for IDN)
    display_name: str = ""

    @property
    def addr_spec(self) -> str:
        return f"{self.local}@{self.domain}"

    @property
    def key(self) -> str:
        """The case-folded form the suppression lists key on (local part lower-cased)."""
        return f"{self.local.lower()}@{self.domain}"


# --------------------------------------------------------------------------- public API


def parse_address(value: str) -> Address:
    """One bare address (``a@b.example`` or ``<a@b.example>``): an envelope address,
    a suppression entry, a filter. Display names and comments are refused."""
    text = _screen(value, MAX_ADDRESS + 2)
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    bare = _unquoted(text)
    if "<" in bare or ">" in bare:
        raise AddressError("give the bare address, without a display name or angle brackets")
    local, at, domain = text.rpartition("@")
    if not at or "@" not in bare:
        raise AddressError("is not an email address (local@domain): no @")
    if not local:
        raise AddressError("is not an email address (local@domain): nothing before the @")
    if not domain:
        raise AddressError("is not an email address (local@domain): nothing after the @")
    if domain.endswith("."):
        raise AddressError("the domain ends with a dot")
    if len(text) > MAX_ADDRESS:
        raise AddressError(f"is {len(text)} characters long; at most {MAX_ADDRESS} (RFC 5321 §4.5.3.1.3)")
    fast = _fast(local, domain)
    if fast is not None:
        return fast
    mod = _flanker()
    parsed = mod.parse(text, addr_spec_only=True, strict=True)
    if parsed is None or not hasattr(parsed, "mailbox"):
        raise AddressError(f"is not a valid address (RFC 5322 §3.4.1 addr-spec): {_diagnose(mod, local, domain)}")
    return _checked(parsed.mailbox, parsed.hostname, "")


def parse_mailbox_list(value: str) -> tuple[Address, ...]:
    """A header's addresses (``To``, ``Cc``, ``From``): ``"Name" <a@b.example>, c@d.example``
    (RFC 5322 §3.4 address-list, comma or semicolon separated; groups are refused)."""
    text = _screen(value, MAX_MAILBOX_LIST)
    if not text:
        raise AddressError("holds no address")
    mod = _flanker()
    parsed, unparsed = mod.parse_list(text, strict=True, as_tuple=True)
    if unparsed:
        raise AddressError(f"is not a valid address list (RFC 5322 §3.4) near {str(unparsed[0])[:60]!r}")
    out: list[Address] = []
    for item in parsed:
        if not hasattr(item, "mailbox"):  # flanker also parses URLs
            raise AddressError(f"{str(item)[:60]!r} is not an email address")
        out.append(_checked(item.mailbox, item.hostname, item.display_name or ""))
    if not out:
        raise AddressError("holds no address")
    return tuple(out)


def parse_domain(value: str) -> str:
    """A domain name (a sender, bounce or recipient domain): lower-case ASCII,
    IDN as A-labels, without a trailing dot (a root-anchored ``example.com.`` is
    the same domain)."""
    text = _screen(value, MAX_DOMAIN + 1)
    if "://" in text or "/" in text:
        raise AddressError("give only the domain, without scheme or path")
    if "@" in text:
        raise AddressError("give only the domain, not an address")
    name = text[:-1] if text.endswith(".") else text
    if not name:
        raise AddressError("is empty")
    if name.startswith("["):
        raise AddressError("an address literal is not a domain name")
    fast = _fast("postmaster", name)
    if fast is not None:
        return fast.domain
    parsed = _flanker().parse(f"postmaster@{name}", addr_spec_only=True, strict=True)
    if parsed is None or not hasattr(parsed, "hostname") or parsed.hostname.startswith("["):
        raise AddressError("is not a valid domain name")
    return _ascii_domain(parsed.hostname)


# --------------------------------------------------------------------------- checks


def _screen(value: object, limit: int) -> str:
    """Type, length and characters, before any parser sees the value."""
    if not isinstance(value, str):
        raise AddressError(f"expected a string, got {type(value).__name__}")
    if len(value) > limit:
        raise AddressError(f"is {len(value)} characters long; at most {limit}")
    bad = _CONTROL.search(value)
    if bad is not None:
        what = {"\r": "CR or LF", "\n": "CR or LF", "\x00": "NUL"}.get(bad.group(), "control characters")
        raise AddressError(f"must not contain {what} (U+{ord(bad.group()):04X} at position {bad.start()})")
    text = value.strip()
    if not text:
        raise AddressError("is empty")
    bare = _unquoted(text)
    if "(" in bare or ")" in bare:
        raise AddressError("comments in parentheses are not accepted (RFC 5322 §3.2.2); give the address alone")
    return text


def _unquoted(text: str) -> str:
    """``text`` with its quoted strings (and escapes) removed: what the RFC 5322 syntax sees."""
    if '"' not in text and "\\" not in text:
        return text
    out: list[str] = []
    quoted = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif not quoted:
            out.append(ch)
    return "".join(out)


def _fast(local: str, domain: str) -> Address | None:
    """The common case (ASCII dot-atom at an ASCII LDH host name), decided without
    flanker; None: let flanker decide (which includes refusing)."""
    if len(local) > MAX_LOCAL or not _FAST_LOCAL.match(local):
        return None
    name = domain.lower()
    if len(name) > MAX_DOMAIN or not name.isascii():
        return None
    labels = name.split(".")
    if len(labels) < 2 or labels[-1].isdigit():
        return None
    for label in labels:
        if not _LDH_LABEL.match(label) or label[2:4] == "--":
            return None
    return Address(local, name)


def _diagnose(mod: Any, local: str, domain: str) -> str:
    """Which half flanker refused, for the error message."""
    if mod.parse(f"{local}@example.com", addr_spec_only=True, strict=True) is None:
        return f"invalid local part {local[:64]!r}"
    if mod.parse(f"postmaster@{domain}", addr_spec_only=True, strict=True) is None:
        return f"invalid domain {domain[:100]!r}"
    return "invalid syntax"


def _checked(local: str, hostname: str, display_name: str) -> Address:
    """What flanker's grammar lets through and we do not: lengths, SMTPUTF8, labels."""
    if not local.isascii():
        raise AddressError("has a non-ASCII local part, which needs SMTPUTF8 (RFC 6531): not supported")
    if len(local) > MAX_LOCAL:
        raise AddressError(f"the local part is {len(local)} characters long; at most {MAX_LOCAL} (RFC 5321 §4.5.3.1.1)")
    if hostname.startswith("["):
        return Address(local, _address_literal(hostname), display_name)
    domain = _ascii_domain(hostname)
    if len(local) + 1 + len(domain) > MAX_ADDRESS:
        raise AddressError(f"is {len(local) + 1 + len(domain)} characters long; at most {MAX_ADDRESS} (RFC 5321 §4.5.3.1.3)")
    return Address(local, domain, display_name)


def _address_literal(hostname: str) -> str:
    """``[192.0.2.1]`` or ``[IPv6:2001:db8::1]`` (RFC 5321 §4.1.3), normalised."""
    inner = hostname[1:-1] if hostname.endswith("]") else hostname[1:]
    v6 = inner[:5].lower() == "ipv6:"
    try:
        ip = ipaddress.ip_address(inner[5:] if v6 else inner)
    except ValueError:
        raise AddressError(f"the address literal {hostname[:60]!r} is not an IP address") from None
    if (ip.version == 6) != v6:
        raise AddressError("an IPv6 address literal is written [IPv6:...], an IPv4 one without a tag (RFC 5321 §4.1.3)")
    return f"[IPv6:{ip}]" if v6 else f"[{ip}]"


def _ascii_domain(hostname: str) -> str:
    """The A-label form of a (possibly Unicode) host name, checked label by label."""
    if hostname.endswith("."):
        raise AddressError("the domain ends with a dot")
    name = hostname
    if name.isascii() and not any(part.startswith("xn--") for part in name.lower().split(".")):
        ascii_name = name.lower()
    else:
        import idna  # only reached after flanker (whose dependency it is) has been imported

        try:
            ascii_name = idna.encode(name, uts46=True).decode("ascii").lower()  # IDNA 2008, RFC 5891
        except idna.IDNAError as exc:
            raise AddressError(f"the domain is not a valid internationalized name: {exc}") from None
    if len(ascii_name) > MAX_DOMAIN:
        raise AddressError(f"the domain is {len(ascii_name)} characters long; at most {MAX_DOMAIN}")
    labels = ascii_name.split(".")
    if len(labels) < 2:
        raise AddressError("the domain has a single label; give a fully qualified name")
    for label in labels:
        if not label:
            raise AddressError("the domain has an empty label (two dots in a row)")
        if len(label) > MAX_LABEL:
            raise AddressError(f"a label of the domain is {len(label)} characters long; at most {MAX_LABEL} (RFC 1035 §2.3.4)")
        if not re.fullmatch(r"[a-z0-9-]+", label):
            raise AddressError(f"the domain label {label[:63]!r} has characters other than letters, digits and hyphens (RFC 1123 §2.1)")
        if label.startswith("-") or label.endswith("-"):
            raise AddressError(f"the domain label {label!r} starts or ends with a hyphen (RFC 1035 §2.3.1)")
    if labels[-1].isdigit():
        raise AddressError("the top-level domain is numeric (an IP address is not a domain name)")
    return ascii_name


# --------------------------------------------------------------------------- flanker

_FLANKER: ModuleType | None = None


def _flanker() -> Any:
    """``flanker.addresslib.address``, imported on first use (see the module doc)."""
    global _FLANKER
    if _FLANKER is None:
        with warnings.catch_warnings():  # flanker.mime imports cgi and imghdr (deprecated in 3.11)
            warnings.simplefilter("ignore", DeprecationWarning)
            import flanker.addresslib.address as mod

        # The lexer logs each bad character of the input at WARNING; the refusal
        # we raise says what is wrong, so those lines would only duplicate it.
        for name in ("flanker.addresslib._parser.lexer", "flanker.addresslib._parser.parser",
                     "flanker.addresslib.address"):
            logging.getLogger(name).setLevel(logging.ERROR)
        _FLANKER = mod
    return _FLANKER
