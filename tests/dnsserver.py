"""A tiny authoritative DNS server for tests (dnspython, UDP on 127.0.0.1).

Answers from in-test zones: ``{"name.": [("MX", "10 mx.name."), ("TXT", '"v=spf1 -all"')]}``
(record data in zone-file presentation format; a third item sets the TTL, default 300).
A name with no records of the asked type is NOERROR/no data; an unknown name is
NXDOMAIN; every answer is authoritative. With ``negative_ttl`` set, negative answers
carry an SOA whose TTL and MINIMUM are that value (RFC 2308 §5). Names in ``silent``
get no answer at all (the client times out).
No recursion, no wildcards, no CNAME chasing: just enough for doctor's checks. Zones
can be replaced while the server runs (``server.zones = {...}``).

    with DnsServer(zones) as dns:
        resolver = DnsPythonResolver("127.0.0.1", dns.port)
"""

from __future__ import annotations

import socket
import threading
from typing import Any, Mapping, Sequence

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

Zones = Mapping[str, Sequence[tuple[str, str] | tuple[str, str, int]]]


class DnsServer:
    def __init__(self, zones: Zones, host: str = "127.0.0.1", *, negative_ttl: int | None = None,
                 silent: Sequence[str] = ()) -> None:
        self.zones = zones
        self.negative_ttl = negative_ttl
        self.silent = {n.lower().rstrip(".") + "." for n in silent}
        self.host = host
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, 0))
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self.queries: list[tuple[str, str]] = []
        self._cache: tuple[Any, dict[str, list[tuple[str, str, int]]]] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)

    def __enter__(self) -> "DnsServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _records(self) -> dict[str, list[tuple[str, str, int]]]:
        # Normalised once per zones object (replacing server.zones rebuilds it): a query
        # against thousands of names (bench/address_validate.py) costs no rebuild.
        if self._cache is not None and self._cache[0] is self.zones:
            return self._cache[1]
        records = {k.lower().rstrip(".") + ".": [(r[0], r[1], int(r[2]) if len(r) > 2 else 300) for r in v]
                   for k, v in self.zones.items()}
        self._cache = (self.zones, records)
        return records

    def _soa(self, response: dns.message.Message, qname: dns.name.Name) -> None:
        if self.negative_ttl is None:
            return
        zone = dns.name.Name(qname.labels[-3:]) if len(qname.labels) > 3 else qname
        n = self.negative_ttl
        response.authority.append(dns.rrset.from_text_list(
            zone, n, dns.rdataclass.IN, dns.rdatatype.SOA, [f"ns.{zone} host.{zone} 1 3600 600 86400 {n}"]))

    def answer(self, wire: bytes) -> bytes | None:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        records = self._records()
        for q in query.question:
            name = q.name.to_text().lower()
            self.queries.append((name, dns.rdatatype.to_text(q.rdtype)))
            if name in self.silent:
                return None
            if name not in records:
                response.set_rcode(dns.rcode.NXDOMAIN)
                self._soa(response, q.name)
                continue
            wanted = dns.rdatatype.to_text(q.rdtype)
            datas = [(d, ttl) for t, d, ttl in records[name] if t.upper() == wanted]
            if datas:
                ttl = min(t for _, t in datas)
                rrset = dns.rrset.from_text_list(q.name, ttl, dns.rdataclass.IN, q.rdtype, [d for d, _ in datas])
                response.answer.append(rrset)
            else:
                self._soa(response, q.name)
        return response.to_wire()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                wire, addr = self._sock.recvfrom(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                reply = self.answer(wire)
                if reply is not None:
                    self._sock.sendto(reply, addr)
            except Exception:  # a malformed query: no answer, the client times out
                continue
