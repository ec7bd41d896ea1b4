"""Suppression list rules (issue 6): pure functions, no I/O.

Who goes on the list (the pipe asks :func:`candidates`, the store writes them in
the report's transaction):

- a hard bounce (``event.hard``) or a spam complaint, attributed to a message we
  sent (token valid, recipient known, not ``flagged``: a report naming someone
  else than the token's recipient must not suppress either of them);
- a soft bounce, when the recipient has had ``soft_bounce_limit`` soft bounces
  (this one included) within ``soft_bounce_days`` at the same sender domain; the
  store counts them (``events_soft_bounces``), so the rule sees every pipe run.

Which reports may suppress (issue 16, README "What suppresses"): the VERP token
names a message, not a recipient, and every recipient of the message sees it. So a
report is *verified* (:func:`report_verified`) only when no one but the Internet's
honest parties could have written it about that recipient: the message had one
recipient (only that recipient, or whoever they pass it to, holds the token), or
the report is a DSN this host's own Postfix made (``${client_address}`` empty: it
never crossed the Internet). Other reports (a DSN from the Internet, or a
complaint, about a multi-recipient message) are stored and forwarded as usual but
suppress only where the domain's ``suppression.unverified`` is true
(:func:`trusted`). Complaints are not DKIM-verified: a feedback loop's complaint
about a multi-recipient message is unverified like any other.

Entries expire ``expire_days`` after they are (re)written; ``None`` never. The
list is per sender domain: a recipient that bounced mail of example.com is not
suppressed for example.org. Addresses are compared lower-cased (local part
included: in practice no mailbox differs by case alone).

What the milter does with a listed recipient is the domain's ``policy``
(:func:`verdict`): ``reject``, ``drop`` or ``off``. The pipe records entries
whatever the policy, so that turning a policy on takes effect at once.

The pipe imports this module: standard library and the config model only.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence

from ..core.config import SUPPRESSION_DROP, SUPPRESSION_OFF, SUPPRESSION_REJECT, Config
from ..core.esmtp import parse_address, strip_path
from ..store.base import (
    REASON_COMPLAINT,
    REASON_HARD_BOUNCE,
    REASON_SOFT_BOUNCES,
    BounceEvent,
    MessageRecord,
    SuppressionCandidate,
)

REJECT = SUPPRESSION_REJECT
DROP = SUPPRESSION_DROP
OFF = SUPPRESSION_OFF

DAY = 86400.0


def normalize_address(raw: str) -> str | None:
    """``<Jane.Doe@Example.COM.>`` → ``jane.doe@example.com``; None when malformed or empty."""
    if parse_address(raw) is None:
        return None
    return lookup_form(raw)


def lookup_form(raw: str) -> str | None:
    """What :func:`normalize_address` gives for a well-formed address, without checking
    that it is one; None without an ``@``. For a membership test only (the milter, at
    every RCPT, issue 20): a malformed address gets a form no entry has, as entries are
    written well-formed, so it is not found, as it was not when refused here."""
    local, at, domain = strip_path(raw).rpartition("@")
    if not at:
        return None
    return f"{local.lower()}@{domain.rstrip('.').lower()}"


def normalize_domain(raw: str) -> str:
    return raw.strip().rstrip(".").lower()


def key_hash(domain: str, address: str) -> int:
    """The 64-bit key of (domain, address) in the milter's index (both already normalized).

    BLAKE2b, not Python's ``hash()``: stable across processes and restarts, and
    spread evenly (a false hit among a million entries has probability ~1e-13).
    """
    digest = hashlib.blake2b(f"{domain}\0{address}".encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


# A forgotten address (``bouncetrack forget``) leaves a tombstone whose address is
# this prefix and the entry's index key in hex: milters can still drop the key
# from their index, and the row no longer holds the address.
FORGOTTEN_PREFIX = "forgotten:"


def forgotten_address(domain: str, address: str) -> str:
    """The pseudonym a forgotten entry's tombstone carries instead of ``address``."""
    return f"{FORGOTTEN_PREFIX}{key_hash(domain, address):016x}"


def index_key(domain: str, address: str) -> int:
    """The index key of a suppression row: :func:`key_hash`, or the one a pseudonym carries."""
    if address.startswith(FORGOTTEN_PREFIX):
        return int(address[len(FORGOTTEN_PREFIX):], 16)
    return key_hash(domain, address)


def candidates(config: Config, events: Sequence[BounceEvent], now: float) -> list[SuppressionCandidate]:
    """What one report's events put on the list (see the module doc)."""
    out: list[SuppressionCandidate] = []
    seen: set[tuple[str, str]] = set()
    for event in events:
        if event.domain is None or event.recipient is None or event.flagged or event.token_status != "valid":
            continue
        address = normalize_address(event.recipient)
        if address is None:
            continue
        domain = normalize_domain(event.domain)
        rules = config.policy_for(domain).suppression
        limit = 0
        since = 0.0
        if event.type == "complaint":
            reason = REASON_COMPLAINT
        elif event.type == "bounce" and event.hard:
            reason = REASON_HARD_BOUNCE
        elif event.type == "bounce" and rules.soft_bounce_limit > 0:
            reason = REASON_SOFT_BOUNCES
            limit = rules.soft_bounce_limit
            since = event.received_at - rules.soft_bounce_days * DAY
        else:
            continue
        if (domain, address) in seen:
            continue
        seen.add((domain, address))
        out.append(
            SuppressionCandidate(
                domain=domain,
                address=address,
                reason=reason,
                source_event_id=event.event_id,
                created_at=now,
                expires_at=None if rules.expire_days is None else now + rules.expire_days * DAY,
                soft_bounce_limit=limit,
                soft_since=since,
            )
        )
    return out


LOCAL_HOST = "local"  # the pipe's name for "no SMTP client": made or submitted on this host
UNKNOWN_HOST = "unknown"  # master.cf passes no ${client_address} (an entry older than issue 16)


def sending_host(client_address: str | None) -> str:
    """The quota and trust key of a report's origin, from pipe(8)'s ``${client_address}``."""
    if client_address is None:
        return UNKNOWN_HOST
    address = client_address.strip().lower()[:64]
    return address or LOCAL_HOST


def report_verified(is_dsn: bool, message: MessageRecord | None, host: str) -> bool:
    """True when a report attributed to ``message`` may suppress without the domain's
    ``unverified`` option (see the module doc): one recipient, or a DSN (``is_dsn``:
    a delivery report, not a complaint) of our own Postfix."""
    if message is None:
        return False
    if len(message.recipients) == 1:
        return True
    return host == LOCAL_HOST and is_dsn


def trusted(
    config: Config, found: Sequence[SuppressionCandidate], verified: bool
) -> tuple[list[SuppressionCandidate], int]:
    """The candidates a report may write, and how many it may not (unverified, option off)."""
    if verified:
        return list(found), 0
    kept = [c for c in found if config.policy_for(c.domain).suppression.unverified]
    return kept, len(found) - len(kept)


def verdict(
    config: Config, sender_domain: str | None, recipient: str, listed: Callable[[str, str], bool]
) -> str | None:
    """REJECT or DROP when the milter must act on ``recipient``, else None.

    ``sender_domain`` None (null or malformed sender, or our own bounce domain)
    is never checked; neither is a domain whose policy is ``off`` (no lookup at
    all). ``listed(domain, address)`` is the in-memory index's membership test.
    """
    if sender_domain is None:
        return None
    policy = enforced_policy(config, sender_domain)
    if policy is None or not is_listed(sender_domain, recipient, listed):
        return None
    return policy


def enforced_policy(config: Config, sender_domain: str | None) -> str | None:
    """What :func:`verdict` answers for a listed recipient of ``sender_domain``: REJECT,
    DROP, or None when its recipients are not looked up at all (no domain, policy
    ``off``). The milter works it out once per sender and configuration."""
    if sender_domain is None:
        return None
    policy = config.policy_for(sender_domain).suppression.policy
    return None if policy == OFF else policy


def is_listed(sender_domain: str, recipient: str, listed: Callable[[str, str], bool]) -> bool:
    """Whether ``recipient`` (a path as received) is on ``sender_domain``'s list, by
    ``listed(domain, address)``; the lookup behind :func:`verdict`."""
    address = lookup_form(recipient)
    return address is not None and listed(sender_domain, address)
