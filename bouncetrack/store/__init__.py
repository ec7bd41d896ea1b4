"""Store selection by URL. Import cost matters: the pipe imports this."""

from __future__ import annotations

from .base import Store, StoreUnavailable


def open_store(url: str, *, timeout: float = 10.0) -> Store:
    """Open the store named by ``url`` (``sqlite:///abs/path`` or ``postgresql://…``).

    ``timeout`` bounds every wait on a lock; past it :class:`StoreUnavailable`.
    """
    if url.startswith("sqlite:"):
        from .sqlite import SQLiteStore

        return SQLiteStore.from_url(url, timeout=timeout)
    if url.startswith(("postgresql:", "postgres:")):
        raise StoreUnavailable("the PostgreSQL store is not built yet (issue 6)")
    raise ValueError(f"unsupported store URL {url!r}: expected sqlite:///path or postgresql://…")


__all__ = ["Store", "StoreUnavailable", "open_store"]
