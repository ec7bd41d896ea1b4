"""Can this address receive mail? Pre-send validation (issue 19).

Used by ``bouncetrack check-address``, ``POST /v1/addresses/validate`` and the send API's
per-domain ``validate_recipients`` option. Checks, in order; the first that fails names
the verdict:

1. ``syntax``: :func:`bouncetrack.core.addresses.parse_address` (flanker's RFC 5322 grammar).
2. ``domain``: where the domain's mail goes (:meth:`Resolver.mail_hosts`): no such
   domain (NXDOMAIN), a null MX (RFC 7505), or neither MX nor A/AAAA record (RFC 5321
   §5.1) is ``invalid``; a DNS failure is ``unknown`` (check ``dns``), never invalid.
3. ``provider``: the mailbox provider's local-part rules (Gmail, Google Workspace,
   Yahoo, Outlook/Hotmail, AOL, iCloud), chosen by the most preferred MX host as flanker
   does (``flanker.addresslib.validate.plugin_for_esp``).
4. ``suppression``: the caller's own sender domains' suppression lists (a callback; the
   caller passes only its own domains): ``suppressed``.

Never a connection to port 25, no Redis, no ``validate_address``: only flanker's parser
and its provider plugins. DNS answers are kept in a :class:`DomainCache`: LRU with a
configured size, each entry for its records' TTL (capped), negative answers (NXDOMAIN,
no data) for their SOA's negative TTL (RFC 2308 §5, capped), DNS failures not at all.

flanker's provider rules are imported with this module (it pulls in flanker): only the
API and the CLI import it, never the milter or the pipe.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import flanker.addresslib.validate as _esp

from ..core.addresses import AddressError, parse_address
from ..core.config import ValidationConfig
from ..core.resolver import DnsPythonResolver, DnsTempError, MailHosts, Resolver, parse_nameserver

VALID = "valid"
INVALID = "invalid"
SUPPRESSED = "suppressed"
UNKNOWN = "unknown"
VERDICTS = (VALID, INVALID, SUPPRESSED, UNKNOWN)
CHECKS = ("syntax", "domain", "provider", "suppression", "dns")

DEFAULT_CACHE_SIZE = 10_000
DEFAULT_MAX_TTL = 86_400.0
DEFAULT_MAX_NEGATIVE_TTL = 3_600.0


@dataclass(frozen=True)
class Verdict:
    """One address's result: ``check`` names the check that failed (None when valid)."""

    input: str
    address: str | None  # the canonical form, None when the syntax failed
    verdict: str
    check: str | None
    reason: str
    provider: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"input": self.input, "address": self.address, "verdict": self.verdict, "check": self.check,
                "reason": self.reason, "provider": self.provider}


class DomainCache:
    """Bounded LRU of :class:`MailHosts` by domain, each entry until its TTL runs out.

    Guarantees: never more than ``size`` entries (the least recently used goes first);
    an entry is never served after ``min(ttl, max_ttl)`` seconds (negative answers:
    ``max_negative_ttl``); an answer with TTL 0 is not kept. Thread-safe.
    """

    def __init__(self, size: int = DEFAULT_CACHE_SIZE, *, max_ttl: float = DEFAULT_MAX_TTL,
                 max_negative_ttl: float = DEFAULT_MAX_NEGATIVE_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if size < 1:
            raise ValueError("cache size must be at least 1")
        self.size = size
        self.max_ttl = max_ttl
        self.max_negative_ttl = max_negative_ttl
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, MailHosts]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = self.expired = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, domain: str) -> MailHosts | None:
        with self._lock:
            entry = self._entries.get(domain)
            if entry is None:
                self.misses += 1
                return None
            if entry[0] <= self._clock():
                del self._entries[domain]
                self.expired += 1
                self.misses += 1
                return None
            self._entries.move_to_end(domain)
            self.hits += 1
            return entry[1]

    def put(self, domain: str, hosts: MailHosts) -> None:
        negative = hosts.state in ("nxdomain", "no_address")
        ttl = min(hosts.ttl, self.max_negative_ttl if negative else self.max_ttl)
        if ttl <= 0:
            return
        with self._lock:
            self._entries[domain] = (self._clock() + ttl, hosts)
            self._entries.move_to_end(domain)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
                self.evictions += 1


class _PluginInput:
    """What flanker's provider plugins read of an address."""

    __slots__ = ("mailbox", "hostname")

    def __init__(self, mailbox: str, hostname: str) -> None:
        self.mailbox = mailbox
        self.hostname = hostname


def provider_for(mx_host: str) -> Any | None:
    """flanker's local-part plugin for a mailbox provider's MX host, or None."""
    return _esp.plugin_for_esp(mx_host)


class Validator:
    """Runs the checks of the module doc; counts verdicts (``counts``, by (verdict, check)).

    ``suppressed(key)`` returns the sender domains whose list holds the address (the
    caller's own domains only), or an empty collection; None skips that check.
    """

    def __init__(self, resolver: Resolver, cache: DomainCache,
                 suppressed: Callable[[str], Iterable[str]] | None = None) -> None:
        self.resolver = resolver
        self.cache = cache
        self.suppressed = suppressed
        self.counts: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def check(self, raw: str, suppressed: Callable[[str], Iterable[str]] | None = None) -> Verdict:
        """The verdict of one address; ``suppressed`` replaces the validator's own callback
        (a request's caller and its domains)."""
        verdict = self._check(raw, suppressed or self.suppressed)
        key = (verdict.verdict, verdict.check or "")
        with self._lock:
            self.counts[key] = self.counts.get(key, 0) + 1
        return verdict


    def mail_hosts(self, domain: str) -> MailHosts:
        """The cached answer, or a lookup (kept when it has a TTL); :class:`DnsTempError` passes."""
        hosts = self.cache.get(domain)
        if hosts is None:
            hosts = self.resolver.mail_hosts(domain)
            self.cache.put(domain, hosts)
        return hosts

    def _check(self, raw: str, suppressed: Callable[[str], Iterable[str]] | None) -> Verdict:
        try:
            address = parse_address(raw)
        except AddressError as exc:
            return Verdict(raw, None, INVALID, "syntax", str(exc))
        canonical = address.addr_spec
        domain = address.domain
        provider: str | None = None
        if not domain.startswith("["):
            try:
                hosts = self.mail_hosts(domain)
            except DnsTempError as exc:
                return Verdict(raw, canonical, UNKNOWN, "dns", f"could not look up {domain}: {exc}")
            if hosts.state == "nxdomain":
                return Verdict(raw, canonical, INVALID, "domain", f"the domain {domain} does not exist (NXDOMAIN)")
            if hosts.state == "null_mx":
                return Verdict(raw, canonical, INVALID, "domain",
                               f"the domain {domain} accepts no mail (null MX, RFC 7505)")
            if hosts.state == "no_address":
                return Verdict(raw, canonical, INVALID, "domain",
                               f"the domain {domain} has neither an MX nor an A/AAAA record (RFC 5321 §5.1)")
            if hosts.state == "mx" and hosts.hosts:
                plugin = provider_for(hosts.hosts[0])
                if plugin is not None:
                    provider = plugin.__name__.rpartition(".")[2]
                    if plugin.validate(_PluginInput(address.local, domain)) is False:
                        return Verdict(raw, canonical, INVALID, "provider",
                                       f"{provider} does not allow the mailbox name {address.local!r}", provider)
        if suppressed is not None:
            lists = sorted(set(suppressed(address.key)))
            if lists:
                return Verdict(raw, canonical, SUPPRESSED, "suppression",
                               f"on the suppression list of {', '.join(lists)}", provider)
        return Verdict(raw, canonical, VALID, None, "ok", provider)


def store_suppressed(store: Any, domains: Iterable[str] | None) -> Callable[[str], list[str]]:
    """A ``suppressed`` callback reading ``store``'s lists of ``domains`` (None: every
    domain, the operator's CLI) at call time: active entries only."""
    scope = None if domains is None else list(domains)

    def lookup(key: str) -> list[str]:
        rows = store.suppressions(scope, time.time(), address=key, limit=20)
        return [row.domain for row in rows]

    return lookup


def build_validator(settings: ValidationConfig, *, nameserver: str | None = None, timeout: float | None = None,
                    suppressed: Callable[[str], Iterable[str]] | None = None) -> Validator:
    """A :class:`Validator` with the configured cache and resolver (``nameserver`` and
    ``timeout`` override the configuration's)."""
    ns = nameserver or settings.nameserver
    host, port = parse_nameserver(ns) if ns else (None, 53)
    resolver = DnsPythonResolver(host, port, timeout=timeout or settings.dns_timeout)
    cache = DomainCache(settings.cache_size, max_ttl=settings.max_ttl, max_negative_ttl=settings.max_negative_ttl)
    return Validator(resolver, cache, suppressed)
