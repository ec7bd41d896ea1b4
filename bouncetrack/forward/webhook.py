"""Signed webhook delivery of one bounce event (Standard Webhooks convention).

Request
-------
``POST <url>`` with ``Content-Type: application/json`` and the body::

    {"type": "bounce.event", "version": 1,
     "timestamp": "<event received_at, ISO 8601 UTC>",
     "data": <bouncetrack.core.events.event_to_json(event)>}

``data.type`` says what the event is (bounce, complaint, delay, delivered,
auto_reply, unknown); the envelope ``type`` only names the payload kind, so a
receiver that also takes other Standard Webhooks can route on it. The body is
built from the stored event only, so it is byte-identical on every retry.

Headers (https://www.standardwebhooks.com/):

* ``webhook-id``: the event id. Stable across retries: it is the idempotency
  key, also sent as ``Idempotency-Key``. A receiver that has already processed
  an id must answer 2xx and do nothing.
* ``webhook-timestamp``: unix seconds of *this attempt*.
* ``webhook-signature``: ``v1,<base64(HMAC-SHA256(key, f"{id}.{timestamp}.{body}"))>``
  where ``key`` is the base64-decoded part after ``whsec_`` for a Standard
  Webhooks secret, else the secret's UTF-8 bytes. Several space-separated
  signatures may appear (key rotation); one match suffices.

Replay window
-------------
:func:`verify_signature` rejects a timestamp more than ``tolerance`` seconds
(default 300 s = 5 minutes) away from the receiver's clock, in either
direction. A captured request can thus be replayed for at most 5 minutes, and
within that window the unchanged ``webhook-id`` lets the receiver drop it as a
duplicate. Retries are signed afresh, so they are never stale.

Responses
---------
2xx delivered; 410 Gone dead (the receiver says the endpoint is gone);
everything else is retried with backoff: 408/425/429/5xx, network errors and
timeouts as expected transient failures, other 4xx (and 3xx: redirects are not
followed) logged as a receiver or configuration problem an operator should fix.
``Retry-After`` (seconds or HTTP date) is honoured as a lower bound on the next
delay, capped by the worker at ``outbox.max_delay_seconds``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import http.client
import json
import logging
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Mapping

from ..core.events import SCHEMA_VERSION, event_to_json, iso_utc
from ..store.base import BounceEvent
from .httpclient import HttpClient, InvalidURL

log = logging.getLogger(__name__)

ENVELOPE_TYPE = "bounce.event"
DEFAULT_TOLERANCE = 300  # seconds: the replay window, both directions
USER_AGENT = "bouncetrack-webhook/1"
_MAX_ERROR_BODY = 512  # bytes of a failed response kept for last_error

DELIVERED = "delivered"
RETRY = "retry"
DEAD = "dead"

# Transient by definition (RFC 9110 §15.5.9, RFC 8470 §5.2, RFC 6585 §4); 5xx too.
_TRANSIENT_4XX = frozenset({408, 425, 429})


class SignatureError(ValueError):
    """A webhook request failed verification; the message says why."""


# --- signing -----------------------------------------------------------------


def secret_bytes(secret: str) -> bytes:
    """The HMAC key: base64-decoded after ``whsec_``, else the UTF-8 bytes."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[len("whsec_") :], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("webhook secret starts with whsec_ but is not valid base64") from exc
    return secret.encode("utf-8")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``."""
    signed = f"{msg_id}.{timestamp}.".encode("utf-8") + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify_signature(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> str:
    """Verify a received webhook; return its ``webhook-id`` or raise :class:`SignatureError`.

    ``headers`` is any mapping with ``items()`` (case-insensitive lookup is done
    here). The timestamp must be within ``tolerance`` seconds of ``now`` - the
    replay window, 5 minutes by default. Comparison is constant-time.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    msg_id = lowered.get("webhook-id")
    ts_text = lowered.get("webhook-timestamp")
    sig_header = lowered.get("webhook-signature")
    if not msg_id or not ts_text or not sig_header:
        raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(ts_text.strip())
    except ValueError:
        raise SignatureError("webhook-timestamp is not an integer") from None
    if timestamp < now - tolerance:
        raise SignatureError("webhook-timestamp too old (outside the replay window)")
    if timestamp > now + tolerance:
        raise SignatureError("webhook-timestamp too far in the future")
    expected = sign(secret, msg_id, timestamp, body).split(",", 1)[1].encode("ascii")
    for candidate in sig_header.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode("ascii", "replace"), expected):
            return msg_id
    raise SignatureError("no matching v1 signature")


# --- the request -------------------------------------------------------------


def payload(event: BounceEvent) -> dict[str, Any]:
    """The JSON document POSTed for ``event`` (see the module docstring)."""
    return {
        "type": ENVELOPE_TYPE,
        "version": SCHEMA_VERSION,
        "timestamp": iso_utc(event.received_at),
        "data": event_to_json(event),
    }


def body_for(event: BounceEvent) -> bytes:
    """Compact, ASCII-only JSON: byte-identical for the same event on every retry."""
    return json.dumps(payload(event), separators=(",", ":"), ensure_ascii=True).encode("ascii")


@dataclass(frozen=True)
class WebhookRequest:
    url: str
    headers: dict[str, str]
    body: bytes


def build_request(event: BounceEvent, url: str, secret: str, now: float) -> WebhookRequest:
    """The signed POST for one delivery attempt at time ``now``."""
    body = body_for(event)
    timestamp = int(now)
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": event.event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, event.event_id, timestamp, body),
        "idempotency-key": event.event_id,
    }
    return WebhookRequest(url=url, headers=headers, body=body)


# --- delivery ----------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryResult:
    outcome: str  # delivered | retry | dead
    status_code: int | None = None
    error: str | None = None
    retry_after: float | None = None  # seconds the receiver asked us to wait


def parse_retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` (RFC 9110 §10.2.3): delta-seconds or an HTTP date -> seconds from now."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" dates parse naive; HTTP dates are GMT
        return None
    return max(0.0, when.timestamp() - now)


def classify_response(
    status: int, headers: Mapping[str, str], now: float, snippet: bytes = b""
) -> DeliveryResult:
    """Map an HTTP status to delivered / retry / dead (see the module docstring)."""
    if 200 <= status < 300:
        return DeliveryResult(DELIVERED, status)
    text = snippet.decode("utf-8", "replace").strip()
    error = f"HTTP {status}" + (f": {text}" if text else "")
    if status == 410:
        return DeliveryResult(DEAD, status, error)
    lowered = {k.lower(): v for k, v in headers.items()}
    retry_after = parse_retry_after(lowered.get("retry-after"), now)
    if status >= 500 or status in _TRANSIENT_4XX:
        return DeliveryResult(RETRY, status, error, retry_after)
    # Other 4xx (bad signature, 404, 413...) and 3xx: retried, but someone must look.
    log.warning("webhook receiver answered %s; retrying, but the receiver or its URL needs fixing", status)
    return DeliveryResult(RETRY, status, error, retry_after)


def deliver(client: HttpClient, request: WebhookRequest, timeout: float, now: float) -> DeliveryResult:
    """POST ``request``; never raises for network trouble (that is a retry).

    Only the first bytes of the response body are read (bounded memory even for
    a receiver that streams megabytes back). A short body is read to its end, so
    that the client keeps the connection for the next delivery (keep-alive); a 2xx
    is a delivery whatever happens to its body. Redirects are not followed, https
    certificates are verified (:mod:`bouncetrack.forward.httpclient`).
    """
    try:
        response = client.post(request.url, request.body, request.headers, timeout, _MAX_ERROR_BODY)
    except TimeoutError as exc:
        return DeliveryResult(RETRY, None, f"timeout: {exc or type(exc).__name__}")
    except InvalidURL as exc:
        return DeliveryResult(RETRY, None, f"invalid webhook URL: {exc}")
    except (OSError, http.client.HTTPException) as exc:
        return DeliveryResult(RETRY, None, f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_BODY])
    except ValueError as exc:  # a header value with CR/LF, a host name IDNA refuses at connect
        return DeliveryResult(RETRY, None, f"invalid webhook request: {exc}"[:_MAX_ERROR_BODY])
    return classify_response(response.status, response.headers, now, response.body)


__all__ = [
    "DEAD",
    "DEFAULT_TOLERANCE",
    "DELIVERED",
    "DeliveryResult",
    "ENVELOPE_TYPE",
    "RETRY",
    "SignatureError",
    "WebhookRequest",
    "body_for",
    "build_request",
    "classify_response",
    "deliver",
    "parse_retry_after",
    "payload",
    "secret_bytes",
    "sign",
    "verify_signature",
]
