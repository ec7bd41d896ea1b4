"""`bouncetrack demo --once` end to end: the README's first command must keep working."""

from __future__ import annotations

import io
import json

import pytest

from tests.conftest import harness_unavailable

pytestmark = pytest.mark.postfix


def test_demo_once_finds_every_report() -> None:
    reason = harness_unavailable()
    if reason:
        pytest.skip(reason)
    from bouncetrack.harness.demo import run_demo

    out = io.StringIO()
    code = run_demo(once=True, timeout=60, out=out)
    summary = json.loads(out.getvalue())
    assert code == 0, summary
    assert summary["ok"] and summary["expected"] == 5 and not summary["missing"]
    assert {e["type"] for e in summary["stored"]} == {"bounce", "complaint"}
