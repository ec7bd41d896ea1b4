"""One report through the pipe: verify, classify, attribute, store.

Called by :mod:`bouncetrack.bounce_pipe.main`, which turns every exception that
escapes into exit 75. Inside, only failures that a retry can cure (config, key
or store problems) may escape; anything about the report itself is stored.
"""

from __future__ import annotations

import signal
import sys
import time

from ..classifier.model import Report
from ..config import Config
from ..store.base import BounceEvent, MessageRecord, OutboxJob, SuppressionCandidate
from ..tokens import KeyRing
from . import attribution
from .attribution import Delivery

LOOP_HEADER = b"\nx-bouncetrack-forwarded:"
SUMMARY_EVENTS = 5  # events named in the per-bounce line; more are counted


def runtime(config_path: str, fallback: tuple[Config, KeyRing] | None = None) -> tuple[Config, KeyRing]:
    """The configuration and keys for one bounce, read anew (a change applies at once).

    ``fallback`` is the pipe server's last good pair (loaded at its start and at
    each SIGHUP): while the file or the key file does not load, bounces use it
    rather than wait in Postfix's queue; without one, the error escapes (exit 75).
    """
    from ..config import ConfigError
    from ..config_snapshot import load as load_config
    from ..tokens import KeyFileError, load_keyring

    try:
        config = load_config(config_path)  # a validated snapshot when fresh: no PyYAML per bounce
        return config, load_keyring(config)
    except (ConfigError, OSError, KeyFileError) as exc:
        if fallback is None:
            raise
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        sys.stderr.write(f"bouncetrack pipe: configuration not loaded ({first}); "
                         "using the pipe server's last good one\n")
        return fallback


def summary(what: str, token: str | None, token_status: str, message: MessageRecord | None,
            events: list[BounceEvent]) -> str:
    """The one line per bounce (issue 15): token, the original's queue id, each event.

    Postfix logs it inside its own line for the delivery to the pipe (``status=sent
    (delivered via bouncepipe service (…))``), which carries the bounce's queue id.
    """
    parts = [f"{e.type}{'/' + e.reason if e.type == 'bounce' else ''} {e.recipient or '-'} {e.event_id}"
             for e in events[:SUMMARY_EVENTS]]
    if len(events) > SUMMARY_EVENTS:
        parts.append(f"+{len(events) - SUMMARY_EVENTS} more")
    queue_id = message.queue_id if message is not None and message.queue_id else "-"
    return (f"bouncetrack pipe: {what}: {len(events)} event(s), token {token_status}, "
            f"{', '.join(sorted({e.type for e in events}))}; token={token or '-'} queue_id={queue_id}; "
            f"{'; '.join(parts) or 'no event'}")


def process(config_path: str, recipient: str, sender: str, raw: bytes, started: float,
            fallback: tuple[Config, KeyRing] | None = None) -> int:
    from ..store import open_store

    config, keyring = runtime(config_path, fallback)
    remaining = config.pipe.deadline_seconds - (time.time() - started)
    signal.alarm(max(1, int(remaining)))

    report = _classify(raw)
    token, token_status, token_id = find_token(config, keyring, recipient, report, started)

    store = open_store(config.store_url, timeout=max(1.0, min(10.0, remaining - 1)))
    try:
        message = store.message_by_token_id(token_id) if token_id is not None else None
        if token_status == attribution.VALID and message is None:
            token_status = attribution.UNKNOWN_TOKEN
        key = attribution.dedupe_key(recipient, raw)
        delivery = Delivery(recipient, sender, token, token_status, started, key)
        events = _events(report, delivery, message)
        jobs = _jobs(config, events, message, raw)
        suppress = _suppress(config, events)  # issue 6: written in the report's transaction
        outcome = store.store_report(
            events, raw, jobs, key, pipe_started=started, suppress=suppress
        )  # counts the run (metrics)
    finally:
        store.close()
    what = "stored" if outcome.stored else "already stored (retry)"
    sys.stderr.write(summary(what, token, token_status, message, events) + "\n")
    return 0


def _classify(raw: bytes) -> Report:
    from ..classifier import classify

    try:
        return classify(raw)
    except Exception:  # classify promises never to raise; if it does, keep the report anyway
        return Report(kind="not_bounce")


def find_token(
    config: Config, keyring: KeyRing, recipient: str, report: Report, now: float
) -> tuple[str | None, str, int | None]:
    """The VERP token of a report, what verification says of it, and its message id.

    Bounces carry it in the address Postfix delivered to. Spam complaints arrive
    at a feedback-loop address instead: their token is in the attached original's
    Return-Path (or another header naming our VERP address), or in the DSN's
    Original-Envelope-Id (we send ENVID=token).
    """
    from ..tokens import token_from_address, verify

    candidates: list[str] = []
    direct = token_from_address(config, recipient)
    if direct:
        candidates.append(direct)
    for address in _addresses_in_original(report):
        found = token_from_address(config, address)
        if found:
            candidates.append(found)
    if report.envelope_id:
        candidates.append(report.envelope_id.strip().lower())
    if not candidates:
        return None, attribution.MISSING, None
    first_status = None
    for token in candidates:
        check = verify(keyring, token, now)
        if check.status == "valid":
            return token, attribution.VALID, check.token_id
        first_status = first_status or check.status
    status = {"expired": attribution.EXPIRED}.get(first_status or "", attribution.FORGED)
    return candidates[0], status, None


def _addresses_in_original(report: Report) -> list[str]:
    out = []
    if report.original_return_path:
        out.append(report.original_return_path)
    for value in report.original_headers.values():
        if "+" in value and "@" in value:
            out.extend(part for part in value.replace(",", " ").split() if "@" in part)
    return out


def _events(report: Report, delivery: Delivery, message: MessageRecord | None) -> list[BounceEvent]:
    try:
        return attribution.build_events(report, delivery, message)
    except Exception:
        # A bug in attribution must not lose the bounce: store it unattributed.
        return attribution.build_events(Report(kind="not_bounce"), delivery, None)


def _suppress(config: Config, events: list[BounceEvent]) -> list[SuppressionCandidate]:
    from ..suppression import candidates

    try:
        return candidates(config, events, time.time())
    except Exception:  # a bug in the rules must not lose the bounce: store it unsuppressed
        return []


def _jobs(config: Config, events: list[BounceEvent], message: MessageRecord | None, raw: bytes) -> list[OutboxJob]:
    if message is None or LOOP_HEADER in raw[:65536].lower():
        # Unattributed reports are never forwarded as a bounce of a domain; our own
        # forwards coming back are a loop.
        return []
    from ..forward.jobs import jobs_for

    return list(jobs_for(events, config.policy_for(message.sender_domain)))


__all__ = ["process", "find_token"]
