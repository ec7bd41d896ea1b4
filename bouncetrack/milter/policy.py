"""What the milter does with one message: a pure decision, no I/O.

The callbacks in :mod:`bouncetrack.milter.app` collect the envelope and a few
headers, ask :func:`decide`, and carry out the returned :class:`Decision`.
Keeping the rules here lets them be tested without libmilter or an MTA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

from ..core import esmtp
from ..core.config import Config
from ..core.tokens import verp_address
from ..suppression import enforced_policy

# Decision kinds.
TRACK = "track"  # envelope sender -> VERP, DSN overridden, message recorded
RETURN_PATH = "return-path"  # untracked; a Return-Path header moves into the envelope
DSN_DEFAULTS = "dsn-defaults"  # untracked; the domain's DSN defaults fill what the client left out
PASS = "pass"  # untouched
REFUSE = "refuse"  # untracked; a Return-Path in another domain than MAIL FROM's (issue 16)


class Recipient:
    """A recipient as the MTA gave it to ``envrcpt``: the path and its ESMTP parameters,
    with what the milter reads of them worked out once, when it is created (read-only
    by convention)."""

    __slots__ = ("address", "dsn", "orcpt", "params", "path")

    def __init__(self, path: str, params: tuple[str, ...] = ()) -> None:
        self.path = path  # e.g. "<a@b>" exactly as received (delrcpt needs it verbatim)
        self.params = params
        self.address = address = esmtp.strip_path(path)
        # The parsed parameters ({} for none, the common case), and the client's ORCPT,
        # else one naming the address (RFC 3461 §4.2): what the message carries once
        # the milter passes ORCPT on.
        self.dsn: dict[str, str | None]
        self.orcpt: str
        if params:
            self.dsn = dsn = esmtp.parse_params(params)
            self.orcpt = dsn.get("ORCPT") or esmtp.orcpt_for(address)
        else:
            self.dsn = {}
            self.orcpt = esmtp.orcpt_for(address)


# Envelope, RecipientChange and Decision are made for every message: NamedTuples, as
# immutable as frozen dataclasses and several times cheaper to create (issue 20).
class Envelope(NamedTuple):
    sender: str  # MAIL FROM path as received, "<>" for the null sender
    sender_params: tuple[str, ...] = ()
    recipients: tuple[Recipient, ...] = ()
    return_paths: tuple[str, ...] = ()  # values of Return-Path header fields, in order


class RecipientChange(NamedTuple):
    """Replace a recipient by the same address with new DSN parameters."""

    path: str
    new_params: str  # "NOTIFY=FAILURE,DELAY ORCPT=rfc822;a@b"


class Decision(NamedTuple):
    kind: str  # TRACK | RETURN_PATH | DSN_DEFAULTS | PASS | REFUSE
    why: str  # short label for logs and metrics: "tracked", "null-sender", ...
    new_sender: str | None = None  # address without brackets; "" is the null sender
    sender_params: str | None = None  # ESMTP parameters for chgfrom
    recipient_changes: tuple[RecipientChange, ...] = ()
    delete_return_path: int = 0  # how many Return-Path fields to delete
    sender_domain: str | None = None

    @property
    def changes_envelope(self) -> bool:
        return self.new_sender is not None or bool(self.recipient_changes)


# What the sender's address alone decides (SenderRule.kind): the message passes
# untouched (PASS, Decision kinds above), or it is tracked (TRACK), or the message's
# own content decides (UNTRACKED: Return-Path, DSN defaults).
UNTRACKED = "untracked"


@dataclass(frozen=True)
class SenderRule:
    """The part of a decision that depends on the envelope sender only."""

    kind: str  # TRACK | PASS | UNTRACKED
    why: str  # the Decision's why when kind is PASS
    domain: str | None  # the sender's domain, lower-cased; None for the null or a malformed sender
    address: str  # the sender without angle brackets ("" for the null sender)
    # What a listed recipient gets (bouncetrack.suppression.enforced_policy): REJECT or
    # DROP; None when recipients are not looked up: a PASS rule (null or malformed
    # sender, our own bounce domain: bounces are never suppressed) or policy "off".
    suppression_policy: str | None = None


def sender_rule(config: Config, sender: str) -> SenderRule:
    """What ``sender`` (the MAIL FROM path as received) decides under ``config``."""
    text = esmtp.strip_path(sender)
    if not text:
        return SenderRule(PASS, "null-sender", None, "")
    address = esmtp.parse_address(sender)
    if address is None:
        return SenderRule(PASS, "malformed-sender", None, text)
    if address.domain == config.bounce_domain:
        # Our own bounce or forward traffic: never rewrite (no loops).
        return SenderRule(PASS, "bounce-domain", address.domain, text)
    suppressed = enforced_policy(config, address.domain)
    if config.policy_for(address.domain).tracking:
        return SenderRule(TRACK, "tracked", address.domain, text, suppressed)
    return SenderRule(UNTRACKED, UNTRACKED, address.domain, text, suppressed)


class SenderRules:
    """:func:`sender_rule` for one configuration, memoised per sender (the milter's
    :class:`~bouncetrack.milter.app.Runtime` holds one per configuration load: the
    few senders of a host are looked up once, not parsed again for every message).
    Bounded: past :attr:`LIMIT` senders it starts afresh. Thread-safe (one dict
    operation at a time; a race computes the same rule twice)."""

    LIMIT = 4096

    def __init__(self, config: Config) -> None:
        self.config = config
        self._rules: dict[str, SenderRule] = {}

    def get(self, sender: str) -> SenderRule:
        rule = self._rules.get(sender)
        if rule is None:
            if len(self._rules) >= self.LIMIT:
                self._rules.clear()
            rule = self._rules[sender] = sender_rule(self.config, sender)
        return rule


def decide(config: Config, envelope: Envelope, token: str | None = None, rule: SenderRule | None = None) -> Decision:
    """Decide the rewrite for one message.

    ``token`` is the VERP token minted for this message; it is only used (and
    only needed) when the result is TRACK: call :func:`needs_token` first.
    ``rule`` is :func:`sender_rule` of the envelope's sender, when the caller has it.
    """
    if rule is None:
        rule = sender_rule(config, envelope.sender)
    if rule.kind == PASS:
        return Decision(PASS, rule.why, sender_domain=rule.domain)
    assert rule.domain is not None  # TRACK and UNTRACKED have one
    if rule.kind == TRACK:
        if token is None:
            raise ValueError("a tracked message needs a VERP token")
        return track(config, rule.domain, token, envelope.recipients, len(envelope.return_paths))
    return _untracked(config, envelope, rule.domain)


def needs_token(config: Config, envelope: Envelope) -> bool:
    return sender_rule(config, envelope.sender).kind == TRACK


# What every tracked message asks for (the spec: failures and delays, headers only).
_TRACKED_MAIL = f"RET={esmtp.TRACKED_RET} ENVID="  # + the token
_TRACKED_RCPT = f"NOTIFY={esmtp.TRACKED_NOTIFY} ORCPT="  # + the recipient's ORCPT


def track(config: Config, domain: str, token: str, recipients: Sequence[Recipient], return_paths: int) -> Decision:
    """The TRACK decision of :func:`decide` for a sender of ``domain`` whose rule is TRACK
    (the milter calls it directly once it holds that rule): ``return_paths`` is how many
    Return-Path fields the message has."""
    changes = []
    for rcpt in recipients:
        # Keep the client's ORCPT; add one so every DSN names the recipient as
        # we were given it (RFC 3461 §4.2), even after remote aliasing.
        changes.append(RecipientChange(rcpt.path, _TRACKED_RCPT + rcpt.orcpt))
    # Positional: kind, why, new_sender, sender_params, recipient_changes,
    # delete_return_path, sender_domain.
    return Decision(
        TRACK,
        "tracked",
        verp_address(config, token),
        # The spec: tracked mail always asks for headers only, ENVID = token.
        _TRACKED_MAIL + token,
        tuple(changes),
        return_paths,
        domain,
    )


def _untracked(config: Config, envelope: Envelope, domain: str) -> Decision:
    mail_params = esmtp.parse_params(envelope.sender_params)
    dsn_defaults = config.policy_for(domain).dsn

    if envelope.return_paths:
        # The spec: "If you add a Return-Path header, all bounces and spam complaints
        # are sent to the Return-Path address." The header itself must go: RFC 5321
        # §4.4 reserves it for the final delivery MTA.
        bounce_to = _return_path_address(envelope.return_paths[0])
        if bounce_to is None:
            return Decision(
                RETURN_PATH,
                "return-path-malformed",
                delete_return_path=len(envelope.return_paths),
                sender_domain=domain,
            )
        if not esmtp.return_path_allowed(esmtp.strip_path(envelope.sender), bounce_to):
            # Postfix's sender checks ran on MAIL FROM, not on this header: another
            # domain's bounce address would take over that domain's bounces.
            return Decision(REFUSE, "return-path-foreign-domain", sender_domain=domain)
        kept = {k: v for k, v in mail_params.items() if k in ("RET", "ENVID")}
        if "RET" not in kept and dsn_defaults.ret:
            kept["RET"] = dsn_defaults.ret
        return Decision(
            RETURN_PATH,
            "return-path",
            new_sender=bounce_to,
            sender_params=esmtp.format_params(kept) or None,
            recipient_changes=_default_notify(envelope, dsn_defaults.notify),
            delete_return_path=len(envelope.return_paths),
            sender_domain=domain,
        )

    changes = _default_notify(envelope, dsn_defaults.notify)
    new_sender = None
    sender_params = None
    if dsn_defaults.ret and "RET" not in mail_params:
        new_sender = esmtp.strip_path(envelope.sender)
        params = {k: v for k, v in mail_params.items() if k == "ENVID"}
        params["RET"] = dsn_defaults.ret
        sender_params = esmtp.format_params(params)
    if new_sender is None and not changes:
        return Decision(PASS, "untracked", sender_domain=domain)
    return Decision(
        DSN_DEFAULTS,
        "dsn-defaults",
        new_sender=new_sender,
        sender_params=sender_params,
        recipient_changes=changes,
        sender_domain=domain,
    )


def _default_notify(envelope: Envelope, notify: tuple[str, ...] | None) -> tuple[RecipientChange, ...]:
    """NOTIFY from the domain's defaults, only for recipients the client gave none."""
    if not notify:
        return ()
    changes = []
    for rcpt in envelope.recipients:
        dsn = rcpt.dsn
        if dsn.get("NOTIFY"):
            continue
        params = f"NOTIFY={','.join(notify)}"
        # addrcpt_par loses ORCPT unless passed again (POSTFIX-NOTES).
        changes.append(RecipientChange(rcpt.path, f"{params} ORCPT={rcpt.orcpt}"))
    return tuple(changes)


def _return_path_address(value: str) -> str | None:
    """The address of a Return-Path header value; "" for ``<>``; None if malformed."""
    text = value.strip()
    # RFC 5322 §3.6.7: return = "Return-Path:" path CRLF; path = angle-addr / "<>".
    if text.replace(" ", "") == "<>":
        return ""
    if "<" in text and ">" in text:
        text = text[text.index("<") : text.rindex(">") + 1]
    address = esmtp.parse_address(text)
    return address.text if address else None
