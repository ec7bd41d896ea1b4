#!/usr/bin/env python3
"""The classifier of this checkout against the classifier of an earlier commit, in one process.

``bench/classify.py`` gives one checkout's ratio to plain MIME parsing; on a shared, noisy
machine two such runs are hard to compare. This script loads the ``bouncetrack/classifier``
package of ``--ref`` (extracted with ``git archive`` into a temporary directory and imported
under another name: the package imports only itself) beside this checkout's, then times
parsing, the reference and this checkout over the same corpus in alternating order, several
rounds, in CPU time (``time.process_time``: less disturbed by other processes than wall time).
Reported: best and median of each, as ratios to the parse time, and this checkout's time
over the reference's.

    python bench/classify_against.py --ref c61ff5e [--rounds 25] [--corpus DIR]
"""

from __future__ import annotations

import argparse
import importlib
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from email.parser import BytesParser
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import ROOT, shared_dir, write_result  # noqa: E402


def load_ref(ref: str, into: Path) -> Callable[[bytes], object]:
    """``classify`` of the classifier package at ``ref``, imported as ``classifier_at_ref``."""
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "bouncetrack/classifier"],
                         check=True, capture_output=True, timeout=120).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        members = [m for m in archive.getmembers() if (m.isfile() or m.isdir()) and ".." not in Path(m.name).parts]
        archive.extractall(into, members=members)  # noqa: S202 - our own repository, members checked
    (into / "bouncetrack" / "classifier").rename(into / "classifier_at_ref")
    sys.path.insert(0, str(into))
    module = importlib.import_module("classifier_at_ref")
    classify: Callable[[bytes], object] = module.classify
    return classify


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--ref", required=True, help="the git commit or branch to compare with")
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--corpus", type=Path, default=shared_dir() / "corpus" / "sisimai")
    a = ap.parse_args()

    from bouncetrack.classifier import classify

    blobs = [p.read_bytes() for p in sorted(a.corpus.rglob("*.eml"))]
    if not blobs:
        raise SystemExit(f"no .eml files under {a.corpus}")
    with tempfile.TemporaryDirectory(prefix="bt-classify-ref-") as tmp:
        reference = load_ref(a.ref, Path(tmp))
        parser = BytesParser()
        sides: dict[str, Callable[[bytes], object]] = {
            "parse": parser.parsebytes, "reference": reference, "this checkout": classify}
        for fn in sides.values():  # warm-up: lazily compiled patterns, imports
            for b in blobs:
                fn(b)
        times: dict[str, list[float]] = {k: [] for k in sides}
        for i in range(a.rounds):
            for name in (list(sides) if i % 2 == 0 else list(sides)[::-1]):
                fn = sides[name]
                t0 = time.process_time()
                for b in blobs:
                    fn(b)
                times[name].append(time.process_time() - t0)

    best = {k: min(v) for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in times.items()}
    figures = {
        "ref": a.ref, "messages": len(blobs), "rounds": a.rounds,
        "reference_ratio_to_parse_best": best["reference"] / best["parse"],
        "ratio_to_parse_best": best["this checkout"] / best["parse"],
        "reference_ratio_to_parse_median": median["reference"] / median["parse"],
        "ratio_to_parse_median": median["this checkout"] / median["parse"],
        "time_over_reference_best": best["this checkout"] / best["reference"],
        "time_over_reference_median": median["this checkout"] / median["reference"],
    }
    print(f"{len(blobs)} messages, {a.rounds} alternating rounds, CPU time")
    for name in sides:
        print(f"  {name:14s} best {best[name] * 1000:7.1f} ms  median {median[name] * 1000:7.1f} ms")
    print(f"ratio to parse: reference {figures['reference_ratio_to_parse_best']:.2f} (median "
          f"{figures['reference_ratio_to_parse_median']:.2f}), this checkout {figures['ratio_to_parse_best']:.2f} "
          f"(median {figures['ratio_to_parse_median']:.2f})")
    print(f"this checkout / reference: best {figures['time_over_reference_best']:.3f}, "
          f"median {figures['time_over_reference_median']:.3f}")
    print(f"written {write_result('classify_against', figures)}")


if __name__ == "__main__":
    main()
