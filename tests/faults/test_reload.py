"""Fault: SIGHUP configuration reloads of the milter during traffic (issue 7).

While four clients send, another thread rewrites the configuration (alternating
between two valid versions that differ in a domain that is not being sent from) and
SIGHUPs the milter every 0.15 s, ~20 times.

Expected outcome: no transaction is tempfailed or lost because of a reload (the
supervisor validates, the libmilter child swaps its configuration between
messages); decisions stay consistent: every message from ``tracked.test`` leaves
with a VERP sender, every message from ``untracked.test`` with its own; each tracked
bounce is stored exactly once and attributed. The milter process is never restarted.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest

from .reconcile import assert_reconciled, wait_stored
from .sending import burst

pytestmark = [pytest.mark.postfix, pytest.mark.slow]

STACK_OPTIONS = {"with_milter": True, "pipe": "real"}
N = 40


def test_sighup_storm_during_traffic(stack: Any) -> None:
    original = stack.config_path.read_text()
    variant = original + "\n# reload variant\n"
    variant = variant.replace("domains:\n", "domains:\n  reload-only.test:\n    tracking: true\n", 1)
    assert variant != original
    pid = stack._milter.pid
    stop = threading.Event()
    hups = 0

    def write_config(text: str) -> None:
        # Atomically, as an operator's editor does: a reload still running from the
        # previous SIGHUP (late under load) must never read a half-written file.
        tmp = stack.config_path.with_name(stack.config_path.name + ".tmp")
        tmp.write_text(text)
        os.chmod(tmp, stack.config_path.stat().st_mode & 0o7777)
        os.chown(tmp, stack.config_path.stat().st_uid, stack.config_path.stat().st_gid)
        os.replace(tmp, stack.config_path)

    def hupper() -> None:
        nonlocal hups
        while not stop.is_set() and hups < 40:
            write_config(variant if hups % 2 == 0 else original)
            stack.reload_milter()
            hups += 1
            # Fast enough for 10+ HUPs while the bursts run, however fast they are (the
            # bounces' pipe work, which used to slow them down, is now light).
            time.sleep(0.05)

    t = threading.Thread(target=hupper)
    t.start()
    try:
        tracked = burst(stack, "info@tracked.test", [f"unknown-hup{i}@remote.test" for i in range(N)],
                        threads=3, pace=0.05)
        untracked = burst(stack, "info@untracked.test", [f"ok-hup{i}@remote.test" for i in range(N // 4)],
                          threads=2, pace=0.05)
    finally:
        stop.set()
        t.join()
        write_config(original)
        stack.reload_milter()
    assert hups >= 10
    assert stack.milter_running() and stack._milter.pid == pid
    assert all(d.accepted and d.tempfails == 0 for d in tracked + untracked), \
        [d.attempts[-1] for d in tracked + untracked if not d.accepted or d.tempfails]
    for d in tracked:
        txs = stack.fakemx.wait_for(lambda f, r=d.sent.recipient: f.for_rcpt(r), 20)
        assert all(tx.mail_from.startswith("b+") for tx in txs), d.sent.recipient
    for d in untracked:
        txs = stack.fakemx.wait_for(lambda f, r=d.sent.recipient: f.for_rcpt(r), 20)
        assert all(tx.mail_from == "info@untracked.test" for tx in txs), d.sent.recipient
    sent = [d.sent for d in tracked]
    wait_stored(stack, sent, 60)
    result = assert_reconciled(stack.db_path, sent)
    log = stack.milter_log_text()
    # SIGHUPs that arrive while a reload runs coalesce into one (one read of the
    # control pipe, the latest file): under load there are fewer reloads than HUPs.
    assert "reload refused" not in log and log.count("configuration reloaded") >= 1, log[-3000:]
    print(f"SIGHUP storm: {hups} reloads during {len(tracked) + len(untracked)} messages, no tempfail; "
          f"{result.summary()}")


# --- every process reloads on SIGHUP (issue 15) ----------------------------------------


def _domains(rx_a: Any, rx_b: Any, hashes: list[str], late: bool) -> dict[str, Any]:
    """Before (late=False): tracked.test posts to rx_a with one API token, late.test is
    not tracked. After: tracked.test posts to rx_b with its new secret and takes a second
    token; late.test is tracked and posts to rx_b."""
    webhook = {"url": rx_b.url, "secret": rx_b.secret} if late else {"url": rx_a.url, "secret": rx_a.secret}
    domains: dict[str, Any] = {
        "tracked.test": {"tracking": True, "webhook": webhook, "api_tokens": hashes},
        "late.test": {"tracking": late},
    }
    if late:
        domains["late.test"]["webhook"] = {"url": rx_b.url, "secret": rx_b.secret}
    return domains


def test_sighup_applies_token_webhook_and_domain_changes_in_every_process(
        make_stack: Any, tmp_path: Any) -> None:
    import secrets

    import httpx

    from bouncetrack.harness.webhook_receiver import WebhookReceiver
    from bouncetrack.core.tokens import hash_api_token, new_api_token
    from tests.services import format_problems, rewrite, start_api, start_worker

    token1, token2 = new_api_token(), new_api_token()
    with WebhookReceiver("old-secret-" + secrets.token_hex(8)) as rx_a, \
            WebhookReceiver("whsec_" + __import__("base64").b64encode(secrets.token_bytes(24)).decode()) as rx_b:
        stack = make_stack(with_milter=True, pipe="real", log_level="INFO",
                           domains=_domains(rx_a, rx_b, [hash_api_token(token1)], late=False))
        api, base = start_api(stack.config_path, stack.log_dir / "api.log", stack)
        worker = start_worker(stack.config_path, stack.log_dir / "worker.log", stack)
        milter_pid, server_pid = stack._milter.pid, stack._pipe_server.pid
        try:
            day = time.strftime("%Y-%m-%d", time.gmtime())
            url = f"{base}/v1/bounces/{day}/{day}"
            assert httpx.get(url, params={"access_token": token1}).status_code == 200
            assert httpx.get(url, params={"access_token": token2}).status_code == 401

            # One edit, then SIGHUP to each process: none restarts.
            original = stack.config_path.read_text()
            stack._domains = _domains(rx_a, rx_b, [hash_api_token(token1), hash_api_token(token2)], late=True)
            rewrite(stack.config_path, stack.config_yaml())
            api.hup()
            worker.hup()
            os.kill(server_pid, signal.SIGHUP)
            stack.reload_milter()
            for name, text in (("api", api.text), ("worker", worker.text),
                               ("pipe server", stack.pipe_server_log.read_text),
                               ("milter", stack.milter_log_text)):
                stack.wait_for(lambda t=text: "configuration reloaded" in t(), 60)

            # API: the new token is accepted, the old one still is.
            got = httpx.get(url, headers={"Authorization": f"Bearer {token2}"})
            assert got.status_code == 200, got.text
            assert httpx.get(url, params={"access_token": token1}).status_code == 200

            # Milter: late.test is tracked now. Pipe server and worker: both bounces are
            # stored with the new domains and delivered to the new URL with the new secret.
            sent_t = stack.send("info@tracked.test", ["unknown-reload1@remote.test"])
            sent_l = stack.send("info@late.test", ["unknown-late1@remote.test"])
            assert sent_t.accepted and sent_l.accepted
            txs = stack.fakemx.wait_for(lambda f: f.for_rcpt("unknown-late1@remote.test"), 60)
            assert all(tx.mail_from.startswith("b+") for tx in txs)
            stack.wait_for(lambda: len(rx_b.accepted()) >= 2, 120, flush_every=2.0)
            assert rx_a.requests == [], "the old webhook URL must not be used after the reload"
            payloads = {r.json()["data"]["recipient"]: r.json()["data"] for r in rx_b.accepted()}
            assert payloads["unknown-reload1@remote.test"]["queue_id"] == sent_t.queue_id
            assert payloads["unknown-late1@remote.test"]["queue_id"] == sent_l.queue_id
            assert payloads["unknown-late1@remote.test"]["domain"] == "late.test"

            # A broken file is refused by every process, which keeps the running one.
            rewrite(stack.config_path, original.replace("domains:", "domains: [", 1))
            api.hup()
            worker.hup()
            os.kill(server_pid, signal.SIGHUP)
            stack.reload_milter()
            for name, text in (("api", api.text), ("worker", worker.text),
                               ("pipe server", stack.pipe_server_log.read_text),
                               ("milter", stack.milter_log_text)):
                stack.wait_for(lambda t=text: "reload refused" in t(), 60)
            assert httpx.get(url, params={"access_token": token2}).status_code == 200
            rewrite(stack.config_path, stack.config_yaml())

            assert stack._milter.pid == milter_pid and stack._pipe_server.pid == server_pid
            assert api.proc.poll() is None and worker.proc.poll() is None
        finally:
            api.stop()
            worker.stop()

        # Logs an operator can follow: one format everywhere, one line per tracked
        # message (milter), per bounce (pipe server), per delivery (worker).
        logs = {"api": api.text(), "worker": worker.text(), "pipe-server": stack.pipe_server_log.read_text(),
                "milter": stack.milter_log_text()}
        for name, text in logs.items():
            assert not format_problems(text), (name, format_problems(text)[:5])
        assert f"tracked queue_id={sent_t.queue_id} token=" in logs["milter"]
        assert f"queue_id={sent_l.queue_id}" in logs["pipe-server"] and "bounce handled: exit 0" in logs["pipe-server"]
        delivered = [line for line in logs["worker"].splitlines() if line.endswith(": delivered")]
        assert any(f"queue_id={sent_t.queue_id} webhook {rx_b.url}" in line for line in delivered), delivered
        assert "access_token=***" in logs["api"] and token1 not in logs["api"] and token2 not in logs["api"]
        assert "bouncetrack api stopped" in logs["api"] and "bouncetrack worker stopped" in logs["worker"]

        # The milter removes its socket when stopped, and says so.
        stack.stop_milter()
        assert not stack.milter_socket.exists()
        assert "bouncetrack milter stopped" in stack.milter_log_text()
