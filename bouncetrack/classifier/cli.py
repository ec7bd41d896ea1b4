"""``bouncetrack classify FILE_OR_DIR...``: one JSON line per message (score.py's format).

The only I/O of the classifier package lives here.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator

import click

from . import classify as classify_bytes
from .model import NOT_BOUNCE, Report

MAX_FILE = 50 * 1024 * 1024
_SKIP_NAMES = frozenset({"truth.jsonl"})
_SKIP_EXT = (".jsonl", ".json", ".py", ".md", ".txt.gz", ".gz", ".zip", ".tar", ".pyc")


def iter_files(paths: tuple[str, ...] | list[str]) -> Iterator[str]:
    """Files named, and files under directories walked recursively in sorted order."""
    for p in paths:
        if os.path.isdir(p):
            for root, dirs, files in os.walk(p):
                dirs.sort()
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                for f in sorted(files):
                    if f in _SKIP_NAMES or f.startswith(".") or f.lower().endswith(_SKIP_EXT):
                        continue
                    if f.startswith("LICENSE") or f.startswith("README"):
                        continue
                    yield os.path.join(root, f)
        else:
            yield p


def classify_file(path: str) -> Report:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE)
    except OSError:
        return Report(kind=NOT_BOUNCE)
    return classify_bytes(raw)


@click.command("classify")
@click.argument("paths", nargs=-1, required=True, type=click.Path())
def classify(paths: tuple[str, ...]) -> None:
    """Classify bounce messages: one JSON line per message."""
    run(paths)


def run(paths: tuple[str, ...] | list[str]) -> None:
    out = sys.stdout
    for path in iter_files(paths):
        rep = classify_file(path)
        out.write(json.dumps(rep.to_json(file=path), ensure_ascii=False) + "\n")
    out.flush()


if __name__ == "__main__":
    classify()
