"""The worker's HTTP client: POSTs over kept-alive connections, standard library only.

Why not httpx (which the worker used until issue 21): profiled delivering webhooks to a
loopback receiver, httpx's request and response models, its URL parser and h11 state
machine were ~85 % of the worker's CPU per delivery, and :mod:`http.client` still spent
most of what was left validating header by header and parsing the answer's header with
the :mod:`email` package. The worker needs one exchange - a POST with a body, then a
status, a few headers and a short body - so this module writes the request in one
``sendall`` and reads the answer itself (RFC 9112), keeping :mod:`http.client`'s limits
and exception types (``bench/webhook_cpu.py``: CPU per delivered webhook, before/after).

Guarantees (what :meth:`HttpClient.post` keeps):

* **One connection per origin** (scheme, host, port), kept alive between POSTs (HTTP/1.1
  persistent connections, RFC 9112 §9.3). Before a kept connection is used again it is
  checked: idle longer than ``idle_seconds``, or readable (the peer closed it, or sent
  something unasked), it is closed and a new one opened. At most ``max_connections`` are
  kept; the least recently used is closed first. An answer with ``Connection: close``,
  an HTTP/1.0 answer or one whose body ends with the connection: the connection is closed.
* **Timeouts**: connecting, the TLS handshake and every send and receive each end within
  ``timeout`` seconds (a socket timeout: per operation, as httpx's were).
* **TLS** for ``https``: :func:`ssl.create_default_context` - the certificate chain and
  the host name are verified against the system's CA store (Debian's ca-certificates;
  ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` honoured), TLS 1.2 at least. Never turned off.
* **Redirects are never followed**: a 3xx is an answer like any other (the worker
  retries it and says the receiver needs fixing).
* **Bounded answers**: a status or header line of at most 65,536 bytes, at most 100
  header lines (:mod:`http.client`'s limits), at most 10 interim (1xx) answers before the
  final one, at most ``max_body`` bytes of a body. A
  connection whose answer was not read to its end (a longer body, an error while reading
  it, bytes after it) is closed, never reused.
* **Nothing injected**: the request target is percent-encoded from the URL; a header
  value with CR, LF or NUL is refused (:class:`ValueError`) before anything is sent.
* A URL's ``user:password@`` becomes ``Authorization: Basic`` (as httpx did); no
  cookies, no proxy from the environment, no retries here (the outbox retries).

Errors: :class:`InvalidURL` (a :class:`ValueError`) for a URL that cannot be requested,
:class:`ValueError` for a header value refused (or a host name IDNA refuses at connect);
:class:`OSError` (:class:`TimeoutError`, :class:`ssl.SSLError`, refused, reset...) and
:class:`http.client.HTTPException` (:class:`~http.client.RemoteDisconnected`,
:class:`~http.client.BadStatusLine`, :class:`~http.client.LineTooLong`,
:class:`~http.client.IncompleteRead`) for network and protocol trouble. The connection
involved is closed on any of them.
"""

from __future__ import annotations

import base64
import http.client
import re
import select
import socket
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Mapping
from urllib.parse import quote, unquote, urlsplit

IDLE_SECONDS = 5.0  # a kept connection idle longer is replaced (httpx's keep-alive expiry)
MAX_CONNECTIONS = 20  # kept connections, one per origin
# RFC 3986 §3.3/§3.4: characters left as they are in a path and a query; '%' keeps the
# escapes already there. Anything else (spaces, controls, non-ASCII) is percent-encoded,
# so a URL can never break the request line.
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"


class InvalidURL(ValueError):
    """A URL the client cannot request; the message says why."""


@dataclass(frozen=True)
class Target:
    """What one URL resolves to for the client (see :func:`parse_url`)."""

    scheme: str  # http | https
    host: str  # ASCII (IDNA-encoded), no brackets around an IPv6 literal
    port: int
    path: str  # path and query, percent-encoded, never empty
    host_header: str  # Host (RFC 9110 §7.2): host, [IPv6], and the port unless the scheme's default
    authorization: str | None  # "Basic ..." from the URL's user:password@, else None


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]  # names lower-cased; a repeated header: its last value
    body: bytes  # at most max_body bytes of it


@lru_cache(maxsize=256)  # webhook URLs come from the configuration: few, used again and again
def parse_url(url: str) -> Target:
    """The origin and request target of an ``http``/``https`` URL, or :class:`InvalidURL`."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError as exc:
        raise InvalidURL(str(exc)) from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidURL(f"scheme {parts.scheme!r} is not http or https")
    if not host:
        raise InvalidURL("no host")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise InvalidURL(f"host {host!r}: {exc}") from None
    if not _HOST.fullmatch(host):
        raise InvalidURL(f"host {host!r} is not a host name or an IP address")
    path = quote(parts.path or "/", safe=_PATH_SAFE)
    if parts.query:
        path += "?" + quote(parts.query, safe=_QUERY_SAFE)
    authorization = None
    if parts.username is not None or parts.password is not None:
        pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}".encode("utf-8")
        authorization = "Basic " + base64.b64encode(pair).decode("ascii")
    default_port = 443 if scheme == "https" else 80
    host_header = f"[{host}]" if ":" in host else host
    if port is not None and port != default_port:
        host_header += f":{port}"
    return Target(scheme, host, port or default_port, path, host_header, authorization)


# What parse_url lets through as a host: DNS names (after IDNA) and IPv4/IPv6 literals (a
# zone id after '%'). Anything else (a NUL, a space...) is refused before any socket call.
_HOST = re.compile(r"[A-Za-z0-9._:%-]+")
_MAX_LINE = 65536  # http.client's _MAXLINE
_MAX_HEADERS = 100  # http.client's _MAXHEADERS
_RECV = 65536
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # a field name (RFC 9110 §5.1, §5.6.2)
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,16}")  # RFC 9112 §7.1: 1*HEXDIG (int() would take "-1", "0x1f")
_LENGTH = re.compile(r"[0-9]{1,18}")  # RFC 9110 §8.6: 1*DIGIT (str.isdigit() would take "²")
_MAX_INTERIM = 10  # 1xx answers skipped before the final one; an endless stream of them is an error
_NO_BODY = frozenset({204, 304})  # and 1xx (RFC 9112 §6.3)


class _Connection:
    """One socket and the bytes received on it but not consumed yet."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.idle_since = 0.0

    def close(self) -> None:
        self.sock.close()

    def reusable(self) -> bool:
        """False when the peer closed the kept connection (EOF is readable) or sent
        something nobody asked for; an idle, healthy connection has nothing to read."""
        if self.buf or (isinstance(self.sock, ssl.SSLSocket) and self.sock.pending()):
            return False
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return not poller.poll(0)

    def _fill(self) -> bool:
        """Receive more; False at the end of the stream."""
        data = self.sock.recv(_RECV)
        self.buf += data
        return bool(data)

    def line(self) -> bytes:
        """One line without its CRLF (or bare LF), at most ``_MAX_LINE`` bytes."""
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                if end > _MAX_LINE:
                    raise http.client.LineTooLong("header line")
                line, self.buf = self.buf[:end], self.buf[end + 1 :]
                return line[:-1] if line.endswith(b"\r") else line
            if len(self.buf) > _MAX_LINE:
                raise http.client.LineTooLong("header line")
            if not self._fill():
                raise http.client.IncompleteRead(self.buf)

    def take(self, n: int) -> bytes:
        """Up to ``n`` bytes, fewer only at the end of the stream."""
        while len(self.buf) < n and self._fill():
            pass
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def exactly(self, n: int) -> bytes:
        data = self.take(n)
        if len(data) < n:
            raise http.client.IncompleteRead(data, n - len(data))
        return data


def _head(conn: _Connection) -> tuple[int, bool, dict[str, str]]:
    """Status, HTTP/1.1 or later, and headers of the final answer (1xx skipped)."""
    for _ in range(_MAX_INTERIM + 1):
        try:
            first = conn.line()
        except http.client.IncompleteRead as exc:
            if not exc.partial:
                raise http.client.RemoteDisconnected("Remote end closed connection without response") from None
            raise
        version, _, rest = first.partition(b" ")
        code = rest[:3]
        if not version.startswith(b"HTTP/") or len(code) != 3 or not code.isdigit() or rest[3:4] not in (b"", b" "):
            raise http.client.BadStatusLine(first.decode("latin-1")[:80])
        status = int(code)
        headers: dict[str, str] = {}
        last = ""
        for _ in range(_MAX_HEADERS + 1):
            raw = conn.line()
            if not raw:
                break
            text = raw.decode("latin-1")
            if text[0] in " \t" and last:  # obs-fold (RFC 9112 §5.2): part of the previous value
                headers[last] += " " + text.strip()
                continue
            name, colon, value = text.partition(":")
            if colon and name and name == name.strip():
                last = name.lower()
                headers[last] = value.strip()
        else:
            raise http.client.HTTPException(f"got more than {_MAX_HEADERS} headers")
        if 100 <= status < 200 and status != 101:
            continue  # an interim answer (100 Continue, 103 Early Hints): the final one follows
        return status, version[5:] not in (b"1.0", b"0.9"), headers
    raise http.client.HTTPException(f"more than {_MAX_INTERIM} interim (1xx) answers")


def _body(conn: _Connection, status: int, headers: dict[str, str], max_body: int) -> tuple[bytes, bool]:
    """At most ``max_body`` bytes of the body (RFC 9112 §6.3), and whether it was read to
    its end with the message delimited (so the connection can carry the next one)."""
    if status in _NO_BODY or status < 200:
        return b"", status != 101
    coding = headers.get("transfer-encoding")
    if coding is not None:
        if coding.rsplit(",", 1)[-1].strip().lower() != "chunked":
            return conn.take(max_body), False  # delimited by the end of the connection
        data = b""
        while True:
            size_line = conn.line().split(b";", 1)[0].strip()
            if not _CHUNK_SIZE.fullmatch(size_line):
                raise http.client.HTTPException(f"bad chunk size {size_line[:20]!r}")
            size = int(size_line, 16)
            if size == 0:
                break
            if len(data) + size > max_body:
                return data + conn.take(max_body - len(data)), False
            data += conn.exactly(size)
            if conn.line():
                raise http.client.HTTPException("chunk not followed by CRLF")
        for _ in range(_MAX_HEADERS + 1):  # the trailer section
            if not conn.line():
                return data, True
        raise http.client.HTTPException(f"got more than {_MAX_HEADERS} trailer lines")
    length_text = headers.get("content-length")
    if length_text is None:
        return conn.take(max_body), False  # delimited by the end of the connection
    values = {v.strip() for v in length_text.split(",")}
    if len(values) != 1 or not _LENGTH.fullmatch(next(iter(values))):
        raise http.client.HTTPException(f"bad Content-Length {length_text[:40]!r}")
    length = int(next(iter(values)))
    if length > max_body:
        return conn.take(max_body), False
    return conn.exactly(length), True


def _request_head(target: Target, headers: Mapping[str, str], length: int) -> bytes:
    """The request line and header section (RFC 9112 §3, §5); refuses CR, LF or NUL in a value."""
    lines = [f"POST {target.path} HTTP/1.1", f"Host: {target.host_header}"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\0" in value or not _TOKEN.fullmatch(name):
            raise ValueError(f"header {name!r}: invalid name or value")
        lines.append(f"{name}: {value}")
    if target.authorization is not None:
        lines.append(f"Authorization: {target.authorization}")
    lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class HttpClient:
    """Kept-alive connections per origin for POSTs; one thread (the worker's loop)."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        idle_seconds: float = IDLE_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ssl_context = ssl_context  # the default one is made on the first https URL
        self.idle_seconds = idle_seconds
        self.max_connections = max(1, max_connections)
        self._clock = clock
        self._kept: OrderedDict[tuple[str, str, int], _Connection] = OrderedDict()

    def _context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()  # verifies chain and host name
        return self._ssl_context

    def _connection(self, target: Target, timeout: float) -> _Connection:
        """The kept connection of ``target``'s origin if still good, else a new one."""
        kept = self._kept.pop((target.scheme, target.host, target.port), None)
        if kept is not None:
            if self._clock() - kept.idle_since <= self.idle_seconds and kept.reusable():
                kept.sock.settimeout(timeout)
                return kept
            kept.close()
        sock = socket.create_connection((target.host, target.port), timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if target.scheme == "https":
                sock = self._context().wrap_socket(sock, server_hostname=target.host)
        except BaseException:
            sock.close()
            raise
        return _Connection(sock)

    def _keep(self, target: Target, conn: _Connection) -> None:
        conn.idle_since = self._clock()
        self._kept[(target.scheme, target.host, target.port)] = conn
        while len(self._kept) > self.max_connections:
            _, oldest = self._kept.popitem(last=False)
            oldest.close()

    def post(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float, max_body: int
    ) -> Response:
        """POST ``body`` to ``url``; the answer with at most ``max_body`` bytes of its body.

        A 2xx whose body fails to arrive is still returned (the receiver accepted the
        request: an error after that must not make us deliver it again); any other
        failure raises (see the module docstring) and closes the connection.
        """
        target = parse_url(url)
        head = _request_head(target, headers, len(body))
        conn = self._connection(target, timeout)
        reuse = False
        try:
            conn.sock.sendall(head + body)
            status, persistent, answer = _head(conn)
            try:
                data, complete = _body(conn, status, answer, max_body)
            except (OSError, http.client.HTTPException):
                if not 200 <= status < 300:
                    raise
                data, complete = b"", False
            reuse = (complete and persistent and not conn.buf
                     and "close" not in answer.get("connection", "").lower()
                     and not ("transfer-encoding" in answer and "content-length" in answer))  # RFC 9112 §6.3
            return Response(status, answer, data)
        finally:
            if reuse:
                self._keep(target, conn)
            else:
                conn.close()

    def close(self) -> None:
        """Close every kept connection."""
        while self._kept:
            _, conn = self._kept.popitem()
            conn.close()


__all__ = ["HttpClient", "IDLE_SECONDS", "InvalidURL", "MAX_CONNECTIONS", "Response", "Target", "parse_url"]
