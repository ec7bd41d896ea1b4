"""A small bounce storm through the whole product (bench/capacity.py ``--storm``, issue 21).

500 messages, each to a recipient the fake MX refuses with 550, sent within 10 s: Postfix's
own bounce daemon writes 500 DSNs, which take the real path (pipe(8) → pipe client → pipe
server → store). Every bounce is stored exactly once, nothing is left in Postfix's queue,
no DSN is retried in a loop, and the peak memory of every component is reported. The
full storm (20,000 bounces within a minute) is ``python bench/capacity.py --storm 20000``.
"""

from __future__ import annotations

import pytest

from tests.conftest import harness_unavailable

pytestmark = [
    pytest.mark.postfix,
    pytest.mark.slow,
]


def test_storm_of_500_bounces_loses_and_duplicates_nothing() -> None:
    reason = harness_unavailable()
    if reason:
        pytest.skip(reason)
    from bench.capacity import storm

    res = storm(500, 10.0, drain_timeout=120.0)
    r = res["reconciliation"]
    assert r["messages_sent"] == 500, res["smtp_errors_sample"]
    assert r["messages_recorded_by_milter"] == 500
    assert r["bounces_stored"] == 500
    assert (r["lost"], r["duplicated"], r["unexpected"], r["postfix_queue_left"]) == (0, 0, 0, 0), \
        "\n".join(r["postfix_queue_left_files"])
    assert r["ok"]
    assert res["retry_loops"]["dsn_attempted_more_than_twice"] == 0
    for comp in ("postfix qmgr", "postfix bounce", "milter", "pipe server"):
        assert res["rss_peak_mb"][comp]["sum_mb"] > 0, comp
