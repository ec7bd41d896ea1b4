#!/usr/bin/env python3
"""The classifier on a held-out set: flufl.bounce's test samples, which it was not built on.

The shared corpus (Sisimai's set-of-emails) is what the classifier was tuned against; this
set is not. flufl.bounce (Mailman's bounce detector, on PyPI) ships ~100 real bounces of
many MTA families in its sdist, each labelled with the addresses it names and whether the
failure is temporary (``tests/test_detectors.py``). Nothing of it is copied into this
repository: the sdist is downloaded from PyPI at run time (``pip download``; or give
``--sdist PATH``), its labels are read with ``ast.literal_eval`` (never imported or run).

Reported: the share of samples whose labelled addresses the classifier all finds (the
figure that matters for attribution), address recall and precision, how many samples it
calls a bounce (or a delivery report for temporary ones), and whether temporary/permanent
agree (temporary: action "delayed" or a 4.x.x status). Every miss is listed: a held-out
set is for reading failures, not for tuning towards a number.

    python bench/heldout_flufl.py [--sdist flufl_bounce-6.0.0.tar.gz] [--version 6.0.0]
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

Label = tuple[str, str, list[bytes], bool]  # detector, sample file, addresses, temporary


def labels(test_module: str) -> list[Label]:
    """The (detector, file, addresses, temporary) tuples assigned in flufl's test module."""
    for node in ast.walk(ast.parse(test_module)):
        if isinstance(node, ast.Assign) and isinstance(node.value, (ast.List, ast.Tuple)):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            rows = [row for row in value if isinstance(row, tuple) and len(row) >= 3]
            if rows and all(isinstance(r[1], str) and isinstance(r[2], list) for r in rows):
                return [(r[0], r[1], list(r[2]), bool(r[3]) if len(r) > 3 else False) for r in rows]
    raise SystemExit("no label table found in flufl's test_detectors.py")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--sdist", type=Path, help="a flufl.bounce sdist (.tar.gz); default: download from PyPI")
    ap.add_argument("--version", default="6.0.0", help="the flufl.bounce release to download (default 6.0.0)")
    a = ap.parse_args()

    from bouncetrack.classifier import classify

    with tempfile.TemporaryDirectory(prefix="bt-heldout-") as tmp:
        src = pypi_sdist("flufl.bounce", a.version, "flufl*bounce*.tar.gz", Path(tmp), a.sdist)
        tests = next(src.glob("*/tests"))
        table = labels((tests / "test_detectors.py").read_text())
        expected: dict[str, set[str]] = {}
        temporary: dict[str, bool] = {}
        for _detector, name, addresses, temp in table:
            expected.setdefault(name, set()).update(x.decode().lower() for x in addresses)
            temporary[name] = temporary.get(name, False) or temp
        results = {name: classify((tests / "data" / name).read_bytes()) for name in sorted(expected)}

    samples = len(results)
    all_found = 0
    found_addresses = wanted_addresses = reported_addresses = correct_reported = 0
    called_bounce = temp_agree = temp_total = 0
    misses: list[dict[str, Any]] = []
    for name, report in results.items():
        got = {r.address.lower() for r in report.recipients if r.address}
        want = expected[name]
        wanted_addresses += len(want)
        found_addresses += len(want & got)
        if want:
            reported_addresses += len(got)
            correct_reported += len(want & got)
        ok = want <= got and (bool(got) or not want)
        all_found += ok
        called_bounce += report.kind in ("bounce", "delivery_report")
        for r in report.recipients:
            if r.address and r.address.lower() in want:
                temp_total += 1
                is_temp = (r.action or "").lower() == "delayed" or (r.status or "").startswith("4")
                temp_agree += is_temp == temporary[name]
        if not ok:
            misses.append({"file": name, "kind": report.kind, "expected": sorted(want), "got": sorted(got)})

    figures = {
        "samples": samples,
        "samples_all_addresses_found": all_found / samples,
        "address_recall": found_addresses / max(wanted_addresses, 1),
        "address_precision": correct_reported / max(reported_addresses, 1),
        "called_bounce_or_report": called_bounce / samples,
        "temporary_agreement": temp_agree / max(temp_total, 1),
    }
    print(f"flufl.bounce {a.version if a.sdist is None else a.sdist.name}: {samples} labelled samples")
    for key, value in figures.items():
        print(f"  {key:30s} {value:.3f}" if isinstance(value, float) else f"  {key:30s} {value}")
    for miss in misses:
        print(f"  MISS {miss['file']:22s} {miss['kind']:15s} expected {miss['expected']} got {miss['got']}")
    path = write_result("heldout_flufl", {"benchmark": "heldout_flufl", "source": f"flufl.bounce {a.version}",
                                          **figures, "misses": misses})
    print(f"written {path}")


if __name__ == "__main__":
    main()
