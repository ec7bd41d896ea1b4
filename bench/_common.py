"""Shared bits of the benchmarks: result files, percentiles, the environment line."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def checkout_at(rev: str, into: Path) -> tuple[str, str]:
    """Extract ``rev``'s ``bouncetrack`` package into ``into`` (for the benchmarks that
    compare an earlier revision with this checkout in fresh interpreters); returns the
    short names of ``rev`` and of this checkout (``+uncommitted`` when its package has
    changes git does not hold yet)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "bouncetrack"],
                             stdout=subprocess.PIPE, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)

    def short(name: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", name],
                              capture_output=True, text=True, check=True).stdout.strip()

    after = short("HEAD")
    if subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "bouncetrack"],
                      capture_output=True, text=True, check=True).stdout.strip():
        after += "+uncommitted"
    return short(rev), after


def shared_dir() -> Path:
    return Path(os.environ.get("BOUNCETRACK_SHARED", ROOT.parent / "shared"))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p90": percentile(values, 0.90),
        "p99": percentile(values, 0.99),
        "mean": statistics.fmean(values),
        "min": min(values),
        "max": max(values),
    }


def write_result(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = {
        "benchmark": name,
        "taken_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        **data,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def pypi_sdist(project: str, version: str, pattern: str, into: Path, sdist: Path | None = None) -> Path:
    """Unpack ``project==version``'s sdist from PyPI (``pip download``; or the given
    ``sdist``) below ``into/src`` and return that folder, for the held-out scripts.

    Nothing of it is imported or run. Only regular files and directories inside the
    target are unpacked (Debian's 3.11 predates extractall's ``filter=`` argument).
    """
    if sdist is None:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        "-d", str(into), f"{project}=={version}"], check=True, timeout=300)
        found = sorted(into.glob(pattern))
        if not found:
            raise SystemExit(f"pip download left no {project} sdist in {into}")
        sdist = found[0]
    with tarfile.open(sdist) as tar:
        safe = [m for m in tar.getmembers() if (m.isfile() or m.isdir())
                and not m.name.startswith(("/", "..")) and ".." not in Path(m.name).parts]
        tar.extractall(into / "src", members=safe)  # noqa: S202 - members checked above
    return into / "src"
