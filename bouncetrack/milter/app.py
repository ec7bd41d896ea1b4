"""The pymilter callbacks: collect the envelope, ask the policy, apply it.

I/O lives here (store writes, libmilter actions); every rule lives in
:mod:`bouncetrack.milter.policy`. Any failure of our own becomes a 4xx
(``TEMPFAIL``): the client retries, no mail is lost or sent untracked.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Protocol, TypeVar

import Milter

from .. import esmtp, replies, suppression
from ..config import Config
from ..store.base import MessageRecord, RecipientRecord
from ..suppression.index import SuppressionIndex
from ..tokens import KeyRing, mint, new_token_id
from . import policy
from .bounce_rcpt import accept_bounce_rcpt

log = logging.getLogger("bouncetrack.milter")

# pymilter is untyped: give its constants and decorator types once, here.
CONTINUE: int = Milter.CONTINUE
TEMPFAIL: int = Milter.TEMPFAIL
REJECT: int = Milter.REJECT
DISCARD: int = Milter.DISCARD
_F = TypeVar("_F", bound=Callable[..., int])
noreply: Callable[[_F], _F] = Milter.noreply

# Actions negotiated with the MTA (POSTFIX-NOTES: what Postfix honours for us).
ACTIONS = (
    Milter.CHGFROM
    | Milter.ADDHDRS
    | Milter.CHGHDRS
    | Milter.DELRCPT
    | Milter.ADDRCPT
    | Milter.ADDRCPT_PAR
    | Milter.SETSYMLIST
)

# Macros (smfi_setsymlist): unless told otherwise, Postfix sends each stage's default
# macros (milter_*_macros in postconf(5)) before every callback, and the milter's
# libmilter decodes them all. The one read is the queue id, ``i``, at end of message;
# every other stage asks for a macro no MTA defines, so it is sent none (issue 3's
# overhead). Connect, HELO and body are not negotiated at all, so they carry nothing.
NO_MACRO = "{none}"
MACROS_BY_STAGE = (
    (Milter.M_ENVFROM, NO_MACRO),
    (Milter.M_ENVRCPT, NO_MACRO),
    (Milter.M_DATA, NO_MACRO),
    (Milter.M_EOH, NO_MACRO),
    (Milter.M_EOM, "i"),
)


@dataclass(frozen=True)
class Runtime:
    """What every connection shares; swapped as a whole on reload (SIGHUP)."""

    config: Config
    keyring: KeyRing


class Journal(Protocol):
    """Where the milter records a tracked message before answering (issue 20):
    :class:`~bouncetrack.milter.journal.JournalAppender` in production."""

    def append(self, message: MessageRecord) -> None: ...
    def close(self) -> None: ...


class Shared:
    """Process-wide state: the current runtime, the journal, decision counters.

    Messages are recorded in the journal (one ``write(2)``, no lock held while the
    store commits); the supervisor's journal writer moves them into the store.
    """

    def __init__(self, runtime: Runtime, journal_factory: Callable[[Config], Journal]) -> None:
        self._runtime = runtime
        self._journal_factory = journal_factory
        self._journal: Journal | None = None
        self._journal_lock = threading.Lock()
        self.decisions: Counter[str] = Counter()
        self._counter_lock = threading.Lock()
        # metrics (issue 5): called with the seconds record_message took, when set
        # (bouncetrack.milter.metrics sets it when milter_metrics_listen is on).
        self.record_observer: Callable[[float], None] | None = None
        # suppression lists (issue 6): looked up at RCPT time, no I/O; kept in step
        # with the store by a SuppressionRefresher (runner.py starts it).
        self.suppression = SuppressionIndex()

    @property
    def runtime(self) -> Runtime:
        return self._runtime

    def swap(self, runtime: Runtime) -> None:
        self._runtime = runtime  # milter_journal changes need a restart (reload.RESTART_ONLY)

    def record(self, message: MessageRecord) -> None:
        """Append the record to the journal; returns once a crash of this process
        cannot lose it. OSError (disk full) propagates: the message is tempfailed."""
        observer = self.record_observer
        started = time.perf_counter() if observer is not None else 0.0
        journal = self._journal
        if journal is None:
            with self._journal_lock:
                if self._journal is None:
                    self._journal = self._journal_factory(self._runtime.config)
                journal = self._journal
        journal.append(message)
        if observer is not None:  # metrics (issue 5)
            observer(time.perf_counter() - started)

    def count(self, why: str) -> None:
        with self._counter_lock:
            self.decisions[why] += 1

    def decision_counts(self) -> dict[str, int]:
        """A consistent copy of the decision counters (metrics, issue 5)."""
        with self._counter_lock:
            return dict(self.decisions)

    def close(self) -> None:
        with self._journal_lock:
            if self._journal is not None:
                self._journal.close()
                self._journal = None


class TrackingMilter(Milter.Base):  # type: ignore[misc]
    """One instance per SMTP connection (libmilter calls the factory per connection)."""

    shared: Shared  # set by make_factory

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.sender: str | None = None
        self.sender_params: tuple[str, ...] = ()
        self.recipients: list[policy.Recipient] = []
        self.dropped: list[str] = []  # recipient paths to remove at eom (suppression "drop")
        self._sender_domain: str | None = None
        self._sender_domain_known = False
        self.return_paths: list[str] = []
        self.message_id: str | None = None

    # --- callbacks -----------------------------------------------------------

    def negotiate(self, opts: list[int]) -> int:
        rc: int = Milter.Base.negotiate(self, opts)
        if rc != CONTINUE or not self._actions & Milter.SETSYMLIST:
            return rc  # an MTA without smfi_setsymlist sends its defaults: only slower
        try:
            for stage, macros in MACROS_BY_STAGE:
                # The context's own setsymlist: Milter.Base.setsymlist hands pymilter
                # 1.0.5's C side bytes where it wants str.
                self._ctx.setsymlist(stage, macros)
        except Exception:
            log.debug("setsymlist failed; the MTA sends its default macros", exc_info=True)
        return rc
    # envfrom and header never refuse anything: @noreply saves the MTA a round trip per
    # call (the milter overhead target of issue 3). envrcpt must answer: it refuses
    # invalid VERP recipients at the bounce domain before Postfix queues them (issue 6,
    # bounce_rcpt.py) and suppressed recipients of a domain whose policy is "reject"
    # (issue 6, bouncetrack/suppression); that costs one round trip per RCPT on the
    # unix socket, whatever the policy (@noreply cannot be chosen per call).

    @noreply
    def envfrom(self, sender: str, *params: str) -> int:
        # A connection may carry several transactions: start each clean.
        self._reset()
        self.sender = sender
        self.sender_params = tuple(params)
        return CONTINUE

    def envrcpt(self, to: str, *params: str) -> int:
        runtime = self.shared.runtime
        try:
            accepted = accept_bounce_rcpt(runtime.config, runtime.keyring, to, time.time())
            action = suppression.verdict(
                runtime.config, self._sender_domain_of(runtime.config), to, self.shared.suppression.contains
            )
        except Exception:
            log.exception("recipient check failed, tempfailing recipient")
            return self._tempfail(replies.MILTER_FAILURE)
        if not accepted:
            # Only this recipient is refused; the others of the transaction go on.
            self.shared.count("rejected-invalid-verp")
            return self._reject(replies.INVALID_VERP)
        if action == suppression.REJECT:
            self.shared.count("rejected-suppressed")
            return self._reject(replies.SUPPRESSED)
        if action == suppression.DROP:
            # Accepted, then removed at eom: the client never learns (policy "drop").
            self.shared.count("dropped-suppressed")
            self.dropped.append(to)
            return CONTINUE
        self.recipients.append(policy.Recipient(to, tuple(params)))
        return CONTINUE

    def _sender_domain_of(self, config: Config) -> str | None:
        """The sender's domain for the suppression lists; None for the null sender,
        a malformed one and our own bounce domain (bounces are never suppressed)."""
        if not self._sender_domain_known:
            address = esmtp.parse_address(self.sender or "")
            domain = address.domain if address is not None else None
            self._sender_domain = None if domain == config.bounce_domain else domain
            self._sender_domain_known = True
        return self._sender_domain

    def _reject(self, reply: replies.Reply) -> int:
        try:
            self.setreply(reply.code, reply.status, reply.text)
        except Exception:
            log.debug("setreply failed", exc_info=True)
        return REJECT

    @noreply
    def header(self, name: str, value: str) -> int:
        lname = name.lower()
        if lname == "return-path":
            self.return_paths.append(value)
        elif lname == "message-id" and self.message_id is None:
            self.message_id = value.strip()
        return CONTINUE

    def eom(self) -> int:
        try:
            return self._eom()
        except OSError as exc:
            log.warning("journal write failed, tempfailing message: %s", exc)
            self.shared.count("tempfail-store")  # the journal is the milter's store
            return self._tempfail(replies.STORE_UNAVAILABLE)
        except Exception:
            log.exception("milter failure, tempfailing message")
            self.shared.count("tempfail-error")
            return self._tempfail(replies.MILTER_FAILURE)

    def abort(self) -> int:
        self._reset()
        return CONTINUE

    def close(self) -> int:
        return CONTINUE

    # --- the work --------------------------------------------------------------

    def _eom(self) -> int:
        runtime = self.shared.runtime
        if self.dropped and not self.recipients:
            # Every recipient was suppressed with policy "drop": nothing is left to
            # send, so the message goes nowhere (Postfix tells the client 250).
            self.shared.count("discarded-suppressed")
            return DISCARD
        envelope = policy.Envelope(
            sender=self.sender if self.sender is not None else "<>",
            sender_params=self.sender_params,
            recipients=tuple(self.recipients),
            return_paths=tuple(self.return_paths),
        )
        token = None
        token_id = 0
        if policy.needs_token(runtime.config, envelope):
            token_id = new_token_id()
            token = mint(runtime.keyring, token_id)
        decision = policy.decide(runtime.config, envelope, token)
        self.shared.count(decision.why)
        queue_id = self._symval("i")

        if decision.kind == policy.REFUSE:
            return self._reject(replies.RETURN_PATH_FOREIGN)
        if decision.kind == policy.TRACK:
            assert token is not None and decision.new_sender is not None
            # The one INFO line per tracked message (issue 15: queue id and token) is
            # logged by the journal writer once the record is in the store (issue 20).
            self.shared.record(self._message_record(envelope, decision, token, token_id, queue_id))
        else:
            log.debug("queue_id=%s sender=%s decision=%s why=%s", queue_id, envelope.sender, decision.kind, decision.why)

        if decision.new_sender is not None:
            self.chgfrom(f"<{decision.new_sender}>", decision.sender_params)
        for change in decision.recipient_changes:
            self.delrcpt(change.path)
            self.addrcpt(change.path, change.new_params)
        # Delete from the last occurrence so that indices stay valid (1-based).
        for index in range(decision.delete_return_path, 0, -1):
            self.chgheader("Return-Path", index, "")
        for path in self.dropped:  # suppression policy "drop" (issue 6)
            self.delrcpt(path)
        return CONTINUE

    def _message_record(
        self, envelope: policy.Envelope, decision: policy.Decision, token: str, token_id: int, queue_id: str | None
    ) -> MessageRecord:
        mail = esmtp.parse_params(envelope.sender_params)
        recipients = []
        for rcpt in envelope.recipients:
            recipients.append(
                RecipientRecord(
                    address=rcpt.address,
                    # The ORCPT the tracked message now carries (policy._track keeps the
                    # client's, or adds one naming the address).
                    orcpt=rcpt.orcpt,
                    notify=rcpt.dsn.get("NOTIFY"),
                )
            )
        return MessageRecord(
            token_id=token_id,
            token=token,
            queue_id=queue_id,
            message_id=self.message_id,
            sender_domain=decision.sender_domain or "",
            envelope_sender=esmtp.strip_path(envelope.sender),
            verp_sender=decision.new_sender or "",
            dsn_ret=mail.get("RET"),
            dsn_envid=mail.get("ENVID"),
            recipients=tuple(recipients),
            created_at=time.time(),
        )

    def _symval(self, name: str) -> str | None:
        try:
            value: Any = self.getsymval(name)
        except Exception:
            return None
        return str(value) if value else None

    def _tempfail(self, reply: replies.Reply) -> int:
        try:
            self.setreply(reply.code, reply.status, reply.text)
        except Exception:
            log.debug("setreply failed", exc_info=True)
        return TEMPFAIL


def make_factory(shared: Shared) -> type[TrackingMilter]:
    """A TrackingMilter subclass bound to ``shared`` (libmilter calls it with no arguments)."""
    return type("BoundTrackingMilter", (TrackingMilter,), {"shared": shared})
