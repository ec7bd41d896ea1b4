"""Bounce classification: a pure library, no I/O. ``classify(raw: bytes) -> Report``.

Order: ARF complaints (RFC 5965), challenge-response requests (auto-replies, never bounces,
even when shaped as a DSN), RFC 3464 DSNs, RFC 3834 auto-replies, then the MTA family
detectors (cheap ``matches`` pre-check first), then the generic text reader, then bounces
nested inside an attached message.

Entry points: :func:`classify_strict` lets any exception through (the pipe's guard
logs and counts it; the fuzzers use it so that a crash fails them);
:func:`classify` never raises (unreadable input is ``not_bounce``), for callers that
only want an answer (the ``classify`` command, benchmarks, the pipe server's warm-up).
Both hand the MIME parser only what :func:`.bounds.bound` lets through.
"""

from __future__ import annotations

from email.message import Message

from . import arf, rfc3464, rfc3834
from .bounds import bound
from .detectors import FAMILIES, GENERIC
from .detectors.base import DAEMON_FROM_RE, looks_like_bounce
from .model import NOT_BOUNCE, Report
from .view import ParsedView, parse

__all__ = ["Report", "classify", "classify_strict", "classify_view"]

MAX_NESTING = 3
_NOTHING = Report(kind=NOT_BOUNCE)


def classify_strict(raw: bytes) -> tuple[Report, tuple[str, ...]]:
    """The report of one message and what :func:`.bounds.bound` cut before parsing.

    Raises whatever a detector or the parser raises: a bug shows as a bug.
    """
    bounded = bound(bytes(raw))
    return classify_view(parse(bounded.data), 0), bounded.trimmed


def classify(raw: bytes) -> Report:
    """Classify one message. Never raises: unreadable input is ``not_bounce``.

    For callers that want an answer whatever happens; the pipe uses
    :func:`classify_strict` so that a crash is logged and counted.
    """
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        return _NOTHING
    try:
        return classify_strict(bytes(raw))[0]
    except Exception:  # noqa: BLE001 - the contract is "never raises"; classify_strict shows the bug
        return _NOTHING


def classify_view(view: ParsedView, depth: int) -> Report:
    if arf.matches(view):
        r = arf.detect(view)
        if r is not None:
            return r
    r = rfc3834.challenge(view)  # before the DSN reader: a challenge may be shaped as a DSN
    if r is not None:
        return r
    r = rfc3464.detect(view)
    if r is not None:
        return r
    bouncy = looks_like_bounce(view)
    if not bouncy or not view.report_text.strip():
        if rfc3834.matches(view):
            r = rfc3834.detect(view)
            if r is not None:
                return r
    guess: Report | None = None  # a text bounce naming no recipient: the original's To
    for det in FAMILIES:
        if det.matches(view):
            r = det.detect(view)
            if r is not None and r.recipients:
                if not r.guessed:
                    return r
                guess = guess or r
                break
    if bouncy and guess is None:
        r = GENERIC.detect(view)
        if r is not None and r.recipients:
            if not r.guessed:
                return r
            guess = r
    if guess is not None:
        # A relay that wraps the bounce it received ("the following addresses had permanent
        # errors" with no address, the real report attached): the attached one names them.
        if depth < MAX_NESTING:
            for sub in view.nested[:3]:
                if isinstance(sub, Message):
                    r = classify_view(ParsedView(sub, depth + 1), depth + 1)
                    if r.kind != NOT_BOUNCE and r.recipients and not r.guessed:
                        return r
        return guess
    if not DAEMON_FROM_RE.search(view.from_[:300]) and rfc3834.matches(view):
        r = rfc3834.detect(view)
        if r is not None:
            return r
    if depth < MAX_NESTING:
        for sub in view.nested[:3]:
            if isinstance(sub, Message):
                r = classify_view(ParsedView(sub, depth + 1), depth + 1)
                if r.kind != NOT_BOUNCE:
                    return r
    return _NOTHING
