"""``bouncetrack demo``: the whole product on loopback, sending mail and showing its bounces.

Brings up the shared harness (:class:`~bouncetrack.harness.stack.Stack`): a private
Postfix, the tracking milter, a fake remote MX that rejects recipients by rule,
and the real bounce pipe writing to SQLite. Sends a batch for a tracked and an
untracked domain (plus one spam complaint), waits for the reports, and prints
what came back. ``--once`` prints a JSON summary instead and exits non-zero when
an expected event is missing or attributed to the wrong recipient.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import click

from .stack import BOUNCE_DOMAIN, TRACKED, UNTRACKED, Stack, unavailable_reason


@dataclass(frozen=True)
class Expected:
    """One event the demo must find in the store."""

    recipient: str
    type: str
    reason: str
    hard: bool


# What the fake MX does with these local parts: see harness/fakemx.py.
TRACKED_BATCH: list[tuple[list[str], list[Expected]]] = [
    (["ok-alice@remote.test"], []),
    (["unknown-bob@remote.test"], [Expected("unknown-bob@remote.test", "bounce", "userunknown", True)]),
    (
        ["ok-carol@remote.test", "unknown-dave@remote.test", "gone-erin@remote.test"],
        [
            Expected("unknown-dave@remote.test", "bounce", "userunknown", True),
            Expected("gone-erin@remote.test", "bounce", "hasmoved", True),
        ],
    ),
    (["full-frank@remote.test"], [Expected("full-frank@remote.test", "bounce", "mailboxfull", False)]),
]
UNTRACKED_REJECTED = "unknown-grace@remote.test"
COMPLAINER = "ok-alice@remote.test"


def _events(stack: Stack) -> list[dict[str, Any]]:
    if not stack.db_path.exists():
        return []
    db = sqlite3.connect(f"file:{stack.db_path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM events ORDER BY id")]
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


def _complaint(verp: str, complainer: str) -> bytes:
    """An RFC 5965 report as a mailbox provider's feedback loop would send it."""
    return (
        "From: fbl@isp.test\r\nTo: fbl@{bd}\r\nSubject: Abuse report\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=\"F\"\r\n\r\n"
        "--F\r\nContent-Type: text/plain\r\n\r\nThis is an abuse report.\r\n"
        "--F\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nUser-Agent: isp/1\r\nVersion: 1\r\n\r\n"
        "--F\r\nContent-Type: message/rfc822\r\n\r\nReturn-Path: <{verp}>\r\nFrom: news@{t}\r\nTo: {c}\r\n"
        "Subject: Demo\r\n\r\nHello\r\n--F--\r\n"
    ).format(bd=BOUNCE_DOMAIN, verp=verp, t=TRACKED, c=complainer).encode()


def run_demo(*, once: bool, timeout: float, out: Any = sys.stdout) -> int:
    reason = unavailable_reason()
    if reason:
        print(f"bouncetrack demo: cannot run here: {reason}", file=sys.stderr)
        return 2
    def say(*parts: object) -> None:
        print(*parts, file=sys.stderr if once else out)

    say("Starting a private Postfix on loopback, the milter, a fake remote MX and the bounce pipe…")
    with Stack(
        with_milter=True,
        pipe="real",
        log_level="INFO",
        # A 4xx becomes a (soft) bounce after one attempt, so the demo need not wait hours.
        maximal_queue_lifetime="0",
        bounce_queue_lifetime="0",
    ) as stack:
        # Bounces of untracked mail go back to its sender: let the fake MX play that mailbox.
        remote = stack.postfix.routes["remote.test"]
        stack.postfix.set_routes({**stack.postfix.routes, UNTRACKED: remote})
        say(f"  Postfix SMTP on {stack.postfix.host}:{stack.postfix.port}, config {stack.config_path}")
        expected: list[Expected] = []
        sent = 0
        for rcpts, exp in TRACKED_BATCH:
            result = stack.send(f"news@{TRACKED}", rcpts)
            sent += 1
            expected += exp
            say(f"  sent news@{TRACKED} -> {', '.join(rcpts)}: {result.data or result.error}")
        result = stack.send(f"info@{UNTRACKED}", [UNTRACKED_REJECTED], mail_options=["RET=FULL"])
        sent += 1
        say(f"  sent info@{UNTRACKED} -> {UNTRACKED_REJECTED} (untracked): {result.data or result.error}")

        # The complaint: the original as delivered, reported back to the feedback address.
        tx = stack.fakemx.wait_for(lambda f: [t for t in f.for_rcpt(COMPLAINER) if t.data], timeout)[0]
        stack.send("", [f"fbl@{BOUNCE_DOMAIN}"], _complaint(tx.mail_from, COMPLAINER))
        expected.append(Expected(COMPLAINER, "complaint", "feedback", False))
        say(f"  {COMPLAINER} reported the message as spam to fbl@{BOUNCE_DOMAIN}")

        say("Waiting for the reports…")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(_events(stack)) < len(expected):
            stack.postfix.flush()
            time.sleep(0.5)
        events = _events(stack)
        untracked_back = bool(stack.fakemx.for_rcpt(f"info@{UNTRACKED}"))
        summary = _check(expected, events, sent, untracked_back)
        if once:
            print(json.dumps(summary, indent=2), file=out)
        else:
            _print_table(events, out)
            print(
                f"\nuntracked mail: the bounce went back to info@{UNTRACKED}"
                f" ({'yes' if untracked_back else 'no'}) and is not tracked.",
                file=out,
            )
            print("\n" + ("OK: every expected report arrived, correctly attributed." if summary["ok"]
                          else f"PROBLEM: {summary['missing']} {summary['misattributed']}"), file=out)
            print(
                f"\nStill running. Send mail yourself: swaks/smtplib to {stack.postfix.host}:{stack.postfix.port}, "
                f"e.g. from news@{TRACKED} to unknown-you@remote.test; store: {stack.db_path}. Ctrl-C stops.",
                file=out,
            )
            _wait_for_interrupt()
        return 0 if summary["ok"] else 1


def _check(expected: list[Expected], events: list[dict[str, Any]], sent: int, untracked_back: bool) -> dict[str, Any]:
    missing, misattributed = [], []
    for exp in expected:
        match = [e for e in events if e["recipient"] == exp.recipient and e["type"] == exp.type]
        if not match:
            missing.append(asdict(exp))
            continue
        e = match[0]
        if e["reason"] != exp.reason or bool(e["hard"]) != exp.hard or e["token_status"] != "valid" or e["flagged"]:
            misattributed.append({"expected": asdict(exp), "got": {k: e[k] for k in (
                "recipient", "type", "reason", "hard", "token_status", "flagged", "status")}})
    unexpected = [e["recipient"] for e in events if e["recipient"] not in {x.recipient for x in expected}]
    return {
        "ok": not missing and not misattributed and not unexpected and untracked_back,
        "messages_sent": sent,
        "expected": len(expected),
        "stored": [
            {k: e[k] for k in ("type", "recipient", "reason", "hard", "status", "token_status", "domain")}
            for e in events
        ],
        "missing": missing,
        "misattributed": misattributed,
        "unexpected": unexpected,
        "untracked_bounce_returned_to_sender": untracked_back,
    }


def _print_table(events: list[dict[str, Any]], out: Any) -> None:
    print(f"\n{'type':<10} {'recipient':<28} {'reason':<12} {'hard':<5} {'status':<7} {'domain':<14} token", file=out)
    for e in events:
        print(
            f"{e['type']:<10} {e['recipient'] or '-':<28} {e['reason']:<12} {'yes' if e['hard'] else 'no':<5} "
            f"{e['status'] or '-':<7} {e['domain'] or '-':<14} {e['token_status']}",
            file=out,
        )


def _wait_for_interrupt() -> None:
    stop = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, handler)
    try:
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass


@click.command("demo")
@click.option("--once", is_flag=True, help="Print a JSON summary and exit (non-zero if anything is missing).")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the reports.")
def demo_command(once: bool, timeout: float) -> None:
    """Run the demo: a private Postfix, send mail, show the bounces."""
    raise SystemExit(run_demo(once=once, timeout=timeout))
