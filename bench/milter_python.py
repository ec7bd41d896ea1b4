#!/usr/bin/env python3
"""The milter's own Python per tracked message, against a bare pymilter doing the same rewrite.

No MTA, no sockets: both milters' callbacks are driven in this one process through
pymilter's :class:`Milter.testctx.TestCtx`, the way libmilter's C side calls them in
production (``ctx.getpriv().envfrom_bytes(*b)``, ``envrcpt_bytes``, ``header_bytes``,
``eom``: :func:`Milter.runmilter`'s lambdas). Sides:

- ``ours``: :class:`bouncetrack.milter.app.TrackingMilter` with a configuration that
  tracks ``tracked.test`` (sender rule, VERP check and suppression verdict at RCPT,
  token mint, policy, the journal record, the counters, the rewrite);
- ``reference``: :func:`bench._ref_milter.make` ``("actions+rcptreply+lean")``, the
  same negotiation and the same rewrite (chgfrom with RET/ENVID, delrcpt + addrcpt
  with NOTIFY/ORCPT) with constants: what any pymilter doing the spec's rewrite pays.

Each message: MAIL FROM ``<info@tracked.test>`` (no ESMTP parameters, as smtplib and
bench/milter_overhead.py send), one recipient ``<ok-N@remote.test>``, the six header
fields Postfix passes on for bench/milter_overhead.py's messages (its Received, From,
To, Subject, Date, Message-ID), end of message. Several messages per connection,
as in the live benchmark's SMTP sessions.

The journal is a sink that keeps the last record (the append's ``write(2)`` is the
lead's part and not Python work; see bench/milter_overhead.py for the live cost).
``--suppressed N`` loads N random keys into the suppression index and gives
tracked.test the policy ``reject`` (each RCPT then hashes and bisects, as in production
with a list).

Rounds alternate (ours, reference, ours, …) in one process; the result is the median
µs per message of each side and their ratio. ``--before REV`` (issue 20: default b685ddd,
main before this work) also measures ``git archive REV``'s ``bouncetrack`` the same way:
every side pair runs in a fresh interpreter, REV's and this checkout's in turn, the order
alternating, and each is reported as µs per message and as its ratio to the reference of
its own interpreter. Written to bench/results/NAME.json (``--name``, default milter_python).

    python bench/milter_python.py [--rounds 21] [--messages 2000] [--suppressed 1000000] [--before REV]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from array import array
from pathlib import Path
from typing import Any, Callable

# The bouncetrack measured: this checkout's, or the tree --before hands a side (its bench/ stays ours).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if os.environ.get("MILTER_PYTHON_TREE"):
    sys.path.insert(0, os.environ["MILTER_PYTHON_TREE"])

import Milter  # noqa: E402
from Milter.testctx import TestCtx  # noqa: E402

from bench._common import ROOT, checkout_at, summary, write_result  # noqa: E402
from bench._ref_milter import make as make_reference  # noqa: E402

REF_MODE = "actions+rcptreply+lean"
BEFORE = "b685ddd"  # main before this work on the milter's Python (issue 20, h20py)
SENDER = b"<info@tracked.test>"
PER_CONNECTION = 50  # messages per SMTP session before the connection is closed and another opened


class Sink:
    """The journal: keeps the last record, writes nothing."""

    def __init__(self) -> None:
        self.last = b""
        self.count = 0

    def append(self, data: bytes) -> None:
        self.last = data
        self.count += 1

    def close(self) -> None:
        pass


def headers(i: int) -> list[tuple[str, bytes]]:
    """The header fields Postfix hands the milter for bench/milter_overhead.py's message ``i``."""
    return [
        ("Received", b"from bench.harness.test (localhost [127.0.0.1])\n\tby mx.harness.test (Postfix) with ESMTP id "
                     b"4Qx7Yb0Z3Kz9abc\n\tfor <ok-%d@remote.test>; Mon,  7 Dec 2026 21:00:00 +0000 (UTC)" % i),
        ("From", b"info@tracked.test"),
        ("To", b"ok-%d@remote.test" % i),
        ("Subject", b"bench %d" % i),
        ("Date", b"Mon, 07 Dec 2026 21:00:00 -0000"),
        ("Message-ID", b"<176515200012.4242.%d@harness.test>" % (1000000000000 + i)),
    ]


def connect(factory: type) -> tuple[TestCtx, Any]:
    """A negotiated connection to ``factory``'s milter, ready for transactions up to eom."""
    Milter.factory = factory
    ctx = TestCtx()
    ctx._setsymval("i", "4Qx7Yb0Z3Kz9abc")
    assert ctx._connect() == Milter.CONTINUE
    ctx._stage = Milter.M_EOM  # getsymval reads the stage; eom's macro list is {i}
    ctx._body = True  # the actions are allowed (TestCtx checks that eom is running)
    return ctx, ctx.getpriv()


def run(factory: type, messages: list[tuple[bytes, list[tuple[str, bytes]]]]) -> float:
    """Seconds for ``messages`` through ``factory``'s milter, a connection per PER_CONNECTION."""
    started = time.perf_counter()
    for start in range(0, len(messages), PER_CONNECTION):
        ctx, _ = connect(factory)
        # What Milter.runmilter registers with libmilter: one lambda per callback.
        envfrom: Callable[..., int] = lambda c, *b: c.getpriv().envfrom_bytes(*b)  # noqa: E731
        envrcpt: Callable[..., int] = lambda c, *b: c.getpriv().envrcpt_bytes(*b)  # noqa: E731
        header: Callable[..., int] = lambda c, f, v: c.getpriv().header_bytes(f, v)  # noqa: E731
        eom: Callable[..., int] = lambda c: c.getpriv().eom()  # noqa: E731
        for rcpt, fields in messages[start:start + PER_CONNECTION]:
            envfrom(ctx, SENDER)
            if envrcpt(ctx, rcpt) != Milter.CONTINUE:
                raise SystemExit(f"{factory.__name__} refused {rcpt!r}")
            for name, value in fields:
                header(ctx, name, value)
            if eom(ctx) != Milter.CONTINUE:
                raise SystemExit(f"{factory.__name__} failed at eom")
            del ctx._addrcpt[:], ctx._delrcpt[:]
        Milter.close_callback(ctx)
    return time.perf_counter() - started


def measure(rounds: int, n: int, suppressed: int) -> dict[str, list[float]]:
    """µs per message of ours and of the reference, ``rounds`` alternating rounds of ``n`` messages."""
    from bouncetrack.core.config_loader import load_config
    from bouncetrack.core.tokens import load_keyring, token_from_address, verify
    from bouncetrack.milter.app import Runtime, Shared, make_factory
    from bouncetrack.milter.journal import decode

    with tempfile.TemporaryDirectory(prefix="bt-milter-python-") as tmp:
        cfg = Path(tmp) / "bouncetrack.yaml"
        cfg.write_text(textwrap.dedent(f"""\
            bounce_domain: bounce.test
            secret_file: {tmp}/verp.key
            store: sqlite:///{tmp}/bt.db
            milter_journal: {tmp}/journal
            domains:
              tracked.test:
                tracking: true
                suppression: {{policy: {"reject" if suppressed else "off"}}}
            """))
        config = load_config(cfg)
        keyring = load_keyring(config)
        sink = Sink()
        shared = Shared(Runtime(config, keyring), lambda c: sink)
        if suppressed:
            rng = random.Random(20)
            shared.suppression.publish(array("Q", sorted(rng.getrandbits(64) for _ in range(suppressed))), {})
        ours = make_factory(shared)
        reference = make_reference(REF_MODE)
        messages = [(b"<ok-%d@remote.test>" % i, headers(i)) for i in range(n)]

        # Check once that ours tracked the message (the record is whole, the token verifies).
        run(ours, messages[:1])
        record = decode(sink.last[1:-1])
        assert record.recipients[0].address == "ok-0@remote.test" and record.message_id, record
        token = token_from_address(config, record.verp_sender)
        assert token is not None and verify(keyring, token, time.time()).token_id == record.token_id

        for factory in (ours, reference):  # warm-up
            run(factory, messages[: n // 4])
        times: dict[str, list[float]] = {"ours": [], "reference": []}
        for r in range(rounds):
            order = [("ours", ours), ("reference", reference)]
            if r % 2:
                order.reverse()
            for name, factory in order:
                times[name].append(run(factory, messages) / len(messages) * 1e6)
        assert sink.count == 1 + n // 4 + rounds * n, sink.count  # every message of ours recorded
        return times


def compare(a: argparse.Namespace) -> dict[str, object]:
    """--before: REV's bouncetrack against this checkout's, fresh interpreters in turn."""
    with tempfile.TemporaryDirectory(prefix="bt-milter-python-before-") as tmp:
        _, after_rev = checkout_at(a.before, Path(tmp))
        revs = {"before": a.before, "after": after_rev}
        trees = {"before": tmp, "after": str(ROOT)}
        runs: list[dict[str, object]] = []
        got: dict[str, dict[str, list[float]]] = {side: {"ours": [], "reference": [], "ratio": []} for side in trees}
        for r in range(a.before_rounds):
            for side in ("before", "after") if r % 2 == 0 else ("after", "before"):
                out = subprocess.run(
                    [sys.executable, __file__, "--side", "--rounds", str(a.rounds), "--messages", str(a.messages),
                     "--suppressed", str(a.suppressed)],
                    env={**os.environ, "MILTER_PYTHON_TREE": trees[side]}, stdout=subprocess.PIPE, check=True,
                    timeout=1800)
                times = json.loads(out.stdout)
                ours, ref = statistics.median(times["ours"]), statistics.median(times["reference"])
                for key, value in (("ours", ours), ("reference", ref), ("ratio", ours / ref)):
                    got[side][key].append(value)
                runs.append({"round": r + 1, "side": side, "ours_us": ours, "reference_us": ref, "ratio": ours / ref})
                print(f"round {r + 1} {side:6s} ours {ours:6.2f} µs/message, reference {ref:6.2f}, "
                      f"ratio {ours / ref:.2f}", flush=True)
    out_sides: dict[str, object] = {}
    for side, rev in revs.items():
        ours, ref, ratio = (statistics.median(got[side][k]) for k in ("ours", "reference", "ratio"))
        out_sides[side] = {"rev": rev, "ours_us_median": ours, "reference_us_median": ref, "ratio_median": ratio}
        print(f"{side:6s} ({rev}): ours {ours:.2f} µs/message, reference {ref:.2f}, ratio {ratio:.2f}")
    return {"before_after": out_sides, "before_after_runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--rounds", type=int, default=21, help="rounds per side (alternating)")
    ap.add_argument("--messages", type=int, default=2000, help="messages per round")
    ap.add_argument("--suppressed", type=int, default=0, help="keys in the suppression index (policy reject)")
    ap.add_argument("--before", default=None, metavar="REV",
                    help=f"also compare with REV's bouncetrack (e.g. {BEFORE}, main before issue 20's work on it)")
    ap.add_argument("--before-rounds", type=int, default=6, help="fresh interpreters per side with --before")
    ap.add_argument("--name", default="milter_python", help="result file name (bench/results/NAME.json)")
    ap.add_argument("--side", action="store_true", help=argparse.SUPPRESS)  # --before's child: JSON on stdout
    a = ap.parse_args()
    if a.side:
        print(json.dumps(measure(a.rounds, a.messages, a.suppressed)))
        return

    times = measure(a.rounds, a.messages, a.suppressed)
    ours_us = statistics.median(times["ours"])
    ref_us = statistics.median(times["reference"])
    print(f"ours      {ours_us:6.2f} µs/message (median of {a.rounds} rounds of {a.messages})")
    print(f"reference {ref_us:6.2f} µs/message ({REF_MODE})")
    print(f"ratio     {ours_us / ref_us:6.2f}   ours - reference {ours_us - ref_us:5.2f} µs/message", flush=True)
    result: dict[str, object] = {
        "params": {"rounds": a.rounds, "messages": a.messages, "suppressed": a.suppressed,
                   "reference_mode": REF_MODE, "per_connection": PER_CONNECTION},
        "us_per_message": {"ours": summary(times["ours"]), "reference": summary(times["reference"])},
        "ratio_median": ours_us / ref_us,
        "difference_us_median": ours_us - ref_us,
    }
    if a.before:
        result.update(compare(a))
    path = write_result(a.name, result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
