"""The one redactor and the one log format (issue 15), without processes.

The processes are driven end to end in tests/test_no_secrets_in_logs.py and
tests/faults/test_reload.py; here each rule on its own.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from bouncetrack.core.logsetup import Formatter, log_lines, setup
from bouncetrack.core.redact import config_secrets, redact_text, redact_url, register
from bouncetrack.core.tokens import new_api_token
from tests.configkit import write_config
from tests.services import LOG_LINE


@pytest.fixture(autouse=True)
def no_known_values() -> None:
    register([])


@pytest.mark.parametrize("url, shown", [
    ("postgresql://app:s3cret@db/bt", "postgresql://app:***@db/bt"),
    ("postgresql://app:pa/ss@db:5432/bt?sslmode=require", "postgresql://app:***@db:5432/bt?sslmode=require"),
    ("postgresql://db/bt?user=app&password=s3cret", "postgresql://db/bt?user=app&password=***"),
    ("postgresql://app@db/bt", "postgresql://app@db/bt"),
    ("sqlite:////var/lib/bouncetrack/bouncetrack.db", "sqlite:////var/lib/bouncetrack/bouncetrack.db"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_every_secret_shape_is_masked() -> None:
    token = new_api_token()
    line = (f'127.0.0.1:5 - "GET /v1/bounces/2026-01-01/2026-01-02?format=csv&access_token={token} HTTP/1.1" 200 '
            f"Authorization: Bearer {token}; Cookie: bt_session=eyJ2IjoxfQ.c2lnbmF0dXJl; "
            "secret: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw postgresql://bt:pw123456@db/bt "
            'webhook: {url: "http://x/", secret: "two words"}')
    out = redact_text(line)
    for secret in (token, "eyJ2IjoxfQ.c2lnbmF0dXJl", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "pw123456", "two words"):
        assert secret not in out, secret
    assert "access_token=***" in out and "Bearer ***" in out and "bt_session=***" in out
    assert "bt:***@db" in out and "format=csv" in out


def test_prose_about_secrets_is_left_alone() -> None:
    line = "file:7: domains.a.test.webhook: webhook without a secret: add 'secret' (each delivery is signed with it)"
    assert redact_text(line) == line
    assert redact_text("  secret: plainvalue\n  password: 'a b'") == "  secret: ***\n  password: ***"


def test_known_values_are_masked_and_ordinary_lines_untouched() -> None:
    register(["plain-and-long", "Hunter2-long", "abc"])  # too short to register: "abc"
    assert redact_text("HTTP 401: bad signature with plain-and-long") == "HTTP 401: bad signature with ***"
    assert redact_text("abc Hunter2-long") == "abc ***"
    line = "tracked queue_id=4Xk9Qn1vZtz3Jb token=aebagbafaydqqcikbmgq2dq4 sender_domain=example.com recipients=2"
    assert redact_text(line) == line  # the VERP token is no secret: it is in Postfix's log


def test_config_secrets_lists_webhook_secrets_and_the_store_password(tmp_path: Path) -> None:
    config = write_config(tmp_path, """\
        domains:
          a.test:
            tracking: true
            webhook: {url: "http://127.0.0.1:9/h", secret: plain-and-long}
    """)
    found = config_secrets(config)
    assert "plain-and-long" in found
    from dataclasses import replace

    assert "p%40ss-word" in config_secrets(replace(config, store_url="postgresql://u:p%40ss-word@h/d"))


def test_the_log_format_and_its_continuation_lines() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(Formatter("bouncetrack-test"))
    log = logging.getLogger("bouncetrack.test-format")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        log.error("reload refused:\nfile:3: key: bad access_token=bt_%s", "x" * 30)
    finally:
        log.removeHandler(handler)
    first, second = stream.getvalue().splitlines()
    match = LOG_LINE.match(first)
    assert match and match["process"] == "test" and match["level"] == "ERROR"
    assert second == "    file:3: key: bad access_token=***"


def test_log_lines_is_a_line_each_as_if_logged_alone_and_redacted() -> None:
    # Issue 20: the journal writer's line per tracked message, a few dozen per record.
    stream = io.StringIO()
    writes: list[int] = []  # bytes of each record the handler writes

    class Handler(logging.StreamHandler):  # type: ignore[type-arg]
        def emit(self, record: logging.LogRecord) -> None:
            writes.append(len(self.format(record).encode()))
            super().emit(record)

    handler = Handler(stream)
    handler.setFormatter(Formatter("bouncetrack-test"))
    log = logging.getLogger("bouncetrack.test-lines")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    register(["known-secret-value"])
    lines = [f"tracked queue_id=Q{i} token=tok{i} sender_domain=example.com recipients=1" for i in range(200)]
    lines[7] = "tracked queue_id=Q7 token=known-secret-value sender_domain=a.test\nforged line"
    try:
        log_lines(log, logging.INFO, lines)
        log_lines(log, logging.DEBUG, ["not logged"])
    finally:
        log.removeHandler(handler)
    out = stream.getvalue().splitlines()
    assert len(out) == 201 and 2 < len(writes) < 20  # a record (one write) per few dozen lines
    got = [line for line in out if not line.startswith("    ")]
    assert len(got) == 200 and all(LOG_LINE.match(line) for line in got)
    assert [line.split(" INFO ", 1)[1] for line in got] == [
        "tracked queue_id=Q7 token=*** sender_domain=a.test" if i == 7 else line for i, line in enumerate(lines)]
    assert out[8] == "    forged line"  # a line's own break is indented, as in any record
    assert max(writes) < 4096  # PIPE_BUF: a pipe never interleaves another process's lines into it


def test_setup_sends_uvicorns_loggers_to_the_one_handler() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        handler = setup("api", "INFO")
        assert root.handlers == [handler]
        assert all(logging.getLogger(n).propagate and not logging.getLogger(n).handlers
                   for n in ("uvicorn", "uvicorn.error", "uvicorn.access"))
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])


def test_the_pipe_says_everything_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    """One way for the pipe to talk to Postfix's log (bounce_pipe/say.py), used by the pipe's
    edge (main) and its work (process) alike: a secret in a line is masked."""
    from bouncetrack.bounce_pipe import main, process
    from bouncetrack.bounce_pipe.say import say

    assert vars(main)["say"] is say and vars(process)["_say"] is say
    register(["whsec_0123456789abcdef"])
    try:
        say("configuration not loaded (bt.yaml:9: secret: whsec_0123456789abcdef)")
    finally:
        register([])
    err = capsys.readouterr().err
    assert err.startswith("bouncetrack pipe: configuration not loaded") and "whsec_0123456789abcdef" not in err
