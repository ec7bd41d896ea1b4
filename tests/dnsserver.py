"""A tiny authoritative DNS server for tests (dnspython, UDP on 127.0.0.1).

Answers from in-test zones: ``{"name.": [("MX", "10 mx.name."), ("TXT", '"v=spf1 -all"')]}``
(record data in zone-file presentation format). A name with no records of the asked
type is NOERROR/no data; an unknown name is NXDOMAIN; every answer is authoritative.
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

Zones = Mapping[str, Sequence[tuple[str, str]]]


class DnsServer:
    def __init__(self, zones: Zones, host: str = "127.0.0.1") -> None:
        self.zones = zones
        self.host = host
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, 0))
        self._sock.settimeout(0.2)
        self.port: int = self._sock.getsockname()[1]
        self.queries: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)

    def __enter__(self) -> "DnsServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _records(self) -> dict[str, list[tuple[str, str]]]:
        return {k.lower().rstrip(".") + ".": list(v) for k, v in self.zones.items()}

    def answer(self, wire: bytes) -> bytes:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        records = self._records()
        for q in query.question:
            name = q.name.to_text().lower()
            self.queries.append((name, dns.rdatatype.to_text(q.rdtype)))
            if name not in records:
                response.set_rcode(dns.rcode.NXDOMAIN)
                continue
            wanted = dns.rdatatype.to_text(q.rdtype)
            datas = [d for t, d in records[name] if t.upper() == wanted]
            if datas:
                rrset = dns.rrset.from_text_list(q.name, 300, dns.rdataclass.IN, q.rdtype, datas)
                response.answer.append(rrset)
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
                self._sock.sendto(self.answer(wire), addr)
            except Exception:  # a malformed query: no answer, the client times out
                continue
