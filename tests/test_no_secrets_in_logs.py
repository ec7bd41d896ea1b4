"""No secret in any log (issue 15, must show).

Plants every kind of secret: an API token (sent in the query and in the
Authorization header, valid and wrong), two webhook secrets (a ``whsec_`` one and a
plain string), the dashboard's session cookie, a password in a PostgreSQL store
URL. Then drives every process through its normal and its error paths: the real
Postfix with the milter and the pipe server, the API and the worker as processes;
tracked mail bounced, a webhook delivered and one refused (500), a failed login and
a good one, the dashboard used with the cookie, a configuration broken and SIGHUP'd
to every process, and the PostgreSQL configuration (unreachable server) given to
the pipe, the worker, the API and the CLI. Finally greps every log, the Postfix
log and every command's output for each secret.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from bouncetrack.harness.webhook_receiver import WebhookReceiver
from bouncetrack.core.tokens import hash_api_token, new_api_token
from tests.services import ROOT, Service, free_port, rewrite, start_api, start_worker

pytestmark = pytest.mark.postfix


def _run(args: list[str], stdin: bytes = b"") -> str:
    """A ``bouncetrack`` command from this checkout; its stdout and stderr, as text."""
    proc = subprocess.run([sys.executable, "-m", "bouncetrack", *args], input=stdin, capture_output=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd="/")
    return (proc.stdout + proc.stderr).decode("utf-8", "replace")


def test_no_secret_reaches_any_log(make_stack: Any, tmp_path: Path) -> None:
    token, wrong = new_api_token(), new_api_token()
    whsec = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    plain = "plain-webhook-secret-" + secrets.token_hex(12)
    password = "Pg-" + secrets.token_hex(10)
    with WebhookReceiver(whsec) as good_rx, WebhookReceiver(plain) as bad_rx:
        bad_rx.answer_always(500)  # the refused webhook
        stack = make_stack(with_milter=True, pipe="real", log_level="DEBUG", domains={
            "tracked.test": {"tracking": True, "webhook": {"url": good_rx.url, "secret": whsec},
                             "api_tokens": [hash_api_token(token)]},
            "refused.test": {"tracking": True, "webhook": {"url": bad_rx.url, "secret": plain},
                             "api_tokens": [hash_api_token(token)]},
        })
        outputs: dict[str, str] = {}
        api, base = start_api(stack.config_path, stack.log_dir / "api.log", stack)
        worker = start_worker(stack.config_path, stack.log_dir / "worker.log", stack)
        try:
            # Normal paths: tracked mail, bounced, stored, delivered; a refused delivery.
            assert stack.send("info@tracked.test", ["unknown-s1@remote.test"]).accepted
            assert stack.send("info@refused.test", ["unknown-s2@remote.test"]).accepted
            stack.wait_for(lambda: good_rx.accepted() or None, 90, flush_every=2.0)
            stack.wait_for(lambda: bad_rx.requests or None, 90, flush_every=2.0)
            worker.wait_log(lambda t: "attempt 1 failed" in t)

            # The API: token in the query and in the header, a wrong one (401) both ways.
            day = time.strftime("%Y-%m-%d", time.gmtime())
            url = f"{base}/v1/bounces/{day}/{day}"
            assert httpx.get(url, params={"access_token": token, "format": "csv"}).status_code == 200
            assert httpx.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 200
            assert httpx.get(url, params={"access_token": wrong}).status_code == 401
            assert httpx.get(url, headers={"Authorization": f"Bearer {wrong}"}).status_code == 401
            assert httpx.get(f"{base}/v1/suppressions", params={"access_token": token}).status_code == 200

            # The dashboard: a failed login, a good one, pages with the cookie, logout.
            with httpx.Client(base_url=base) as browser:
                assert "not valid" in browser.post("/login", data={"token": wrong}).text
                browser.post("/login", data={"token": token})
                cookie = browser.cookies.get("bt_session")
                assert cookie, "no session cookie"
                assert browser.get("/events").status_code == 200
                assert browser.get("/dashboard").status_code == 200
                assert browser.get("/events?type=nonsense&q=%00").status_code in (200, 400)

            # Error path: a broken configuration (the line holding a secret) SIGHUP'd to all.
            good = stack.config_path.read_text()
            rewrite(stack.config_path, good.replace(f"secret: {plain}", f"secret: {plain}\n      - [", 1))
            api.hup()
            worker.hup()
            os.kill(stack._pipe_server.pid, signal.SIGHUP)
            stack.reload_milter()
            for text in (api.text, worker.text, stack.pipe_server_log.read_text, stack.milter_log_text):
                stack.wait_for(lambda t=text: "reload refused" in t(), 60)
            rewrite(stack.config_path, good)

            # Error path: the store on a PostgreSQL server that is not there, with a password.
            pg_config = tmp_path / "pg.yaml"
            pg_config.write_text(good.replace(
                f"store: sqlite:///{stack.db_path}",
                f"store: postgresql://bouncetrack:{password}@127.0.0.1:{free_port()}/bt?connect_timeout=2", 1))
            assert password in pg_config.read_text()
            outputs["pipe (PostgreSQL down)"] = _run(
                ["pipe", "--config", str(pg_config), "b+x@bounce.test", ""], b"Subject: x\r\n\r\nbounce\r\n")
            outputs["worker --once (PostgreSQL down)"] = _run(["worker", "--once", "--config", str(pg_config)])
            outputs["check-config"] = _run(["check-config", str(pg_config)])
            outputs["doctor"] = _run(["doctor", "--config", str(pg_config)])
            outputs["suppression list"] = _run(["suppression", "list", "--config", str(pg_config)])
            pg_api, pg_base = start_api(pg_config, tmp_path / "api-pg.log")
            try:
                assert httpx.get(f"{pg_base}/v1/bounces/{day}/{day}", params={"access_token": token},
                                 timeout=30).status_code == 503
                pg_api.wait_log(lambda t: "503" in t)
            finally:
                pg_api.stop()
            outputs["api (PostgreSQL down)"] = pg_api.text()
        finally:
            api.stop()
            worker.stop()
        stack.stop_milter()
        stack.stop_pipe_server()

        logs = {
            "api": api.text(), "worker": worker.text(), "milter": stack.milter_log_text(),
            "pipe server": stack.pipe_server_log.read_text(), "postfix": stack.postfix.log_text(),
            **outputs,
        }
        planted = {"API token": token, "wrong API token": wrong, "whsec_ webhook secret": whsec,
                   "plain webhook secret": plain, "session cookie": cookie, "store password": password}
        leaks = [(what, where) for what, value in planted.items() for where, text in logs.items() if value in text]
        assert not leaks, leaks
        # The paths ran (and said so, masked).
        assert "access_token=***" in logs["api"] and "Finished server process" in logs["api"]
        assert "HTTP 500" in logs["worker"] and ": delivered" in logs["worker"]
        assert "bouncetrack:***@127.0.0.1" in logs["worker --once (PostgreSQL down)"] + logs["check-config"]
        assert "reload refused" in logs["milter"] and "reload refused" in logs["pipe server"]
        # Every process said when it started and when it stopped.
        for name in ("api", "worker", "milter", "pipe server"):
            assert " starting, configuration " in logs[name], name
        assert "bouncetrack milter stopped" in logs["milter"]
        assert "bouncetrack pipe-server stopped" in logs["pipe server"]
        assert "bouncetrack worker stopped" in logs["worker"] and "bouncetrack api stopped" in logs["api"]
