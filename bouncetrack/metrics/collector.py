"""The API's ``/metrics`` collector: counters read from the store at scrape time.

Why a collector and not counters in memory: the bounce pipe is a new process
per bounce and the outbox worker is a separate process, so their counts cannot
live in the API's memory (nor in prometheus_client's multiprocess mode, which
needs a shared directory writable by every process and loses nothing only as
long as nobody cleans it). Instead the store keeps them: the pipe counts its
run in the report's own transaction, triggers keep per-label counters for
events, tracked messages and outbox outcomes (migration 3). Counters derived
from stored rows survive restarts of every process by construction, and a
scrape reads a few small tables whatever the number of events.

Label values are bounded: ``domain`` is a configured sender domain, ``other``
(not configured: the default policy) or ``none`` (unattributed); ``reason``,
``type``, ``token_status`` and ``feedback_type`` are mapped onto fixed sets
(anything else is ``other``). Recipients never appear.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Callable, Iterable, Iterator, Mapping, TypeVar

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from ..core import events
from ..bounce_pipe.guard import GUARDS
from ..core.config import Config
from ..milter.probe import negotiate
from ..store.base import PIPE_DURATION_BUCKETS, StoreUnavailable, pipe_bucket
from ..store.views import MetricCounts
from ..bounce_pipe import tempfail as pipe_tempfail
from . import pipe_fallback
from ..bounce_pipe.client import REFUSALS, REFUSED_LOG

# The reason taxonomy (shared/corpus/README.md, Sisimai 5), plus "challenge": the reason of an
# auto_reply event from a challenge-response system (issue 18; never a bounce).
REASONS = frozenset(
    """authfailure badreputation blocked challenge contenterror delivered exceedlimit expired
    failedstarttls feedback filtered hasmoved hostunknown mailboxfull mailererror mesgtoobig
    networkerror norelaying notaccept notcompliantrfc onhold policyviolation rejected
    requireptr securityerror spamdetected speeding suppressed suspend syntaxerror systemerror
    systemfull toomanyconn undefined userunknown vacation virusdetected""".split()
)
EVENT_TYPES = frozenset(events.EVENT_TYPES)
TOKEN_STATUSES = ("valid", "forged", "unknown", "expired", "missing")
# ARF Feedback-Type values: RFC 5965 §7.3 registry (abuse, fraud, other, virus),
# RFC 6591 (auth-failure), RFC 6650 (not-spam), and the common opt-out.
FEEDBACK_TYPES = frozenset({"abuse", "fraud", "other", "virus", "auth-failure", "not-spam", "opt-out"})
PIPE_OUTCOMES = ("stored", "duplicate", "tempfail")
CHANNELS = ("webhook", "smtp")
DELIVERY_OUTCOMES = ("delivered", "retry", "dead")
OTHER = "other"
NONE = "none"


def _one_of(value: str, allowed: Iterable[str]) -> str:
    return value if value in allowed else OTHER


_Labels = TypeVar("_Labels", bound="str | tuple[str, ...]")


def _counter(name: str, documentation: str, labels: list[str], counts: Mapping[_Labels, int]) -> CounterMetricFamily:
    """A counter family with one sample per key of ``counts`` (a label value, or a tuple of
    them in ``labels``' order), in sorted order."""
    family = CounterMetricFamily(name, documentation, labels=labels)
    for key, n in sorted(counts.items()):
        family.add_metric([key] if isinstance(key, str) else list(key), n)
    return family


class StoreCollector(Collector):
    """Reads :meth:`Store.metric_counts` and the pipe's tempfail log per scrape.

    ``store`` is called on the scraping thread (the API hands out one store per
    thread). A store that cannot be read yields ``bouncetrack_store_up 0`` and
    no store-derived series, instead of failing the scrape.
    """

    def __init__(
        self,
        config: Callable[[], Config],
        store: Callable[[], object],
        *,
        clock: Callable[[], float] = time.time,
        tempfail_dir: str | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._clock = clock
        self._tempfail_dir = tempfail_dir
        # The store's creation time, kept for scrapes while the store is down: the pipe's
        # logs outside the store are counted from then on (an earlier install's are not).
        self._since = 0.0

    def describe(self) -> Iterable[Metric]:
        return []  # no store access when registering

    def collect(self) -> Iterator[Metric]:
        config = self._config()
        counts: MetricCounts | None = None
        try:
            store = self._store()
            read = getattr(store, "metric_counts", None)
            if read is not None:
                result = read(self._clock())
                counts = result if isinstance(result, MetricCounts) else None
        except StoreUnavailable:
            counts = None
        yield GaugeMetricFamily(
            "bouncetrack_store_up",
            "1 when the store answered this scrape (the store-derived series are present), else 0",
            value=1 if counts is not None else 0,
        )
        if counts is not None:
            yield from _store_families(config, counts)
        yield from self._pipe_families(counts)

    def _pipe_families(self, counts: MetricCounts | None) -> Iterator[Metric]:
        runs: dict[str, int] = {o: 0 for o in PIPE_OUTCOMES}
        buckets: dict[str, dict[float, int]] = {o: defaultdict(int) for o in PIPE_OUTCOMES}
        sums: dict[str, float] = {o: 0.0 for o in PIPE_OUTCOMES}
        observed: dict[str, int] = {o: 0 for o in PIPE_OUTCOMES}
        if counts is not None:
            for outcome, le, n, seconds in counts.pipe_runs:
                outcome = _one_of(outcome, PIPE_OUTCOMES[:2])
                if outcome == OTHER:
                    continue
                runs[outcome] += n
                buckets[outcome][pipe_bucket(le)] += n
                sums[outcome] += seconds
                observed[outcome] += n
        if counts is not None:
            self._since = counts.store_created_at
        tempfails, durations = pipe_tempfail.read_durations(self._tempfail_dir, since=self._since)
        runs["tempfail"] = tempfails
        for seconds in durations:
            buckets["tempfail"][pipe_bucket(seconds)] += 1
            sums["tempfail"] += seconds
            observed["tempfail"] += 1

        total = CounterMetricFamily(
            "bouncetrack_pipe_runs",
            "Bounce pipe runs by outcome: stored, duplicate (a retry of a stored report), "
            "tempfail (exit 75, Postfix retries)",
            labels=["outcome"],
        )
        hist = HistogramMetricFamily(
            "bouncetrack_pipe_duration_seconds",
            "Bounce pipe run time from its start to storing the report (tempfail: to giving up)",
            labels=["outcome"],
        )
        stored_present = counts is not None
        for outcome in PIPE_OUTCOMES:
            if outcome != "tempfail" and not stored_present:
                continue
            total.add_metric([outcome], runs[outcome])
            cumulative, series = 0, []
            for bound in PIPE_DURATION_BUCKETS:
                cumulative += buckets[outcome].get(bound, 0)
                series.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            hist.add_metric([outcome], series, sums[outcome])
        yield total
        yield hist
        yield _counter(
            "bouncetrack_pipe_fallbacks",
            "Bounces the pipe client handed to the full pipe instead of the pipe server, by reason: "
            "no-server (none listening), server-lost (it went away before answering); each is "
            "stored all the same, at the cost of a full start",
            ["reason"],
            pipe_fallback.read_counts(self._tempfail_dir, since=self._since),
        )
        yield _counter(
            "bouncetrack_lmtp_refused",
            "What the pipe server's LMTP listener refused (issue 21), by reason: too-big (552 over "
            "pipe.lmtp.max_message_bytes: Postfix drops that report), timeout (421; Postfix retries), "
            "protocol (an endless line, too many errors)",
            ["reason"],
            pipe_fallback.read_counts(self._tempfail_dir, since=self._since, log=REFUSED_LOG, reasons=REFUSALS),
        )


def _guard_family(counts: MetricCounts) -> Metric:
    guards: dict[str, int] = {g: 0 for g in GUARDS}
    for name, n in counts.pipe_guards:
        key = _one_of(name, GUARDS)
        guards[key] = guards.get(key, 0) + n
    return _counter(
        "bouncetrack_pipe_guards",
        "Bounds the bounce pipe applied to a report (issue 16), by guard: classify_budget, "
        "classify_crash (stored as unknown), trimmed_* (cut before MIME parsing), "
        "unparsed_bad_token, untrusted_over_quota (not stored), unverified_not_suppressed, ... "
        "(runs); events_dropped and jobs_dropped count the events and forwards dropped",
        ["guard"],
        guards,
    )


def _store_families(config: Config, counts: MetricCounts) -> Iterator[Metric]:
    configured = set(config.domains)
    yield _guard_family(counts)

    def domain(value: str) -> str:
        if not value:
            return NONE
        return value if value in configured else OTHER

    tracked: dict[str, int] = {d: 0 for d, p in config.domains.items() if p.tracking}
    for name, n in counts.messages:
        tracked[domain(name)] = tracked.get(domain(name), 0) + n
    yield _counter(
        "bouncetrack_messages_tracked",
        "Messages the milter rewrote to a VERP sender and recorded, by sender domain",
        ["domain"],
        tracked,
    )

    events: dict[tuple[str, str, str, str], int] = defaultdict(int)
    complaints: dict[tuple[str, str], int] = defaultdict(int)
    tokens: dict[str, int] = {s: 0 for s in TOKEN_STATUSES}
    for dom, type_, reason, hard, token_status, feedback, n in counts.events:
        d, t = domain(dom), _one_of(type_, EVENT_TYPES)
        events[(d, t, _one_of(reason, REASONS), "hard" if hard else "soft")] += n
        if t == "complaint":
            fb = _one_of(feedback.lower(), FEEDBACK_TYPES) if feedback else NONE
            complaints[(d, fb)] += n
        status = _one_of(token_status, TOKEN_STATUSES)
        tokens[status] = tokens.get(status, 0) + n

    yield _counter(
        "bouncetrack_events",
        "Stored report events (bounces, delays, complaints, ...) by sender domain, type, "
        "reason and severity (hard: the address itself failed)",
        ["domain", "type", "reason", "severity"],
        events,
    )

    yield _counter(
        "bouncetrack_complaints",
        "Stored spam complaints (ARF feedback reports) by sender domain and Feedback-Type",
        ["domain", "feedback_type"],
        complaints,
    )

    yield _counter(
        "bouncetrack_event_tokens",
        "Stored events by what verifying their VERP token found: valid, forged (bad MAC), "
        "unknown (no such message), expired (key past its grace period), missing",
        ["token_status"],
        tokens,
    )

    deliveries: dict[tuple[str, str], int] = {(c, o): 0 for c in CHANNELS for o in DELIVERY_OUTCOMES}
    for channel, outcome, n in counts.deliveries:
        pair = (_one_of(channel, CHANNELS), _one_of(outcome, DELIVERY_OUTCOMES))
        deliveries[pair] = deliveries.get(pair, 0) + n
    yield _counter(
        "bouncetrack_deliveries",
        "Outbox delivery results by channel (webhook, smtp) and outcome: delivered, retry "
        "(a failed attempt, rescheduled), dead (dead-lettered); counted by the store, "
        "whichever worker delivered",
        ["channel", "outcome"],
        deliveries,
    )

    gauge = GaugeMetricFamily(
        "bouncetrack_outbox_jobs",
        "Outbox jobs waiting (pending: not yet delivered) or dead-lettered (dead: needs a replay)",
        labels=["state"],
    )
    gauge.add_metric(["pending"], counts.outbox_pending)
    gauge.add_metric(["dead"], counts.outbox_dead)
    yield gauge
    yield GaugeMetricFamily(
        "bouncetrack_outbox_due_jobs",
        "Pending outbox jobs whose next attempt is due now (not waiting for a back-off)",
        value=counts.outbox_due,
    )
    yield GaugeMetricFamily(
        "bouncetrack_outbox_leased_jobs",
        "Pending outbox jobs a worker holds right now",
        value=counts.outbox_leased,
    )
    yield GaugeMetricFamily(
        "bouncetrack_outbox_oldest_pending_age_seconds",
        "Age of the oldest pending outbox job (0 when none is pending)",
        value=counts.outbox_oldest_pending_age,
    )


class MilterProbeCollector(Collector):
    """``bouncetrack_milter_up``: does the milter answer on its configured socket?

    The milter's own metrics vanish with it, so the API checks it at each scrape, the
    way Postfix and ``bouncetrack doctor`` do (:func:`bouncetrack.milter.probe.negotiate`:
    connect, SMFIC_OPTNEG, at most ``timeout`` seconds). 1: it answered; 0: no socket,
    refused, no answer, or not a milter's answer: Postfix then tempfails every message
    (451 4.7.1). The series is left out when the socket's *directory* does not exist:
    no milter is installed on this host (an API instance elsewhere), and nothing should
    fire; on a milter host the directory outlives the milter (the unit creates it, it is
    not a runtime directory).
    """

    def __init__(self, config: Callable[[], Config], *, timeout: float = 1.0) -> None:
        self._config = config
        self._timeout = timeout

    def describe(self) -> Iterable[Metric]:
        return []  # no probe when registering

    def collect(self) -> Iterator[Metric]:
        path = self._config().milter_socket
        if not path.parent.is_dir():
            return
        try:
            negotiate(str(path), self._timeout)
            up = 1
        except (OSError, ValueError):
            up = 0  # the series is the record of it (and what the alert rule reads)
        yield GaugeMetricFamily(
            "bouncetrack_milter_up",
            "1 when the milter answered the milter negotiation on milter_socket at this scrape, else 0 "
            "(Postfix then answers every message 451 4.7.1)",
            value=up,
        )


def build_registry(
    config: Callable[[], Config],
    store: Callable[[], object],
    *,
    clock: Callable[[], float] = time.time,
    tempfail_dir: str | None = None,
    process_metrics: bool = True,
) -> CollectorRegistry:
    """A registry for one API app: the store collector, the milter probe and the process's
    own metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(config, store, clock=clock, tempfail_dir=tempfail_dir))
    registry.register(MilterProbeCollector(config))
    if process_metrics:
        from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR

        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(collector)
    return registry
