"""Hostile reports through the pipe (issue 16): bounded outcomes, never a crash or a flood.

Inputs are generated here (tests/mailgen.py ``hostile_*``). Assertions are on
outcomes (exit code, events, outbox jobs, guard counters, what was stored), not
on time; memory is bounded with RLIMIT_AS where it matters. Figures are in
bench/results/hostile_pipe.md (bench/hostile_pipe.py).
"""

from __future__ import annotations

import resource
import sqlite3
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from bouncetrack.bounce_pipe import guard
from bouncetrack.bounce_pipe.main import main as pipe_main
from bouncetrack.classifier.bounds import DELIMITERS_MAX, PARAMS_MAX, bound
from bouncetrack.core.config import Config
from tests import mailgen
from tests.test_pipe import ROOT, config, events, outbox, pipe_env, record  # noqa: F401  (config: fixture)

AS_LIMIT = 400 * 1024 * 1024  # the 5 MB boundary alone took 702 MB before issue 16


def db(config: Config, sql: str) -> list[sqlite3.Row]:
    conn = sqlite3.connect(config.store_url.removeprefix("sqlite:///"))
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def guards(config: Config) -> dict[str, int]:
    return {r["guard"]: r["count"] for r in db(config, "SELECT guard, count FROM metric_pipe_guards")}


def raw_sizes(config: Config) -> list[int]:
    return [len(zlib.decompress(r["compressed"])) for r in db(config, "SELECT compressed FROM raw_reports")]


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))


def run_limited(config: Config, recipient: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    """The pipe as Postfix runs it, in at most AS_LIMIT bytes of address space."""
    return subprocess.run(
        [sys.executable, "-m", "bouncetrack.bounce_pipe", "--config", str(config.path), recipient, ""],
        input=data, capture_output=True, cwd=ROOT, timeout=120, env=pipe_env(config), preexec_fn=_limit_memory,
    )


def test_dsn_naming_100000_recipients_of_a_single_recipient_message_is_one_event(config: Config) -> None:
    verp, _ = record(config, "only@remote.test")
    data = mailgen.hostile_many_recipients(verp, "only@remote.test", 100_000)
    assert len(data) <= mailgen.SIZE_LIMIT
    proc = run_limited(config, verp, data)
    assert proc.returncode == 0, proc.stderr
    (event,) = events(config)
    assert event["recipient"] == "only@remote.test" and event["token_status"] == "valid"
    assert len(outbox(config)) <= 2  # one webhook, one SMTP forward: not 100,000
    counted = guards(config)
    assert counted[guard.EVENTS_DROPPED] > 1000 and counted[guard.TRIMMED_PREFIX + "size"] == 1
    assert b"dropped" in proc.stderr
    assert raw_sizes(config) == [len(data)]  # stored whole


def test_dsn_naming_strangers_of_a_multi_recipient_message_is_bounded(config: Config) -> None:
    verp, _ = record(config, "a@remote.test", "b@remote.test")
    data = mailgen.hostile_many_recipients(verp, "a@remote.test", 20_000)
    proc = run_limited(config, verp, data)
    assert proc.returncode == 0, proc.stderr
    rows = events(config)
    assert [r["recipient"] for r in rows if not r["flagged"]] == ["a@remote.test"]
    assert len([r for r in rows if r["flagged"]]) == guard.MAX_FLAGGED_EVENTS
    assert len(outbox(config)) <= 2 * (1 + guard.MAX_FLAGGED_EVENTS)


def test_five_megabyte_boundary_in_a_ten_megabyte_report(config: Config) -> None:
    verp, _ = record(config, "only@remote.test")
    data = mailgen.hostile_long_boundary(verp, 5_000_000)
    assert 9_000_000 < len(data) <= mailgen.SIZE_LIMIT
    proc = run_limited(config, verp, data)
    assert proc.returncode == 0, proc.stderr
    (event,) = events(config)
    assert event["type"] == "unknown" and event["token_status"] == "valid"
    assert raw_sizes(config) == [len(data)]
    assert guards(config)[guard.TRIMMED_PREFIX + "line"] == 1


@pytest.mark.parametrize("inner", [False, True], ids=["top-level", "inner-part"])
def test_800000_semicolons_in_a_content_type(config: Config, inner: bool) -> None:
    verp, _ = record(config, "only@remote.test")
    data = mailgen.hostile_semicolons(verp, "only@remote.test", 800_000, inner=inner)
    proc = run_limited(config, verp, data)
    assert proc.returncode == 0, proc.stderr
    (event,) = events(config)
    # Trimmed before the parser, the report still reads: the bounce is classified.
    assert event["type"] == "bounce" and event["reason"] == "userunknown" and event["recipient"] == "only@remote.test"
    assert guards(config)[guard.TRIMMED_PREFIX + "params"] == 1
    assert raw_sizes(config) == [len(data)]


@pytest.mark.parametrize("build", [mailgen.hostile_nested_boundaries, mailgen.hostile_folded_semicolons,
                                   mailgen.hostile_flat_parts, mailgen.hostile_header_fields, mailgen.hostile_long_line])
def test_other_costly_shapes_are_stored(config: Config, build: Any) -> None:
    verp, _ = record(config, "only@remote.test")
    data = build(verp)
    assert len(data) <= mailgen.SIZE_LIMIT
    proc = run_limited(config, verp, data)
    assert proc.returncode == 0, proc.stderr
    assert len(events(config)) == 1 and raw_sizes(config) == [len(data)]


def test_bound_leaves_ordinary_reports_alone_and_cuts_every_shape() -> None:
    ordinary = mailgen.dsn("b+x@bounce.test", "a@remote.test")
    assert bound(ordinary).data == ordinary and bound(ordinary).trimmed == ()
    folded = bound(mailgen.hostile_folded_semicolons("b+x@bounce.test", 200_000))
    assert "field" in folded.trimmed or "params" in folded.trimmed
    assert folded.data.count(b";") <= PARAMS_MAX + 2
    flat = bound(mailgen.hostile_flat_parts("b+x@bounce.test", 200_000))
    assert flat.trimmed == ("parts",) and flat.data.count(b"\n--") < DELIMITERS_MAX


def _in_process(config: Config, recipient: str, data: bytes, monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("BOUNCETRACK_CACHE_DIR", str(Path(pipe_env(config)["BOUNCETRACK_CACHE_DIR"])))
    return pipe_main(["--config", str(config.path), recipient, ""], raw=data)


def test_classification_budget_is_an_outcome_no_except_exception_can_swallow(
    config: Config, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import bouncetrack.classifier as classifier

    def stubborn(raw: bytes) -> Any:
        while True:  # a classifier stuck in a loop that swallows every Exception
            try:
                sum(range(10_000))
            except Exception:  # noqa: BLE001
                pass

    monkeypatch.setattr(classifier, "classify_strict", stubborn)
    monkeypatch.setattr(guard, "CLASSIFY_CPU_SECONDS", 0.2)
    verp, _ = record(config, "only@remote.test")
    data = mailgen.dsn(verp, "only@remote.test")
    assert _in_process(config, verp, data, monkeypatch) == 0
    (event,) = events(config)
    assert event["type"] == "unknown" and event["token_status"] == "valid"
    assert guards(config) == {guard.CLASSIFY_BUDGET: 1}
    err = capsys.readouterr().err
    assert "budget" in err and "Message-ID <20261128120000.4ABCDEF@mx.harness.test>" in err
    assert raw_sizes(config) == [len(data)]


def test_classifier_crash_is_logged_counted_and_stored_as_unknown(
    config: Config, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import bouncetrack.classifier as classifier

    def crash(raw: bytes) -> Any:
        raise KeyError("detector bug")

    monkeypatch.setattr(classifier, "classify_strict", crash)
    verp, _ = record(config, "only@remote.test")
    assert _in_process(config, verp, mailgen.dsn(verp, "only@remote.test"), monkeypatch) == 0
    (event,) = events(config)
    assert event["type"] == "unknown"
    assert guards(config) == {guard.CLASSIFY_CRASH: 1}
    err = capsys.readouterr().err
    assert "classifier failed (KeyError" in err and "Message-ID <20261128120000.4ABCDEF@mx.harness.test>" in err


def test_token_is_verified_before_any_parsing(config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    import bouncetrack.classifier as classifier

    def never(raw: bytes) -> Any:
        raise AssertionError("a report to a forged token was parsed")

    monkeypatch.setattr(classifier, "classify_strict", never)
    verp, _ = record(config, "only@remote.test")
    local, domain = verp.split("@")
    forged = f"{local[:-1]}{'a' if local[-1] != 'a' else 'b'}@{domain}"
    assert _in_process(config, forged, mailgen.hostile_semicolons(forged, "only@remote.test"), monkeypatch) == 0
    (event,) = events(config)
    assert event["type"] == "unknown" and event["token_status"] == "forged" and event["message_pk"] is None
    assert guards(config) == {guard.UNPARSED_BAD_TOKEN: 1}
