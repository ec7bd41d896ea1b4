"""What every request passes before the application sees it (issue 16).

A plain ASGI middleware, so that it acts before FastAPI reads a body:

- **Token before body.** A request that carries a body to a ``/v1/`` endpoint
  (POST, PUT, PATCH, DELETE) and presents no token that covers some domain gets
  its 401 at once: the body is never read, and the answer says
  ``Connection: close`` so the server does not read it afterwards either.
  The handler's own :func:`~bouncetrack.api.auth.require_token` still decides
  the token's scope; this only refuses early what it would refuse late.
- **A Content-Security-Policy on every response** (and ``nosniff``), unless the
  page sets its own (the dashboard's).
- **Bounded bodies.** A declared ``Content-Length`` over the endpoint's limit is
  a 413 before reading; a body without a length (chunked) is read up to the
  limit and refused as soon as it goes beyond. ``/v1/send`` has its own, larger
  limit (``api.max_send_body_bytes``); every other endpoint ``api.max_body_bytes``.

The request head itself is bounded by the HTTP server (h11's
``max_incomplete_event_size``, :func:`bouncetrack.api.cli.server_config`).
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, MutableMapping

from starlette.requests import Request

from ..core.config import Config
from .auth import UNAUTHORIZED_DETAIL, domains_for_token, presented_token

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# On every response that does not set its own (the dashboard's pages set a stricter
# CSP allowing their stylesheet): nothing in a JSON or text answer may load or run.
DEFAULT_HEADERS = (
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
)
SEND_PATH = "/v1/send"


def body_limit(config: Config, path: str) -> int:
    """The most bytes of body the endpoint at ``path`` reads."""
    return config.api.max_send_body_bytes if path == SEND_PATH else config.api.max_body_bytes


class RequestGuard:
    """Token-before-body and body limits for every HTTP request (see the module doc)."""

    def __init__(self, app: ASGIApp, current: Callable[[], Config]) -> None:
        """``current``: the configuration now (it changes on SIGHUP)."""
        self.app = app
        self.current = current

    async def __call__(self, scope: Scope, receive: Receive, outer: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, outer)
            return

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", ())}
                message["headers"] = [*message.get("headers", ()),
                                      *((k, v) for k, v in DEFAULT_HEADERS if k not in names)]
            await outer(message)

        if scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        config = self.current()
        if path.startswith("/v1/") and not domains_for_token(config, presented_token(Request(scope))):
            await _answer(send, 401, {"detail": UNAUTHORIZED_DETAIL}, {"WWW-Authenticate": "Bearer"})
            return
        limit = body_limit(config, path)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _answer(send, 413, _too_large(limit))
            return
        # Read the body here, at most limit bytes (FastAPI would buffer it all anyway),
        # then hand it on in one message.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect: nobody to answer
                return
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _answer(send, 413, _too_large(limit))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP server refuses a malformed length before us
    return None


def _too_large(limit: int) -> dict[str, str]:
    return {"detail": f"the request body is larger than this endpoint's limit of {limit} bytes"}


async def _answer(send: Send, status: int, body: dict[str, str], headers: dict[str, str] | None = None) -> None:
    """A JSON answer that also closes the connection, so an unread body is never read."""
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
           (b"connection", b"close")]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
