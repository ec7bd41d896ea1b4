"""The pymilter callbacks: collect the envelope, ask the policy, apply it.

I/O lives here (store writes, libmilter actions); every rule lives in
:mod:`bouncetrack.milter.policy`. Any failure of our own becomes a 4xx
(``TEMPFAIL``): the client retries, no mail is lost or sent untracked.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, TypeVar

import Milter

from .. import suppression
from ..core import esmtp, replies
from ..core.config import Config
from ..suppression.index import SuppressionIndex
from ..core.tokens import KeyRing, new_token
from . import journal, policy
from .bounce_rcpt import accept_bounce_rcpt, bounce_marker

log = logging.getLogger("bouncetrack.milter")

# pymilter is untyped: give its constants and decorator types once, here.
CONTINUE: int = Milter.CONTINUE
TEMPFAIL: int = Milter.TEMPFAIL
REJECT: int = Milter.REJECT
DISCARD: int = Milter.DISCARD
NOREPLY: int = Milter.NOREPLY
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
    # Each sender's part of the policy, worked out once per configuration load.
    rules: policy.SenderRules = field(init=False, repr=False, compare=False)
    # A recipient without it is not at the bounce domain (bounce_rcpt.bounce_marker).
    bounce_marker: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", policy.SenderRules(self.config))
        object.__setattr__(self, "bounce_marker", bounce_marker(self.config))


class Journal(Protocol):
    """Where the milter records a tracked message before answering (issue 20):
    :class:`~bouncetrack.milter.journal.JournalAppender` in production; ``data`` is
    one record, :func:`bouncetrack.milter.journal.line`."""

    def append(self, data: bytes) -> None: ...
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
        # Decisions counted (count): appended to _tally without a lock, folded into
        # _counts under _counter_lock when read (decisions) or when _FOLD_AT are waiting.
        self._tally: deque[str] = deque()
        self._counts: Counter[str] = Counter()
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

    def record(self, data: bytes) -> None:
        """Append the record (:func:`~bouncetrack.milter.journal.line`) to the journal; returns once a crash of this process
        cannot lose it. OSError (disk full) propagates: the message is tempfailed."""
        observer = self.record_observer
        started = time.perf_counter() if observer is not None else 0.0
        sink = self._journal
        if sink is None:
            with self._journal_lock:
                if self._journal is None:
                    self._journal = self._journal_factory(self._runtime.config)
                sink = self._journal
        sink.append(data)
        if observer is not None:  # metrics (issue 5)
            observer(time.perf_counter() - started)

    _FOLD_AT = 1024

    def count(self, why: str) -> None:
        """Count one decision: exact, thread-safe, without taking a lock per message
        (``deque.append`` is atomic; issue 20). Read the counts with :attr:`decisions`
        or :meth:`decision_counts`."""
        tally = self._tally
        tally.append(why)
        if len(tally) >= self._FOLD_AT:
            with self._counter_lock:
                self._fold()

    def _fold(self) -> None:
        """Move the tallied decisions into the counts; the caller holds _counter_lock
        (an append meanwhile waits for the next fold)."""
        tally, counts = self._tally, self._counts
        for _ in range(len(tally)):
            counts[tally.popleft()] += 1

    @property
    def decisions(self) -> Counter[str]:
        """The decision counters, every decision counted so far included."""
        with self._counter_lock:
            self._fold()
        return self._counts

    def decision_counts(self) -> dict[str, int]:
        """A consistent copy of the decision counters (metrics, issue 5)."""
        with self._counter_lock:
            self._fold()
            return dict(self._counts)

    def close(self) -> None:
        with self._journal_lock:
            if self._journal is not None:
                self._journal.close()
                self._journal = None


# The header fields the milter reads (TrackingMilter.header); every other field is
# passed over without decoding it.
HEADERS_READ = frozenset(("return-path", "message-id"))
_READ_LENGTHS = frozenset(len(name) for name in HEADERS_READ)  # a field of another length is passed over as is


class TrackingMilter(Milter.Base):  # type: ignore[misc]
    """One instance per SMTP connection (libmilter calls the factory per connection).

    libmilter calls pymilter's ``*_bytes`` entry points with the raw values; the
    ones overridden here decode only what is read and skip pymilter's per-call
    lookups (issue 20: a message is a dozen callbacks, each costing the milter's
    threads a GIL hand-off), then call the str callbacks below, which pymilter's
    TestCtx drives directly in the unit tests.
    """

    shared: Shared  # set by make_factory
    # What a callback declared @noreply returns: NOREPLY once the MTA agreed to send
    # no reply for that stage (negotiate), CONTINUE until then.
    _mail_rc = CONTINUE
    _header_rc = CONTINUE

    def __init__(self) -> None:
        self._reset()

    def _reset(self, sender: str | None = None, sender_params: tuple[str, ...] = ()) -> None:
        """Start a transaction (MAIL FROM ``sender``, or none yet): a connection may carry
        several, each starts clean."""
        # One configuration for the whole transaction: a reload applies from the next MAIL FROM.
        self.runtime = self.shared.runtime
        self.sender = sender
        self.sender_params = sender_params
        self.recipients: list[policy.Recipient] = []
        self.dropped: list[str] = []  # recipient paths to remove at eom (suppression "drop")
        self._rule: policy.SenderRule | None = None
        self.return_paths: list[str] = []
        self.message_id: str | None = None

    # --- callbacks -----------------------------------------------------------

    def negotiate(self, opts: list[int]) -> int:
        rc: int = Milter.Base.negotiate(self, opts)
        if rc != CONTINUE:
            return rc
        if self._protocol & Milter.P_NR_MAIL:
            self._mail_rc = NOREPLY
        if self._protocol & Milter.P_NR_HDR:
            self._header_rc = NOREPLY
        if not self._actions & Milter.SETSYMLIST:
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

    def envfrom_bytes(self, sender: bytes, *params: bytes) -> int:
        self._reset(sender.decode("utf-8", "surrogateescape"),
                    tuple([p.decode("utf-8", "surrogateescape") for p in params]) if params else ())
        return self._mail_rc

    @noreply
    def envfrom(self, sender: str, *params: str) -> int:
        self._reset(sender, params)
        return CONTINUE

    def envrcpt_bytes(self, to: bytes, *params: bytes) -> int:
        if params:
            return self.envrcpt(to.decode("utf-8", "surrogateescape"),
                                *[p.decode("utf-8", "surrogateescape") for p in params])
        return self.envrcpt(to.decode("utf-8", "surrogateescape"))

    def envrcpt(self, to: str, *params: str) -> int:
        runtime = self.runtime
        try:
            rule = self._rule
            if rule is None:
                rule = self._sender_rule()
            # The VERP check, for a recipient that may be at the bounce domain (bounce_rcpt.py).
            accepted = runtime.bounce_marker not in to.lower() or accept_bounce_rcpt(
                runtime.config, runtime.keyring, to, time.time())
            # The suppression verdict (suppression.verdict), worked out per sender in its rule.
            action = rule.suppression_policy
            if action is not None and not suppression.is_listed(
                    rule.domain or "", to, self.shared.suppression.contains):
                action = None
        except Exception:
            log.exception("recipient check failed, tempfailing recipient")
            return self._tempfail(replies.MILTER_FAILURE)
        if not accepted:
            # Only this recipient is refused; the others of the transaction go on.
            self.shared.count("rejected-invalid-verp")
            return self._reject(replies.INVALID_VERP)
        if action is not None:  # listed
            if action == suppression.REJECT:
                self.shared.count("rejected-suppressed")
                return self._reject(replies.SUPPRESSED)
            if action == suppression.DROP:
                # Accepted, then removed at eom: the client never learns (policy "drop").
                self.shared.count("dropped-suppressed")
                self.dropped.append(to)
                return CONTINUE
        self.recipients.append(policy.Recipient(to, params))
        return CONTINUE

    def _sender_rule(self) -> policy.SenderRule:
        """What the sender decides (once per transaction, memoised per configuration)."""
        rule = self._rule
        if rule is None:
            rule = self._rule = self.runtime.rules.get(self.sender if self.sender is not None else "<>")
        return rule

    def _reject(self, reply: replies.Reply) -> int:
        try:
            self.setreply(reply.code, reply.status, reply.text)
        except Exception:
            log.debug("setreply failed", exc_info=True)
        return REJECT

    def header_bytes(self, name: str, value: bytes) -> int:
        if len(name) in _READ_LENGTHS:
            lname = name.lower()
            if lname in HEADERS_READ:
                self._read_header(lname, value.decode("utf-8", "surrogateescape"))
        return self._header_rc

    @noreply
    def header(self, name: str, value: str) -> int:
        lname = name.lower()
        if lname in HEADERS_READ:
            self._read_header(lname, value)
        return CONTINUE

    def _read_header(self, lname: str, value: str) -> None:
        """Keep a field of HEADERS_READ (``lname``: its name lower-cased)."""
        if lname == "return-path":
            self.return_paths.append(value)
        elif self.message_id is None:  # the first Message-ID
            self.message_id = value.strip()

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
        runtime = self.runtime
        recipients = self.recipients
        if self.dropped and not recipients:
            # Every recipient was suppressed with policy "drop": nothing is left to
            # send, so the message goes nowhere (Postfix tells the client 250).
            self.shared.count("discarded-suppressed")
            return DISCARD
        rule = self._rule
        if rule is None:
            rule = self._sender_rule()
        token = ""
        token_id = 0
        if rule.kind == policy.TRACK:
            # What decide() answers for a tracked sender, asked without an Envelope.
            assert rule.domain is not None  # a TRACK rule has one
            token_id, token = new_token(runtime.keyring)
            decision = policy.track(runtime.config, rule.domain, token, recipients, len(self.return_paths))
        else:
            decision = policy.decide(
                runtime.config,
                policy.Envelope(self.sender if self.sender is not None else "<>", self.sender_params,
                                tuple(recipients), tuple(self.return_paths)),
                None, rule,
            )
        self.shared.count(decision.why)
        # The context's own calls, not Milter.Base's wrappers: those only check the
        # negotiated actions first, which libmilter checks again (a refused action
        # raises either way, and the message is tempfailed).
        ctx = self._ctx
        queue_id = self._symval("i")

        if decision.kind == policy.REFUSE:
            return self._reject(replies.RETURN_PATH_FOREIGN)
        if decision.kind == policy.TRACK:
            # The one INFO line per tracked message (issue 15: queue id and token) is
            # logged by the journal writer once the record is in the store (issue 20).
            self.shared.record(self._journal_line(decision, rule, token, token_id, queue_id))
        else:
            log.debug("queue_id=%s sender=%s decision=%s why=%s", queue_id, self.sender, decision.kind, decision.why)

        if decision.new_sender is not None:
            ctx.chgfrom(f"<{decision.new_sender}>", decision.sender_params)
        for change in decision.recipient_changes:
            ctx.delrcpt(change.path)
            ctx.addrcpt(change.path, change.new_params)
        if decision.delete_return_path:
            # Delete from the last occurrence so that indices stay valid (1-based).
            for index in range(decision.delete_return_path, 0, -1):
                ctx.chgheader("Return-Path", index, "")
        for path in self.dropped:  # suppression policy "drop" (issue 6)
            ctx.delrcpt(path)
        return CONTINUE

    def _journal_line(
        self, decision: policy.Decision, rule: policy.SenderRule, token: str, token_id: int, queue_id: str | None,
    ) -> bytes:
        """The message's record, straight from what the callbacks collected."""
        ret = envid = None
        if self.sender_params:
            mail = esmtp.parse_params(self.sender_params)
            ret, envid = mail.get("RET"), mail.get("ENVID")
        # The ORCPT the tracked message now carries (policy.track keeps the client's,
        # or adds one naming the address).
        people = []
        for rcpt in self.recipients:
            people.append((rcpt.address, rcpt.orcpt, rcpt.dsn.get("NOTIFY") if rcpt.params else None))
        return journal.line(
            token_id, token, queue_id, self.message_id, decision.sender_domain or "", rule.address,
            decision.new_sender or "", ret, envid, time.time(), people,
        )

    def _symval(self, name: str) -> str | None:
        try:
            value: Any = self._ctx.getsymval(name)
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
