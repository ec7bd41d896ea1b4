"""The classifier scored on the shared Sisimai corpus with score.py; floors catch regressions.

Floors sit just under the measured figures (see the commit that last moved them).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest

from bouncetrack.classifier.cli import run

CHECKOUT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("BOUNCETRACK_SHARED") or CHECKOUT.parent / "shared")
CORPUS = SHARED / "corpus" / "sisimai"
SCORE = SHARED / "corpus" / "score.py"

FLOORS = {  # measured: recall 0.995, status_exact_rfc 0.986, reason 0.954, hard 0.992, kind 0.977
    "recipient_recall": 0.99,
    "status_exact_rfc": 0.98,
    "reason_match": 0.95,
    "hard_match": 0.99,
    "kind_match": 0.975,
}

pytestmark = pytest.mark.skipif(not (CORPUS / "truth.jsonl").is_file() or not SCORE.is_file(),
                                reason=f"corpus not found under {SHARED}")


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    buf = io.StringIO()
    with redirect_stdout(buf):
        run([str(CORPUS)])
    results = tmp_path_factory.mktemp("corpus") / "results.jsonl"
    results.write_text(buf.getvalue(), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(SCORE), "--truth", str(CORPUS / "truth.jsonl"), "--results", str(results), "--json"],
        capture_output=True, text=True, check=True,
    )
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def test_every_file_classified(figures: dict[str, Any]) -> None:
    assert figures["files_missing_results"] == 0
    assert figures["results_unmatched"] == 0


@pytest.mark.parametrize("key", sorted(FLOORS))
def test_floor(figures: dict[str, Any], key: str) -> None:
    assert figures[key] >= FLOORS[key], f"{key} {figures[key]:.3f} < floor {FLOORS[key]} ({figures['summary']})"
