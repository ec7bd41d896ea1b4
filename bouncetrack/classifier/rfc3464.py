"""RFC 3464 delivery status notifications (message/delivery-status)."""

from __future__ import annotations

from .common import data_phase, field_address, make_recipient, strip_diag_type
from .reasons import find_command
from .model import BOUNCE, DELIVERY_REPORT, RecipientResult, Report
from .text import diagnostic_for
from .view import Fields, ParsedView, parse_fields

# RFC 3464 §2.3.3: actions that are not failures.
NOT_FAILED = frozenset({"delayed", "delivered", "relayed", "expanded", "deliverable"})


def _recipient_blocks(blocks: list[Fields]) -> tuple[Fields, list[Fields]]:
    """Split into the per-message block and per-recipient blocks (RFC 3464 §2.1)."""
    per_msg: Fields = {}
    rcpts: list[Fields] = []
    for b in blocks:
        if "final-recipient" in b or "original-recipient" in b or "x-actual-recipient" in b:
            rcpts.append(b)
        elif not rcpts:
            per_msg.update({k: v for k, v in b.items() if k not in per_msg})
        elif "action" in b or "status" in b:
            rcpts.append(b)
    return per_msg, rcpts


def _diag_type(value: str | None) -> str:
    """RFC 3464 §2.3.6 diagnostic-type ("smtp", "X-Unix", ...); Postfix's own is SMTP."""
    if not value or ";" not in value:
        return "SMTP"
    t = value.split(";", 1)[0].strip().upper()
    if t in ("X-POSTFIX", "") or " " in t:
        return "SMTP"
    return t


def _rfc822_typed(value: str) -> bool:
    t = value.split(";", 1)[0].strip().lower() if ";" in value else "rfc822"
    return t in ("rfc822", "utf-8")  # RFC 6533 §3 adds utf-8 addresses


def ds_blocks_from_text(view: ParsedView) -> list[Fields]:
    """A delivery-status mis-typed as text/plain or pasted into the body."""
    return _blocks_in(view.body)


def _blocks_in(body: str) -> list[Fields]:
    low = body.lower()
    i = low.find("final-recipient:")
    if i < 0:
        i = low.find("original-recipient:")
    if i < 0:
        return []
    start = low.rfind("\n\n", 0, i)
    start = 0 if start < 0 else start
    return parse_fields(body[start : i + 8192])


def detect(view: ParsedView) -> Report | None:
    blocks = view.ds_blocks
    if not any(("final-recipient" in b or "original-recipient" in b) for b in blocks):
        extra = ds_blocks_from_text(view)
        if extra:
            blocks = blocks + extra
    epilogue = getattr(view.msg, "epilogue", None)
    if blocks and isinstance(epilogue, str) and "inal-Recipient:" in epilogue[:65536]:
        # A second report stored after the first one's closing boundary (two notices in one
        # mbox file): its per-recipient blocks are recipients too.
        blocks = blocks + [b for b in _blocks_in(epilogue[:65536]) if "final-recipient" in b]
    per_msg, rcpts = _recipient_blocks(blocks)
    if not rcpts:
        return None
    in_data = data_phase(view.report_text[:20000])
    # The command a failure answered is often only in the human-readable part
    # ("... (in reply to RCPT TO command)"): the fallback for every recipient.
    report_cmd = find_command(view.report_text[:20000])
    # Exim marks its reports with X-Failed-Recipients; its fixed texts then name the reason
    family = "exim" if "x-failed-recipients" in view.headers else None
    # OpenSMTPD's Status fields are only ever "X.0.0": its text ("addr: reason") is the
    # report (cf. Sisimai's OpenSMTPD module, which reads the text and not the fields).
    generic_status = False
    if family is None and "please DO NOT REPLY to this" in view.report_text[:3000]:
        family, generic_status = "opensmtpd", True
    # au (KDDI) EZweb states the account's condition in a line above the recipients
    # ("The user(s) account is disabled."): it explains every recipient of the notice
    preamble = ""
    mid = view.headers.get("message-id", "")
    if family is None and (mid.endswith(".ezweb.ne.jp>") or mid.endswith(".au.com>")):
        family = "ezweb"
        preamble = " ".join(ln.strip() for ln in view.report_text[:2000].split("\n")
                            if ln.startswith("The user(s) ") or ln.startswith("Your message "))
    results: list[RecipientResult] = []
    seen: set[str] = set()
    for b in rcpts:
        orig_field = b.get("original-recipient") or ""
        # RFC 3464 §2.3.1: "address-type; address"; only an rfc822 (or untyped) one is a mailbox
        orig = field_address(orig_field) if _rfc822_typed(orig_field) else None
        final = field_address(b.get("final-recipient"), loose=orig is None)
        # §2.3.2 Final-Recipient (required) is the mailbox that failed; when an alias or a
        # forward rewrote the address the sender used, that one is §2.3.1 Original-Recipient
        # (from ORCPT), kept as ``original_recipient`` (the pipe matches it first). Final
        # gives way when it is unusable: a VERP/SRS envelope address is never taken (issue 18),
        # a malformed one (no domain dot) only when nothing else names the recipient.
        addr = final or orig or field_address(b.get("x-actual-recipient"))
        action = b.get("action")  # RFC 3464 §2.3.3
        status = b.get("status")  # RFC 3464 §2.3.4
        if generic_status and status and status.strip()[1:] == ".0.0":
            status = None
        diag = strip_diag_type(b.get("diagnostic-code"))  # RFC 3464 §2.3.6
        remote = strip_diag_type(b.get("remote-mta"))  # RFC 3464 §2.3.5
        if addr is None:
            continue
        key = addr.lower() + "|" + (action or "")
        if key in seen:
            continue
        seen.add(key)
        # Many MTAs put the real reason only in the human-readable part.
        if not diag or len(diag) < 12 or diag.lower() in ("unknown", "none"):
            text_diag = diagnostic_for(view, addr)  # read the body only when the field says nothing
            if text_diag:
                diag = (diag + " " + text_diag) if diag else text_diag
        if preamble:
            diag = (preamble + " " + (diag or "")).strip()
        results.append(make_recipient(
            addr, action=action, status=status, diagnostic=diag, remote_mta=remote,
            original_recipient=orig, in_data=in_data or data_phase(diag or ""),
            command=find_command(diag) or report_cmd, diag_type=_diag_type(b.get("diagnostic-code")),
            hosts=view.hosts, family=family,
        ))
    if not results:
        return None
    failed = [r for r in results if (r.action or "failed") not in NOT_FAILED]
    kind = BOUNCE if failed else DELIVERY_REPORT
    envid = per_msg.get("original-envelope-id")  # RFC 3464 §2.2.1
    return Report(kind=kind, recipients=tuple(results), detector="rfc3464", envelope_id=envid)
