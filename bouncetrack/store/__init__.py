"""Store selection by URL. Import cost matters: the pipe imports this."""

from __future__ import annotations

# Lazy imports: each engine's module only when its URL is opened (the SQLite pipe never loads
# psycopg); the Store type only for type hints.

from typing import TYPE_CHECKING, Any

from .base import StoreUnavailable

if TYPE_CHECKING:
    from .interfaces import Store


def open_store(url: str, *, timeout: float = 10.0) -> Store:
    """Open the store named by ``url`` (``sqlite:///abs/path`` or ``postgresql://…``).

    ``timeout`` bounds every wait on a lock; past it :class:`StoreUnavailable`.
    """
    if url.startswith("sqlite:"):
        from .sqlite import SQLiteStore

        return SQLiteStore.from_url(url, timeout=timeout)
    if url.startswith(("postgresql:", "postgres:")):
        # psycopg is imported here only: the SQLite pipe never loads it.
        try:
            from .postgres import PostgresStore
        except ImportError as exc:  # pragma: no cover - a broken install
            raise StoreUnavailable(
                f"the PostgreSQL store needs psycopg 3 (pip install 'psycopg[binary]'): {exc}"
            ) from exc

        return PostgresStore.from_url(url, timeout=timeout)
    raise ValueError(f"unsupported store URL {url!r}: expected sqlite:///path or postgresql://…")


def __getattr__(name: str) -> Any:
    """``Store`` (a Protocol, for type hints) is loaded on first use, not on the pipe's path."""
    if name == "Store":
        from .interfaces import Store

        return Store
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Store", "StoreUnavailable", "open_store"]
