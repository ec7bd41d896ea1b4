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


# --- Hostile reports (issue 16): each within Postfix's message_size_limit (10240000) ---------

SIZE_LIMIT = 10_240_000


def hostile_many_recipients(verp: str, recipient: str, n: int = 100_000) -> bytes:
    """A DSN naming ``n`` recipients in compact blocks (100,000: about 6 MB), the first one ``recipient``."""
    raw = dsn(verp, recipient, diagnostic="smtp; 550 5.1.1 unknown")
    blocks = "".join(f"\nFinal-Recipient: rfc822;r{i}@v.test\nAction: failed\nStatus: 5.1.1\n" for i in range(1, n))
    return raw.replace(b"\n\n--BOUNDARY\nContent-Description: Undelivered Message Headers",
                       blocks.encode() + b"\n\n--BOUNDARY\nContent-Description: Undelivered Message Headers", 1)


def hostile_long_boundary(verp: str, boundary_len: int = 5_000_000) -> bytes:
    """A ~10 MB report whose MIME boundary is ``boundary_len`` bytes (once in the header, once as a delimiter)."""
    b = "B" * boundary_len
    return (
        f"From: MAILER-DAEMON@mx.remote.test\r\nTo: {verp}\r\nSubject: Undelivered\r\n"
        f"Message-ID: <long-boundary@mx.remote.test>\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{b}"\r\n\r\n'
        f"--{b}\r\nContent-Type: text/plain\r\n\r\nfailed\r\n"
    ).encode()


def hostile_semicolons(verp: str, recipient: str, n: int = 800_000, *, inner: bool = False) -> bytes:
    """A DSN with ``n`` ``;`` in a Content-Type: the top-level one, or (``inner``) the
    text/plain notification part's (its charset is read: quadratic in ``;`` too).
    Otherwise a valid report about ``recipient``."""
    raw = dsn(verp, recipient, original_recipient=recipient)
    if inner:
        return raw.replace(b"Content-Type: text/plain; charset=us-ascii\n",
                           b"Content-Type: text/plain; charset=us-ascii" + b";" * n + b"\n", 1)
    return raw.replace(b'boundary="BOUNDARY"\n', b'boundary="BOUNDARY"' + b";" * n + b"\n", 1)


def hostile_nested_boundaries(verp: str, size: int = SIZE_LIMIT - 100_000) -> bytes:
    """Nested multiparts, each with its own short boundary, until ``size`` (~100,000 of them)."""
    head = (f"From: MAILER-DAEMON@mx.remote.test\r\nTo: {verp}\r\nSubject: Undelivered\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"top\"\r\n\r\n")
    parts = [head.encode()]
    total, i = len(parts[0]), 0
    while total < size:
        b = f"{i:08d}"
        part = (f"--top\r\nContent-Type: multipart/mixed; boundary=\"{b}\"\r\n\r\n--{b}\r\n"
                f"Content-Type: text/plain\r\n\r\nhi\r\n--{b}--\r\n").encode()
        parts.append(part)
        total += len(part)
        i += 1
    parts.append(b"--top--\r\n")
    return b"".join(parts)


def hostile_folded_semicolons(verp: str, size: int = SIZE_LIMIT - 100_000) -> bytes:
    """One Content-Type folded over ~``size`` bytes of short continuation lines of ``;``."""
    line = b" " + b";" * 70 + b"\r\n"
    head = (f"From: MAILER-DAEMON@mx.remote.test\r\nTo: {verp}\r\nSubject: Undelivered\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n").encode()
    return head + line * (size // len(line)) + b"\r\n--b\r\n\r\nhi\r\n--b--\r\n"


def hostile_flat_parts(verp: str, size: int = SIZE_LIMIT - 100_000) -> bytes:
    """One multipart with as many empty parts as fit (~1.4 million delimiter lines)."""
    head = (f"From: MAILER-DAEMON@mx.remote.test\r\nTo: {verp}\r\nSubject: Undelivered\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n").encode()
    return head + b"--b\r\n\r\n" * (size // 7) + b"--b--\r\n"


def hostile_header_fields(verp: str, size: int = SIZE_LIMIT - 100_000) -> bytes:
    """About 600,000 header fields."""
    head = f"From: MAILER-DAEMON@mx.remote.test\r\nTo: {verp}\r\nSubject: Undelivered\r\n".encode()
    field = b"X-A: b\r\n"
    return head + field * (size // len(field)) + b"\r\nbody\r\n"


def hostile_long_line(verp: str, size: int = SIZE_LIMIT - 100_000) -> bytes:
    """A single body line of ~``size`` bytes in a text/plain bounce."""
    return (f"From: MAILER-DAEMON@mx.remote.test\r\nTo: {verp}\r\nSubject: Undelivered\r\n\r\n").encode() + b"x" * size + b"\r\n"
