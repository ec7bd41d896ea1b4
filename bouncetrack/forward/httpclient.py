"""The worker's HTTP client: POSTs over kept-alive connections, standard library only.

Why not httpx (which the worker used until issue 21): profiled delivering webhooks to a
loopback receiver, httpx's request and response models, its URL parser and h11 state
machine were ~85 % of the worker's CPU per delivery. :mod:`http.client` does the one thing
the worker needs - a POST with a body on a kept connection - at a fraction of that
(``bench/webhook.py --before``: CPU per delivered webhook, before/after, same run).

Guarantees (what :meth:`HttpClient.post` keeps):

* **One connection per origin** (scheme, host, port), kept alive between POSTs (HTTP/1.1
  persistent connections, RFC 9112 §9.3). Before a kept connection is used again it is
  checked: idle longer than ``idle_seconds``, or readable (the peer closed it, or sent
  something unasked), it is closed and a new one opened. At most ``max_connections`` are
  kept; the least recently used is closed first. A receiver that answers
  ``Connection: close`` or HTTP/1.0 gets a connection per request.
* **Timeouts**: connecting, the TLS handshake and every send and receive each end within
  ``timeout`` seconds (a socket timeout: per operation, as httpx's were).
* **TLS** for ``https``: :func:`ssl.create_default_context` - the certificate chain and
  the host name are verified against the system's CA store (Debian's ca-certificates;
  ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` honoured), TLS 1.2 at least. Never turned off.
* **Redirects are never followed**: a 3xx is an answer like any other (the worker
  retries it and says the receiver needs fixing).
* **Bounded response**: at most ``max_body`` bytes of a body are read. A connection whose
  response was not read to its end (longer body, or an error while reading it) is
  closed, never reused.
* A URL's ``user:password@`` becomes ``Authorization: Basic`` (as httpx did); no
  cookies, no proxy from the environment, no retries here (the outbox retries).

Errors: :class:`InvalidURL` (a :class:`ValueError`) for a URL that cannot be requested;
:class:`OSError` (:class:`TimeoutError`, :class:`ssl.SSLError`, refused...) and
:class:`http.client.HTTPException` for network and protocol trouble. The connection
involved is closed on any of them.
"""

from __future__ import annotations

import base64
import http.client
import select
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
    path = quote(parts.path or "/", safe=_PATH_SAFE)
    if parts.query:
        path += "?" + quote(parts.query, safe=_QUERY_SAFE)
    authorization = None
    if parts.username is not None or parts.password is not None:
        pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}".encode("utf-8")
        authorization = "Basic " + base64.b64encode(pair).decode("ascii")
    return Target(scheme, host, port or (443 if scheme == "https" else 80), path, authorization)


@dataclass
class _Kept:
    conn: http.client.HTTPConnection
    idle_since: float


def _reusable(conn: http.client.HTTPConnection) -> bool:
    """False when the peer closed the kept connection (EOF is readable) or sent
    something nobody asked for; an idle, healthy connection has nothing to read."""
    sock = conn.sock
    if sock is None:
        return True  # closed by us after a `Connection: close` answer: http.client reconnects
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return False
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return not poller.poll(0)


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
        self._kept: OrderedDict[tuple[str, str, int], _Kept] = OrderedDict()

    def _context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()  # verifies chain and host name
        return self._ssl_context

    def _connection(self, target: Target, timeout: float) -> http.client.HTTPConnection:
        """The kept connection of ``target``'s origin if still good, else a new one."""
        key = (target.scheme, target.host, target.port)
        kept = self._kept.pop(key, None)
        if kept is not None:
            if self._clock() - kept.idle_since <= self.idle_seconds and _reusable(kept.conn):
                kept.conn.timeout = timeout  # for a reconnect after `Connection: close`
                if kept.conn.sock is not None:
                    kept.conn.sock.settimeout(timeout)
                return kept.conn
            kept.conn.close()
        if target.scheme == "https":
            return http.client.HTTPSConnection(target.host, target.port, timeout=timeout, context=self._context())
        return http.client.HTTPConnection(target.host, target.port, timeout=timeout)

    def _keep(self, target: Target, conn: http.client.HTTPConnection) -> None:
        self._kept[(target.scheme, target.host, target.port)] = _Kept(conn, self._clock())
        while len(self._kept) > self.max_connections:
            _, oldest = self._kept.popitem(last=False)
            oldest.conn.close()

    def post(
        self, url: str, body: bytes, headers: Mapping[str, str], timeout: float, max_body: int
    ) -> Response:
        """POST ``body`` to ``url``; the answer with at most ``max_body`` bytes of its body.

        A 2xx whose body fails to arrive is still returned (the receiver accepted the
        request: an error after that must not make us deliver it again); any other
        failure raises (see the module docstring) and closes the connection.
        """
        target = parse_url(url)
        conn = self._connection(target, timeout)
        complete = False
        try:
            request_headers = dict(headers)
            if target.authorization is not None:
                request_headers["authorization"] = target.authorization
            conn.request("POST", target.path, body=body, headers=request_headers)
            response = conn.getresponse()
            status = response.status
            answer = {name.lower(): value for name, value in response.getheaders()}
            data = b""
            try:
                while len(data) < max_body:
                    chunk = response.read(max_body - len(data))
                    if not chunk:
                        break
                    data += chunk
                complete = response.isclosed()  # read to its end: the connection may serve again
            except (OSError, http.client.HTTPException):
                if not 200 <= status < 300:
                    raise
            return Response(status, answer, data[:max_body])
        finally:
            if complete:
                self._keep(target, conn)
            else:
                conn.close()

    def close(self) -> None:
        """Close every kept connection."""
        while self._kept:
            _, kept = self._kept.popitem()
            kept.conn.close()


__all__ = ["HttpClient", "IDLE_SECONDS", "InvalidURL", "MAX_CONNECTIONS", "Response", "Target", "parse_url"]
