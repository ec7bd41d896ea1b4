"""Data-driven classifier tests over the samples kept in the repo (issue 17 item 6, issue 18).

``tests/samples/classifier/<folder>/`` holds sample messages and one ``expected.jsonl`` beside
them (flufl.bounce's layout: a folder per detector family, the results next to the samples).
Each line names a ``file`` and what ``classify`` must say of it: ``kind``, ``detector``, and
per recipient, in order, the ``address`` and, where given, ``status``, ``reason`` and
``original_recipient`` (the address the sender used). The
``source`` of each line says where the sample comes from (Sisimai's set-of-emails under
``LICENSE-set-of-emails``, or hand-written after a named real format). Folders named after a
detector family cover that family; ``not-recognised``, ``wrong-address``, ``multi-recipient``
and ``challenge`` hold issue 18's four classes of failure. Runs on a clean clone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from bouncetrack.bounce_pipe.attribution import event_type
from bouncetrack.classifier import classify
from bouncetrack.classifier.detectors import FAMILIES
from bouncetrack.classifier.model import AUTO_REPLY
from tests.configkit import write_config
from tests.test_pipe import events, record, run_pipe
from tests.test_suppression_pipe import listed

SAMPLES = Path(__file__).parent / "samples" / "classifier"
CLASSES = ("not-recognised", "wrong-address", "multi-recipient", "challenge")


def _rows() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for expected in sorted(SAMPLES.glob("*/expected.jsonl")):
        for line in expected.read_text(encoding="utf-8").splitlines():
            if line.strip():
                out.append((expected.parent.name, json.loads(line)))
    return out


ROWS = _rows()


@pytest.mark.parametrize(("folder", "row"), ROWS, ids=[f"{f}/{r['file']}" for f, r in ROWS])
def test_sample(folder: str, row: dict[str, Any]) -> None:
    report = classify((SAMPLES / folder / row["file"]).read_bytes())
    assert report.kind == row["kind"]
    assert report.detector == row["detector"]
    assert [r.address for r in report.recipients] == [e["address"] for e in row["recipients"]]
    for got, want in zip(report.recipients, row["recipients"]):
        if "status" in want:
            assert got.status == want["status"], got
        if "reason" in want:
            assert got.reason == want["reason"], got
        if "original_recipient" in want:
            assert got.original_recipient == want["original_recipient"], got


def test_every_sample_is_listed_with_its_source() -> None:
    for folder in {f for f, _ in ROWS}:
        listed = {r["file"] for f, r in ROWS if f == folder}
        assert listed == {p.name for p in (SAMPLES / folder).glob("*.eml")}, folder
    for _, row in ROWS:
        assert row["source"].startswith(("hand-written: ", "sisimai set-of-emails (BSD-2-Clause")), row
    if any("sisimai" in r["source"] for _, r in ROWS):
        assert (SAMPLES / "LICENSE-set-of-emails").is_file()


def test_every_detector_family_has_a_sample() -> None:
    """Issue 17 item 6: each family's folder holds a sample that family reads."""
    for det in FAMILIES:
        assert any(f == det.name and r["detector"] == det.name for f, r in ROWS), det.name


def test_each_issue18_class_has_samples() -> None:
    for cls in CLASSES:
        assert sum(1 for f, _ in ROWS if f == cls) >= 3, cls


def test_challenge_responses_are_auto_replies_never_bounces() -> None:
    """Issue 18 class 4: the pipe makes an ``auto_reply`` event of them, never a hard bounce,
    so bounce-rate metrics, bounce alerts (type="bounce") and suppression never count them."""
    for folder, row in ROWS:
        if folder != "challenge":
            continue
        report = classify((SAMPLES / folder / row["file"]).read_bytes())
        assert report.kind == AUTO_REPLY
        for result in report.recipients:
            assert event_type(report, result) == "auto_reply"
            assert result.hard is False and result.reason == "challenge"


def test_a_challenge_through_the_real_pipe_is_stored_as_auto_reply_and_never_suppresses(tmp_path: Path) -> None:
    """End to end (a real pipe process, a real SQLite store): a TMDA challenge to a tracked
    message is an ``auto_reply`` event with reason ``challenge``, and the address is not listed
    although the domain's suppression policy is ``reject`` with a soft-bounce limit of 1."""
    config = write_config(
        tmp_path,
        """\
            pipe: {deadline_seconds: 8}
            domains:
              tracked.test:
                tracking: true
                suppression: {policy: reject, soft_bounce_limit: 1, soft_bounce_days: 7}
        """,
    )
    verp, _ = record(config, "vera@example.net")
    raw = (SAMPLES / "challenge" / "tmda.eml").read_bytes().replace(
        b"b+aebagbafaydqqcikbmgq2dq4@bounce.example.com", verp.encode())
    proc = run_pipe(config, verp, raw)
    assert proc.returncode == 0, proc.stderr
    (event,) = events(config)
    assert (event["type"], event["reason"], event["hard"], event["recipient"]) == (
        "auto_reply", "challenge", 0, "vera@example.net")
    assert listed(config) == []


def test_bounce_alert_rules_count_only_bounce_events() -> None:
    """Issue 18: the shipped alert rules that read the events counter select type="bounce"
    (never a regex that an ``auto_reply`` event could match), so challenges fire no bounce alert."""
    doc: Any = yaml.safe_load((Path(__file__).parents[1] / "conf" / "prometheus" / "alerts.yml").read_text())
    exprs = [r["expr"] for g in doc["groups"] for r in g["rules"] if "bouncetrack_events_total" in r["expr"]]
    assert exprs
    for expr in exprs:
        for selector in re.findall(r"bouncetrack_events_total\{([^}]*)\}", expr):
            assert 'type="bounce"' in selector and "auto_reply" not in selector and "type=~" not in selector, expr
