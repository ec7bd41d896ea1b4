"""DNS checks of ``bouncetrack doctor``: MX, SPF and DMARC, behind one small seam.

Every lookup goes through a :class:`~bouncetrack.core.resolver.Resolver` (``txt``, ``mx``,
``a``; :mod:`bouncetrack.core.resolver`), like dkimpy's ``dnsplug``: the default
implementation uses dnspython with an optional nameserver and port, and the tests point
it at a local authoritative server with their own zones.

SPF (RFC 7208) is evaluated by a small bounded evaluator: mechanisms ``all``,
``ip4``, ``ip6``, ``a``, ``mx``, ``include``, ``exists`` (without macros), ``ptr``
(never matches: deprecated, §5.5), modifier ``redirect``; at most 10 DNS-querying terms
(§4.6.4) and 2 void lookups. Terms with macros (``%{i}``...) are not expanded: they do
not match, and the result says so.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from ..core.config import Config
# The seam lives in a neutral module (the API's address validation uses it too); doctor's
# callers and tests keep importing it from here.
from ..core.resolver import DnsPythonResolver as DnsPythonResolver
from ..core.resolver import DnsTempError as DnsTempError
from ..core.resolver import NxDomain as NxDomain
from ..core.resolver import Resolver as Resolver
from . import checks
from .checks import WARN, Result


# ---------------------------------------------------------------------------
# SPF

MAX_DNS_TERMS = 10  # RFC 7208 §4.6.4
MAX_VOID = 2
MAX_MX_NAMES = 10  # RFC 7208 §4.6.4: per mx mechanism


class _PermError(Exception):
    pass


@dataclass
class _Budget:
    terms: int = 0
    void: int = 0
    notes: list[str] = field(default_factory=list)

    def term(self) -> None:
        self.terms += 1
        if self.terms > MAX_DNS_TERMS:
            raise _PermError(f"more than {MAX_DNS_TERMS} DNS-querying terms (RFC 7208 §4.6.4)")

    def answer(self, values: Sequence[object]) -> None:
        if not values:
            self.void += 1
            if self.void > MAX_VOID:
                raise _PermError(f"more than {MAX_VOID} void lookups (RFC 7208 §4.6.4)")


_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}


def spf_record(resolver: Resolver, domain: str) -> str | None:
    """The one ``v=spf1`` record of ``domain``; None if none; _PermError if several."""
    records = [t for t in resolver.txt(domain) if t.lower() == "v=spf1" or t.lower().startswith("v=spf1 ")]
    if len(records) > 1:
        raise _PermError(f"{domain} has {len(records)} SPF records (RFC 7208 §4.5)")
    return records[0] if records else None


def check_spf(resolver: Resolver, ip: str, domain: str) -> tuple[str, str]:
    """RFC 7208 ``check_host(ip, domain)``: (result, explanation)."""
    budget = _Budget()
    try:
        result = _check_host(resolver, ipaddress.ip_address(ip), domain, budget, depth=0)
    except _PermError as exc:
        return "permerror", str(exc)
    except DnsTempError as exc:
        return "temperror", str(exc)
    return result, "; ".join(budget.notes)


def _check_host(resolver: Resolver, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, domain: str,
                budget: _Budget, depth: int) -> str:
    if depth > MAX_DNS_TERMS:
        raise _PermError("include/redirect loop")
    record = spf_record(resolver, domain)
    if record is None:
        return "none"
    redirect: str | None = None
    for term in record.split()[1:]:
        name, eq, value = term.partition("=")
        if eq and ":" not in name and "/" not in name:  # a modifier (RFC 7208 §6)
            if name.lower() == "redirect":
                redirect = value
            continue
        qualifier = "pass"
        if term[0] in _QUALIFIERS:
            qualifier = _QUALIFIERS[term[0]]
            term = term[1:]
        mech, _, arg = term.partition(":")
        mech_name, slash, cidr = mech.partition("/")
        mech_name = mech_name.lower()
        if mech_name in ("a", "mx") and "/" in arg:  # a:domain/24//64 (RFC 7208 §5.6)
            arg, slash, cidr = arg.partition("/")
        if "%" in arg:
            budget.notes.append(f"{term}: macros not evaluated (no match)")
            if mech_name in ("a", "mx", "include", "exists", "ptr"):
                budget.term()
            continue
        if _matches(resolver, ip, domain, mech_name, arg, (slash + cidr) if slash else "", budget, depth):
            return qualifier
    if redirect is not None:
        budget.term()
        if "%" in redirect:
            budget.notes.append(f"redirect={redirect}: macros not evaluated")
            return "neutral"
        result = _check_host(resolver, ip, redirect, budget, depth + 1)
        return "permerror" if result == "none" else result  # RFC 7208 §6.1
    return "neutral"  # RFC 7208 §4.7: no match, no redirect


def _cidrs(spec: str, default4: int = 32, default6: int = 128) -> tuple[int, int]:
    """``/24//64`` → (24, 64) (RFC 7208 §5.6 dual-cidr-length)."""
    if not spec:
        return default4, default6
    v4, _, v6 = spec.lstrip("/").partition("//")
    if spec.startswith("//"):
        return default4, int(spec[2:])
    try:
        return (int(v4) if v4 else default4), (int(v6) if v6 else default6)
    except ValueError:
        raise _PermError(f"bad CIDR length {spec!r}") from None


def _in_any(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, addrs: Iterable[str], c4: int, c6: int) -> bool:
    for a in addrs:
        try:
            addr = ipaddress.ip_address(a)
        except ValueError:
            continue
        if addr.version != ip.version:
            continue
        net = ipaddress.ip_network(f"{addr}/{c4 if addr.version == 4 else c6}", strict=False)
        if ip in net:
            return True
    return False


def _matches(resolver: Resolver, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, domain: str, mech: str,
             arg: str, cidr: str, budget: _Budget, depth: int) -> bool:
    if mech == "all":
        return True
    if mech in ("ip4", "ip6"):
        try:
            net = ipaddress.ip_network(arg + cidr, strict=False)
        except ValueError:
            raise _PermError(f"bad {mech}:{arg}{cidr}") from None
        return net.version == ip.version and ip in net
    if mech == "a":
        budget.term()
        c4, c6 = _cidrs(cidr)
        addrs = resolver.a(arg or domain)
        budget.answer(addrs)
        return _in_any(ip, addrs, c4, c6)
    if mech == "mx":
        budget.term()
        c4, c6 = _cidrs(cidr)
        try:
            mxs = resolver.mx(arg or domain)
        except NxDomain:
            mxs = []
        budget.answer(mxs)
        if len(mxs) > MAX_MX_NAMES:
            raise _PermError(f"mx: more than {MAX_MX_NAMES} MX names")
        return any(_in_any(ip, resolver.a(host), c4, c6) for _, host in mxs)
    if mech == "include":
        budget.term()
        if not arg:
            raise _PermError("include without a domain")
        result = _check_host(resolver, ip, arg, budget, depth + 1)
        if result in ("none", "permerror"):
            raise _PermError(f"include:{arg} gave {result}")  # RFC 7208 §5.2
        return result == "pass"
    if mech == "exists":
        budget.term()
        addrs = resolver.a(arg)
        budget.answer(addrs)
        return any(ipaddress.ip_address(a).version == 4 for a in addrs)
    if mech == "ptr":
        budget.term()
        budget.notes.append("ptr is deprecated (RFC 7208 §5.5) and not evaluated")
        return False
    raise _PermError(f"unknown mechanism {mech!r}")


# ---------------------------------------------------------------------------
# The DNS checks


def dmarc_record(resolver: Resolver, domain: str) -> tuple[str | None, str | None]:
    """(record, where) at ``_dmarc.domain``, else at the organisational domain (RFC 7489 §6.6.3)."""
    for name in dict.fromkeys((domain, checks.org_domain(domain))):
        at = f"_dmarc.{name}"
        records = [t for t in resolver.txt(at) if t.replace(" ", "").lower().startswith("v=dmarc1")]
        if len(records) == 1:
            return records[0], at
    return None, None


def dns_results(resolver: Resolver, config: Config, expected: Sequence[str], *, explicit_expected: bool) -> list[Result]:
    """MX and SPF of the bounce domain, DMARC alignment of each tracked sender domain."""
    bd = config.bounce_domain
    out: list[Result] = []
    # MX (or A): does the bounce domain's mail come here?
    try:
        nx = False
        try:
            mx = resolver.mx(bd)
        except NxDomain:
            nx, mx = True, []
        hosts = [h for _, h in mx] if mx else [bd]
        addresses = {h.rstrip(".").lower(): resolver.a(h) for h in hosts if h.rstrip(".")} if not nx else {}
        out.append(checks.mx_result(bd, mx, addresses, expected, explicit_expected=explicit_expected, nxdomain=nx))
    except DnsTempError as exc:
        out.append(Result(f"dns mx {bd}", WARN, f"could not resolve: {exc}", "check DNS or pass --nameserver"))
    # SPF of the bounce domain, for each address of this host.
    outcomes = {ip: check_spf(resolver, ip, bd) for ip in expected}
    out.append(checks.spf_result(bd, outcomes, explicit_expected=explicit_expected))
    # DMARC of every tracked sender domain.
    tracked = sorted(d for d, p in config.domains.items() if p.tracking)
    for domain in tracked:
        try:
            record, at = dmarc_record(resolver, domain)
        except DnsTempError as exc:
            out.append(Result(f"dmarc {domain}", WARN, f"could not look up DMARC: {exc}", "check DNS"))
            continue
        out.append(checks.dmarc_result(domain, bd, record, at))
    if config.default.tracking:
        out.append(Result("dmarc (default policy)", WARN, "tracking is on for every sender domain (default): "
                          "doctor checks DMARC alignment only for the domains listed in the config",
                          "list the sender domains you send from under domains:"))
    return out
