"""Coverage-guided fuzzing of the classifier with atheris (issue 7).

The regular suite fuzzes ``classify_strict`` with hypothesis (tests/test_classifier_fuzz.py);
this harness runs for as long as you let it, guided by coverage, and keeps what it
finds. It targets ``classify_strict``, the unguarded classifier the pipe runs (the pipe
logs, counts and stores as unknown whatever it raises; ``classify`` would hide a crash).
The property is the classifier's contract: for any bytes it returns a ``Report``
(never raises), its kind is one of the known ones, every recipient has a string reason
and a bool ``hard``, and the report serialises to JSON.

Run (``pip install atheris`` into the venv first)::

    /opt/bouncetrack/venv/bin/python tests/fuzz/fuzz_classify.py tests/fuzz/corpus \\
        tests/samples/classifier -max_total_time=3600 -timeout=10 -rss_limit_mb=2048

``tests/fuzz/corpus`` (created if missing) collects the inputs that reach new code;
the sample bounces seed it. A crash leaves ``crash-<sha1>`` in the working directory;
reproduce with ``python tests/fuzz/fuzz_classify.py crash-<sha1>``.
Not collected by pytest (its name does not start with ``test_``).
"""

from __future__ import annotations

import os
import sys

import atheris

with atheris.instrument_imports():
    from bouncetrack.classifier import classify_strict
    from bouncetrack.classifier.model import Report

KINDS = {"bounce", "complaint", "auto_reply", "delivery_report", "not_bounce"}


def check(data: bytes) -> None:
    report, _trimmed = classify_strict(data)  # unguarded: a crash is a finding
    assert isinstance(report, Report), type(report)
    assert report.kind in KINDS, report.kind
    for r in report.recipients:
        assert isinstance(r.reason, str) and isinstance(r.hard, bool), r
    report.to_json(file="fuzz")


def main() -> None:
    for arg in sys.argv[1:]:
        if not arg.startswith("-") and not os.path.exists(arg) and arg.endswith("corpus"):
            os.makedirs(arg, exist_ok=True)
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
