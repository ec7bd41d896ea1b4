"""One report through the pipe: verify, classify, attribute, store.

Called by :mod:`bouncetrack.bounce_pipe.main`, which turns every exception that
escapes into exit 75. Inside, only failures that a retry can cure (config, key
or store problems) may escape; anything about the report itself is stored.
"""

from __future__ import annotations

# Lazy imports: the pipe's lean path (HACKING): a bounce imports only what its case needs (PyYAML
# only for a stale config snapshot); the pipe server imports them once before it forks (warm()).

import os
import signal
import sys
import time
from collections import Counter
from types import FrameType
from typing import TYPE_CHECKING

from ..classifier.model import BOUNCE, COMPLAINT, DELIVERY_REPORT, NOT_BOUNCE, Report
from ..core.config import Config
from ..store.base import BounceEvent, MessageRecord, OutboxJob, SuppressionCandidate, UntrustedQuota
from ..suppression import candidates, report_verified, sending_host, trusted
from ..core.tokens import KeyRing
from . import attribution, guard
from .attribution import Delivery
from .say import say as _say

if TYPE_CHECKING:  # pragma: no cover - typing only
    from ..store.interfaces import Store

LOOP_HEADER = b"\nx-bouncetrack-forwarded:"
_NOTHING = Report(kind=NOT_BOUNCE)
SUMMARY_EVENTS = 5  # events named in the per-bounce line; more are counted


#: The store's lock timeout of a bounce that has the time for it (``process`` gives a
#: late bounce less: what is left of its deadline).
STORE_TIMEOUT = 10.0


class _Kept:
    """What a long-running transport keeps across the bounces of one process (issue 21):
    off in a process that stores one bounce (the pipe, the pipe server's child).

    * ``stores``: one open store per URL, so a bounce pays neither the connect nor SQLite's
      schema parse (about a fifth of a warm bounce's CPU). Only a bounce with the whole
      :data:`STORE_TIMEOUT` uses it (a late one opens its own, with its shorter timeout), and
      a kept store that failed is closed and dropped: the next bounce connects anew.
    * ``runtime``: the configuration and keys with the ``stat`` of the files they came
      from (configuration, key file, previous key file); a file that changed in any way
      (mtime, size, inode, device: an edit, an atomic rename, a rotation) is read again,
      so a change still applies at the next bounce, as in the pipe.
    """

    on = False
    stores: dict[str, Store] = {}
    runtime: tuple[tuple[object, ...], tuple[Config, KeyRing]] | None = None


def keep_stores_open() -> None:
    """From now on, this process keeps its store connection and its configuration across
    bounces (:class:`_Kept`): for a long-running transport that stores many bounces in
    one process. Call it in that process (after any fork), not in a parent that forks."""
    _Kept.on = True


def close_kept_stores() -> None:
    """Close the stores :func:`keep_stores_open` kept (a worker that exits)."""
    stores, _Kept.stores = _Kept.stores, {}
    for store in stores.values():
        store.close()


def _file_stamps(*paths: str) -> tuple[object, ...]:
    """What tells a file changed: (mtime_ns, size, inode, device), or None when missing."""
    out: list[object] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append(None)
            continue
        out.append((st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev))
    return tuple(out)


def _key_stamps(config: Config) -> tuple[object, ...]:
    from ..core.tokens import previous_key_path

    secret = str(config.secret_file)
    return _file_stamps(secret, previous_key_path(secret))


def runtime(config_path: str, fallback: tuple[Config, KeyRing] | None = None) -> tuple[Config, KeyRing]:
    """The configuration and keys for one bounce, read anew (a change applies at once).

    ``fallback`` is the pipe server's last good pair (loaded at its start and at
    each SIGHUP): while the file or the key file does not load, bounces use it
    rather than wait in Postfix's queue; without one, the error escapes (exit 75).
    A long-running transport (:func:`keep_stores_open`) reuses the pair it read while
    none of its files changed.
    """
    from ..core.config import ConfigError
    from .config_snapshot import load as load_config
    from ..core.tokens import KeyFileError, load_keyring

    kept = _Kept.runtime if _Kept.on else None
    if kept is not None and kept[0] == (config_path, *_file_stamps(config_path), *_key_stamps(kept[1][0])):
        return kept[1]
    try:
        # Each file stamped before it is read: a change meanwhile is read again next time.
        stamps = (config_path, *_file_stamps(config_path)) if _Kept.on else ()
        config = load_config(config_path)  # a validated snapshot when fresh: no PyYAML per bounce
        stamps += _key_stamps(config) if _Kept.on else ()
        pair = config, load_keyring(config)
        if _Kept.on:
            _Kept.runtime = (stamps, pair)
        return pair
    except (ConfigError, OSError, KeyFileError) as exc:
        if fallback is None:
            raise
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        _say(f"configuration not loaded ({first}); using the pipe server's last good one")
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
            fallback: tuple[Config, KeyRing] | None = None, client_address: str | None = None) -> int:
    from ..store import open_store

    config, keyring = runtime(config_path, fallback)
    remaining = config.pipe.deadline_seconds - (time.time() - started)
    signal.alarm(max(1, int(remaining)))
    guards: Counter[str] = Counter()

    # Token first (issue 16): a delivery address whose token does not verify gets
    # no MIME parsing at all; the report is stored as it came, as unknown.
    token, token_status, token_id = direct_token(config, keyring, recipient, started)
    if token is not None and token_status != attribution.VALID:
        report = _NOTHING
        guards[guard.UNPARSED_BAD_TOKEN] += 1
    else:
        report = _classify(raw, guards)
        if token is None:
            token, token_status, token_id = find_token(config, keyring, report, started)

    timeout = max(1.0, min(STORE_TIMEOUT, remaining - 1))
    kept = _Kept.on and timeout == STORE_TIMEOUT
    store = _Kept.stores.get(config.store_url) if kept else None
    if store is None:
        if kept:
            close_kept_stores()  # another URL (a reload): one kept store at a time
        store = open_store(config.store_url, timeout=timeout)
        if kept:
            _Kept.stores[config.store_url] = store
    try:
        message = store.message_by_token_id(token_id) if token_id is not None else None
        if token_status == attribution.VALID and message is None and token is not None and token_id is not None:
            # Issue 20: the milter journals its records and a writer moves them into
            # the store; a bounce may come before its record. Journal first, then the
            # store again: a record moved (and its segment deleted) between our two
            # looks is found by the second. The journal's record is the milter's own:
            # stored here, the bounce needs no wait (the writer skips it later). Only a
            # record that cannot be read here waits for the writer. (Not on the hot path:
            # imported here.)
            from ..milter.journal import pending_record

            pending, record = pending_record(config.milter_journal, token)
            message = store.message_by_token_id(token_id)
            if message is None and record is not None and record.token_id == token_id:
                store.record_messages([record])
                message = store.message_by_token_id(token_id)
            if message is None and pending:
                message = _await_journal_writer(store, token_id, started + config.pipe.deadline_seconds - 1)
            if message is None and pending:
                _say(f"token={token}: its message is still in the milter's journal, not yet in the "
                     "store; Postfix will retry")
                return os.EX_TEMPFAIL
        if token_status == attribution.VALID and message is None:
            token_status = attribution.UNKNOWN_TOKEN
        key = attribution.dedupe_key(recipient, raw)
        delivery = Delivery(recipient, sender, token, token_status, started, key)
        events, dropped = attribution.bound_events(_events(report, delivery, message, guards, raw))
        guards[guard.EVENTS_DROPPED] += dropped
        jobs = _jobs(config, events, message, raw)
        if len(jobs) > guard.MAX_JOBS_PER_REPORT:
            guards[guard.JOBS_DROPPED] += len(jobs) - guard.MAX_JOBS_PER_REPORT
            jobs = jobs[: guard.MAX_JOBS_PER_REPORT]
        suppress = _suppress(config, events, guards)  # issue 6: written in the report's transaction
        host = sending_host(client_address)
        verified = report_verified(report.kind in (BOUNCE, DELIVERY_REPORT), message, host)
        if suppress and not verified and report.kind == COMPLAINT and config.pipe.feedback_loop_senders:
            verified = _signed_by_feedback_loop(config, raw)
        suppress, withheld = trusted(config, suppress, verified)
        if withheld:  # issue 16: any recipient of the message could have written this report
            guards[guard.UNVERIFIED_NOT_SUPPRESSED] += 1
            _say(f"report not verified (from {host}, about a message with {len(message.recipients) if message else 0} "
                 f"recipients): {withheld} recipient(s) not suppressed (domain option suppression.unverified); "
                 f"{_ids(raw)}")
        untrusted = None
        if token_status != attribution.VALID:  # issue 16: bounded per sending host and day
            untrusted = UntrustedQuota(host, config.pipe.untrusted_reports_per_host_per_day)
        if dropped or guards[guard.JOBS_DROPPED]:
            _say(f"report names too many recipients: {dropped} event(s) and {guards[guard.JOBS_DROPPED]} "
                 f"forward(s) dropped ({guard.describe_caps()}); {_ids(raw)}")
        outcome = store.store_report(
            events, raw, jobs, key, pipe_started=started, suppress=suppress, guards=+guards, untrusted=untrusted
        )  # counts the run (metrics)
    except BaseException:
        if kept:  # whatever went wrong, the next bounce connects anew
            _Kept.stores.pop(config.store_url, None)
            store.close()
        raise
    finally:
        if not kept:
            store.close()
    if outcome.over_quota:
        _say(f"not stored: {host} has sent {config.pipe.untrusted_reports_per_host_per_day} reports without a "
             f"valid token today (pipe.untrusted_reports_per_host_per_day); token {token_status}, {_ids(raw)}")
        return 0
    what = "stored" if outcome.stored else "already stored (retry)"
    sys.stderr.write(summary(what, token, token_status, message, events) + "\n")
    return 0


#: How long a bounce whose message is still in the milter's journal, in a record the pipe
#: could not read there (torn, or past journal.SCAN_LIMIT: a writer down for long), waits
#: for the journal writer to move it before it exits 75; a record it reads, it stores
#: itself. The writer catches up within about its pause (milter.journal.pause_after:
#: IDLE_SECONDS, 0.1 s, or BUSY_SECONDS, 1 s, under load); the wait covers the longer one
#: (tests/test_pipe_journal_wait.py holds it). The store is looked at every
#: JOURNAL_POLL_SECONDS: each look is a query and a wake-up (issue 21: at 0.02 s a waiting
#: bounce cost an LMTP worker about 1.1 ms of CPU in a capacity run), and the writer moves
#: records at its own pace whatever we do meanwhile.
JOURNAL_WAIT_SECONDS = 1.5
JOURNAL_POLL_SECONDS = 0.05


def _await_journal_writer(store: "Store", token_id: int, deadline: float) -> MessageRecord | None:
    """The message of ``token_id`` once the journal writer has stored it, or None after
    :data:`JOURNAL_WAIT_SECONDS` (never past ``deadline``, a ``time.time()``)."""
    until = min(time.time() + JOURNAL_WAIT_SECONDS, deadline)
    while time.time() < until:
        time.sleep(JOURNAL_POLL_SECONDS)
        message = store.message_by_token_id(token_id)
        if message is not None:
            return message
    return None


def _ids(raw: bytes) -> str:
    """``Message-ID <…>`` of the report, read from its top without parsing (for log lines)."""
    head = raw[:65536]
    at = head.lower().find(b"\nmessage-id:")
    value = head[at + 12 : head.find(b"\n", at + 12)].strip()[:200] if at >= 0 else b""
    return f"Message-ID {value.decode('ascii', 'replace') or '(none)'}"


def _signed_by_feedback_loop(config: Config, raw: bytes) -> bool:
    """A complaint DKIM-signed by a configured feedback loop (:mod:`.dkimcheck`; imported
    only here: dkimpy costs import time that no other report pays)."""
    from ..core.resolver import DnsPythonResolver, parse_nameserver
    from .dkimcheck import signed_by

    ns = config.validation.nameserver
    host, port = parse_nameserver(ns) if ns else (None, 53)
    resolver = DnsPythonResolver(host, port, timeout=config.validation.dns_timeout)
    domain = signed_by(raw, config.pipe.feedback_loop_senders, resolver)
    if domain is not None:
        _say(f"complaint DKIM-signed by feedback loop {domain}: verified; {_ids(raw)}")
    return domain is not None


class ClassifyBudget(BaseException):
    """Classification used up its CPU budget.

    A BaseException, so that no ``except Exception`` in the classifier or the
    parser can swallow it: running out is an outcome the pipe defines (stored as
    ``unknown``, counted, logged), never an accident.
    """


def _on_budget(signum: int, frame: FrameType | None) -> None:
    raise ClassifyBudget()


def _classify(raw: bytes, guards: Counter[str]) -> Report:
    """The report's classification within :data:`guard.CLASSIFY_CPU_SECONDS` of CPU.

    The budget is CPU time (ITIMER_PROF, SIGPROF), apart from the pipe's wall-clock
    deadline (SIGALRM): a report that is merely slow to read (store waits, a loaded
    machine) is not cut short, one that costs CPU is. Out of budget, or a crash of
    the classifier (a bug): the report is stored as ``unknown`` with its raw bytes,
    the outcome is logged with the report's Message-ID and counted
    (``bouncetrack_pipe_guards_total``). Outside the main thread (no signals) the
    classification runs without a budget.
    """
    from ..classifier import classify_strict

    try:
        previous = signal.signal(signal.SIGPROF, _on_budget)
    except ValueError:  # not the main thread
        previous = None
    try:
        if previous is not None:
            signal.setitimer(signal.ITIMER_PROF, guard.CLASSIFY_CPU_SECONDS)
        try:
            report, trimmed = classify_strict(raw)
        finally:
            if previous is not None:
                signal.setitimer(signal.ITIMER_PROF, 0)
    except ClassifyBudget:
        guards[guard.CLASSIFY_BUDGET] += 1
        _say(f"classification stopped at its budget ({guard.CLASSIFY_CPU_SECONDS:g} s of CPU): "
             f"stored as unknown with its raw bytes; {_ids(raw)}")
        return _NOTHING
    except Exception as exc:  # a classifier bug must not lose the report: logged, counted, stored
        guards[guard.CLASSIFY_CRASH] += 1
        _say(f"classifier failed ({type(exc).__name__}: {str(exc)[:200]}): stored as unknown "
             f"with its raw bytes; {_ids(raw)}")
        return _NOTHING
    finally:
        if previous is not None:
            signal.signal(signal.SIGPROF, previous)
    for cut in trimmed:
        guards[guard.TRIMMED_PREFIX + cut] += 1
    if trimmed:
        _say(f"report beyond the parser's bounds ({', '.join(trimmed)}): classified from its "
             f"bounded part, stored whole; {_ids(raw)}")
    return report


def direct_token(
    config: Config, keyring: KeyRing, recipient: str, now: float
) -> tuple[str | None, str, int | None]:
    """The token of the delivery address (``b+TOKEN@bounce domain``) and its verification.

    ``(None, MISSING, None)`` when the address carries none (a feedback-loop address,
    another domain). Needs no parsing of the report: the pipe asks this first.
    """
    from ..core.tokens import token_from_address, verify

    token = token_from_address(config, recipient)
    if not token:
        return None, attribution.MISSING, None
    check = verify(keyring, token, now)
    if check.status == "valid":
        return token, attribution.VALID, check.token_id
    return token, {"expired": attribution.EXPIRED}.get(check.status, attribution.FORGED), None


def find_token(
    config: Config, keyring: KeyRing, report: Report, now: float
) -> tuple[str | None, str, int | None]:
    """The VERP token of a report whose delivery address carries none (:func:`direct_token`
    looked there first), what verification says of it, and its message id.

    Spam complaints arrive at a feedback-loop address: their token is in the
    attached original's Return-Path (or another header naming our VERP address),
    or in the DSN's Original-Envelope-Id (we send ENVID=token).
    """
    from ..core.tokens import token_from_address, verify

    candidates: list[str] = []
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


def _events(
    report: Report, delivery: Delivery, message: MessageRecord | None, guards: Counter[str], raw: bytes
) -> list[BounceEvent]:
    try:
        return attribution.build_events(report, delivery, message)
    except Exception as exc:  # a bug in attribution must not lose the bounce: logged, counted, stored unattributed
        guards[guard.ATTRIBUTION_CRASH] += 1
        _say(f"attribution failed ({type(exc).__name__}: {str(exc)[:200]}): stored unattributed; {_ids(raw)}")
        return attribution.build_events(_NOTHING, delivery, None)


def _suppress(config: Config, events: list[BounceEvent], guards: Counter[str]) -> list[SuppressionCandidate]:
    try:
        return candidates(config, events, time.time())
    except Exception as exc:  # a bug in the rules must not lose the bounce: logged, counted, stored unsuppressed
        guards[guard.SUPPRESSION_CRASH] += 1
        _say(f"suppression rules failed ({type(exc).__name__}: {str(exc)[:200]}): stored unsuppressed")
        return []


def _jobs(config: Config, events: list[BounceEvent], message: MessageRecord | None, raw: bytes) -> list[OutboxJob]:
    if message is None or LOOP_HEADER in raw[:65536].lower():
        # Unattributed reports are never forwarded as a bounce of a domain; our own
        # forwards coming back are a loop.
        return []
    from ..forward.jobs import jobs_for

    return list(jobs_for(events, config.policy_for(message.sender_domain)))


__all__ = ["ClassifyBudget", "close_kept_stores", "direct_token", "find_token", "keep_stores_open", "process"]
