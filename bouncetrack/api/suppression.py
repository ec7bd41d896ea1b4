"""The suppression list API (issue 6): ``GET/POST /v1/suppressions``, ``DELETE /v1/suppressions/{address}``.

Who sees what: like the download API, the access token (``?access_token=`` or
``Authorization: Bearer``) is checked first (:func:`bouncetrack.api.auth.require_token`)
and scopes everything to the token's sender domains. ``domain=`` narrows the scope;
naming a domain outside it is a 403, never an empty result.

- ``GET`` lists active entries (``state=all`` adds expired and removed ones), in
  the order they were first listed, a page of ``limit`` (keyset ``cursor``).
- ``POST`` puts addresses on one domain's list by hand (``domain`` may be left out
  when the token covers one domain); an existing entry is replaced.
- ``DELETE /v1/suppressions/{address}`` removes the address from every domain in
  scope (or ``domain=``); 404 when it was listed nowhere.

The milter sees a change within its refresh interval (a few seconds). Errors are
JSON ``{"detail": "...", "parameter": "..."}`` like the download API's.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from ..core.events import iso_utc
from ..store.base import MAX_ROW_ID, REASON_MANUAL, StoreUnavailable
from ..store.views import Suppression
from ..core.addresses import AddressError, parse_address
from .deps import ApiContext, ErrorBody, context, error_response, errors_are_400
from .auth import Principal, require_token, token_scope
from .pagination import ParamError

DEFAULT_LIMIT = 1000
MAX_LIMIT = 10000
MAX_ADD = 1000
DAY = 86400.0


class SuppressionOut(BaseModel):
    """One entry of a sender domain's suppression list."""

    domain: str = Field(description="Sender domain whose mail the entry applies to.")
    address: str = Field(description="Recipient address, lower-case.")
    reason: str = Field(description="hard_bounce, complaint, soft_bounces, manual, or the text given when added.")
    source_event_id: str | None = Field(description="The event that listed it; null when added by hand.")
    created_at: str = Field(description="When it was listed (ISO 8601 UTC).")
    expires_at: str | None = Field(description="When it stops applying (ISO 8601 UTC); null: never.")
    removed_at: str | None = Field(description="When it was removed (only with state=all).")
    active: bool = Field(description="Applies now: not removed, not expired.")


class SuppressionPage(BaseModel):
    suppressions: list[SuppressionOut]
    count: int
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class SuppressionAdd(BaseModel):
    """Addresses to put on one domain's list."""

    addresses: list[str] = Field(min_length=1, max_length=MAX_ADD, description="Recipient addresses.")
    domain: str | None = Field(
        default=None, max_length=253, description="Sender domain; may be left out when the token covers one domain."
    )
    reason: str = Field(default=REASON_MANUAL, min_length=1, max_length=200)
    expire_days: float | None = Field(
        default=None, gt=0, le=36600, description="Days until the entries expire; null: never."
    )


class SuppressionAdded(BaseModel):
    added: int
    suppressions: list[SuppressionOut]


class SuppressionRemoved(BaseModel):
    removed: int
    domains: list[str] = Field(description="Domains whose list held the address.")


def _validation_error(exc: RequestValidationError) -> Response:
    """400 naming the parameter (the download API's convention)."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "header", "body")]
    parameter = loc[0] if loc else None
    where = ".".join(loc) or "request"
    return error_response(400, f"{where}: {first.get('msg', 'invalid value')}", parameter, _NO_STORE)


ROUTE_CLASS = errors_are_400(_validation_error)
router = APIRouter(route_class=ROUTE_CLASS, tags=["suppression"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "A parameter is invalid; `parameter` names it."},
    401: {"model": ErrorBody, "description": "Missing or invalid access token."},
    403: {"model": ErrorBody, "description": "`domain` names a domain outside the token's scope."},
    503: {"model": ErrorBody, "description": "The store is unavailable; retry later."},
    "4XX": {"model": ErrorBody, "description": "Any other client error."},
}


@router.get(
    "/v1/suppressions",
    summary="List suppressed recipients",
    response_model=SuppressionPage,
    responses=_ERRORS,
)
def list_suppressions(
    access_token: str | None = Query(None, description="API token (or send `Authorization: Bearer <token>`)."),
    domain: list[str] | None = Query(None, description="Only these sender domains (repeatable), in the token's scope."),
    address: str | None = Query(None, min_length=3, max_length=320, description="Only this recipient address."),
    state: Literal["active", "all"] = Query("active", description="`all` adds expired and removed entries."),
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="Entries per page."),
    cursor: str | None = Query(None, max_length=20, pattern=r"^[0-9]+$", description="`next_cursor` of the previous page."),
    principal: Principal = Depends(require_token),
    ctx: ApiContext = Depends(context),
) -> Response:
    del access_token  # read by require_token; declared for the OpenAPI document
    try:
        domains = token_scope(principal, domain)
        wanted = _address(address, "address") if address is not None else None
        after_id = int(cursor or 0)
        if after_id > MAX_ROW_ID:
            raise ParamError("cursor", "not a cursor issued by this API (pass next_cursor unchanged)")
        now = time.time()
        rows = ctx.store().suppressions(
            domains, now, address=wanted, after_id=after_id, limit=limit + 1,
            include_inactive=state == "all",
        )
    except ParamError as exc:
        return error_response(exc.status, str(exc), exc.parameter, _NO_STORE)
    except StoreUnavailable:
        return _unavailable()
    page = rows[:limit]
    more = len(rows) > limit
    body = SuppressionPage(
        suppressions=[_out(s, now) for s in page],
        count=len(page),
        next_cursor=str(page[-1].id) if more and page else None,
    )
    return JSONResponse(body.model_dump(), headers={"Cache-Control": "no-store"})


@router.post(
    "/v1/suppressions",
    summary="Suppress recipients by hand",
    status_code=201,
    response_model=SuppressionAdded,
    responses=_ERRORS,
)
def add_suppressions(
    body: SuppressionAdd,
    access_token: str | None = Query(None, description="API token (or send `Authorization: Bearer <token>`)."),
    principal: Principal = Depends(require_token),
    ctx: ApiContext = Depends(context),
) -> Response:
    del access_token
    try:
        if body.domain is None:
            if len(principal.domains) != 1:
                raise ParamError("domain", "the token covers several domains; name one")
            domain = principal.domains[0]
        else:
            (domain,) = token_scope(principal, [body.domain])
        addresses = [_address(a, f"addresses[{i}]") for i, a in enumerate(body.addresses)]
        now = time.time()
        expires = None if body.expire_days is None else now + body.expire_days * DAY
        entries = [
            Suppression(domain=domain, address=a, reason=body.reason, source_event_id=None,
                        created_at=now, expires_at=expires)
            for a in dict.fromkeys(addresses)
        ]
        ctx.store().add_suppressions(entries)
    except ParamError as exc:
        return error_response(exc.status, str(exc), exc.parameter, _NO_STORE)
    except StoreUnavailable:
        return _unavailable()
    out = SuppressionAdded(added=len(entries), suppressions=[_out(e, now) for e in entries])
    return JSONResponse(out.model_dump(), status_code=201, headers={"Cache-Control": "no-store"})


@router.delete(
    "/v1/suppressions/{address}",
    summary="Remove a recipient from the suppression lists",
    response_model=SuppressionRemoved,
    responses={**_ERRORS, 404: {"model": ErrorBody, "description": "The address is on no list in scope."}},
)
def remove_suppression(
    address: str = Path(min_length=3, max_length=320, description="Recipient address."),
    access_token: str | None = Query(None, description="API token (or send `Authorization: Bearer <token>`)."),
    domain: list[str] | None = Query(None, description="Only these sender domains (repeatable), in the token's scope."),
    principal: Principal = Depends(require_token),
    ctx: ApiContext = Depends(context),
) -> Response:
    del access_token
    try:
        domains = token_scope(principal, domain)
        wanted = _address(address, "address")
        removed = ctx.store().remove_suppressions(domains, [wanted], time.time())
    except ParamError as exc:
        return error_response(exc.status, str(exc), exc.parameter, _NO_STORE)
    except StoreUnavailable:
        return _unavailable()
    if not removed:
        return error_response(404, f"{wanted} is not suppressed for {', '.join(domains)}", "address", _NO_STORE)
    out = SuppressionRemoved(removed=len(removed), domains=sorted({d for d, _ in removed}))
    return JSONResponse(out.model_dump(), headers={"Cache-Control": "no-store"})


# ----------------------------------------------------------------- helpers


def _address(raw: str, parameter: str) -> str:
    try:
        return parse_address(raw).key
    except AddressError as exc:
        raise ParamError(parameter, f"not an email address: {raw[:100]!r}: {exc}") from None


def _out(s: Suppression, now: float) -> SuppressionOut:
    return SuppressionOut(
        domain=s.domain,
        address=s.address,
        reason=s.reason,
        source_event_id=s.source_event_id,
        created_at=iso_utc(s.created_at) or "",
        expires_at=iso_utc(s.expires_at) if s.expires_at is not None else None,
        removed_at=iso_utc(s.removed_at) if s.removed_at is not None else None,
        active=s.active(now),
    )


_NO_STORE = {"Cache-Control": "no-store"}


def _unavailable() -> JSONResponse:
    return error_response(503, "the store is unavailable; retry later", None, {**_NO_STORE, "Retry-After": "5"})


__all__ = ["router", "SuppressionOut", "SuppressionPage", "SuppressionAdd"]
