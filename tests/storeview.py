"""Read the store the way an operator would, for assertions: plain rows, no product code."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def rows(db_path: Path, table: str = "events") -> list[sqlite3.Row]:
    """Every row of ``table`` in id order; [] while the store does not exist yet."""
    if not db_path.exists():
        return []
    db = sqlite3.connect(db_path, timeout=30)
    db.row_factory = sqlite3.Row
    try:
        return db.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
    except sqlite3.OperationalError:  # schema not created yet
        return []
    finally:
        db.close()
