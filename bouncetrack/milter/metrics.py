"""The milter's own Prometheus endpoint (``milter_metrics_listen``, default off).

The milter is long-running, so its metrics live in its memory: the decision
counters :class:`~bouncetrack.milter.app.Shared` already keeps, read at scrape
time, and a histogram of how long recording a message in the store takes
(lock wait included: what the SMTP client waits for at end of data). They
start at zero when the milter (child) restarts; Prometheus' ``rate`` and
``increase`` handle counter resets. Tracked messages per domain, which must
survive restarts, are counted by the store and served by the API.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

from prometheus_client import Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from .app import Shared

# Every `why` of bouncetrack.milter.policy and the milter's tempfails: always
# exported (0 until seen), so rates and alerts work from the first scrape.
DECISIONS = (
    "tracked",
    "untracked",
    "null-sender",
    "bounce-domain",
    "malformed-sender",
    "return-path",
    "return-path-malformed",
    "return-path-foreign-domain",  # message refused: Return-Path outside MAIL FROM's domain (issue 16)
    "dsn-defaults",
    "tempfail-store",
    "tempfail-error",
    "rejected-invalid-verp",  # RCPT at the bounce domain with an invalid token (issue 6)
    "rejected-suppressed",  # RCPT refused: on the domain's suppression list, policy reject (issue 6)
    "dropped-suppressed",  # recipient removed at eom: suppression list, policy drop (issue 6)
    "discarded-suppressed",  # message discarded: every recipient dropped (issue 6)
)
RECORD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class DecisionCollector(Collector):
    def __init__(self, shared: Shared) -> None:
        self._shared = shared

    def describe(self) -> Iterable[Metric]:
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        counts = {d: 0 for d in DECISIONS}
        counts.update(self._shared.decision_counts())
        family = CounterMetricFamily(
            "bouncetrack_milter_decisions",
            "Messages by the milter's decision (tracked, untracked, null-sender, ..., tempfail-*)",
            labels=["decision"],
        )
        for decision, n in sorted(counts.items()):
            family.add_metric([decision], n)
        yield family


def build_registry(shared: Shared) -> CollectorRegistry:
    """The milter's registry; also hooks the record-latency histogram into ``shared``."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(DecisionCollector(shared))
    latency = Histogram(
        "bouncetrack_milter_record_seconds",
        "Time to record a tracked message at end of data (one append to the milter journal, issue 20)",
        registry=registry,
        buckets=RECORD_BUCKETS,
    )
    shared.record_observer = latency.observe
    from prometheus_client import PROCESS_COLLECTOR

    registry.register(PROCESS_COLLECTOR)
    return registry


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` (validated by the config loader) → (host, port)."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def serve(shared: Shared, listen: str) -> Callable[[], None]:
    """Serve ``/metrics`` on ``listen`` from a daemon thread; return a stop function."""
    host, port = split_listen(listen)
    server, thread = start_http_server(port, addr=host, registry=build_registry(shared))

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
