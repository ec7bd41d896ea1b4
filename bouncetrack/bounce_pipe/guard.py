"""The pipe's bounds on one report (issue 16), and the names it counts them by.

Everything that reaches the bounce domain comes from the Internet, and every
recipient of tracked mail sees a valid token in its Return-Path. So one report
may cost only so much, whatever it says:

- classification: :data:`CLASSIFY_CPU_SECONDS` of CPU (apart from the pipe's
  wall-clock deadline), on bytes bounded by :mod:`bouncetrack.classifier.bounds`;
- events: :func:`.attribution.bound_events` keeps one event per recipient of the
  message, collapses flagged events that point to the same recipient, and keeps
  at most :data:`MAX_EVENTS_PER_REPORT` (:data:`MAX_UNATTRIBUTED_EVENTS` for a
  report we cannot attribute);
- forwarding: at most :data:`MAX_JOBS_PER_REPORT` outbox jobs.

Each time a bound applies the pipe logs a line and counts it under one of the
names below in the store (``metric_pipe_guards``), which ``/metrics`` serves as
``bouncetrack_pipe_guards_total{guard=…}``.
"""

from __future__ import annotations

from ..classifier.bounds import TRIMS
from ..store.base import UNTRUSTED_OVER_QUOTA as UNTRUSTED_OVER_QUOTA  # re-exported: the store applies this one itself

CLASSIFY_CPU_SECONDS = 3.0
MAX_EVENTS_PER_REPORT = 1000
MAX_UNATTRIBUTED_EVENTS = 50
MAX_FLAGGED_EVENTS = 10
MAX_JOBS_PER_REPORT = 1000

# Guard names (metric label values). *_DROPPED count items, the others runs.
CLASSIFY_BUDGET = "classify_budget"
CLASSIFY_CRASH = "classify_crash"
ATTRIBUTION_CRASH = "attribution_crash"
SUPPRESSION_CRASH = "suppression_crash"
UNPARSED_BAD_TOKEN = "unparsed_bad_token"
EVENTS_DROPPED = "events_dropped"
JOBS_DROPPED = "jobs_dropped"
TRIMMED_PREFIX = "trimmed_"  # + a bounds.TRIMS value: what was cut before parsing
UNVERIFIED_NOT_SUPPRESSED = "unverified_not_suppressed"

GUARDS: tuple[str, ...] = (
    CLASSIFY_BUDGET, CLASSIFY_CRASH, ATTRIBUTION_CRASH, SUPPRESSION_CRASH, UNPARSED_BAD_TOKEN,
    EVENTS_DROPPED, JOBS_DROPPED, UNVERIFIED_NOT_SUPPRESSED, UNTRUSTED_OVER_QUOTA,
) + tuple(TRIMMED_PREFIX + t for t in TRIMS)


def describe_caps() -> str:
    return (f"at most {MAX_EVENTS_PER_REPORT} events, one per recipient of the message, "
            f"{MAX_FLAGGED_EVENTS} flagged, {MAX_UNATTRIBUTED_EVENTS} unattributed; "
            f"{MAX_JOBS_PER_REPORT} forwards")
