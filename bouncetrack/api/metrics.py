"""``GET /metrics``: Prometheus text exposition (issue 5, Prometheus section).

Every count comes from the store at scrape time (see
:mod:`bouncetrack.metrics.collector`): the pipe and the worker are other
processes, and counts kept in the store survive their restarts and ours. Each
app gets its own registry, built on first scrape, so several apps (tests) never
share series. Unauthenticated, like every exporter: bind ``api_listen`` to a
trusted address. It shows configured domain names and counts, never recipients.
"""

from __future__ import annotations

import threading

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from .app import ApiContext, context
from .validate import ValidationCollector

router = APIRouter()
_lock = threading.Lock()


def registry_for(request: Request, ctx: ApiContext) -> CollectorRegistry:
    registry: CollectorRegistry | None = getattr(request.app.state, "metrics_registry", None)
    if registry is None:
        from ..bounce_pipe.client import cache_dir
        from ..metrics.collector import build_registry

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
    return Response(generate_latest(registry_for(request, ctx)), media_type=CONTENT_TYPE_LATEST)
