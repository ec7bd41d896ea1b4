"""Which recipients at the bounce domain are accepted at RCPT time (pure, no I/O).

Why here, in the milter: only the milter holds the VERP key ring, so it is the one
place that can tell a forged token from a real one *before* Postfix queues the
message (issue 6: "only valid VERP addresses are accepted for the bounce domain at
SMTP time"). A Postfix access map could only check the shape of the address, and a
separate policy/socketmap service would need the keys and another process to run.

Rules, for a recipient whose domain is the bounce domain (any case, trailing dot):

- ``{verp_prefix}+{token}`` whose token verifies (current key, or the previous one
  inside its grace period): accepted. Malformed, forged and expired tokens: rejected
  with :data:`bouncetrack.core.replies.INVALID_VERP` (550 5.1.1).
- A feedback-loop local part (``pipe.feedback_addresses``, e.g. ``fbl``, ``abuse``) and
  ``postmaster`` (RFC 5321 §4.5.1: a domain that accepts mail must accept postmaster):
  accepted; the pipe handles them.
- Any other local part: rejected like a forged token.

Recipients at other domains are never looked at here.
"""

from __future__ import annotations

from ..core.config import Config
from ..core.esmtp import strip_path
from ..core.tokens import KeyRing, token_from_address, verify

ALWAYS_ACCEPTED = ("postmaster",)


def bounce_marker(config: Config) -> str:
    """A text that every recipient at the bounce domain holds once lower-cased: the
    milter calls :func:`accept_bounce_rcpt` only for a recipient that holds it (issue
    20: every RCPT asks; the common recipient is told at once). "" (held by every
    address) when the bounce domain is not ASCII, whose case folding differs."""
    bounce = config.bounce_domain
    return bounce.lower() if bounce.isascii() else ""


def bounce_domain_rcpt(config: Config, address: str) -> str | None:
    """The lower-cased local part when ``address`` is at the bounce domain, else None."""
    if bounce_marker(config) not in address.lower():
        return None
    local, at, domain = strip_path(address).rpartition("@")
    if not at or domain.rstrip(".").lower() != config.bounce_domain.lower():
        return None
    return local.strip().strip("\"'").lower()


def accept_bounce_rcpt(config: Config, keyring: KeyRing, address: str, now: float) -> bool:
    """False when ``address`` is at the bounce domain and must be refused (see module doc)."""
    local = bounce_domain_rcpt(config, address)
    if local is None:
        return True
    if local in ALWAYS_ACCEPTED or local in {f.lower() for f in config.pipe.feedback_addresses}:
        return True
    token = token_from_address(config, address)
    if token is None:
        return False
    return verify(keyring, token, now).ok
