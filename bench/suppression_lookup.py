#!/usr/bin/env python3
"""Suppression lookup cost: the milter's in-memory index with N entries vs an empty one.

Fills a real SQLite store (temporary directory) with ``-n`` suppressed addresses
spread over ``--domains`` sender domains, then, in this one process:

- loads :class:`bouncetrack.suppression.index.SuppressionIndex` from the store (as the
  milter does at start) and reports the load time and the index's memory
  (tracemalloc peak during the load and what stays allocated afterwards);
- times what envrcpt does per recipient (:func:`bouncetrack.suppression.verdict`:
  policy lookup, address normalisation, hash, overlay + bisect) for listed and
  unlisted addresses, against the loaded index and against an empty one;
- times one incremental refresh with ``--changes`` new entries (the background
  thread's work every couple of seconds), and one with none;
- for reference, the memory of the same keys as a Python ``set`` of ints.

    python bench/suppression_lookup.py [-n 1000000] [--domains 10] [--lookups 200000]
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import tempfile
import textwrap
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import write_result  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("-n", type=int, default=1_000_000, help="suppressed addresses (default 1000000)")
    ap.add_argument("--domains", type=int, default=10, help="sender domains they are spread over")
    ap.add_argument("--lookups", type=int, default=200_000, help="timed lookups per case")
    ap.add_argument("--changes", type=int, default=1000, help="entries added before the timed refresh")
    a = ap.parse_args()

    from bouncetrack.core.config_loader import load_config
    from bouncetrack.store import open_store
    from bouncetrack.store.views import Suppression
    from bouncetrack.suppression import key_hash, verdict
    from bouncetrack.suppression.index import SuppressionIndex

    rng = random.Random(6)
    domains = [f"sender{i}.test" for i in range(a.domains)]
    with tempfile.TemporaryDirectory(prefix="bt-suppression-bench-") as tmp:
        cfg = Path(tmp) / "bouncetrack.yaml"
        cfg.write_text(textwrap.dedent(f"""\
            bounce_domain: bounce.test
            secret_file: {tmp}/verp.key
            store: sqlite:///{tmp}/bt.db
            domains:
              default: {{suppression: {{policy: reject}}}}
            """))
        config = load_config(cfg)
        store = open_store(config.store_url, timeout=60)
        started = time.perf_counter()
        now = time.time()
        chunk = 100_000
        for start in range(0, a.n, chunk):
            store.add_suppressions([
                Suppression(domains[i % a.domains], f"user{i}.{rng.getrandbits(32):08x}@remote{i % 97}.test",
                            "hard_bounce", None, now, now + 365 * 86400.0)
                for i in range(start, min(a.n, start + chunk))
            ])
        fill_s = time.perf_counter() - started
        listed = [(s.domain, s.address) for s in store.suppressions(
            None, now, limit=5000)]
        print(f"store filled with {a.n} entries in {fill_s:.1f} s")

        index = SuppressionIndex()
        t0 = time.perf_counter()
        index.load(store, time.time())
        load_s = time.perf_counter() - t0  # timed without tracemalloc (it slows allocation)
        del index
        gc.collect()
        tracemalloc.start()
        base_mem = tracemalloc.get_traced_memory()[0]
        index = SuppressionIndex()
        index.load(store, time.time())
        kept, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        index_mb = (kept - base_mem) / 1e6
        peak_mb = (peak - base_mem) / 1e6
        print(f"index load: {load_s:.2f} s, {len(index)} entries, {index_mb:.1f} MB kept "
              f"(index.memory_bytes {index.memory_bytes() / 1e6:.1f} MB), {peak_mb:.1f} MB peak during load")

        misses = [(rng.choice(domains), f"nobody{i}@else{i % 13}.test") for i in range(a.lookups)]
        hits = [listed[i % len(listed)] for i in range(a.lookups)]

        def timed(idx: SuppressionIndex, pairs: list[tuple[str, str]], expect: str | None) -> float:
            contains = idx.contains
            runs = []
            for _ in range(5):
                t = time.perf_counter()
                for domain, address in pairs:
                    verdict(config, domain, address, contains)
                runs.append((time.perf_counter() - t) / len(pairs) * 1e6)
            assert verdict(config, pairs[0][0], pairs[0][1], contains) == expect
            return statistics.median(runs)

        def hash_only(pairs: list[tuple[str, str]]) -> float:
            t = time.perf_counter()
            for domain, address in pairs:
                key_hash(domain, address)
            return (time.perf_counter() - t) / len(pairs) * 1e6

        empty = SuppressionIndex()
        empty.loaded = True
        results = {
            "full_miss_us": timed(index, misses, None),
            "full_hit_us": timed(index, hits, "reject"),
            "empty_miss_us": timed(empty, misses, None),
            "hash_only_us": hash_only(misses),
        }
        off = replace(config, default=replace(config.default, suppression=replace(config.default.suppression, policy="off")))
        t = time.perf_counter()
        for domain, address in misses:
            verdict(off, domain, address, index.contains)
        results["policy_off_us"] = (time.perf_counter() - t) / len(misses) * 1e6
        for k, v in results.items():
            print(f"{k:15s} {v:6.2f} µs per recipient")

        # Incremental refresh: nothing new, then --changes new entries.
        t = time.perf_counter()
        index.refresh(store, time.time())
        idle_ms = (time.perf_counter() - t) * 1e3
        store.add_suppressions([
            Suppression(domains[0], f"new{i}@remote.test", "hard_bounce", None, time.time(), None)
            for i in range(a.changes)
        ])
        t = time.perf_counter()
        changed = index.refresh(store, time.time())
        refresh_ms = (time.perf_counter() - t) * 1e3
        assert changed == a.changes and index.contains(domains[0], "new0@remote.test")
        print(f"refresh with no change {idle_ms:.2f} ms; with {a.changes} new entries {refresh_ms:.1f} ms")

        # Reference: as many 64-bit keys in a Python set of ints.
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        as_set = {key_hash(domains[0], f"user{i}@x.test") for i in range(a.n)}
        set_mb = (tracemalloc.get_traced_memory()[0] - before) / 1e6
        tracemalloc.stop()
        del as_set
        print(f"reference: the same number of keys as a Python set of ints: {set_mb:.1f} MB")
        store.close()

    path = write_result("suppression_lookup", {
        "entries": a.n,
        "sender_domains": a.domains,
        "store_fill_seconds": fill_s,
        "index_load_seconds": load_s,
        "index_memory_mb": index_mb,
        "index_load_peak_mb": peak_mb,
        "per_recipient_us": results,
        "refresh_idle_ms": idle_ms,
        "refresh_changes": a.changes,
        "refresh_ms": refresh_ms,
        "python_set_of_ints_mb": set_mb,
    })
    print(f"written {path}")


if __name__ == "__main__":
    main()
