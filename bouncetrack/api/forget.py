"""``DELETE /v1/addresses/{address}``: forget one address within the token's domains (issue 16).

The same deletion as ``bouncetrack forget`` (:mod:`bouncetrack.ops.forget`), scoped to
the access token's sender domains (``domain=`` narrows it; a domain outside the
token is a 403). Events without a sender domain (unattributed reports) are left to
the CLI, which sees every domain. Errors are JSON ``{"detail", "parameter"}`` like
the suppression API's.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from ..ops.forget import counts_dict, forget
from ..store.base import StoreUnavailable
from .deps import ApiContext, ErrorBody, context, error_response
from .auth import Principal, require_token, token_scope
from .pagination import ParamError
from .suppression import _NO_STORE, ROUTE_CLASS, _address, _unavailable

router = APIRouter(route_class=ROUTE_CLASS, tags=["privacy"])


class Forgotten(BaseModel):
    """What was deleted about the address, per kind of row."""

    address: str = Field(description="The address, as the store keys it (lower-case).")
    domains: list[str] = Field(description="The sender domains it was forgotten in.")
    deleted: dict[str, int] = Field(
        description=(
            "events, outbox_jobs (their deliveries), raw_reports (report bodies dropped), "
            "suppressions (entries turned into anonymous tombstones), recipients (rows of tracked messages)."
        )
    )


@router.delete(
    "/v1/addresses/{address}",
    summary="Forget an address: delete its events, report bodies, suppression entries and recipient rows",
    response_model=Forgotten,
    responses={
        400: {"model": ErrorBody, "description": "`address` or `domain` is invalid."},
        401: {"model": ErrorBody, "description": "Missing or invalid access token."},
        403: {"model": ErrorBody, "description": "`domain` names a domain outside the token's scope."},
        503: {"model": ErrorBody, "description": "The store is unavailable; retry later."},
    },
)
def forget_address(
    address: str = Path(min_length=3, max_length=320, description="Recipient address."),
    access_token: str | None = Query(None, description="API token (or send `Authorization: Bearer <token>`)."),
    domain: list[str] | None = Query(None, description="Only these sender domains (repeatable), in the token's scope."),
    principal: Principal = Depends(require_token),
    ctx: ApiContext = Depends(context),
) -> Response:
    """Idempotent: forgetting an address the store does not hold answers 200 with zero counts."""
    del access_token
    try:
        domains = token_scope(principal, domain)
        key = _address(address, "address")
        counts = forget(ctx.store(), key, domains)
    except ParamError as exc:
        return error_response(exc.status, str(exc), exc.parameter, _NO_STORE)
    except StoreUnavailable:
        return _unavailable()
    body = Forgotten(address=key, domains=list(domains), deleted=counts_dict(counts))
    return JSONResponse(body.model_dump(), headers={"Cache-Control": "no-store"})
