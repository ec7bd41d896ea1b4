"""The download API: ``GET /v1/bounces/{start_date}/{end_date}`` (the spec's shape).

Who sees what: the access token (``?access_token=`` or ``Authorization:
Bearer``) is checked by :func:`bouncetrack.api.auth.require_token` before
anything else runs, so a request without a valid token never reaches a
parameter check or the store and gets the same 401 whatever it sent. A token
sees only its own sender domains' events; ``domain=`` narrows that scope and
naming a domain outside it is a 403 (not an empty result: a typo should not
look like "no bounces").

Formats (``?format=`` wins over ``Accept``):

- ``json`` (default): ``{"events": [...], "next_cursor": str | null, "count": n}``,
  a page of ``limit`` events (default 1000, at most 10000).
- ``csv`` (``text/csv``): a header row with the event schema's keys, then one
  record per event; formula-looking cells are neutralised (OWASP CSV injection).
- ``ndjson`` (``application/x-ndjson``): one event object per line.

  Without ``limit``, csv and ndjson stream every event in the range (constant
  memory: one database statement over an index, fetched in batches). With
  ``limit`` they return one page and put the next cursor in the
  ``X-Next-Cursor`` header (and a ``Link: <...>; rel="next"``).

Every event has exactly the keys of :func:`bouncetrack.core.events.event_to_json`,
the schema the webhook sends. Events come in ``id`` order (the order they were
stored); pages are keyset pages on that id, so they stay stable while new
bounces arrive: an event stored after the first page was fetched shows up on a
later page, never twice, and no earlier event is skipped.

Errors are JSON ``{"detail": "...", "parameter": "..."}``: 400 for a bad
parameter (which one, and why), 401, 403, 503 when the store is unavailable.
"""

from __future__ import annotations

import json
import time
from typing import Iterator, Literal, Sequence
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from ..core.addresses import AddressError, parse_domain
from ..core.events import EVENT_TYPES
from ..store.base import StoreUnavailable
from ..store.sql import CSV_HEADER
from ..store.views import DownloadQuery
from .deps import ApiContext, ErrorBody, context, error_response, errors_are_400
from .auth import Principal, require_token, token_scope
from .pagination import (
    FORMATS,
    MEDIA_TYPES,
    ParamError,
    decode_cursor,
    encode_cursor,
    negotiate,
    parse_bound,
    parse_range,
)

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10000
STREAM_BATCH = 2000  # rows per database fetch and per response chunk (~1 MB)
DEFAULT_MAX_RANGE_DAYS = 366
# The shape of a date or timestamp (documented in the OpenAPI schema and checked
# first); pagination.parse_bound then checks the calendar and the time zone.
DATE_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"([Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]{1,9})?)?([Zz]|[+-][0-9]{2}:?[0-9]{2})?)?$"
)

EventType = Literal["bounce", "complaint", "delay", "delivered", "auto_reply", "unknown"]
assert set(EventType.__args__) == set(EVENT_TYPES)  # type: ignore[attr-defined]


# ---------------------------------------------------------------- models (OpenAPI)


class BounceEventOut(BaseModel):
    """One event: exactly what the webhook sends (bouncetrack.core.events.event_to_json)."""

    event_id: str = Field(description="Stable id (uuid4 hex); also the webhook idempotency key.")
    type: EventType
    hard: bool
    severity: Literal["hard", "soft"] = Field(description="`hard` as a word.")
    reason: str = Field(description="Classified reason, e.g. userunknown, mailboxfull; undefined when unknown.")
    status: str | None = Field(description="RFC 3463 status, e.g. 5.1.1.")
    reply_code: str | None = Field(description="SMTP reply code, e.g. 550.")
    diagnostic: str | None
    recipient: str | None = Field(description="The recipient the event is attributed to.")
    reported_recipient: str | None = Field(description="The recipient the report itself names.")
    action: str | None = Field(description="RFC 3464 Action.")
    remote_mta: str | None
    original_sender: str | None
    original_message_id: str | None
    token: str | None
    token_status: str = Field(description="valid | forged | unknown | missing | expired")
    flagged: bool = Field(description="The report's recipient and the token's recipient disagree.")
    feedback_type: str | None = Field(description="ARF Feedback-Type of a complaint.")
    domain: str | None = Field(description="Sender domain of the original message.")
    received_at: str = Field(description="When the report arrived (ISO 8601 UTC, milliseconds).")
    sent_at: str | None = Field(description="When the original message was recorded (ISO 8601 UTC).")
    queue_id: str | None = Field(
        description="The original message's Postfix queue id (find it in the mail log); "
        "null when the event is not attributed to a message."
    )


class EventsPage(BaseModel):
    """A page of events in id order."""

    events: list[BounceEventOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` (same dates and filters) for the next page; null when this was the last."
    )
    count: int = Field(description="Number of events in this page.")


# ----------------------------------------------------------------- router


# FastAPI reports type errors in parameters as 422; this API says 400 naming the parameter.
router = APIRouter(route_class=errors_are_400(lambda exc: _validation_error(exc)), tags=["download"])  # defined below

_CSV_NDJSON_BODY = {"schema": {"type": "string"}}


@router.get(
    "/v1/bounces/{start_date}/{end_date}",
    summary="Download bounce events of a date range",
    response_model=None,
    responses={
        200: {
            "model": EventsPage,
            "description": "Events, as JSON (a page), CSV or NDJSON (a page with `limit`, else everything).",
            "headers": {
                "X-Next-Cursor": {
                    "description": "CSV/NDJSON pages: cursor of the next page (absent on the last page).",
                    "schema": {"type": "string"},
                },
            },
            "content": {"text/csv": _CSV_NDJSON_BODY, "application/x-ndjson": _CSV_NDJSON_BODY},
        },
        400: {"model": ErrorBody, "description": "A parameter is invalid; `parameter` names it."},
        401: {"model": ErrorBody, "description": "Missing or invalid access token."},
        403: {"model": ErrorBody, "description": "`domain` names a domain outside the token's scope."},
        503: {"model": ErrorBody, "description": "The store is unavailable; retry later."},
        # Also stops FastAPI from documenting a 422 this route never sends.
        "4XX": {"model": ErrorBody, "description": "Any other client error (e.g. 404 for a malformed path)."},
    },
)
def download_bounces(
    request: Request,
    start_date: str = Path(
        pattern=DATE_PATTERN,
        description="First day `YYYY-MM-DD` (from 00:00:00Z) or an ISO 8601 timestamp with Z or offset.",
        examples=["2026-01-01"],
    ),
    end_date: str = Path(
        pattern=DATE_PATTERN,
        description="Last day `YYYY-MM-DD` (its whole day included) or an ISO 8601 timestamp "
        "with Z or offset (inclusive).",
        examples=["2026-01-31"],
    ),
    access_token: str | None = Query(
        None, description="API token (or send `Authorization: Bearer <token>`)."
    ),
    format: Literal["json", "csv", "ndjson"] | None = Query(
        None, description="Response format; overrides the Accept header."
    ),
    limit: int | None = Query(
        None,
        ge=1,
        le=MAX_LIMIT,
        description=f"Events per page (json: default {DEFAULT_LIMIT}; csv/ndjson: default all, streamed).",
    ),
    cursor: str | None = Query(None, max_length=64, description="`next_cursor` of the previous page."),
    type: list[EventType] | None = Query(None, description="Only these event types (repeatable)."),
    severity: Literal["hard", "soft"] | None = Query(None, description="Only hard or only soft events."),
    reason: str | None = Query(None, min_length=1, max_length=100, description="Only this reason."),
    recipient_domain: str | None = Query(
        None, min_length=1, max_length=253, description="Only recipients at this domain (exact, case-insensitive)."
    ),
    domain: list[str] | None = Query(
        None, description="Only these sender domains (repeatable); each must belong to the token."
    ),
    principal: Principal = Depends(require_token),
    ctx: ApiContext = Depends(context),
) -> Response:
    del access_token  # read by require_token; declared here for the OpenAPI document
    try:
        fmt = format or negotiate(request.headers.get("accept"))
        query = _query(ctx, principal, start_date, end_date, type, severity, reason, recipient_domain, domain)
        after_id = decode_cursor(cursor, query) if cursor is not None else 0
        if fmt == "json" or limit is not None:
            return _page(ctx, request, query, fmt, after_id, limit or DEFAULT_LIMIT)
        return _stream(ctx, query, fmt, after_id)
    except ParamError as exc:
        return error_response(exc.status, str(exc), exc.parameter, _common_headers())
    except StoreUnavailable:
        return error_response(503, "the event store is unavailable; retry later", None,
                              {**_common_headers(), "Retry-After": "5"})


def _query(
    ctx: ApiContext,
    principal: Principal,
    start_date: str,
    end_date: str,
    types: Sequence[str] | None,
    severity: str | None,
    reason: str | None,
    recipient_domain: str | None,
    domains: Sequence[str] | None,
) -> DownloadQuery:
    start, end = parse_range(start_date, end_date, _max_range_days(ctx))
    return DownloadQuery(
        domains=token_scope(principal, domains),
        start=start,
        end=end,
        types=tuple(sorted(set(types or ()))),
        hard=None if severity is None else severity == "hard",
        reason=reason,
        recipient_domain=_recipient_domain(recipient_domain),
    )


def _recipient_domain(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return parse_domain(value)  # IDN: ü -> xn--
    except AddressError as exc:
        raise ParamError("recipient_domain", f"{value[:100]!r} is not a domain name (e.g. example.net): {exc}") from None


def _max_range_days(ctx: ApiContext) -> int:
    api = getattr(ctx.config, "api", None)
    return int(getattr(api, "max_range_days", DEFAULT_MAX_RANGE_DAYS))


def _page(
    ctx: ApiContext, request: Request, query: DownloadQuery, fmt: str, after_id: int, limit: int
) -> Response:
    rows = ctx.store().rendered_page(query, "csv" if fmt == "csv" else "json", after_id, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1][0], query) if more else None
    headers = _common_headers()
    if fmt == "json":
        body = (
            '{"events":['
            + ",".join([r[1] for r in rows])
            + '],"next_cursor":'
            + json.dumps(next_cursor)
            + ',"count":'
            + str(len(rows))
            + "}"
        )
        return Response(body.encode("utf-8"), media_type=MEDIA_TYPES["json"], headers=headers)
    headers["X-Event-Count"] = str(len(rows))
    if next_cursor is not None:
        headers["X-Next-Cursor"] = next_cursor
        params = [(k, v) for k, v in request.query_params.multi_items() if k not in ("cursor", "access_token")]
        headers["Link"] = f'<{request.url.path}?{urlencode(params + [("cursor", next_cursor)])}>; rel="next"'
    headers["Content-Disposition"] = _attachment(query, fmt)
    chunk = _chunk(rows, fmt)
    if fmt == "csv":
        chunk = _csv_header() + chunk
    return Response(chunk, media_type=MEDIA_TYPES[fmt], headers=headers)


def _stream(ctx: ApiContext, query: DownloadQuery, fmt: str, after_id: int) -> Response:
    """Everything in the range after ``after_id``, streamed batch by batch."""
    batches = ctx.store().iter_rendered(query, fmt if fmt == "csv" else "json", after_id, STREAM_BATCH)
    # The first batch is fetched here, before the response starts: a store
    # that is unavailable is still a clean 503, not a truncated 200.
    first = next(batches, None)

    def body() -> Iterator[bytes]:
        if fmt == "csv":
            yield _csv_header()
        batch = first
        while batch:
            yield _chunk(batch, fmt)
            batch = next(batches, None)

    headers = _common_headers()
    headers["Content-Disposition"] = _attachment(query, fmt)
    return StreamingResponse(body(), media_type=MEDIA_TYPES[fmt], headers=headers)


def _chunk(rows: list[tuple[int, str]], fmt: str) -> bytes:
    end = "\r\n" if fmt == "csv" else "\n"  # RFC 4180 §2: CRLF between records
    if not rows:
        return b""
    return (end.join([r[1] for r in rows]) + end).encode("utf-8")


def _csv_header() -> bytes:
    return (CSV_HEADER + "\r\n").encode("ascii")


def _attachment(query: DownloadQuery, fmt: str) -> str:
    def stamp(t: float) -> str:
        return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(max(0.0, min(t, 253402300799.0))))

    return f'attachment; filename="bounces_{stamp(query.start)}_{stamp(query.end)}.{fmt}"'


def _common_headers() -> dict[str, str]:
    # Token-scoped data: never cached by intermediaries; the body depends on Accept.
    return {"Cache-Control": "no-store", "Vary": "Accept, Authorization"}


def _validation_error(exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [p for p in first.get("loc", ()) if isinstance(p, str) and p not in ("query", "path", "header")]
    parameter = loc[0] if loc else None
    message = str(first.get("msg", "invalid value"))
    if parameter == "format":
        message += f" (one of {', '.join(FORMATS)})"
    elif parameter in ("start_date", "end_date"):  # say what a date looks like, not the regex
        try:
            parse_bound(parameter, str(first.get("input", "")))
        except ParamError as exc:
            message = exc.message
    return error_response(400, f"{parameter or 'request'}: {message}", parameter, _common_headers())


__all__ = ["router", "BounceEventOut", "EventsPage", "ErrorBody"]
