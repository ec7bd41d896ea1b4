"""Build realistic reports for tests and benchmarks: RFC 3464 DSNs, ARF complaints."""

from __future__ import annotations


def dsn(
    verp: str,
    recipient: str,
    *,
    status: str = "5.1.1",
    action: str = "failed",
    diagnostic: str = "smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown",
    original_recipient: str | None = None,
    envid: str | None = None,
    message_id: str = "<orig-1@tracked.test>",
    extra_recipients: tuple[tuple[str, str, str], ...] = (),
) -> bytes:
    """A Postfix-style DSN (multipart/report, message/delivery-status, text/rfc822-headers)."""
    blocks = []
    for rcpt, st, act in ((recipient, status, action), *extra_recipients):
        block = [f"Final-Recipient: rfc822; {rcpt}"]
        if original_recipient and rcpt == recipient:
            block.append(f"Original-Recipient: rfc822;{original_recipient}")
        block += [f"Action: {act}", f"Status: {st}", "Remote-MTA: dns; mx.remote.test"]
        if act in ("failed", "delayed"):
            block.append("Diagnostic-Code: " + diagnostic.format(rcpt=rcpt))
        blocks.append("\n".join(block))
    per_message = ["Reporting-MTA: dns; mx.harness.test", "X-Postfix-Queue-ID: 4ABCDEF"]
    if envid:
        per_message.append(f"Original-Envelope-Id: {envid}")
    subject = {"failed": "Undelivered Mail Returned to Sender", "delayed": "Delayed Mail (still being retried)"}.get(
        action, "Successful Mail Delivery Report"
    )
    text = f"""Return-Path: <>
From: MAILER-DAEMON@mx.harness.test (Mail Delivery System)
To: {verp}
Subject: {subject}
Date: Sat, 28 Nov 2026 12:00:00 +0000
Message-Id: <20261128120000.4ABCDEF@mx.harness.test>
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="BOUNDARY"

This is a MIME-encapsulated message.

--BOUNDARY
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx.harness.test.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

--BOUNDARY
Content-Description: Delivery report
Content-Type: message/delivery-status

{chr(10).join(per_message)}

{(chr(10) + chr(10)).join(blocks)}

--BOUNDARY
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

Return-Path: <{verp}>
From: info@tracked.test
To: {recipient}
Subject: hello
Message-ID: {message_id}

--BOUNDARY--
"""
    return text.encode()


def arf(reporter_to: str, return_path: str, complainer: str, message_id: str = "<orig-1@tracked.test>") -> bytes:
    """An RFC 5965 abuse report whose attached original carries our VERP Return-Path."""
    return f"""From: feedback@isp.test
To: {reporter_to}
Subject: FW: hello
Date: Sat, 28 Nov 2026 12:00:00 +0000
Message-ID: <arf-1@isp.test>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="B"

--B
Content-Type: text/plain

This is an email abuse report.

--B
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: isp-fbl/1.0
Version: 1
Original-Mail-From: <{return_path}>
Arrival-Date: Sat, 28 Nov 2026 11:00:00 +0000

--B
Content-Type: message/rfc822

Return-Path: <{return_path}>
From: info@tracked.test
To: {complainer}
Subject: hello
Message-ID: {message_id}

Buy now.

--B--
""".encode()
