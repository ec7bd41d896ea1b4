"""Retry delays for the outbox: exponential backoff with jitter (pure).

``ceiling(n) = min(cap, base * 2**(n-1))`` after the n-th failed attempt, and
the delay is drawn uniformly from ``[ceiling/2, ceiling]`` ("equal jitter": a
full-jitter draw over the upper half). Jitter spreads the retries of many jobs
that failed together (a receiver outage) so they do not come back as one
thundering herd; keeping the lower half out gives a *guaranteed* minimum total
wait before the dead-letter state, not just an expected one. Decorrelated
jitter would need the previous delay, which the store does not keep.

Schedule with the defaults (``max_attempts=20``, ``base=30 s``, ``cap=3600 s``):
19 waits between 20 attempts, ceilings 30, 60, 120, 240, 480, 960, 1920 s, then
3600 s twelve times - 47,010 s in all. So a job goes dead after

* at least 23,505 s (~6.5 h), at most 47,010 s (~13.1 h), ~9.8 h on average.

A receiver that is down for an hour sees 7-8 attempts in that hour and loses nothing;
one down for a working day still does not lose events, and dead jobs stay
replayable (``bouncetrack outbox replay``).
"""

from __future__ import annotations

from typing import Protocol


class Random(Protocol):
    """What we need of :class:`random.Random` (tests pass a seeded one)."""

    def random(self) -> float: ...


def ceiling(attempts: int, base: float, cap: float) -> float:
    """The upper bound of the delay after ``attempts`` failed attempts (>= 1)."""
    n = max(1, attempts)
    if n > 64:  # 2**64 * base overflows nothing in Python, but stays silly
        return cap
    return float(min(cap, base * (2 ** (n - 1))))


def next_delay(attempts: int, base: float, cap: float, rng: Random) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt (1 = first failure).

    Uniform in ``[ceiling/2, ceiling]`` where ``ceiling = min(cap, base * 2**(attempts-1))``.
    """
    c = ceiling(attempts, base, cap)
    return c / 2 + rng.random() * (c / 2)


def total_wait_bounds(max_attempts: int, base: float, cap: float) -> tuple[float, float]:
    """(minimum, maximum) total seconds from the first attempt to the last one.

    There are ``max_attempts - 1`` waits; the job is dead after the last attempt fails.
    """
    top = sum(ceiling(n, base, cap) for n in range(1, max_attempts))
    return top / 2, top


__all__ = ["Random", "ceiling", "next_delay", "total_wait_bounds"]
