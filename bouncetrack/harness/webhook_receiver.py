"""A real local webhook receiver for tests and the demo.

A stdlib :class:`~http.server.ThreadingHTTPServer` in a background thread on a
free ``127.0.0.1`` port. Every request is verified with
:func:`bouncetrack.forward.webhook.verify_signature` and recorded; accepted
events are also recorded by idempotency key, so a test can assert that each
event arrived once (duplicates caused by a lost response are recorded as such).

It can be scripted to misbehave, like receivers in the wild:

* :meth:`fail_next` - answer ``status`` (500, 429 with ``Retry-After``, 503...)
  to the next ``n`` requests;
* :meth:`answer_always` - a fixed status for every request (e.g. 410 Gone);
* :meth:`go_down` / :meth:`come_up` - close the listening socket (connections
  are refused) and later listen again on the same port;
* :meth:`slow` - sleep before answering (longer than the client's timeout);
* :meth:`random_failures` - fail a seeded random fraction of requests.

Usage::

    with WebhookReceiver(secret) as rx:
        ... deliver to rx.url ...
        rx.wait_for(1)
        assert rx.accepted_ids() == [event_id]
"""

from __future__ import annotations

import json
import random
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from ..forward.webhook import DEFAULT_TOLERANCE, SignatureError, verify_signature

_MAX_BODY = 4 * 1024 * 1024


@dataclass(frozen=True)
class Request:
    """One request as received, whatever we answered."""

    path: str
    webhook_id: str | None
    idempotency_key: str | None
    timestamp: str | None
    headers: dict[str, str]
    body: bytes
    received_at: float
    status: int  # what we answered (the client may have left already when we were slow)
    verified: bool
    error: str | None = None
    duplicate: bool = False  # verified, accepted, and its id had been accepted before
    peer: tuple[str, int] | None = None  # the client's address and port: one per connection

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _Script:
    fail_statuses: list[tuple[int, float | None]] = field(default_factory=list)
    always: int | None = None
    slow_seconds: float = 0.0
    slow_count: int | None = None  # None: every request
    slow_status: int = 200
    random_rate: float = 0.0
    random_statuses: tuple[int, ...] = (500, 429, 503)
    rng: random.Random = field(default_factory=random.Random)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    receiver: "WebhookReceiver"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that closed its kept-alive connection is no error worth a traceback."""
        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: "down" really is down

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass  # quiet tests

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, _MAX_BODY))
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, extra = self.server.receiver._handle(self.path, headers, body, self.client_address[:2])
        try:
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            payload = b"ok\n" if 200 <= status < 300 else f"status {status}\n".encode()
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            pass  # the client timed out while we were slow
        if length > _MAX_BODY:
            self.close_connection = True  # the rest of the body is still unread


class _KeepAliveHandler(_Handler):
    """HTTP/1.1 with keep-alive, as most receivers in the wild answer (the worker's client
    reuses its connection): for benchmarks, where a connection per request would charge the
    machine for TCP set-ups and handler threads that a real receiver elsewhere does not."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no delayed-ACK stall between


class WebhookReceiver:
    def __init__(
        self,
        secret: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tolerance: float = DEFAULT_TOLERANCE,
        clock: Callable[[], float] = time.time,
        keep_alive: bool = False,
    ) -> None:
        """``keep_alive``: HTTP/1.1 connections kept across requests (:class:`_KeepAliveHandler`);
        by default one request per connection, so that :meth:`go_down` is down at once."""
        self.secret = secret
        self.keep_alive = keep_alive
        self.host = host
        self.port = port
        self.tolerance = tolerance
        self.clock = clock
        self.requests: list[Request] = []
        self._accepted: dict[str, int] = {}  # webhook-id -> times accepted
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._script = _Script()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # --- lifecycle --------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hook"

    def start(self) -> "WebhookReceiver":
        self._stopping.clear()
        server = _Server((self.host, self.port), _KeepAliveHandler if self.keep_alive else _Handler)
        server.receiver = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
            name=f"webhook-receiver:{self.port}",
        )
        self._thread.start()
        return self

    def go_down(self) -> None:
        """Stop listening: new connections are refused until :meth:`come_up`."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def come_up(self) -> None:
        """Listen again, on the same port."""
        if self._server is None:
            self.start()

    @property
    def is_up(self) -> bool:
        return self._server is not None

    def stop(self) -> None:
        self._stopping.set()  # wakes slow handlers
        self.go_down()

    def __enter__(self) -> "WebhookReceiver":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- scripting --------------------------------------------------------

    def fail_next(self, n: int, status: int = 500, retry_after: float | None = None) -> None:
        """Answer ``status`` to the next ``n`` requests (before verification)."""
        with self._lock:
            self._script.fail_statuses.extend([(status, retry_after)] * n)

    def answer_always(self, status: int | None) -> None:
        """Answer ``status`` to every request (None: back to normal)."""
        with self._lock:
            self._script.always = status

    def slow(self, seconds: float, n: int | None = None, status: int = 200) -> None:
        """Sleep ``seconds`` before answering the next ``n`` requests (None: all; 0 s: off).

        The request is processed (recorded, accepted when ``status`` is 2xx)
        *after* the sleep, like a receiver that commits and then answers too
        late: the client's retry is then a duplicate with the same key.
        """
        with self._lock:
            self._script.slow_seconds = seconds
            self._script.slow_count = n
            self._script.slow_status = status

    def random_failures(
        self, rate: float, statuses: tuple[int, ...] = (500, 429, 503), seed: int = 0
    ) -> None:
        """Fail a ``rate`` fraction of requests with a random one of ``statuses``."""
        with self._lock:
            self._script.random_rate = rate
            self._script.random_statuses = statuses
            self._script.rng = random.Random(seed)

    def reset_script(self) -> None:
        with self._lock:
            self._script = _Script()

    # --- records ----------------------------------------------------------

    def accepted(self) -> list[Request]:
        """Verified requests answered 2xx, in arrival order (duplicates included)."""
        with self._lock:
            return [r for r in self.requests if r.verified and 200 <= r.status < 300]

    def accepted_ids(self) -> list[str]:
        """Distinct event ids accepted, in first-arrival order."""
        with self._lock:
            return list(self._accepted)

    def times_accepted(self, event_id: str) -> int:
        with self._lock:
            return self._accepted.get(event_id, 0)

    def attempts_for(self, event_id: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.webhook_id == event_id]

    def wait_for(self, n: int, timeout: float = 10.0) -> bool:
        """Wait until ``n`` distinct events have been accepted."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._accepted) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
        return True

    # --- the request path (handler threads) ------------------------------

    def _scripted(self) -> tuple[int | None, float | None, float]:
        """(status to force, its Retry-After, seconds to sleep) for the next request."""
        with self._lock:
            s = self._script
            delay = 0.0
            forced: int | None = None
            retry_after: float | None = None
            if s.slow_seconds > 0 and (s.slow_count is None or s.slow_count > 0):
                if s.slow_count is not None:
                    s.slow_count -= 1
                delay = s.slow_seconds
                if not 200 <= s.slow_status < 300:
                    forced = s.slow_status
            # Slowness composes with the failure scripts below (a slow *and* failing receiver).
            if forced is None:
                if s.always is not None:
                    forced = s.always
                elif s.fail_statuses:
                    forced, retry_after = s.fail_statuses.pop(0)
                elif s.random_rate > 0 and s.rng.random() < s.random_rate:
                    forced = s.rng.choice(s.random_statuses)
            return forced, retry_after, delay

    def _handle(self, path: str, headers: dict[str, str], body: bytes,
                peer: tuple[str, int] | None = None) -> tuple[int, dict[str, str]]:
        forced, retry_after, delay = self._scripted()
        if delay:
            self._stopping.wait(delay)
        now = self.clock()
        webhook_id = headers.get("webhook-id")
        extra: dict[str, str] = {}
        verified = False
        error: str | None = None
        try:
            verify_signature(self.secret, headers, body, now, self.tolerance)
            verified = True
        except SignatureError as exc:
            error = str(exc)
        if forced is not None:
            status = forced
            if retry_after is not None:
                extra["Retry-After"] = str(int(retry_after))
        elif not verified:
            status = 401
        else:
            status = 200
        duplicate = False
        with self._changed:
            if verified and 200 <= status < 300 and webhook_id:
                duplicate = webhook_id in self._accepted
                self._accepted[webhook_id] = self._accepted.get(webhook_id, 0) + 1
            self.requests.append(
                Request(
                    path=path,
                    webhook_id=webhook_id,
                    idempotency_key=headers.get("idempotency-key"),
                    timestamp=headers.get("webhook-timestamp"),
                    headers=headers,
                    body=body,
                    received_at=now,
                    status=status,
                    verified=verified,
                    error=error,
                    duplicate=duplicate,
                    peer=peer,
                )
            )
            self._changed.notify_all()
        return status, extra


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (racy by nature; fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


__all__ = ["Request", "WebhookReceiver", "free_port"]
