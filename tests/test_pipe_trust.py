"""What may suppress (issue 16, point 11): forged reports never suppress unless trusted.

The token names a message, and every recipient of it sees the token. Each forged
report below is one a recipient (or anyone holding a copy) can write; it is
stored and attributed, but puts nobody on the suppression list unless the
domain opts in (``suppression.unverified``). Trusted: reports about a
single-recipient message, and DSNs made by this host's own Postfix (pipe(8)'s
``${client_address}`` empty; test_harness.py shows Postfix passes it empty for
its bounce service and the client's address for SMTP). Also the quota on
reports without a valid token, per sending host and day.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Callable

import pytest

from bouncetrack.bounce_pipe import guard
from bouncetrack.core.config import Config
from tests import mailgen
from tests.configkit import write_config
from tests.test_pipe import events, record, run_pipe

INTERNET = "--client-address=198.51.100.7"
LOCAL = "--client-address="  # what pipe(8) passes for a bounce of this Postfix


def _config(tmp_path: Path, unverified: bool = False) -> Config:
    return write_config(tmp_path, f"""\
        pipe: {{deadline_seconds: 8, untrusted_reports_per_host_per_day: 2}}
        domains:
          tracked.test:
            tracking: true
            suppression: {{policy: reject, unverified: {str(unverified).lower()}}}
        """)


@pytest.fixture()
def config(tmp_path: Path) -> Config:
    return _config(tmp_path)


def listed(config: Config) -> list[str]:
    db = sqlite3.connect(config.store_url.removeprefix("sqlite:///"))
    try:
        return [r[0] for r in db.execute("SELECT address FROM suppressions WHERE removed_at IS NULL ORDER BY address")]
    finally:
        db.close()


def guards(config: Config) -> dict[str, int]:
    db = sqlite3.connect(config.store_url.removeprefix("sqlite:///"))
    try:
        return dict(db.execute("SELECT guard, count FROM metric_pipe_guards").fetchall())
    finally:
        db.close()


def co_recipient_dsn(config: Config, *extra: str) -> None:
    """b@ of a two-recipient message writes a DSN saying a@ does not exist."""
    verp, _ = record(config, "a@remote.test", "b@remote.test")
    proc = run_pipe(config, verp, mailgen.dsn(verp, "a@remote.test", original_recipient="a@remote.test"), *extra)
    assert proc.returncode == 0, proc.stderr
    (event,) = events(config)
    assert event["recipient"] == "a@remote.test" and event["hard"] and not event["flagged"]


def test_co_recipient_dsn_from_the_internet_does_not_suppress(config: Config) -> None:
    co_recipient_dsn(config, INTERNET)
    assert listed(config) == []
    assert guards(config) == {guard.UNVERIFIED_NOT_SUPPRESSED: 1}


def test_co_recipient_dsn_without_a_client_address_does_not_suppress(config: Config) -> None:
    co_recipient_dsn(config)  # master.cf older than issue 16: no ${client_address}
    assert listed(config) == []


def test_dsn_of_our_own_postfix_about_a_multi_recipient_message_suppresses(config: Config) -> None:
    co_recipient_dsn(config, LOCAL)
    assert listed(config) == ["a@remote.test"]


def test_dsn_about_a_single_recipient_message_suppresses_from_anywhere(config: Config) -> None:
    verp, _ = record(config, "only@remote.test")
    assert run_pipe(config, verp, mailgen.dsn(verp, "only@remote.test"), INTERNET).returncode == 0
    assert listed(config) == ["only@remote.test"]


def test_domain_option_lets_unverified_reports_suppress(tmp_path: Path) -> None:
    config = _config(tmp_path, unverified=True)
    co_recipient_dsn(config, INTERNET)
    assert listed(config) == ["a@remote.test"]


def test_forged_complaint_about_a_multi_recipient_message_does_not_suppress(config: Config) -> None:
    verp, _ = record(config, "a@remote.test", "b@remote.test")
    report = mailgen.arf("fbl@bounce.test", verp, "a@remote.test")  # written by b@ (or anyone with a copy)
    assert run_pipe(config, "fbl@bounce.test", report, INTERNET).returncode == 0
    (event,) = events(config)
    assert event["type"] == "complaint" and event["recipient"] == "a@remote.test"
    assert listed(config) == []
    # Even "from" this host: a complaint is never a DSN of our Postfix.
    verp2, _ = record(config, "c@remote.test", "d@remote.test")
    assert run_pipe(config, "fbl@bounce.test", mailgen.arf("fbl@bounce.test", verp2, "c@remote.test"), LOCAL).returncode == 0
    assert listed(config) == []


def test_complaint_about_a_single_recipient_message_suppresses(config: Config) -> None:
    verp, _ = record(config, "only@remote.test")
    assert run_pipe(config, "fbl@bounce.test", mailgen.arf("fbl@bounce.test", verp, "only@remote.test"),
                    INTERNET).returncode == 0
    assert listed(config) == ["only@remote.test"]


def test_dsn_naming_another_address_for_a_single_recipient_message_does_not_suppress(config: Config) -> None:
    verp, _ = record(config, "only@remote.test")
    proc = run_pipe(config, verp, mailgen.dsn(verp, "stranger@remote.test"), INTERNET)
    assert proc.returncode == 0
    (event,) = events(config)
    assert event["flagged"] and listed(config) == []


def test_untrusted_reports_are_stored_within_a_quota_per_host_and_day(config: Config) -> None:
    for i in range(3):
        proc = run_pipe(config, "nobody@bounce.test", mailgen.dsn("nobody@bounce.test", f"x{i}@remote.test"), INTERNET)
        assert proc.returncode == 0, proc.stderr
    assert b"not stored" in proc.stderr and b"198.51.100.7" in proc.stderr
    assert [e["reported_recipient"] for e in events(config)] == ["x0@remote.test", "x1@remote.test"]
    assert guards(config) == {guard.UNTRUSTED_OVER_QUOTA: 1}
    # Another host has its own quota; reports with a valid token have none.
    assert run_pipe(config, "nobody@bounce.test", mailgen.dsn("nobody@bounce.test", "y@remote.test"),
                    "--client-address=203.0.113.9").returncode == 0
    verp, _ = record(config, "only@remote.test")
    assert run_pipe(config, verp, mailgen.dsn(verp, "only@remote.test"), INTERNET).returncode == 0
    assert len(events(config)) == 4


# --- complaints DKIM-signed by a configured feedback loop -------------------------------

def _rsa_key() -> tuple[bytes, str]:
    """(PEM private key, the DKIM key record's p= value) of a fresh 1024-bit RSA key."""
    import base64

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, base64.b64encode(der).decode()


def _signed(report: bytes, pem: bytes, domain: str) -> bytes:
    import dkim

    crlf = report.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    header: bytes = dkim.sign(crlf, b"sel", domain.encode(), pem,
                              include_headers=[b"from", b"to", b"subject", b"message-id", b"date"])
    return header + crlf


def test_complaint_signed_by_a_configured_feedback_loop_suppresses(tmp_path: Path) -> None:
    from tests.dnsserver import DnsServer

    pem, public = _rsa_key()
    record_data = '"v=DKIM1; k=rsa; p=' + public + '"'
    zones = {"sel._domainkey.isp.test.": [("TXT", record_data)],
             "sel._domainkey.other.test.": [("TXT", record_data)]}
    with DnsServer(zones) as dns:
        config = write_config(tmp_path, f"""\
            pipe: {{deadline_seconds: 8, feedback_loop_senders: [isp.test]}}
            validation: {{nameserver: "127.0.0.1:{dns.port}", dns_timeout: 1}}
            domains:
              tracked.test:
                tracking: true
                suppression: {{policy: reject}}
            """)
        cases: list[tuple[str, Callable[[bytes], bytes]]] = [  # only the first: signed by the listed loop, intact
            ("a@remote.test", lambda r: _signed(r, pem, "isp.test")),
            ("c@remote.test", lambda r: _signed(r, pem, "other.test")),  # valid signature, loop not listed
            ("e@remote.test", lambda r: _signed(r, pem, "isp.test").replace(b"This is an email abuse",
                                                                               b"This is an e-mail abuse")),
            ("g@remote.test", lambda r: r),  # not signed
        ]
        for i, (complainer, sign) in enumerate(cases):
            verp, _ = record(config, complainer, f"co{i}@remote.test")
            report = sign(mailgen.arf("fbl@bounce.test", verp, complainer))
            proc = run_pipe(config, "fbl@bounce.test", report, INTERNET)
            assert proc.returncode == 0, proc.stderr
        assert listed(config) == ["a@remote.test"]
        assert guards(config) == {guard.UNVERIFIED_NOT_SUPPRESSED: 3}


def test_the_pipe_imports_dkimpy_only_for_such_a_complaint() -> None:
    import subprocess
    import sys

    code = "import sys, bouncetrack.bounce_pipe.process; assert 'dkim' not in sys.modules, 'dkim imported'"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
