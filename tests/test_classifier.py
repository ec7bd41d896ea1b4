"""Unit tests of the classifier on small hand-written samples (tests/samples/classifier)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bouncetrack.classifier import classify
from bouncetrack.classifier.model import Report
from bouncetrack.classifier.reasons import classify_reason, find_reply_code, find_status

SAMPLES = Path(__file__).parent / "samples" / "classifier"

# file -> expected (kind, [(address, reason, status, hard)])
CASES: dict[str, tuple[str, list[tuple[str | None, str, str | None, bool]]]] = {
    "dsn-failed-userunknown.eml": ("bounce", [("alice@dest.example.net", "userunknown", "5.1.1", True)]),
    "dsn-delayed.eml": ("delivery_report", [("bob@slow.example.net", "expired", "4.4.1", False)]),
    "dsn-delivered.eml": ("delivery_report", [("carol@ok.example.net", "delivered", "2.0.0", False)]),
    "dsn-mistyped-mailboxfull.eml": ("bounce", [("dave@full.example.net", "mailboxfull", "5.2.2", False)]),
    "arf-abuse.eml": ("complaint", [("erin@isp.example.net", "feedback", None, False)]),
    "vacation.eml": ("auto_reply", [("frank@corp.example.net", "vacation", None, False)]),
    "exim-text.eml": ("bounce", [("gina@gone.example.net", "userunknown", "5.1.1", True)]),
    "qmail-text.eml": ("bounce", [("henry@full.example.net", "mailboxfull", "5.2.2", False)]),
    # Sendmail transcript naming two recipients as "554 <addr>... reply"
    "sendmail-transcript.eml": ("bounce", [("ann@far.example.net", "hostunknown", "5.1.2", True),
                                           ("ben@other.example.net", "hostunknown", "5.1.2", True)]),
    # a mailing list (fml) refusing a post from a non-member: the list is the recipient
    "fml-notmember.eml": ("bounce", [("club@lists.example.org", "rejected", "5.7.1", False)]),
    # a relay's notice naming nobody, the real DSN attached
    "wrapped-dsn.eml": ("bounce", [("carl@dest.example.net", "userunknown", "5.1.1", True)]),
    # a complaint whose original names no recipient: Sisimai's ".invalid" placeholder
    "arf-undisclosed.eml": ("complaint", [("undisclosed-recipient-in-headers@libsisimai.org.invalid",
                                           "feedback", None, False)]),
    # Exchange 5.5-2003: the To: above "did not reach" is the original's (a list), the
    # recipient an X.400 address with its SMTP form
    "exchange-x400.eml": ("bounce", [("Jo.Smith@corp.example.com", "userunknown", "5.1.1", True)]),
    # a reason, a colon, the address alone in angle brackets
    "reason-colon-address.eml": ("bounce", [("kim@full.example.net", "mailboxfull", "5.2.2", False)]),
    # Microsoft JMRP: the complaining mailbox is X-HmXmrOriginalRecipient, in the original
    # attached (its To: is a list here) or in the message itself (the older inline form)
    "jmrp-attached.eml": ("complaint", [("sam@hotmail.example", "feedback", None, False)]),
    "jmrp-inline.eml": ("complaint", [("pat@hotmail.example", "feedback", None, False)]),
    "plain.eml": ("not_bounce", []),
    "garbage.eml": ("not_bounce", []),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_sample(name: str) -> None:
    kind, want = CASES[name]
    rep = classify((SAMPLES / name).read_bytes())
    assert isinstance(rep, Report)
    assert rep.kind == kind, rep
    got = [(r.address, r.reason, r.status, r.hard) for r in rep.recipients]
    assert got == want


@pytest.mark.parametrize("diag,reason", [
    ("mail.local: unknown user: alice 554 <alice@example.net>... Service unavailable", "userunknown"),
    ("procmail: Quota exceeded while writing \"/var/mail/alice\"", "mailboxfull"),
    ("maildrop: maildir over quota.", "mailboxfull"),
])
def test_local_delivery_agent(diag: str, reason: str) -> None:
    from bouncetrack.classifier.common import make_recipient

    assert make_recipient("alice@example.net", status="5.5.0", diagnostic=diag).reason == reason


def test_reply_to_rcpt_reads_as_postfix_words() -> None:
    # "Recipient address rejected." answered to RCPT TO is about the address
    r = classify_reason("550 <a@example.net>: Recipient address rejected. (in reply to RCPT TO command)",
                        "5.0.0", "550")
    assert r == "userunknown"
    from bouncetrack.classifier.reasons import decide

    assert decide("550 <a@example.net>: Recipient address rejected.", "5.0.0", "550", command="RCPT") == "userunknown"


def test_dsn_details() -> None:
    rep = classify((SAMPLES / "dsn-failed-userunknown.eml").read_bytes())
    r = rep.recipients[0]
    assert r.action == "failed"
    assert r.reply_code == "550"
    assert r.original_recipient == "alice@dest.example.net"
    assert r.remote_mta == "mx.dest.example.net"
    assert rep.envelope_id == "abcdefghijklmnopqrstuvwx"


def test_arf_details() -> None:
    rep = classify((SAMPLES / "arf-abuse.eml").read_bytes())
    assert rep.recipients[0].feedback_type == "abuse"
    assert rep.original_return_path == "<b+aaaabbbbccccddddeeeeffff@bounces.example.com>"
    assert rep.original_message_id == "<nl-1@example.com>"


def test_json_shape() -> None:
    rep = classify((SAMPLES / "qmail-text.eml").read_bytes())
    out: dict[str, Any] = rep.to_json(file="x.eml")
    assert set(out) == {"file", "kind", "recipients"}
    assert set(out["recipients"][0]) == {"address", "action", "status", "reason", "hard", "reply_code", "diagnostic"}
    json.dumps(out)


@pytest.mark.parametrize("raw", [b"", b"\x00" * 10, b"Content-Type: multipart/report; boundary=x\n\n--x\n", b"\xff" * 1000])
def test_degenerate_inputs(raw: bytes) -> None:
    assert classify(raw).kind == "not_bounce"


def test_not_bytes_is_not_bounce() -> None:
    assert classify("a string" ).kind == "not_bounce"  # type: ignore[arg-type]


@pytest.mark.parametrize("text,status,reply,reason", [
    ("550 5.1.1 <a@b.example>: Recipient address rejected: User unknown", None, None, "userunknown"),
    ("552 5.2.2 Mailbox full", None, None, "mailboxfull"),
    ("Host or domain name not found. Name service error", None, None, "hostunknown"),
    ("554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org", None, None, "blocked"),
    ("Relay access denied", None, None, "norelaying"),
    ("", "5.1.1", None, "userunknown"),
    ("", "5.2.2", None, "mailboxfull"),
    ("", "5.7.26", None, "authfailure"),
    ("", None, "552", "undefined"),  # a reply code alone decides nothing
    ("", None, None, "undefined"),
    # "user unknown" answered to RCPT is the address; after DATA it is a filter's verdict
    ("host mx said: 550 User unknown (in reply to RCPT TO command)", None, None, "userunknown"),
    ("host mx said: 550 User unknown (in reply to end of DATA command)", None, None, "filtered"),
    ("550 Service refused, please try later. LPN001_108", None, None, "onhold"),
])
def test_reason_rules(text: str, status: str | None, reply: str | None, reason: str) -> None:
    assert classify_reason(text, status, reply) == reason


def test_code_finders_ignore_ip_addresses() -> None:
    assert find_status("host 192.0.2.1 said: 550 5.1.1 no") == "5.1.1"
    assert find_status("from 10.4.4.7 only") is None
    assert find_status("Sisimai 5.0.910") is None
    assert find_reply_code("said: 550 5.1.1 no") == "550"


def test_nested_bounce_in_attachment() -> None:
    inner = (SAMPLES / "dsn-failed-userunknown.eml").read_bytes()
    outer = (b"From: helpdesk@example.com\nTo: ops@example.com\nSubject: Fwd: see this\n"
             b"MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=OUT\n\n--OUT\n"
             b"Content-Type: text/plain\n\nfyi\n--OUT\nContent-Type: message/rfc822\n\n"
             + inner + b"\n--OUT--\n")
    rep = classify(outer)
    assert rep.kind == "bounce"
    assert rep.recipients[0].address == "alice@dest.example.net"


def test_deep_nesting_does_not_raise() -> None:
    msg = b"From: a@b.example\nSubject: x\n\nbody\n"
    for _ in range(300):
        msg = b"Content-Type: message/rfc822\n\n" + msg
    assert isinstance(classify(msg), Report)
    msg = b"x"
    for i in range(500):
        msg = (b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i)) + msg + (b"\n--b%d--\n" % i)
    assert isinstance(classify(msg), Report)


def test_huge_part_is_bounded() -> None:
    raw = (SAMPLES / "qmail-text.eml").read_bytes() + b"x" * (5 * 1024 * 1024)
    assert classify(raw).kind == "bounce"


@pytest.mark.parametrize("quoted,address", [
    ("'ivy@gone.example.net'", "ivy@gone.example.net"),  # quoted as text bounces do
    ("'o'hara@gone.example.net'", "o'hara@gone.example.net"),  # an apostrophe inside stays
    ("<o'hara@gone.example.net>", "o'hara@gone.example.net"),
])
def test_quoted_address_in_a_text_bounce(quoted: str, address: str) -> None:
    # A local part may hold an apostrophe (RFC 5322 atext) but does not start with one here:
    # 'user@host' is a quoted address, not a mailbox named 'user.
    raw = (b"From: MAILER-DAEMON@relay.example.org\nTo: b+tok@bounce.example.com\n"
           b"Subject: Mail delivery failed\n\nThe following message, addressed to "
           + quoted.encode() + b",\nwas undeliverable for the following reason:\n"
           b"550 5.1.1 user unknown\n")
    rep = classify(raw)
    assert rep.kind == "bounce"
    assert [r.address for r in rep.recipients] == [address]


def test_mdaemon_notice_names_its_recipient_not_the_attached_messages() -> None:
    # From "MDaemon@host" (Alt-N MDaemon) is a mail system's notice: its own text names the
    # recipient; the attached original (sent to a list) must not be read as the bounce.
    rep = classify((SAMPLES / "mdaemon.eml").read_bytes())
    assert rep.kind == "bounce"
    assert [r.address for r in rep.recipients] == ["lee@mail.example.net"]


@pytest.mark.parametrize("lines,address,reason", [
    # MailEnable: the SMTP form of the address in brackets
    ("The following recipient(s) could not be reached:\n\n\tRecipient: [SMTP:ola@gone.example.net]\n"
     "\tReason: Remote SMTP Server Returned: 550 5.1.1 User unknown\n", "ola@gone.example.net", "userunknown"),
    # a bullet, the address in brackets, a colon, the reply (Vade Secure relays)
    ("Delivery has failed to these recipients or distribution lists:\n\n"
     "\t* [max@full.example.net]: 550 max@full.example.net...User account is overquota\n",
     "max@full.example.net", "mailboxfull"),
    # a double-dash entry (some hosted filters' notices)
    ("could not be delivered to email address :\n-- ida@gone.example.net\nThe problem appears to be :\n"
     "-- 550 5.1.1 mailbox unavailable\n", "ida@gone.example.net", "userunknown"),
    # Exim hiding an alias target: only "(generated from ...)" names the address we sent to
    ("The following address(es) failed:\n\n  an undisclosed address\n    (generated from ada@alias.example.net)\n",
     "ada@alias.example.net", None),
])
def test_text_bounce_entry_forms(lines: str, address: str, reason: str | None) -> None:
    raw = (b"From: Mail Delivery System <MAILER-DAEMON@relay.example.org>\nTo: b+tok@bounce.example.com\n"
           b"Subject: Mail delivery failed\n\n" + lines.encode())
    rep = classify(raw)
    assert rep.kind == "bounce"
    assert [r.address for r in rep.recipients] == [address]
    if reason is not None:
        assert rep.recipients[0].reason == reason
