"""``python -m loadtest [names] [--json out.json]`` — run the checkout-side benchmarks.

Names: p1 (flash_sale), p2 (http_sale), p4 (atp_query), p5 (memory), p6 (script_cost),
p7 (history), or all (the default). E1 / E16 (the machine's limits) and M1 / M16 (a minimal
check-and-decrement script: one hot key's physical limit) always run first, and
E1 once more at the end (``limits.E1_end``, ``limits.e1_drift``: how much the machine's speed moved). Progress goes to stderr; stdout
gets the whole result as one JSON document, also kept in loadtest/results/ with a PNG plot.

``--cluster`` (or ``ATP_REDIS_CLUSTER=true``) also runs P1, P2 and P4 on an embedded Redis Cluster
of 3 primaries, each on 1 hot SKU and on ``--wide-skus`` (1,000) SKUs, beside the same runs on
the standalone server: ``cluster`` in the JSON, rows ``<bench> <shape>`` in the summary.

Exit codes: 0 the run finished (targets met or not; see ``summary``), 1 a benchmark could not
run (its entry carries ``error``), 2 bad arguments, 3 ``--fail-on-miss`` and a target was missed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import secrets
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from loadtest.atp_query import AtpQueryConfig, run_atp_query
from loadtest.flash_sale import FlashSaleConfig, run_flash_sale
from loadtest.history_cost import HistoryCostConfig, parse_sizes, run_history_cost
from loadtest.http_sale import HttpSaleConfig, run_http_sale
from loadtest.limits import LimitResult, Limits, measure_floor, measure_limits, measure_minimal, run_limit
from loadtest.memory import MemoryConfig, run_memory
from loadtest.progress import bench_progress, console
from loadtest.report import CLUSTER_BENCHES, HOT, WIDE, cluster_table, summary_rows, write_results
from loadtest.script_cost import ScriptCostConfig, run_script_cost
from loadtest.target import CLUSTER_PRIMARIES, Target, TargetError, redis_target

ALIASES = {
    "p1": "P1", "flash_sale": "P1", "p2": "P2", "http_sale": "P2", "p4": "P4", "atp_query": "P4",
    "p5": "P5", "memory": "P5", "p6": "P6", "script_cost": "P6", "p7": "P7", "history": "P7",
}  # fmt: skip
# P6 reads P1's server figures; P2 and P7 (the longest) last
ORDER = ("P1", "P6", "P4", "P5", "P2", "P7")
#: SKUs of the Cluster comparison's wide runs (P4's batch takes at most 1,000).
WIDE_SKUS = 1000


def parse_names(names: Sequence[str]) -> list[str]:
    """Benchmark ids in run order; raises ``ValueError`` naming an unknown one."""
    if not names or "all" in names:
        return list(ORDER)
    chosen = set()
    for name in names:
        key = ALIASES.get(name.lower())
        if key is None:
            raise ValueError(f"unknown benchmark {name!r}; known: all, {', '.join(sorted(ALIASES))}")
        chosen.add(key)
    return [b for b in ORDER if b in chosen]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    p.add_argument("--json", type=Path, help="also write the result JSON here")
    p.add_argument("--redis-url", help="a loopback Redis to use instead of an embedded one (default: ATP_REDIS_URL)")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run of a few seconds each")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--fail-on-miss", action="store_true", help="exit 3 when a target is missed")
    p.add_argument("--cluster", action=argparse.BooleanOptionalAction,
                   default=os.environ.get("ATP_REDIS_CLUSTER", "").strip().lower() in ("1", "true", "yes", "on"),
                   help=f"also run P1, P2 and P4 on an embedded Redis Cluster of {CLUSTER_PRIMARIES} primaries, "
                        "beside the standalone runs, on 1 hot SKU and on --wide-skus SKUs (default: ATP_REDIS_CLUSTER)")
    p.add_argument("--wide-skus", type=int, default=WIDE_SKUS, help="SKUs of the Cluster comparison's wide runs")
    p.add_argument("--e1-requests", type=int, default=50_000)
    p.add_argument("--e16-requests", type=int, default=100_000)
    p.add_argument("--m1-requests", type=int, default=50_000)
    p.add_argument("--m16-requests", type=int, default=100_000)
    p.add_argument("--p1-stock", type=int, default=FlashSaleConfig.stock)
    p.add_argument("--p1-demand", type=int, default=FlashSaleConfig.demand)
    p.add_argument("--p1-callers", type=int, default=FlashSaleConfig.callers, help="concurrent callers per process")
    p.add_argument("--p1-procs", type=int, default=FlashSaleConfig.procs)
    p.add_argument("--p1-mode", choices=("async", "threads"), default=FlashSaleConfig.mode)
    p.add_argument("--p1-qty-max", type=int, default=FlashSaleConfig.qty_max, help="holds of 1..N units")
    p.add_argument("--p1-seconds", type=float, default=FlashSaleConfig.duration_s)
    p.add_argument("--p2-connections", type=int, default=HttpSaleConfig.connections)
    p.add_argument("--p2-step-seconds", type=float, default=HttpSaleConfig.step_s)
    p.add_argument("--p2-measure-seconds", type=float, default=HttpSaleConfig.measure_s)
    p.add_argument("--p4-skus", type=int, default=AtpQueryConfig.skus)
    p.add_argument("--p4-seconds", type=float, default=AtpQueryConfig.duration_s)
    p.add_argument("--p5-positions", type=int, default=MemoryConfig.positions)
    p.add_argument("--p7-sizes", default="10k,100k", help="reservation lines of the hot SKU, e.g. 10k,100k,1m")
    p.add_argument("--p7-reps", type=int, default=HistoryCostConfig.reps,
                   help="single holds / confirms / releases timed per size")
    p.add_argument("--p7-other-rate", type=float, default=HistoryCostConfig.other_rate,
                   help="holds/s of the client on another SKU")
    return p


def _configs(a: argparse.Namespace) -> dict[str, Any]:
    if not 2 <= a.wide_skus <= 1000:
        raise ValueError("--wide-skus must be in [2, 1000]")
    return {**_sizes(a), "cluster": a.cluster, "wide_skus": a.wide_skus}


def _sizes(a: argparse.Namespace) -> dict[str, Any]:
    if a.quick:
        return {
            "e1": 10_000, "e16": 20_000, "m1": 10_000, "m16": 20_000,
            "P1": FlashSaleConfig(stock=5_000, demand=20_000, callers=a.p1_callers, procs=a.p1_procs,
                                  mode=a.p1_mode, qty_max=a.p1_qty_max, duration_s=5.0),
            "P2": HttpSaleConfig(connections=a.p2_connections, probe_s=2.0, fractions=(0.5, 1.0), step_s=1.5,
                                 measure_s=3.0),
            "P4": AtpQueryConfig(skus=a.p4_skus, queries=1_000, duration_s=2.0),
            "P5": MemoryConfig(positions=2_000),
            "P6": ScriptCostConfig(batch=32, calls_single=3_000, calls_batched=150),
            "P7": HistoryCostConfig(sizes=(2_000, 10_000), reps=20, other_rate=a.p7_other_rate),
        }  # fmt: skip
    return {
        "e1": a.e1_requests, "e16": a.e16_requests, "m1": a.m1_requests, "m16": a.m16_requests,
        "P1": FlashSaleConfig(stock=a.p1_stock, demand=a.p1_demand, callers=a.p1_callers, procs=a.p1_procs,
                              mode=a.p1_mode, qty_max=a.p1_qty_max, duration_s=a.p1_seconds),
        "P2": HttpSaleConfig(connections=a.p2_connections, step_s=a.p2_step_seconds, measure_s=a.p2_measure_seconds),
        "P4": AtpQueryConfig(skus=a.p4_skus, duration_s=a.p4_seconds),
        "P5": MemoryConfig(positions=a.p5_positions),
        "P6": ScriptCostConfig(),
        "P7": HistoryCostConfig(sizes=parse_sizes(a.p7_sizes), reps=a.p7_reps, other_rate=a.p7_other_rate),
    }  # fmt: skip


def _machine(client: Any) -> dict[str, Any]:
    server = client.info("server")
    load = os.getloadavg()
    cpus = os.cpu_count()
    return {
        "cpus": cpus,
        "loadavg_at_start": [round(x, 2) for x in load],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "redis_version": server.get("redis_version"),
        "summary": f"{cpus} CPUs, load {load[0]:.1f} at start, Redis {server.get('redis_version')}",
    }


def _guarded(results: dict[str, Any], key: str, fn: Callable[[], Any]) -> Any:
    """Run one benchmark; a failure is recorded under its key and the run goes on."""
    try:
        value = fn()
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        results[key] = {"name": key, "error": f"{type(exc).__name__}: {exc}"}
        if os.environ.get("ATP_DEBUG"):
            traceback.print_exc()
        console.print(f"[red]{key} failed: {type(exc).__name__}: {exc}[/red]")
        return None
    return value


def _print_summary(rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title="loadtest summary")
    for col in ("bench", "figure", "value", "vs", "ratio", "target", "met"):
        table.add_column(col)
    for r in rows:
        value = r["value"]
        shown = " / ".join(f"{v:,.3g}" for v in value) if isinstance(value, list) else (
            f"{value:,.1f}" if isinstance(value, float) else str(value))
        met = "" if r["met"] is None else ("[green]yes[/green]" if r["met"] else "[red]no[/red]")
        table.add_row(r["bench"], r["figure"], f"{shown} {r['unit']}".strip(), r["vs"] or "",
                      "" if r["ratio"] is None else f"{r['ratio']:.3f}", r["target"] or "", met)
    console.print(table)


def _shaped(name: str, config: Any, skus: int) -> Any:
    """``config`` of benchmark ``name`` on ``skus`` SKUs (P4: a batch of that many)."""
    if name == "P4":
        return dataclasses.replace(config, skus=skus, profile=False)
    return dataclasses.replace(config, skus=skus)


def run_cluster_comparison(standalone: Target, names: list[str], cfg: dict[str, Any], progress: Any,
                           e1: float, e16: float, done: dict[str, Any], m16: float = 0.0) -> dict[str, Any]:
    """P1, P2 and P4 (those of ``names``) on ``standalone`` and on an embedded Redis Cluster, each
    on 1 hot SKU and on ``cfg["wide_skus"]``, with the sizes of ``cfg``. The standalone hot P1 and
    P2 are those of ``done`` (the run's own, same sizes). Cells run one after the other, standalone
    then Cluster, so a drift of the machine's speed touches both alike."""
    shapes = {HOT: 1, WIDE: cfg["wide_skus"]}
    runs: dict[str, Any] = {}
    with redis_target(cluster=True) as clustered:
        for name in (n for n in names if n in CLUSTER_BENCHES):
            runs[name] = {}
            for shape, skus in shapes.items():
                config = _shaped(name, cfg[name], skus)
                cell: dict[str, Any] = {}
                for where, target in (("standalone", standalone), ("cluster", clustered)):
                    earlier = done.get(name)
                    if where == "standalone" and shape == HOT and name != "P4" and isinstance(earlier, dict) \
                            and "error" not in earlier:
                        cell[where] = earlier
                        continue
                    # a token of the cell's own: its SKUs and reservation ids are new on either server
                    fresh = dataclasses.replace(target, token=secrets.token_hex(3))
                    try:
                        out = _guarded(cell, where, lambda n=name, t=fresh, c=config: _bench(n, t, c, progress, e1, e16, m16))
                    finally:
                        if not fresh.embedded:
                            fresh.cleanup()
                    if out is not None:
                        cell[where] = out
                runs[name][shape] = cell
    return {"primaries": CLUSTER_PRIMARIES, "wide_skus": cfg["wide_skus"], "runs": runs,
            "table": cluster_table(runs, cfg["wide_skus"])}


def _bench(name: str, target: Target, config: Any, progress: Any, e1: float, e16: float,
           m16: float) -> dict[str, Any]:
    if name == "P1":
        return run_flash_sale(target, config, progress, e1_rps=e1, m16_rps=m16)
    if name == "P2":
        return run_http_sale(target, config, progress, e1_rps=e1)
    return run_atp_query(target, config, progress, e16_rps=e16)


def run(names: list[str], cfg: dict[str, Any], redis_url: str | None, quiet: bool) -> dict[str, Any]:
    """Run the limits and the chosen benchmarks; return the results document."""
    results: dict[str, Any] = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "benchmarks": names}
    t0 = time.monotonic()
    with redis_target(redis_url) as target, bench_progress(quiet) as progress:
        client = target.client()
        results["machine"] = _machine(client)
        client.close()
        results["target"] = {"redis": "embedded" if target.embedded else "ATP_REDIS_URL", "key_prefix": target.prefix}
        limits: Limits | None = _guarded(results, "limits", lambda: measure_limits(target, progress, cfg["e1"], cfg["e16"]))
        if limits is not None:
            results["limits"] = limits.to_dict()
        minimal: tuple[LimitResult, LimitResult] | None = _guarded(
            results, "limits_minimal", lambda: measure_minimal(target, progress, cfg["m1"], cfg["m16"]))
        if minimal is not None and "error" not in results.setdefault("limits", {}):
            results["limits"].update(M1=minimal[0].to_dict(), M16=minimal[1].to_dict())
        e1 = limits.e1.rps if limits else 0.0
        e16 = limits.e16.rps if limits else 0.0
        m16 = minimal[1].rps if minimal else 0.0
        floor: LimitResult | None = None
        if "P6" in names:
            floor = _guarded(results, "limits_floor", lambda: measure_floor(target, progress, cfg["m1"]))
            if floor is not None and "error" not in results["limits"]:
                results["limits"]["F1"] = floor.to_dict()
        for name in names:
            if name == "P1":
                out = _guarded(results, name, lambda: run_flash_sale(target, cfg["P1"], progress, e1_rps=e1, m16_rps=m16))
            elif name == "P6":
                if limits is None:
                    results[name] = {"name": name, "error": "needs E1, which could not run"}
                    continue
                p1 = results.get("P1") if "error" not in results.get("P1", {"error": 1}) else None
                out = _guarded(results, name, lambda p1=p1: run_script_cost(
                    target, cfg["P6"], progress, limits.e1, p1, m1=minimal[0] if minimal else None, floor=floor))
            elif name == "P4":
                out = _guarded(results, name, lambda: run_atp_query(target, cfg["P4"], progress, e16_rps=e16))
            elif name == "P5":
                out = _guarded(results, name, lambda: run_memory(target, cfg["P5"], progress))
            elif name == "P7":
                out = _guarded(results, name, lambda: run_history_cost(
                    target, cfg["P7"], progress, e1=limits.e1 if limits else None,
                    m1=minimal[0] if minimal else None))
            else:
                out = _guarded(results, name, lambda: run_http_sale(target, cfg["P2"], progress, e1_rps=e1))
            if out is not None:
                results[name] = out
        if cfg.get("cluster") and any(n in CLUSTER_BENCHES for n in names):
            out = _guarded(results, "cluster", lambda: run_cluster_comparison(target, names, cfg, progress, e1, e16, results, m16))
            if out is not None:
                results["cluster"] = out
        if limits is not None and names:
            # E1 once more: how much the machine's own speed drifted while the benchmarks ran
            end = _guarded(results, "limits_end", lambda: run_limit(target, "E1-end", 1, cfg["e1"], progress))
            if end is not None:
                results["limits"]["E1_end"] = end.to_dict()
                results["limits"]["e1_drift"] = round(end.rps / limits.e1.rps - 1, 3) if limits.e1.rps else None
    results["seconds"] = round(time.monotonic() - t0, 1)
    results["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    results["summary"] = summary_rows(results)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        names = parse_names(args.names)
        cfg = _configs(args)
    except ValueError as exc:
        parser.print_usage(sys.stderr)
        print(f"python -m loadtest: error: {exc}", file=sys.stderr)
        return 2
    try:
        results = run(names, cfg, args.redis_url, args.quiet)
    except TargetError as exc:
        print(f"python -m loadtest: error: {exc}", file=sys.stderr)
        return 1
    kept, png = write_results(results, args.json)
    print(json.dumps(results, default=str))
    _print_summary(results["summary"])
    console.print(f"results: {kept}" + (f"  plot: {png}" if png else "") + (f"  copy: {args.json}" if args.json else ""))
    failed = [k for k in ["limits", "limits_minimal", *names, "cluster"]
              if isinstance(results.get(k), dict) and "error" in results[k]]
    failed += [f"cluster {row['bench']} {row['shape']} {row['figure']}" for row in results.get("cluster", {}).get("table", [])
               if row.get("error")]
    if failed:
        return 1
    if args.fail_on_miss and any(r["met"] is False for r in results["summary"]):
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
