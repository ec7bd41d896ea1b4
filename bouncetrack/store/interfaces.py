"""The store's type for its callers: :class:`~bouncetrack.store.sql.SQLStore`, the
one implementation of every query on both engines (the SQLite and PostgreSQL
stores are it with their dialect). Its docstrings state the contracts.

Callers name it ``Store`` so that a module typing its store argument needs
nothing but this name.
"""

from __future__ import annotations

from .sql import SQLStore as Store

__all__ = ["Store"]
