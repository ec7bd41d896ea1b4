#!/usr/bin/env python3
"""Classifier throughput over the corpus, as a ratio to merely parsing the same files.

Loads every sample into memory, then in the same run and the same process times
(a) ``email.parser.BytesParser().parsebytes`` (compat32, the baseline) and
(b) ``bouncetrack.classifier.classify`` over all of them, several rounds each,
interleaved, best round kept (the machine is noisy). Targets (issue 4):
classify ≤ 3× the parse time, ≥ 2,000 messages/s on one core.

    python bench/classify.py [--rounds 7] [--corpus DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from email.parser import BytesParser
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import shared_dir, write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--corpus", type=Path, default=shared_dir() / "corpus" / "sisimai")
    a = ap.parse_args()

    from bouncetrack.classifier import classify

    files = sorted(p for p in a.corpus.rglob("*.eml"))
    blobs = [p.read_bytes() for p in files]
    if not blobs:
        raise SystemExit(f"no .eml files under {a.corpus}")

    def parse_all() -> None:
        parser = BytesParser()
        for b in blobs:
            parser.parsebytes(b)

    def classify_all() -> None:
        for b in blobs:
            classify(b)

    classify_all()  # warm-up: lazily compiled patterns, imports
    parse_times, classify_times = [], []
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        parse_all()
        parse_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        classify_all()
        classify_times.append(time.perf_counter() - t0)

    parse_best, classify_best = min(parse_times), min(classify_times)
    n = len(blobs)
    rate = n / classify_best
    ratio = classify_best / parse_best
    print(f"{n} messages, {sum(map(len, blobs)) / 1e6:.1f} MB, best of {a.rounds} rounds")
    print(f"parse only   {parse_best * 1000:8.1f} ms  {n / parse_best:8.0f} msg/s")
    print(f"classify     {classify_best * 1000:8.1f} ms  {rate:8.0f} msg/s  (target >= 2000)")
    print(f"ratio classify/parse {ratio:.2f}  (target <= 3.0)")
    path = write_result(
        "classify",
        {"messages": n, "rounds": a.rounds, "parse_seconds_best": parse_best, "classify_seconds_best": classify_best,
         "messages_per_second": rate, "ratio_to_parse": ratio, "target_ratio": 3.0, "target_rate": 2000},
    )
    print(f"written {path}")


if __name__ == "__main__":
    main()
