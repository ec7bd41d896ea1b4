"""The ASGI application: one FastAPI app composed of one router per concern.

Routers live in their own modules (download, send, dashboard, metrics, ...) and get
the shared :class:`~.deps.ApiContext` through :func:`~.deps.context` (a FastAPI
dependency, in :mod:`.deps`), so handlers never reach for globals and tests can
build an app on any config.
"""

from __future__ import annotations

from typing import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from .. import __version__
from ..core.config import Config
from ..store import Store
from ..store.base import StoreUnavailable
from . import dashboard, download, forget, metrics, send, suppression, validate
from .deps import ApiContext
from .guard import RequestGuard


def create_app(config: Config, *, store_factory: Callable[[Config], Store] | None = None) -> FastAPI:
    ctx = ApiContext(config) if store_factory is None else ApiContext(config, store_factory)
    app = FastAPI(
        title="bouncetrack",
        version=__version__,
        description="Bounce and complaint tracking for Postfix: download API, send endpoint, suppression lists, dashboard.",
        # No /docs nor /redoc: they load their UI from a CDN onto the dashboard's
        # origin (issue 16). The schema stays at /openapi.json for any viewer.
        docs_url=None,
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.include_router(download.router)
    app.include_router(send.router)
    app.include_router(metrics.router)
    app.include_router(dashboard.router)
    app.include_router(suppression.router)  # issue 6: /v1/suppressions
    app.include_router(validate.router)  # issue 19: /v1/addresses/validate
    app.include_router(forget.router)  # issue 16: DELETE /v1/addresses/{address}
    dashboard.mount_static(app)

    async def store_unavailable(request: Request, exc: Exception) -> Response:
        # The routers answer their own 503s where they can say more (download,
        # send, suppressions); this catches the rest: a page, or JSON under /v1/.
        if request.url.path.startswith("/v1/"):
            return JSONResponse({"detail": "the store is unavailable; retry later"}, status_code=503,
                                headers={"Retry-After": "5"})
        return dashboard.store_unavailable_page(request)

    app.add_exception_handler(StoreUnavailable, store_unavailable)
    app.add_middleware(RequestGuard, current=lambda: ctx.config)  # issue 16: token before body, bounded bodies
    return app
