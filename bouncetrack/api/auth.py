"""API tokens: who may see which sender domains.

Tokens are configured per domain as ``sha256:<hex>`` hashes (config ``api_tokens``),
so the configuration never holds a usable secret. A request presents the token as
``?access_token=`` (the spec's form) or ``Authorization: Bearer``. The comparison
walks every configured hash with :func:`hmac.compare_digest` whether or not an
earlier one matched, so a wrong token and an unknown one cost the same time and
get the same 401 body.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Sequence

from fastapi import Depends, HTTPException, Request, status

from ..core.addresses import AddressError, parse_domain
from ..core.config import Config
from ..core.tokens import hash_api_token as token_hash
from .deps import ApiContext, context
from .pagination import ParamError

UNAUTHORIZED_DETAIL = "missing or invalid access token"
SESSION_COOKIE = "bt_session"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the sender domains its token covers."""

    domains: tuple[str, ...]
    token_hash: str


def token_scope(principal: Principal, asked: Sequence[str] | None) -> tuple[str, ...]:
    """The sender domains a request works on: those ``asked`` (its ``domain``
    parameters, as A-labels, each once) or, when none, all of the token's. A name
    that is no domain is a 400, one outside the token's scope a 403
    (:class:`ParamError` naming ``domain``)."""
    if not asked:
        return principal.domains
    wanted: list[str] = []
    for raw in asked:
        try:
            name = parse_domain(raw)
        except AddressError as exc:
            raise ParamError("domain", f"{raw[:100]!r} is not a domain name: {exc}") from None
        if name not in principal.domains:
            raise ParamError("domain", f"{raw[:100]!r} is not among this token's domains", 403)
        wanted.append(name)
    return tuple(dict.fromkeys(wanted))


def domains_for_token(config: Config, token: str | None) -> tuple[str, ...]:
    """The domains ``token`` may see; () when it is unknown. Constant time in the token."""
    presented = token_hash(token or "").encode()
    allowed: list[str] = []
    for domain, policy in sorted(config.domains.items()):
        matched = False
        for configured in policy.api_token_hashes:
            # Every hash is compared: no early exit that would leak which one matched.
            matched |= hmac.compare_digest(presented, configured.encode())
        if matched and token:
            allowed.append(domain)
    return tuple(allowed)


def presented_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip() or None
    return request.query_params.get("access_token") or None


def unauthorized() -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=UNAUTHORIZED_DETAIL,
        headers={"WWW-Authenticate": "Bearer"},
    )


def require_token(request: Request, ctx: ApiContext = Depends(context)) -> Principal:
    """FastAPI dependency for the JSON API: 401 unless the token covers some domain."""
    token = presented_token(request)
    domains = domains_for_token(ctx.config, token)
    if not domains:
        raise unauthorized()
    return Principal(domains=domains, token_hash=token_hash(token or ""))
