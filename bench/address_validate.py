#!/usr/bin/env python3
"""Address validation rate (issue 19): warm DNS cache, cold cache, and the cache's memory.

In this one process, against the tests' local authoritative DNS server
(``tests/dnsserver.py``, UDP on 127.0.0.1) serving ``--domains`` domains with an MX:

- **warm**: :class:`bouncetrack.validation.Validator` over ``--addresses`` addresses
  spread over those domains, every domain already in the cache (syntax, cache hit,
  provider choice); rounds alternate with the **syntax** baseline
  (:func:`bouncetrack.core.addresses.parse_address` alone) and report medians and the ratio;
- **cold**: a fresh validator (empty cache) over ``--cold`` addresses at as many
  distinct domains: one MX query each, round trip to the local server included;
- **memory**: tracemalloc's growth while a fresh cache fills to ``--domains``
  entries, per entry.

    python bench/address_validate.py [--domains 20000] [--addresses 100000] [--cold 3000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--domains", type=int, default=20_000, help="domains served (and cache size)")
    ap.add_argument("--addresses", type=int, default=100_000, help="addresses per warm round")
    ap.add_argument("--cold", type=int, default=3_000, help="addresses (distinct domains) in the cold run")
    ap.add_argument("--rounds", type=int, default=5, help="alternating warm/baseline rounds")
    a = ap.parse_args()

    from bouncetrack.core.addresses import parse_address
    from bouncetrack.core.resolver import DnsPythonResolver
    from bouncetrack.validation import DomainCache, Validator
    from tests.dnsserver import DnsServer

    zones = {f"d{i}.example": [("MX", f"10 mx.d{i}.example.", 3600)] for i in range(a.domains + a.cold)}
    addresses = [f"user.{i}@d{i % a.domains}.example" for i in range(a.addresses)]
    cold = [f"user@d{a.domains + i}.example" for i in range(a.cold)]

    with DnsServer(zones) as dns:
        resolver = DnsPythonResolver("127.0.0.1", dns.port, timeout=2.0)

        # Memory: a fresh cache filled with every domain (one lookup each).
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        filled = Validator(resolver, DomainCache(a.domains))
        t0 = time.perf_counter()
        for i in range(a.domains):
            filled.check(f"user@d{i}.example")
        fill_seconds = time.perf_counter() - t0
        gc.collect()
        cache_bytes = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert len(filled.cache) == a.domains

        # Warm rounds (the filled cache), alternating with the syntax-only baseline.
        warm_rates: list[float] = []
        syntax_rates: list[float] = []
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            for raw in addresses:
                parse_address(raw)
            syntax_rates.append(len(addresses) / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            for raw in addresses:
                filled.check(raw)
            warm_rates.append(len(addresses) / (time.perf_counter() - t0))
        misses = filled.cache.misses

        # Cold: every address a new domain, one MX query each.
        fresh = Validator(resolver, DomainCache(a.domains))
        queries = len(dns.queries)
        t0 = time.perf_counter()
        verdicts = [fresh.check(raw).verdict for raw in cold]
        cold_seconds = time.perf_counter() - t0
        cold_queries = len(dns.queries) - queries

    warm = statistics.median(warm_rates)
    syntax = statistics.median(syntax_rates)
    result = {
        "parameters": vars(a),
        "warm_cache": {
            "addresses_per_second_median": round(warm),
            "rounds": [round(r) for r in warm_rates],
            "goal_per_second": 20_000,
            "meets_goal": warm >= 20_000,
            "cache_misses_during_warm_rounds": misses - a.domains,
        },
        "syntax_only_baseline": {
            "addresses_per_second_median": round(syntax),
            "rounds": [round(r) for r in syntax_rates],
        },
        "warm_time_ratio_to_syntax": round(syntax / warm, 3),
        "cold_cache": {
            "addresses": a.cold,
            "addresses_per_second": round(a.cold / cold_seconds),
            "dns_queries": cold_queries,
            "all_valid": all(v == "valid" for v in verdicts),
            "server": "tests/dnsserver.py on 127.0.0.1 (Python, one thread)",
        },
        "cache_full": {
            "entries": a.domains,
            "tracemalloc_bytes": cache_bytes,
            "bytes_per_entry": round(cache_bytes / a.domains),
            "fill_seconds_under_tracemalloc": round(fill_seconds, 3),
        },
    }
    path = write_result("address_validate", result)
    print(f"warm {warm:,.0f}/s (syntax alone {syntax:,.0f}/s, time ratio {syntax / warm:.2f}); "
          f"cold {a.cold / cold_seconds:,.0f}/s; cache of {a.domains} domains {cache_bytes / 1e6:.1f} MB "
          f"({cache_bytes / a.domains:.0f} B/entry) -> {path}")


if __name__ == "__main__":
    main()
