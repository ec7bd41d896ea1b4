"""DKIM for spam complaints (issue 16): is this report signed by a feedback loop we trust?

A complaint names a recipient that anyone holding a copy of the message could name.
A feedback-loop provider signs its reports (RFC 6449 §3.5 asks for it); a report whose
DKIM signature verifies (RFC 6376 §6) for a domain the operator lists under
``pipe.feedback_loop_senders`` (or a subdomain of one) came from that provider, so its
complaint may suppress even for a multi-recipient message. dkimpy does the
verification; its key lookups go through the :class:`~bouncetrack.core.resolver.Resolver`
seam (``validation.nameserver``/``dns_timeout`` name the server and its timeout).
The pipe imports this module only for a complaint it cannot otherwise verify.
"""

from __future__ import annotations

import dkim

from ..core.resolver import DnsTempError, Resolver

MAX_SIGNATURES = 5  # signatures tried per report, in header order


def _matches(domain: str, senders: tuple[str, ...]) -> bool:
    return any(domain == s or domain.endswith("." + s) for s in senders)


def signed_by(raw: bytes, senders: tuple[str, ...], resolver: Resolver) -> str | None:
    """The listed domain (``d=``) of the first DKIM signature of ``raw`` that verifies,
    among the first :data:`MAX_SIGNATURES` whose ``d=`` is listed; None if none does.

    A DNS failure or a malformed signature counts as "does not verify" (the report is
    stored all the same, as unverified).
    """

    def txt(name: bytes, timeout: int = 5) -> bytes | None:
        try:
            records = resolver.txt(name.decode("ascii", "replace").rstrip("."))
        except DnsTempError:
            return None
        keys = [r for r in records if "p=" in r]
        return keys[0].encode() if keys else None

    try:
        verifier = dkim.DKIM(raw, minkey=1024)
    except dkim.DKIMException:
        return None
    signatures = [i for i, (name, _v) in enumerate(verifier.headers) if name.lower() == b"dkim-signature"]
    for idx in range(min(len(signatures), MAX_SIGNATURES)):
        try:
            if not verifier.verify(idx=idx, dnsfunc=txt):
                continue
        except dkim.DKIMException:
            continue
        domain = (verifier.domain or b"").decode("ascii", "replace").lower().rstrip(".")
        if _matches(domain, senders):
            return domain
    return None
