"""``GET /metrics``: Prometheus text exposition (issue 5, Prometheus section).

Every count comes from the store at scrape time (see
:mod:`bouncetrack.metrics.collector`): the pipe and the worker are other
processes, and counts kept in the store survive their restarts and ours. Each
app gets its own registry, built on first scrape, so several apps (tests) never
share series. It shows configured domain names and their volumes, never
recipients. Unauthenticated by default, like every exporter: ``api_listen`` is
bound to loopback by default, and the Host allow-list (:mod:`.edge`) keeps
DNS-rebinding pages out; with ``api.metrics_token`` (a ``sha256:`` hash, as for
API tokens) a scrape must present the token (``Authorization: Bearer``, Prometheus'
``authorization.credentials``), else 401 (issue 16).
"""

from __future__ import annotations

import hmac
import threading

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from ..bounce_pipe.client import cache_dir
from ..metrics.collector import build_registry
from ..core.tokens import hash_api_token
from .deps import ApiContext, context
from .auth import presented_token
from .validate import ValidationCollector

router = APIRouter()
_lock = threading.Lock()


def registry_for(request: Request, ctx: ApiContext) -> CollectorRegistry:
    registry: CollectorRegistry | None = getattr(request.app.state, "metrics_registry", None)
    if registry is None:
        with _lock:
            registry = getattr(request.app.state, "metrics_registry", None)
            if registry is None:
                registry = build_registry(lambda: ctx.config, ctx.store, tempfail_dir=cache_dir())
                registry.register(ValidationCollector(request.app))  # issue 19: address validation
                request.app.state.metrics_registry = registry
    return registry


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, ctx: ApiContext = Depends(context)) -> Response:
    # A sync handler: FastAPI runs it in its thread pool, and ctx.store() gives
    # that thread its own store connection.
    wanted = ctx.config.api.metrics_token_hash
    if wanted is not None:
        presented = hash_api_token(presented_token(request) or "").encode()
        if not hmac.compare_digest(presented, wanted.encode()):
            return Response("missing or invalid metrics token\n", status_code=401,
                            headers={"WWW-Authenticate": "Bearer"}, media_type="text/plain")
    return Response(generate_latest(registry_for(request, ctx)), media_type=CONTENT_TYPE_LATEST)
