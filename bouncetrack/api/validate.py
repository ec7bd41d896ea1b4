"""``POST /v1/addresses/validate``: can these recipients receive mail? (issue 19)

A batch of at most ``validation.max_batch`` addresses per request, and at most
``validation.rate_per_minute`` addresses per API token per minute (a token bucket; 429
with ``Retry-After`` beyond). Each address gets a verdict from
:mod:`bouncetrack.validation` (syntax, domain, provider, suppression): the suppression
check reads only the caller's own sender domains (``domain`` narrows them; a domain
outside the token is a 403). The app keeps one validator (its DNS cache) and counts
verdicts for ``/metrics`` (``bouncetrack_address_validations_total``) and the dashboard.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any, Iterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel, Field
from starlette.applications import Starlette

from ..store.base import StoreUnavailable
from ..core.config import ValidationConfig
from ..validation import VERDICTS, build_validator, store_suppressed
from .deps import ApiContext, ErrorBody, context, error_response
from .auth import Principal, require_token, token_scope
from .pagination import ParamError

router = APIRouter(tags=["addresses"])


class ValidateRequest(BaseModel):
    """Addresses to check before sending to them."""

    addresses: list[str] = Field(min_length=1, description="Recipient addresses (at most `validation.max_batch`).")
    domain: str | None = Field(
        default=None, max_length=253,
        description="Check this sender domain's suppression list (default: every domain of the token).",
    )


class VerdictOut(BaseModel):
    input: str = Field(description="The address as sent.")
    address: str | None = Field(description="Its canonical form (domain in A-labels); null when the syntax failed.")
    verdict: str = Field(description="valid, invalid, suppressed or unknown (DNS failed: try later).")
    check: str | None = Field(description="The check that failed: syntax, domain, provider, suppression, dns.")
    reason: str = Field(description="What is wrong, readable.")
    provider: str | None = Field(description="The mailbox provider whose rules applied (gmail, yahoo, ...), if any.")


class ValidateResponse(BaseModel):
    results: list[VerdictOut]
    counts: dict[str, int] = Field(description="Results by verdict.")


class _Bucket:
    __slots__ = ("tokens", "at")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at


class ValidationState:
    """Per app: the validator (one DNS cache for every request) and the per-token rate."""

    def __init__(self, settings: ValidationConfig) -> None:
        self.settings = settings
        self.validator = build_validator(settings)
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()
        # Verdicts by the sender domains a request was scoped to (the dashboard shows a
        # user only the scopes inside its own domains); keys are configured domains only.
        self._by_scope: dict[tuple[str, ...], dict[str, int]] = {}

    def reconfigure(self, settings: ValidationConfig) -> None:
        """Follow a reloaded ``validation:`` block (SIGHUP): a new resolver and cache as
        configured, the new batch cap and rate; the verdict counts carry over."""
        validator = build_validator(settings)
        for key, n in self.validator.counts.items():
            validator.counts[key] = validator.counts.get(key, 0) + n
        self.validator, self.settings = validator, settings

    @property
    def rate(self) -> float:
        """Addresses a token may check per minute."""
        return float(self.settings.rate_per_minute)

    @property
    def max_batch(self) -> int:
        return self.settings.max_batch

    def record(self, scope: tuple[str, ...], verdicts: list[str]) -> None:
        with self._lock:
            counts = self._by_scope.setdefault(tuple(sorted(scope)), dict.fromkeys(VERDICTS, 0))
            for v in verdicts:
                counts[v] = counts.get(v, 0) + 1

    def visible_counts(self, domains: tuple[str, ...]) -> dict[str, int]:
        """Verdict counts of the requests scoped within ``domains`` (never another tenant's)."""
        allowed = set(domains)
        out = dict.fromkeys(VERDICTS, 0)
        with self._lock:
            for scope, counts in self._by_scope.items():
                if set(scope) <= allowed:
                    for v, n in counts.items():
                        out[v] = out.get(v, 0) + n
        return out

    def take(self, token_hash: str, n: int, now: float) -> float:
        """Spend ``n`` addresses of the token's minute allowance; 0 when allowed, else
        the seconds to wait. Buckets hold at most one minute's worth (the burst)."""
        with self._lock:
            b = self._buckets.get(token_hash)
            if b is None:
                if len(self._buckets) > 10_000:  # forget idle tokens: bounded memory
                    self._buckets = {k: v for k, v in self._buckets.items() if now - v.at < 60}
                b = self._buckets[token_hash] = _Bucket(self.rate, now)
            b.tokens = min(self.rate, b.tokens + (now - b.at) * self.rate / 60.0)
            b.at = now
            if b.tokens >= n:
                b.tokens -= n
                return 0.0
            return (n - b.tokens) * 60.0 / self.rate

    def counts(self) -> dict[tuple[str, str], int]:
        return dict(self.validator.counts)


_lock = threading.Lock()


def state_for(app: Starlette, ctx: ApiContext) -> ValidationState:
    """The app's validation state, built at first use and following the configuration
    the API serves now (a reload that changed ``validation:`` applies to the next request)."""
    settings = ctx.config.validation
    state: ValidationState | None = getattr(app.state, "validation", None)
    if state is None or state.settings != settings:
        with _lock:
            state = getattr(app.state, "validation", None)
            if state is None:
                state = ValidationState(settings)
                app.state.validation = state
            elif state.settings != settings:
                state.reconfigure(settings)
    return state


@router.post(
    "/v1/addresses/validate",
    response_model=ValidateResponse,
    summary="Check recipient addresses before sending (syntax, MX/A, provider rules, suppression)",
    responses={400: {"model": ErrorBody}, 403: {"model": ErrorBody}, 429: {"model": ErrorBody},
               503: {"model": ErrorBody}},
)
def validate_addresses(
    body: ValidateRequest,
    request: Request,
    principal: Principal = Depends(require_token),
    ctx: ApiContext = Depends(context),
) -> JSONResponse:
    """Never a connection to port 25: DNS (cached for the records' TTL) and local rules only."""
    state = state_for(request.app, ctx)
    if len(body.addresses) > state.max_batch:
        return error_response(400, f"addresses: at most {state.max_batch} per request, got {len(body.addresses)}",
                              "addresses")
    try:
        scope = token_scope(principal, None if body.domain is None else [body.domain])
    except ParamError as exc:
        return error_response(exc.status, str(exc), exc.parameter)
    wait = state.take(principal.token_hash, len(body.addresses), time.monotonic())
    if wait > 0:
        return error_response(429, f"more than {int(state.rate)} addresses a minute for this token; retry later",
                              None, {"Retry-After": str(max(1, math.ceil(wait)))})
    lookup = store_suppressed(ctx.store(), scope)
    validator = state.validator
    try:
        results = [validator.check(raw, lookup) for raw in body.addresses]
    except StoreUnavailable:
        return error_response(503, "the store is unavailable (suppression lists); retry later", None, {"Retry-After": "5"})
    counts = {v: 0 for v in VERDICTS}
    for r in results:
        counts[r.verdict] += 1
    state.record(scope, [r.verdict for r in results])
    out = ValidateResponse(results=[VerdictOut(**r.as_dict()) for r in results], counts=counts)
    return JSONResponse(out.model_dump(), headers={"Cache-Control": "no-store"})


def undeliverable_recipients(app: Starlette, ctx: ApiContext, mail_from: str,
                             recipients: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The send API's ``validate_recipients`` option (per sender domain): (422 errors in
    FastAPI's shape, one per recipient that cannot receive mail; warnings for the ones
    DNS could not decide, which are sent). Suppression is left to the milter's policy."""
    if not ctx.config.policy_for(mail_from.rpartition("@")[2]).validate_recipients:
        return [], []
    state = state_for(app, ctx)
    errors: list[dict[str, Any]] = []
    warnings: list[str] = []
    verdicts: list[str] = []
    for i, rcpt in enumerate(recipients):
        v = state.validator.check(rcpt)
        verdicts.append(v.verdict)
        if v.verdict == "invalid":
            errors.append({"type": "value_error", "loc": ("body", "recipient", i), "input": rcpt,
                           "msg": f"cannot receive mail ({v.check} check): {v.reason}"})
        elif v.verdict == "unknown":
            warnings.append(f"{rcpt}: not validated ({v.reason})")
    state.record((mail_from.rpartition("@")[2].lower(),), verdicts)
    return errors, warnings


def dashboard_counts(app: Starlette, domains: tuple[str, ...]) -> dict[str, int] | None:
    """The dashboard's panel: verdicts since the API started, within ``domains``; None
    before the first validation."""
    state: ValidationState | None = getattr(app.state, "validation", None)
    return None if state is None else state.visible_counts(domains)


class ValidationCollector(Collector):
    """``bouncetrack_address_validations_total{verdict,check}`` and the DNS cache's size
    and hits/misses, from the app's :class:`ValidationState` (none until first use)."""

    def __init__(self, app: Starlette) -> None:
        self._app = app

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        state: ValidationState | None = getattr(self._app.state, "validation", None)
        total = CounterMetricFamily("bouncetrack_address_validations",
                                    "Addresses validated by this API process (validate endpoint and send API), "
                                    "by verdict and by the check that failed", labels=["verdict", "check"])
        counts = state.counts() if state is not None else {}
        for verdict in sorted(set(VERDICTS) - {v for v, _ in counts}):  # every verdict present, 0 until seen
            total.add_metric([verdict, ""], 0)
        for (verdict, check), n in sorted(counts.items()):
            total.add_metric([verdict, check], n)
        yield total
        if state is not None:
            cache = state.validator.cache
            yield GaugeMetricFamily("bouncetrack_address_dns_cache_entries", "Domains in the validation DNS cache",
                                    value=len(cache))
            lookups = CounterMetricFamily("bouncetrack_address_dns_cache_lookups",
                                          "Validation DNS cache lookups by result", labels=["result"])
            lookups.add_metric(["hit"], cache.hits)
            lookups.add_metric(["miss"], cache.misses)
            yield lookups
