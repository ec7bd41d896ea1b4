"""The ASGI application: one FastAPI app composed of one router per concern.

Routers live in their own modules (download, send, dashboard, metrics) and get
the shared :class:`ApiContext` through :func:`context` (a FastAPI dependency),
so handlers never reach for globals and tests can build an app on any config.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ..config import Config
from ..store import Store, open_store
from ..store.base import StoreUnavailable


@dataclass
class ApiContext:
    """What every request may need: the current config and a way to reach the store.

    SQLite connections are not shared across threads: each worker thread gets its
    own store (FastAPI runs sync handlers in a thread pool).

    :meth:`apply` swaps the configuration (SIGHUP, :mod:`bouncetrack.reload`):
    requests read ``config`` when they run, so tokens, domains and scopes apply to
    the next request; a changed ``store_url`` makes each thread open the new store;
    ``on_apply`` callbacks rebuild what was derived from the old one.
    """

    config: Config
    store_factory: Callable[[Config], Store] = field(default=lambda c: open_store(c.store_url, timeout=10.0))
    _local: threading.local = field(default_factory=threading.local)
    on_apply: list[Callable[[Config], None]] = field(default_factory=list)

    def store(self) -> Store:
        store: Store | None = getattr(self._local, "store", None)
        url = self.config.store_url
        if store is not None and getattr(self._local, "url", url) != url:
            store.close()  # the configuration names another store now
            store = None
        if store is None:
            store = self.store_factory(self.config)
            self._local.store = store
            self._local.url = url
        return store

    def apply(self, config: Config) -> None:
        """Serve the next requests with ``config``."""
        self.config = config
        for callback in self.on_apply:
            callback(config)


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


def create_app(config: Config, *, store_factory: Callable[[Config], Store] | None = None) -> FastAPI:
    from . import dashboard, download, forget, metrics, send, suppression, validate
    from .guard import RequestGuard

    ctx = ApiContext(config) if store_factory is None else ApiContext(config, store_factory)
    app = FastAPI(
        title="bouncetrack",
        version=_version(),
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


def _version() -> str:
    from .. import __version__

    return __version__
