"""The outbox worker (``bouncetrack worker``): delivers webhook and SMTP jobs.

Guarantees
----------
* **At-least-once.** A job is marked delivered only after the receiver
  accepted it. A crash between delivery and marking leaves the job leased;
  when the lease runs out it is claimed again and re-delivered with the same
  ``webhook-id`` / ``Idempotency-Key`` (the event id), so the receiver can drop
  the duplicate.
* **No concurrent double delivery.** Jobs are claimed with a lease
  (:meth:`Store.claim_jobs`): another worker does not see a leased job. Before
  each delivery the worker checks that the lease still covers the longest a
  delivery can take; if not, it leaves the job for the next claim rather than
  risk delivering it while another worker does. (The bound assumes every
  network operation ends within its timeout; a receiver trickling its answer
  byte by byte could outlast it, and then a second worker may deliver the
  job again - still with the same idempotency key.)
* **Backoff and dead-letter.** A failed attempt is rescheduled after
  :func:`~bouncetrack.forward.backoff.next_delay` (``Retry-After`` honoured as
  a lower bound, capped at ``max_delay_seconds``); after ``max_attempts``
  attempts the job is ``dead``, visible and replayable from the CLI.
* **Configuration at delivery time.** The webhook URL and secret and the
  forward address are read from ``config.policy_for(event.domain)`` when the
  job is delivered, so a fixed URL or rotated secret applies to queued jobs. A
  job whose channel is no longer configured for its domain goes dead (replay
  it after restoring the configuration).
* **Bounded memory.** Jobs are claimed ``batch_size`` at a time; response
  bodies are not read beyond a few hundred bytes.
* **Graceful stop.** SIGTERM/SIGINT (or ``stop_event``) finish the delivery in
  flight, then stop; unprocessed jobs of the batch are re-claimed when their
  lease expires.
* **Reload.** SIGHUP re-reads the configuration file between two deliveries
  (:mod:`bouncetrack.core.reload`: a broken file is refused and logged, the running
  configuration kept); webhook URLs and secrets, forward addresses, backoff and
  retention apply to the next delivery. The store URL needs a restart.
* **One line per delivery** (issue 15): event id, the original message's queue
  id, the target (a URL without its query) and the outcome.

Attempt counting: the store's ``attempts`` counts finished attempts;
:meth:`Store.job_failed` increments it, :meth:`Store.claim_jobs` does not. So
the attempt being made is ``job.attempts + 1``.
"""

from __future__ import annotations

import logging
import random
import signal
import smtplib
import threading
import time
from dataclasses import dataclass, replace
from types import FrameType
from typing import Callable

from ..core.config import Config
from ..ops import retention
from ..core.reload import RESTART_ONLY, reload_config
from ..store.base import BounceEvent, OutboxJob, StoreUnavailable
from ..store.interfaces import Store
from ..store.views import PurgeCounts
from . import smtp as smtp_forward
from . import webhook
from .backoff import Random, next_delay
from .httpclient import HttpClient
from .jobs import SMTP, WEBHOOK

log = logging.getLogger(__name__)

SMTP_TIMEOUT = 20.0  # per SMTP operation
# Raw reports past their retention are dropped by the worker, at most this often; the
# events stay (the pipe keeps them, retention of events is issue 6's `purge`).
PURGE_INTERVAL = 3600.0
# Events and messages past `retention:` (bouncetrack.ops.retention), at most this often.
RETENTION_INTERVAL = 86400.0
# The dashboard's daily sent counts (Store.roll_up_sent), at most this often. A day is
# rolled up once it ended this long ago: a message recorded late (a node whose clock
# is behind) still falls in a day not yet rolled, where the dashboard counts it live.
ROLL_UP_INTERVAL = 3600.0
ROLL_UP_GRACE = 3600.0


@dataclass
class WorkerStats:
    delivered: int = 0
    retried: int = 0
    dead: int = 0
    skipped: int = 0  # left for a later claim (lease too short, stop requested)
    store_errors: int = 0
    raw_purged: int = 0  # raw reports dropped past pipe.raw_retention_days
    events_purged: int = 0  # events deleted past retention.events_days
    messages_purged: int = 0  # messages deleted past retention.messages_days


@dataclass(frozen=True)
class Outcome:
    outcome: str  # delivered | retry | dead
    error: str | None = None
    retry_after: float | None = None
    target: str | None = None  # where it went (webhook URL, forward address), for the log
    queue_id: str | None = None  # the original message's Postfix queue id, for the log


def log_target(target: str | None) -> str:
    """A delivery target as logged: a URL without its query or fragment (they may hold a key)."""
    if not target:
        return "-"
    return target.split("?", 1)[0].split("#", 1)[0]


def _job_budget(config: Config, smtp_timeout: float) -> float:
    """An upper bound on one delivery, each network operation using its whole timeout:
    HTTP connect + write + read; SMTP connect, EHLO, MAIL, RCPT, DATA, end of data."""
    webhook_timeouts = [
        p.webhook.timeout_seconds
        for p in (config.default, *config.domains.values())
        if p.webhook is not None
    ]
    return max([3 * t for t in webhook_timeouts] + [6 * smtp_timeout]) + 5.0


class Worker:
    """One worker: a store, an HTTP client, and the delivery loop. See :func:`run_worker`."""

    def __init__(
        self,
        config: Config,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        rng: Random | None = None,
        http_client: HttpClient | None = None,
        batch_size: int = 20,
        lease_seconds: float | None = None,
        smtp_timeout: float = SMTP_TIMEOUT,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.rng: Random = rng if rng is not None else random.Random()
        self._own_client = http_client is None
        self.client = http_client if http_client is not None else HttpClient()
        self.batch_size = batch_size
        self.smtp_timeout = smtp_timeout
        self.job_budget = _job_budget(config, smtp_timeout)
        # The lease bounds how long a crashed worker's jobs wait before another worker
        # re-claims them. Deliveries usually take milliseconds, so a batch fits easily;
        # when they crawl, jobs the lease can no longer cover are left for a later claim.
        wanted = lease_seconds if lease_seconds is not None else max(300.0, 2 * self.job_budget)
        if wanted <= self.job_budget:
            log.warning("lease %.0f s is shorter than one delivery may take; using %.0f s",
                        wanted, 2 * self.job_budget)
            wanted = 2 * self.job_budget
        self.lease_seconds = wanted
        self.stats = WorkerStats()
        self._next_due: dict[str, float] = {}  # housekeeping task -> when it is due again

    def _due(self, task: str, interval: float, now: float) -> bool:
        """Whether housekeeping ``task`` is due at ``now``; if so, it is next due ``interval`` later."""
        if now < self._next_due.get(task, 0.0):
            return False
        self._next_due[task] = now + interval
        return True

    def maybe_purge_raw(self) -> int:
        """Drop raw reports older than ``pipe.raw_retention_days`` (hourly, in batches)."""
        now = self.clock()
        if not self._due("purge_raw", PURGE_INTERVAL, now):
            return 0
        cutoff = now - self.config.pipe.raw_retention_days * 86400.0
        purged = self.store.purge_raw_before(cutoff)
        if purged:
            log.info("dropped %d raw report(s) older than %d days", purged, self.config.pipe.raw_retention_days)
        self.stats.raw_purged += purged
        return purged

    def maybe_roll_up_sent(self) -> int:
        """Roll completed days' messages up for the dashboard (hourly); day rows written."""
        now = self.clock()
        if not self._due("roll_up_sent", ROLL_UP_INTERVAL, now):
            return 0
        written = self.store.roll_up_sent(now - ROLL_UP_GRACE)
        if written:
            log.info("rolled up %d day(s) of sent counts for the dashboard", written)
        return written

    def maybe_purge_retention(self) -> PurgeCounts | None:
        """Delete events and messages past ``retention:`` (daily, in batches) when
        ``retention.automatic`` is on; None when not due. Raw bodies are
        :meth:`maybe_purge_raw`'s (hourly, always)."""
        now = self.clock()
        if not self.config.retention.automatic or not self._due("retention", RETENTION_INTERVAL, now):
            return None
        cut = replace(retention.cutoffs(self.config, now), raw_before=None)
        counts = retention.purge(self.store, cut, self.config.retention.batch_size)
        if counts.events or counts.messages:
            log.info(
                "retention: deleted %d event(s) (%d delivery job(s), %d report row(s)), "
                "%d message(s) (%d recipient(s)); kept %d old event(s) with a pending delivery",
                counts.events, counts.outbox_jobs, counts.reports, counts.messages,
                counts.recipients, counts.events_kept_pending,
            )
        self.stats.events_purged += counts.events
        self.stats.messages_purged += counts.messages
        return counts

    def close(self) -> None:
        if self._own_client:
            self.client.close()

    def apply(self, config: Config) -> None:
        """Use ``config`` from the next delivery on (a reload)."""
        self.config = config
        self.job_budget = _job_budget(config, self.smtp_timeout)
        if self.lease_seconds <= self.job_budget:
            self.lease_seconds = 2 * self.job_budget

    # --- one job ----------------------------------------------------------

    def attempt(self, job: OutboxJob) -> Outcome:
        """Try to deliver ``job`` once; never raises for delivery trouble."""
        event = self.store.event(job.event_id)
        if event is None:
            return Outcome(webhook.DEAD, "event no longer in the store", target=job.target)
        outcome = self._attempt(job, event)
        return replace(outcome, target=outcome.target or job.target, queue_id=event.queue_id)

    def _attempt(self, job: OutboxJob, event: BounceEvent) -> Outcome:
        policy = self.config.policy_for(event.domain or "")
        if job.channel == WEBHOOK:
            if policy.webhook is None:
                return Outcome(webhook.DEAD, f"no webhook configured for {event.domain!r} any more")
            if policy.webhook.url != job.target:
                log.info("job %s: webhook URL changed since queued, using %s", job.id, log_target(policy.webhook.url))
            now = self.clock()
            try:
                request = webhook.build_request(event, policy.webhook.url, policy.webhook.secret, now)
            except ValueError as exc:  # a bad whsec_ secret: fixable by the operator
                return Outcome(webhook.RETRY, str(exc))
            result = webhook.deliver(self.client, request, policy.webhook.timeout_seconds, now)
            return Outcome(result.outcome, result.error, result.retry_after, target=policy.webhook.url)
        if job.channel == SMTP:
            target = policy.forward
            if not target:
                return Outcome(webhook.DEAD, f"no forward address configured for {event.domain!r} any more")
            raw = self.store.raw_report(job.event_id)
            if raw is None:
                return Outcome(webhook.DEAD, "raw report no longer stored (retention)")
            try:
                smtp_forward.forward(
                    raw,
                    event,
                    target,
                    self.config.outbox.smtp_host,
                    self.config.outbox.smtp_port,
                    timeout=self.smtp_timeout,
                )
            except (smtplib.SMTPException, OSError) as exc:
                return Outcome(webhook.RETRY, f"SMTP: {type(exc).__name__}: {exc}"[:512], target=target)
            return Outcome(webhook.DELIVERED, target=target)
        return Outcome(webhook.DEAD, f"unknown channel {job.channel!r}")

    def settle(self, job: OutboxJob, outcome: Outcome) -> None:
        """Record the attempt's outcome in the store."""
        assert job.id is not None
        now = self.clock()
        outbox = self.config.outbox
        what = (f"job {job.id} event_id={job.event_id} queue_id={outcome.queue_id or '-'} "
                f"{job.channel} {log_target(outcome.target or job.target)}")
        if outcome.outcome == webhook.DELIVERED:
            self.store.job_delivered(job.id, now)
            self.stats.delivered += 1
            log.info("%s: delivered", what)
            return
        error = outcome.error or "failed"
        attempt = job.attempts + 1
        if outcome.outcome == webhook.DEAD or attempt >= outbox.max_attempts:
            self.store.job_failed(job.id, now, error, None)
            self.stats.dead += 1
            log.warning("%s: dead after %d attempt(s): %s", what, attempt, error)
            return
        delay = next_delay(attempt, outbox.base_delay_seconds, outbox.max_delay_seconds, self.rng)
        if outcome.retry_after is not None:
            delay = max(delay, min(outcome.retry_after, outbox.max_delay_seconds))
        self.store.job_failed(job.id, now, error, now + delay)
        self.stats.retried += 1
        log.info("%s: attempt %d failed, retry in %.0f s: %s", what, attempt, delay, error)

    def process(self, job: OutboxJob) -> None:
        try:
            outcome = self.attempt(job)
        except StoreUnavailable:
            raise
        except Exception as exc:  # one bad job must not stop the worker
            log.exception("job %s: unexpected error", job.id)
            outcome = Outcome(webhook.RETRY, f"internal error: {type(exc).__name__}: {exc}"[:512])
        self.settle(job, outcome)

    # --- the loop ---------------------------------------------------------

    def run_batch(self, stop: threading.Event) -> int:
        """Claim and process one batch; return how many jobs were claimed."""
        claimed_at = self.clock()
        jobs = self.store.claim_jobs(claimed_at, self.batch_size, self.lease_seconds)
        lease_end = claimed_at + self.lease_seconds
        for job in jobs:
            if stop.is_set() or self.clock() + self.job_budget > lease_end:
                self.stats.skipped += 1  # its lease expires and it is claimed again
                continue
            self.process(job)
        return len(jobs)


def run_worker(
    config: Config,
    store: Store,
    *,
    once: bool = False,
    stop_event: threading.Event | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], object] | None = None,
    poll_interval: float = 1.0,
    batch_size: int = 20,
    lease_seconds: float | None = None,
    rng: Random | None = None,
    http_client: HttpClient | None = None,
    handle_signals: bool = True,
    config_path: str | None = None,
) -> WorkerStats:
    """Deliver due outbox jobs until stopped (or, with ``once``, until none is due).

    ``stop_event`` stops the loop from another thread; SIGTERM and SIGINT set it
    when called from the main thread (``handle_signals``), and SIGHUP reloads
    ``config_path`` between deliveries (the loop's wait is cut short). ``sleep`` waits
    between polls; the default waits on the stop event so a stop is immediate.
    ``clock``/``sleep``/``rng`` are injectable for tests (fake time).
    """
    stop = stop_event if stop_event is not None else threading.Event()
    wait: Callable[[float], object] = sleep if sleep is not None else stop.wait
    worker = Worker(
        config,
        store,
        clock=clock,
        rng=rng,
        http_client=http_client,
        batch_size=batch_size,
        lease_seconds=lease_seconds,
    )

    reload_requested = threading.Event()

    def reload() -> None:
        reload_requested.clear()
        assert config_path is not None
        reload_config(config_path, worker.config, worker.apply, RESTART_ONLY["worker"], log)

    previous: dict[signal.Signals, object] = {}
    if handle_signals and threading.current_thread() is threading.main_thread():

        def on_signal(signum: int, frame: FrameType | None) -> None:
            log.info("signal %d: finishing the delivery in flight, then stopping", signum)
            stop.set()

        def on_hup(signum: int, frame: FrameType | None) -> None:
            reload_requested.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, on_signal)
        if config_path is not None:
            previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hup)
    try:
        while not stop.is_set():
            if reload_requested.is_set():
                reload()
            try:
                claimed = worker.run_batch(stop)
            except StoreUnavailable as exc:
                worker.stats.store_errors += 1
                log.warning("store unavailable: %s; retrying in %.1f s", exc, poll_interval)
                if once:
                    break
                wait(poll_interval)
                continue
            if claimed == 0:
                # Housekeeping only when idle, in this order: the roll-up counts messages
                # before retention deletes them.
                for task, what in ((worker.maybe_purge_raw, "raw retention purge"),
                                   (worker.maybe_roll_up_sent, "sent counts roll-up"),
                                   (worker.maybe_purge_retention, "retention purge")):
                    try:
                        task()
                    except StoreUnavailable as exc:
                        log.warning("%s skipped: %s", what, exc)
                if once:
                    break
                wait(poll_interval)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        worker.close()
    return worker.stats


__all__ = ["Outcome", "Worker", "WorkerStats", "run_worker"]
