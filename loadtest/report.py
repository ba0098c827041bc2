"""The run's results: one JSON document (printed and kept) and a PNG plot.

``summary_rows`` turns the benchmark reports into one row per headline figure — value, the
limit it is compared with, the ratio, the target and whether it was met — the table a reader
checks first. The plot shows throughput and latency over time for the flash sales (with E1 and
E16 drawn in), the HTTP rate sweep, the ATP query latency and, when P7 ran, each operation's
server time per call by history size and its longest call and the other SKU's p99.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from loadtest.targets import P1_M16_RATIO, P2_P99_MS, P4_P99_MS, P5_BYTES, P6_M1_RATIO

RESULTS_DIR = Path(__file__).resolve().parent / "results"

#: The benchmarks the Cluster comparison runs on both Redis shapes, and its two shapes: the sale
#: (or P4's batch) on one hot SKU, and on many.
CLUSTER_BENCHES = ("P1", "P2", "P4")
HOT, WIDE = "hot", "wide"

#: Per benchmark, the figures the Cluster comparison sets side by side: (figure, unit, its path in
#: the benchmark's report).
CLUSTER_FIGURES: dict[str, tuple[tuple[str, str, tuple[str, ...]], ...]] = {
    "P1": (("successes/s while stock lasted", "holds/s", ("successes_per_s",)),
           ("attempts/s over the sale", "holds/s", ("attempts_per_s",)),
           ("hold latency p50", "ms", ("latency", "p50_ms")),
           ("hold latency p99", "ms", ("latency", "p99_ms")),
           ("zero oversell", "", ("oversell_check", "ok"))),
    "P2": (("saturating rate", "req/s", ("saturating_rps",)),
           ("rps at 80 % of saturation", "req/s", ("rps",)),
           ("p50 at 80 %", "ms", ("p50_ms",)),
           ("p99 at 80 %", "ms", ("p99_ms",)),
           ("zero oversell", "", ("zero_oversell",))),
    "P4": (("atp_many latency p50", "ms", ("latency", "p50_ms")),
           ("atp_many latency p99", "ms", ("latency", "p99_ms")),
           ("positions/s", "positions/s", ("positions_per_s",))),
}  # fmt: skip


def _row(bench: str, figure: str, value: Any, unit: str, limit: str | None = None, ratio: Any = None,
         target: str | None = None, met: bool | None = None) -> dict[str, Any]:
    return {"bench": bench, "figure": figure, "value": value, "unit": unit, "vs": limit, "ratio": ratio,
            "target": target, "met": met}  # fmt: skip


def _dig(report: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        report = report[key]
    return report


def cluster_table(runs: dict[str, Any], wide_skus: int) -> list[dict[str, Any]]:
    """The Cluster comparison side by side (pure): one row per benchmark × shape × figure of
    ``CLUSTER_FIGURES`` with its ``standalone`` and ``cluster`` values and ``ratio`` = cluster /
    standalone (None for a flag or a zero); ``error`` names a run that failed (its values None).
    ``runs``: benchmark -> shape (``HOT``, ``WIDE``) -> ``{"standalone": report, "cluster": report}``."""
    rows = []
    for bench in CLUSTER_BENCHES:
        for shape, cell in (runs.get(bench) or {}).items():
            label = "1 SKU" if shape == HOT else f"{wide_skus:,} SKUs"
            failed = "; ".join(f"{where}: {r['error']}" for where, r in cell.items() if "error" in r)
            for figure, unit, path in CLUSTER_FIGURES[bench]:
                values = {where: None if failed else _dig(cell[where], path) for where in ("standalone", "cluster")}
                s, c = values["standalone"], values["cluster"]
                numeric = isinstance(s, int | float) and not isinstance(s, bool) and s
                rows.append({"bench": bench, "shape": label, "figure": figure, "unit": unit, "standalone": s,
                             "cluster": c, "ratio": round(c / s, 3) if numeric and c is not None else None,
                             "error": failed or None})
    return rows


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Headline figures of every benchmark that ran, in the P1…P7 order (pure)."""
    rows = []
    for name in ("limits", "limits_minimal", "limits_floor", "P1", "P2", "P4", "P5", "P6", "P7", "cluster"):
        entry = results.get(name)
        if isinstance(entry, dict) and "error" in entry:
            rows.append(_row(name, "could not run", entry["error"], ""))
    results = {k: v for k, v in results.items() if not (isinstance(v, dict) and "error" in v)}
    lim = results.get("limits") or {}
    for name in ("E1", "E16", "M1", "M16", "F1"):
        e = lim.get(name)
        what = {"E": "hold script", "M": "minimal script", "F": "floor of a hold"}[name[0]]
        if e:
            rows.append(_row(name, f"{what} calls/s (redis-benchmark)", e["rps"], "calls/s"))
            rows.append(_row(name, "script time per call (commandstats)", e["script_usec_per_call"], "us"))
    end = lim.get("E1_end")
    if end:
        start = (lim.get("E1") or {}).get("rps") or 0.0
        rows.append(_row("E1", "again at the end of the run", end["rps"], "calls/s", "E1",
                         round(end["rps"] / start, 3) if start else None))
    p1 = results.get("P1")
    if p1:
        rows.append(_row("P1", "successes/s while stock lasted", p1["successes_per_s"], "holds/s", "M16",
                         p1.get("ratio_successes_vs_m16"), f">= {P1_M16_RATIO:g} x M16", p1["target_met"]))
        rows.append(_row("P1", "attempts/s over the sale", p1["attempts_per_s"], "holds/s", "E1",
                         p1["ratio_attempts_vs_e1"]))
        rows.append(_row("P1", "latency p50 / p99", [p1["latency"]["p50_ms"], p1["latency"]["p99_ms"]], "ms"))
        rows.append(_row("P1", "zero oversell (history + final position)", p1["oversell_check"]["ok"], "",
                         target="true", met=p1["oversell_check"]["ok"]))
    p2 = results.get("P2")
    if p2:
        rows.append(_row("P2", "saturating rate", p2["saturating_rps"], "req/s", "E1", p2["ratio_saturating_vs_e1"]))
        rows.append(_row("P2", "rps at 80 % of saturation", p2["rps"], "req/s", "E1", p2["ratio_rps_vs_e1"]))
        rows.append(_row("P2", "p50 / p99 at 80 %", [p2["p50_ms"], p2["p99_ms"]], "ms",
                         target=f"p99 <= {P2_P99_MS:g} ms", met=p2["target_met"]))
    p4 = results.get("P4")
    if p4:
        lat = p4["latency"]
        rows.append(_row("P4", "atp_many(100) p50 / p99", [lat["p50_ms"], lat["p99_ms"]], "ms",
                         target=f"p99 <= {P4_P99_MS:g} ms", met=p4["target_met"]))
        rows.append(_row("P4", "positions/s", p4["positions_per_s"], "positions/s", "E16", p4["ratio_positions_vs_e16"]))
    p5 = results.get("P5")
    if p5:
        rows.append(_row("P5", "bytes per idle position (stream counts)", p5["bytes_per_position"], "bytes",
                         target=f"<= {P5_BYTES}", met=p5["target_met"]))
        rows.append(_row("P5", "bytes per idle position (operator counts)",
                         p5["operator_counts"]["bytes_per_position"], "bytes", target=f"<= {P5_BYTES}",
                         met=p5["operator_counts"]["target_met"]))
        rows.append(_row("P5", "bytes per change record waiting for the relay",
                         p5["stream_counts"]["bytes_per_waiting_record"], "bytes"))
    p6 = results.get("P6")
    if p6:
        target = f"<= {P6_M1_RATIO:g} x M1"
        rows.append(_row("P6", "script time per hold call (E1)", p6["e1_usec_per_hold_call"], "us", "M1",
                         p6.get("ratio_e1_vs_m1"), target, p6["target_met"]))
        if "f1_usec_per_call" in p6:
            rows.append(_row("P6", "script time of the floor of any engine hold (F1)", p6["f1_usec_per_call"], "us", "M1",
                             p6["ratio_f1_vs_m1"], target, bool(p6["ratio_f1_vs_m1"] and
                                                               p6["ratio_f1_vs_m1"] <= P6_M1_RATIO)))
        if "p1_usec_per_hold" in p6:
            rows.append(_row("P6", f"script time per hold, coalesced (P1, {p6['p1_holds_per_call']} holds/call)",
                             p6["p1_usec_per_hold"], "us", "M1", p6.get("p1_ratio_vs_m1"), target,
                             p6["p1_target_met"]))
    failed = set()
    for r in (results.get("cluster") or {}).get("table", []):
        bench = f"{r['bench']} {r['shape']}"
        if r["error"]:
            if bench not in failed:
                failed.add(bench)
                rows.append(_row(bench, "could not run", r["error"], ""))
        elif isinstance(r["standalone"], bool):
            both = r["standalone"] and r["cluster"]
            rows.append(_row(bench, f"{r['figure']}, standalone and cluster", both, "", target="true", met=both))
        else:
            rows.append(_row(bench, f"{r['figure']}, standalone / cluster", [r["standalone"], r["cluster"]], r["unit"],
                             "standalone", r["ratio"]))
    p7 = results.get("P7")
    if p7:
        rows.extend(_row("P7", r["figure"], r["value"], r["unit"], r["vs"], r["ratio"], r["target"], r["met"])
                    for r in p7.get("headline", []))
    return rows


def write_results(results: dict[str, Any], json_path: Path | None = None, out_dir: Path = RESULTS_DIR) -> tuple[Path, Path | None]:
    """Write the JSON (``json_path`` and a copy in ``out_dir``) and the PNG; return their paths.

    The PNG is skipped (None) when matplotlib is missing; the JSON says so.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    png: Path | None = out_dir / f"run-{stamp}.png"
    try:
        plot(results, png)
    except ImportError as exc:
        results["plot_error"] = f"no plot: {exc} (pip install -e '.[loadtest]')"
        png = None
    results["plot"] = str(png) if png else None
    text = json.dumps(results, indent=1, default=str)
    kept = out_dir / f"run-{stamp}.json"
    kept.write_text(text)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(text)
    return kept, png


def plot(results: dict[str, Any], path: Path) -> None:
    """Throughput and latency over time (P1, P2), the P2 sweep, P4 latency, E1/E16 lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p7 = results.get("P7") if isinstance(results.get("P7"), dict) and "runs" in results["P7"] else None
    fig, axes = plt.subplots(4 if p7 else 3, 2, figsize=(14, 16 if p7 else 12))
    fig.suptitle(f"atp-engine loadtest — {results.get('started_at', '')} — {results.get('machine', {}).get('summary', '')}",
                 fontsize=11)
    lim = results.get("limits") or {}
    e1 = (lim.get("E1") or {}).get("rps")
    e16 = (lim.get("E16") or {}).get("rps")

    def limits_lines(ax: Any) -> None:
        if e1:
            ax.axhline(e1, color="tab:red", linestyle="--", linewidth=1, label=f"E1 {e1:,.0f}/s")
        if e16:
            ax.axhline(e16, color="tab:purple", linestyle=":", linewidth=1, label=f"E16 {e16:,.0f}/s")

    def empty(ax: Any, title: str) -> None:
        ax.set_title(title)
        ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes, color="grey")

    p1 = results.get("P1")
    ax = axes[0][0]
    if p1 and p1.get("series"):
        t = [i["t_s"] for i in p1["series"]]
        ax.plot(t, [i["per_s"] for i in p1["series"]], label="attempts/s")
        ax.plot(t, [i["ok_per_s"] for i in p1["series"]], label="successes/s")
        limits_lines(ax)
        ax.set_title(f"P1 flash sale via Python client — stock {p1['oversell_check']['stock']:,}, "
                     f"oversell check {'OK' if p1['oversell_check']['ok'] else 'FAILED'}")
        ax.set_xlabel("s")
        ax.set_ylabel("holds/s")
        ax.legend(fontsize=8)
        ax2 = axes[0][1]
        ax2.plot(t, [i["p50_ms"] for i in p1["series"]], label="p50")
        ax2.plot(t, [i["p99_ms"] for i in p1["series"]], label="p99")
        ax2.set_yscale("log")
        ax2.set_title("P1 hold latency (per 0.5 s of completions)")
        ax2.set_xlabel("s")
        ax2.set_ylabel("ms")
        ax2.legend(fontsize=8)
    else:
        empty(ax, "P1 flash sale")
        empty(axes[0][1], "P1 latency")

    p2 = results.get("P2")
    ax = axes[1][0]
    if p2 and p2.get("series"):
        t = [i["t_s"] for i in p2["series"]]
        ax.plot(t, [i["per_s"] for i in p2["series"]], label="responses/s")
        ax.plot(t, [i["ok_per_s"] for i in p2["series"]], label="201/s")
        ax.set_ylabel("req/s")
        ax.set_xlabel("s")
        axl = ax.twinx()
        axl.plot(t, [i["p50_ms"] for i in p2["series"]], color="tab:green", label="p50 ms")
        axl.plot(t, [i["p99_ms"] for i in p2["series"]], color="tab:red", label="p99 ms")
        axl.axhline(10, color="tab:red", linestyle=":", linewidth=1)
        axl.set_ylabel("ms")
        ax.set_title(f"P2 HTTP at {p2['measured_at_rps']:,.0f} req/s (80 % of {p2['saturating_rps']:,.0f})")
        ax.legend(loc="upper left", fontsize=8)
        axl.legend(loc="upper right", fontsize=8)
        ax = axes[1][1]
        sweep = [s for s in p2["sweep"] if s["offered_rps"]]
        offered = [s["offered_rps"] for s in sweep]
        ax.plot(offered, [s["achieved_rps"] for s in sweep], marker="o", label="achieved req/s")
        ax.plot(offered, offered, linestyle=":", color="grey", label="offered")
        ax.set_xlabel("offered req/s")
        ax.set_ylabel("req/s")
        axr = ax.twinx()
        axr.plot(offered, [s["latency"]["p99_ms"] for s in sweep], marker="s", color="tab:red", label="p99 ms")
        axr.set_yscale("log")
        axr.set_ylabel("p99 ms")
        ax.set_title("P2 rate sweep")
        ax.legend(loc="upper left", fontsize=8)
        axr.legend(loc="lower right", fontsize=8)
    else:
        empty(ax, "P2 HTTP flash sale")
        empty(axes[1][1], "P2 rate sweep")

    p4 = results.get("P4")
    ax = axes[2][0]
    if p4 and p4.get("series"):
        t = [i["t_s"] for i in p4["series"]]
        ax.plot(t, [i["p50_ms"] for i in p4["series"]], label="p50")
        ax.plot(t, [i["p99_ms"] for i in p4["series"]], label="p99")
        ax.axhline(2, color="tab:red", linestyle=":", linewidth=1, label="target p99 2 ms")
        ax.set_title(f"P4 atp_many({p4['config']['skus']}) latency")
        ax.set_xlabel("s")
        ax.set_ylabel("ms")
        ax.legend(fontsize=8)
    else:
        empty(ax, "P4 ATP batch query")

    ax = axes[2][1]
    series = [(name, (lim.get(name) or {}).get("series") or []) for name in ("E1", "E16")]
    if any(s for _n, s in series):
        for name, s in series:
            if s:
                ax.plot([i["t_s"] for i in s], [i["per_s"] for i in s], label=f"{name} calls/s")
        ax.set_title("E1 / E16: redis-benchmark of the hold script")
        ax.set_xlabel("s")
        ax.set_ylabel("calls/s")
        ax.legend(fontsize=8)
    else:
        empty(ax, "E1 / E16")
    if p7:
        _plot_p7(axes[3][0], axes[3][1], p7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_p7(left: Any, right: Any, p7: dict[str, Any]) -> None:
    """P7: server time per call of each operation against the history size (left); at the largest
    size, each operation's longest call and the other SKU's hold p99 against their targets (right)."""
    runs = p7["runs"]
    sizes = [r["size"] for r in runs]
    for op in runs[-1]["ops"]:
        left.plot(sizes, [r["ops"][op]["server_usec_per_call"] for r in runs], marker="o", label=op)
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("reservation lines of the hot SKU")
    left.set_ylabel("server us per script call")
    left.set_title("P7 history: server time per call by history size")
    left.legend(fontsize=7, ncol=2)
    last = runs[-1]
    ops = list(last["ops"])
    xs = range(len(ops))
    longest = [max(last["ops"][op]["longest_call_ms"], 1e-3) for op in ops]
    p99 = [max((last["ops"][op].get("other") or {}).get("p99_ms") or 0.0, 1e-3) for op in ops]
    right.bar([x - 0.2 for x in xs], longest, width=0.4, label="longest hot-SKU call (SLOWLOG)")
    right.bar([x + 0.2 for x in xs], p99, width=0.4, label="other SKU hold p99")
    right.axhline(1.0, color="tab:blue", linestyle=":", linewidth=1, label="1 ms")
    right.axhline(5.0, color="tab:orange", linestyle=":", linewidth=1, label="5 ms")
    right.set_yscale("log")
    right.set_xticks(list(xs))
    right.set_xticklabels(ops, rotation=30, fontsize=8)
    right.set_ylabel("ms")
    right.set_title(f"P7 at {last['label']} lines")
    right.legend(fontsize=7)
