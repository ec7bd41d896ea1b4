"""What ``bouncetrack api`` puts in front of the application, at the network's edge (issue 16).

An ASGI wrapper applied by :func:`bouncetrack.api.server.server_config` (the served
process; an application built for tests by ``create_app`` has no network edge):

- **Host allow-list.** A request whose ``Host`` is not an allowed name gets 400
  (``api.allowed_hosts``; by default the loopback names and the host of
  ``api_listen``). A DNS-rebinding page (evil.example resolving to 127.0.0.1)
  sends ``Host: evil.example`` and so cannot read the unauthenticated ``/metrics``.
- **Failed-auth limit.** Each client address may fail (any 401: a wrong token, a
  failed login) ``api.failed_auth_per_minute`` times a minute; past that, its
  requests to ``/v1/`` and ``/login`` get 429 with ``Retry-After`` until the minute
  ends. Memory is bounded: at most :data:`MAX_TRACKED` addresses are remembered
  (the oldest forgotten first). Behind a proxy the address is the one uvicorn
  takes from ``X-Forwarded-For`` (its ``forwarded_allow_ips``).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Callable

from ..core.config import Config
from .guard import ASGIApp, Message, Receive, Scope, Send

MAX_TRACKED = 10_000
WINDOW_SECONDS = 60.0
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")


def allowed_hosts(config: Config, listen_host: str | None = None) -> tuple[str, ...]:
    """``api.allowed_hosts``, or the loopback names plus the host the API listens on
    (``listen_host``, from ``--listen``, else ``api_listen``'s) unless a wildcard."""
    if config.api.allowed_hosts is not None:
        return config.api.allowed_hosts
    host = (listen_host or config.api_listen.rpartition(":")[0]).strip("[]").lower()
    extra = () if host in ("", "0.0.0.0", "::") or host in LOOPBACK_HOSTS else (host,)
    return LOOPBACK_HOSTS + extra


def host_name(value: str) -> str:
    """The host of a ``Host`` header value, without port or IPv6 brackets, lower-case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rpartition(":")[0] if value.count(":") == 1 else value


class FailureLimit:
    """Failures per client address in fixed one-minute windows, at most MAX_TRACKED addresses."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self._clock = clock
        self._seen: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> int:
        """Seconds until ``client`` may try again; 0 when it may now."""
        if self.per_minute <= 0:
            return 0
        with self._lock:
            entry = self._seen.get(client)
        if entry is None:
            return 0
        started, count = entry
        left = started + WINDOW_SECONDS - self._clock()
        return max(1, int(left + 0.999)) if count >= self.per_minute and left > 0 else 0

    def failed(self, client: str) -> None:
        if self.per_minute <= 0:
            return
        now = self._clock()
        with self._lock:
            started, count = self._seen.pop(client, (now, 0))
            if now - started >= WINDOW_SECONDS:
                started, count = now, 0
            self._seen[client] = (started, count + 1)  # the most recent last
            while len(self._seen) > MAX_TRACKED:
                self._seen.popitem(last=False)

    def __len__(self) -> int:
        return len(self._seen)


class Edge:
    """The Host allow-list and the failed-auth limit around an ASGI app (module doc)."""

    def __init__(self, app: ASGIApp, current: Callable[[], Config], listen_host: str | None = None) -> None:
        """``current``: the configuration now (SIGHUP changes it; so do the hosts and the limit)."""
        self.app = app
        self.current = current
        self.listen_host = listen_host
        self._for: Config | None = None
        self.hosts: frozenset[str] = frozenset()
        self.limit = FailureLimit(0)

    def _follow(self) -> None:
        config = self.current()
        if config is not self._for:
            self.hosts = frozenset(allowed_hosts(config, self.listen_host))
            if config.api.failed_auth_per_minute != self.limit.per_minute:
                self.limit = FailureLimit(config.api.failed_auth_per_minute)
            self._for = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self._follow()
        if "*" not in self.hosts:
            host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
            if host_name(host) not in self.hosts:
                await _plain(send, 400, "Invalid Host header: not one of api.allowed_hosts\n")
                return
        client = scope["client"][0] if scope.get("client") else "?"
        path: str = scope["path"]
        if path.startswith("/v1/") or path == "/login":
            wait = self.limit.retry_after(client)
            if wait:
                await _plain(send, 429, "Too many failed tokens or logins from this address; retry later\n",
                             {"retry-after": str(wait)})
                return

        async def observe(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                self.limit.failed(client)
            await send(message)

        await self.app(scope, receive, observe)


async def _plain(send: Send, status: int, text: str, headers: dict[str, str] | None = None) -> None:
    body = text.encode()
    raw = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
           (b"connection", b"close")]
    raw += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


__all__ = ["Edge", "FailureLimit", "allowed_hosts", "host_name"]
