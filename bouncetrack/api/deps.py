"""What the API's routers share: the :class:`ApiContext`, the :func:`context`
dependency, the error body (:func:`error_response`) and the route class that
answers a parameter's validation error with 400 (:func:`errors_are_400`).

Routers import this module, never :mod:`.app` (which imports the routers): the
API's imports go one way, app -> routers -> deps (issue 17).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Coroutine, Mapping

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

from ..core.config import Config
from ..store import Store, open_store


@dataclass
class ApiContext:
    """What every request may need: the current config and a way to reach the store.

    SQLite connections are not shared across threads: each worker thread gets its
    own store (FastAPI runs sync handlers in a thread pool).

    :meth:`apply` swaps the configuration (SIGHUP, :mod:`bouncetrack.core.reload`):
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


class ErrorBody(BaseModel):
    detail: str
    parameter: str | None = Field(default=None, description="The parameter at fault (400, 403).")


def error_response(status: int, detail: str, parameter: str | None, headers: Mapping[str, str] = {}) -> JSONResponse:
    """An error as the /v1/ routers answer it: :class:`ErrorBody` ``{"detail", "parameter"}``,
    with the router's ``headers``."""
    return JSONResponse({"detail": detail, "parameter": parameter}, status_code=status, headers=dict(headers))


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


def errors_are_400(render: Callable[[RequestValidationError], Response]) -> type[APIRoute]:
    """A route class for a router whose parameter errors are ``render(exc)`` (400 naming the
    parameter) instead of FastAPI's 422.

    Authentication is a dependency and runs first (FastAPI solves dependencies before it
    validates the operation's own parameters), so without a valid token the answer is 401
    whatever the parameters are.
    """

    class ParamErrorsAre400(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def route(request: Request) -> Response:
                try:
                    return await handler(request)
                except RequestValidationError as exc:
                    return render(exc)

            return route

    return ParamErrorsAre400
