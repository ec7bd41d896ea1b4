"""Property tests: the unguarded classifier (``classify_strict``, what the pipe runs under its
guard) never raises and always returns a Report, whatever the bytes: a crash fails the test."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bouncetrack.classifier import classify_strict
from bouncetrack.classifier.model import Report

CHECKOUT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("BOUNCETRACK_SHARED") or CHECKOUT.parent / "shared")
CORPUS = SHARED / "corpus" / "sisimai"
SAMPLES = Path(__file__).parent / "samples" / "classifier"


def _seeds() -> list[bytes]:
    files = sorted(SAMPLES.glob("*.eml"))
    if CORPUS.is_dir():
        files += sorted(CORPUS.glob("*.eml"))[::7]
    return [f.read_bytes() for f in files]


SEEDS = _seeds()

KINDS = {"bounce", "complaint", "auto_reply", "delivery_report", "not_bounce"}


def _check(raw: bytes) -> None:
    rep, _trimmed = classify_strict(raw)
    assert isinstance(rep, Report)
    assert rep.kind in KINDS
    for r in rep.recipients:
        assert isinstance(r.reason, str) and isinstance(r.hard, bool)
    rep.to_json(file="x")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(raw: bytes) -> None:
    _check(raw)


_TOKENS = [b"\n", b"\r\n", b"--", b"Content-Type: multipart/report; boundary=x\n", b"--x\n",
           b"Content-Type: message/delivery-status\n\n", b"Content-Type: message/rfc822\n\n",
           b"Final-Recipient: rfc822; ", b"Status: 5.1.1\n", b"Action: failed\n", b"=?utf-8?B?",
           b"charset=\"x-unknown\"", b"Content-Transfer-Encoding: base64\n", b"\xff\xfe", b"@", b"<", b">"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_TOKENS) | st.binary(max_size=40), max_size=80))
def test_mime_shaped_garbage(parts: list[bytes]) -> None:
    _check(b"".join(parts))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_samples(data: st.DataObject) -> None:
    raw = bytearray(data.draw(st.sampled_from(SEEDS)))
    n = data.draw(st.integers(min_value=1, max_value=12))
    for _ in range(n):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "dup"]))
        pos = data.draw(st.integers(min_value=0, max_value=max(0, len(raw) - 1)))
        if op == "flip" and raw:
            raw[pos] = data.draw(st.integers(min_value=0, max_value=255))
        elif op == "cut":
            raw = raw[:pos]
        elif op == "insert":
            raw[pos:pos] = data.draw(st.sampled_from(_TOKENS) | st.binary(max_size=20))
        elif op == "dup":
            raw[pos:pos] = raw[pos : pos + 200]
    _check(bytes(raw))
