"""DNS behind one seam: :class:`Resolver` (``txt``, ``mx``, ``a``, ``mail_hosts``).

Used by ``bouncetrack doctor`` (:mod:`bouncetrack.doctor.dnscheck`: MX, SPF, DMARC) and by
the address validation (:mod:`bouncetrack.validation`: can this domain receive mail?).
The default implementation uses dnspython with an optional nameserver and port; the
tests point it at a local authoritative server with their own zones (``tests/dnsserver.py``).

``txt``/``mx``/``a`` return an empty list for "no such name" and "no data" (the SPF
"void lookup" of RFC 7208 §4.6.4); :class:`DnsTempError` is raised for timeouts and
server failures. :class:`NxDomain` is only raised by :meth:`Resolver.mx` so that the MX
check can tell a missing domain apart. :meth:`Resolver.mail_hosts` answers with TTLs,
for callers that cache: the records' own TTL, and for a negative answer the SOA's
(RFC 2308 §5).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Iterable, Protocol


class DnsTempError(Exception):
    """Timeout, SERVFAIL, refused: the answer is unknown."""


class NxDomain(Exception):
    """The name does not exist (raised by :meth:`Resolver.mx` only)."""


@dataclass(frozen=True)
class MailHosts:
    """Where mail for a domain goes (RFC 5321 §5.1), with how long the answer holds.

    ``state``: ``"mx"`` (``hosts`` are the MX exchanges, most preferred first),
    ``"implicit"`` (no MX; the domain's own A/AAAA records: ``hosts`` is the domain),
    ``"null_mx"`` (RFC 7505: a single MX ``0 .``: the domain accepts no mail),
    ``"no_address"`` (no MX and no A/AAAA record), ``"nxdomain"`` (no such name).
    ``ttl``: seconds, the smallest TTL of the records the verdict rests on (for a
    negative answer min(SOA TTL, SOA MINIMUM), RFC 2308 §5; 0 without an SOA).
    """

    state: str
    hosts: tuple[str, ...]
    ttl: float


class Resolver(Protocol):
    def txt(self, name: str) -> list[str]:
        """TXT strings of ``name`` (each record's strings joined), [] if none."""

    def mx(self, name: str) -> list[tuple[int, str]]:
        """(preference, exchange) of ``name``, [] if none; :class:`NxDomain` if no such name."""

    def a(self, name: str) -> list[str]:
        """A and AAAA addresses of ``name``, [] if none."""

    def mail_hosts(self, name: str) -> MailHosts:
        """Where ``name``'s mail goes, with the answer's TTL; :class:`DnsTempError` if unknown."""


def parse_nameserver(spec: str) -> tuple[str, int]:
    """``1.2.3.4``, ``1.2.3.4:5353``, ``::1``, ``[::1]:5353`` -> (address, port); ValueError
    for anything else (the configuration's ``validation.nameserver`` and the commands'
    ``--nameserver`` are checked by this one rule)."""
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else rest or "53"
    elif spec.count(":") == 1:
        host, _, port = spec.partition(":")
    else:
        host, port = spec, "53"
    try:
        ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        number = 0
    if not 0 < number < 65536:
        raise ValueError(f"expected an IP address, optionally with :port, got {spec[:100]!r}")
    return host, number


class DnsPythonResolver:
    """The default :class:`Resolver`: dnspython, the system's resolvers unless
    ``nameserver`` (an IP address) and ``port`` are given."""

    def __init__(self, nameserver: str | None = None, port: int = 53, timeout: float = 5.0) -> None:
        import dns.resolver

        self._r = dns.resolver.Resolver(configure=nameserver is None)
        if nameserver is not None:
            self._r.nameservers = [nameserver]
            self._r.port = port
        self._r.lifetime = timeout
        self._r.timeout = timeout

    def _query(self, name: str, rdtype: str, *, nx_raises: bool = False) -> list[object]:
        import dns.exception
        import dns.resolver

        try:
            return list(self._r.resolve(name, rdtype, search=False))
        except dns.resolver.NXDOMAIN:
            if nx_raises:
                raise NxDomain(name) from None
            return []
        except dns.resolver.NoAnswer:
            return []
        except dns.exception.DNSException as exc:  # timeouts, no nameserver answered, ...
            raise DnsTempError(f"{name} {rdtype}: {exc}") from None

    def txt(self, name: str) -> list[str]:
        out = []
        for r in self._query(name, "TXT"):
            strings: Iterable[bytes] = getattr(r, "strings", ())
            out.append(b"".join(strings).decode("utf-8", errors="replace"))
        return out

    def mx(self, name: str) -> list[tuple[int, str]]:
        return [(int(getattr(r, "preference")), str(getattr(r, "exchange")).rstrip(".") or ".")
                for r in self._query(name, "MX", nx_raises=True)]

    def a(self, name: str) -> list[str]:
        return [str(r) for t in ("A", "AAAA") for r in self._query(name, t)]

    # --- with TTLs -------------------------------------------------------------

    def _answer(self, name: str, rdtype: str) -> tuple[list[Any], float, bool]:
        """(records, ttl, nxdomain); a negative answer's ttl comes from its SOA."""
        import dns.exception
        import dns.resolver

        try:
            answer = self._r.resolve(name, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN as exc:
            responses: dict[Any, Any] = exc.responses()  # type: ignore[no-untyped-call]
            return [], _negative_ttl(responses.values()), True
        except dns.exception.DNSException as exc:
            raise DnsTempError(f"{name} {rdtype}: {exc}") from None
        if answer.rrset is None:
            return [], _negative_ttl([answer.response]), False
        return list(answer.rrset), float(answer.rrset.ttl), False

    def mail_hosts(self, name: str) -> MailHosts:
        records, ttl, nx = self._answer(name, "MX")
        if nx:
            return MailHosts("nxdomain", (), ttl)
        if records:
            mx = sorted((int(getattr(r, "preference")), str(getattr(r, "exchange")).rstrip(".").lower())
                        for r in records)
            if len(mx) == 1 and mx[0][1] == "":  # RFC 7505 §3: "0 ." alone, the null MX
                return MailHosts("null_mx", (), ttl)
            return MailHosts("mx", tuple(host for _, host in mx if host), ttl)
        # RFC 5321 §5.1: no MX, the domain itself is the implicit MX if it has an address.
        a4, ttl4, nx4 = self._answer(name, "A")
        if a4:
            return MailHosts("implicit", (name,), min(ttl, ttl4))
        a6, ttl6, _ = self._answer(name, "AAAA")
        if a6:
            return MailHosts("implicit", (name,), min(ttl, ttl6))
        return MailHosts("no_address", (), min(ttl, ttl4, ttl6))


def _negative_ttl(responses: Iterable[Any]) -> float:
    """RFC 2308 §5: a negative answer is cached for min(SOA TTL, SOA MINIMUM); 0 without SOA."""
    import dns.rdatatype

    best: float | None = None
    for response in responses:
        for rrset in getattr(response, "authority", ()):
            if rrset.rdtype == dns.rdatatype.SOA:
                for soa in rrset:
                    ttl = float(min(rrset.ttl, int(getattr(soa, "minimum"))))
                    best = ttl if best is None else min(best, ttl)
    return best if best is not None else 0.0
