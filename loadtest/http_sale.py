"""P2 — a flash sale through the HTTP API, many clients.

0. single client: one keep-alive connection, one request at a time — the latency floor;
1. probe: ``connections`` keep-alive clients send holds back to back — a first estimate X of
   the saturating rate;
2. sweep: an open-loop arrival rate of 0.25, 0.5, 0.75, 1.0 and 1.25 × X, a few seconds each;
   the saturating rate is the highest throughput the server delivered in a sweep step;
3. measure: 80 % of the saturating rate, open loop, longer: rps, p50, p99 (target p99 ≤ 10 ms).

Every step sells its own SKU with a stock of ``stock_fraction`` of the step's requests (demand
5× stock by default), so each step has successes (201) and sold-out refusals (409), and each
is checked for zero oversell from its recorded history (201 = held, 409 = refused, anything
else or no answer = unknown outcome). With ``skus`` > 1 (the Cluster comparison's wide sale)
a step sells ``skus`` SKUs instead, the stock split evenly, request i on SKU i mod ``skus``,
each SKU checked on its own.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from loadtest.api_server import api_server, broker_bootstrap, process_cpu_s
from loadtest.history import ERROR, OK, REFUSED, check_oversell_many
from loadtest.http_driver import Step, StepResult, run_step
from loadtest.limits import stock_skus
from loadtest.progress import Progress
from loadtest.stats import ratio, summarize, time_series
from loadtest.target import Target
from loadtest.targets import P2_P99_MS


@dataclass(frozen=True)
class HttpSaleConfig:
    connections: int = 64
    probe_s: float = 4.0
    fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0, 1.25)
    step_s: float = 3.0
    measure_s: float = 8.0
    measure_fraction: float = 0.8
    stock_fraction: float = 0.2
    skus: int = 1  # each step's stock split evenly over this many SKUs

    def __post_init__(self) -> None:
        if self.connections < 1 or self.probe_s <= 0 or self.step_s <= 0 or self.measure_s <= 0:
            raise ValueError("connections and durations must be positive")
        if self.skus < 1:
            raise ValueError("skus must be at least 1")
        if not 0 < self.stock_fraction <= 1 or not 0 < self.measure_fraction <= 1:
            raise ValueError("stock_fraction and measure_fraction must be in (0, 1]")
        if not self.fractions or any(f <= 0 for f in self.fractions):
            raise ValueError("fractions must be positive")


def _outcome(status: int) -> int:
    if status == 201:
        return OK
    if status == 409:
        return REFUSED
    return ERROR


def summarize_step(label: str, step: Step, stock: int, res: StepResult, positions: list[dict[str, Any]],
                   api_cpu_s: float) -> dict[str, Any]:
    """The report of one step (JSON-ready): ``stock`` units of each of its SKUs, whose final
    ``positions`` are in ``step.skus`` order (the one of ``step.sku`` without ``skus``)."""
    n = len(res.status)
    in_window = sum(1 for e in res.end if e <= res.t0 + step.duration_s)
    latency = [e - s for s, e in zip(res.sched, res.end, strict=True)]
    service = [e - s for s, e in zip(res.start, res.end, strict=True)]
    lag = [b - s for s, b in zip(res.sched, res.began, strict=True)]
    codes: dict[str, int] = {}
    for st in res.status:
        codes[str(st)] = codes.get(str(st), 0) + 1
    check = check_oversell_many(stock, ((k, step.qty, _outcome(st)) for k, st in zip(res.sku, res.status, strict=True)),
                                positions)
    achieved = in_window / step.duration_s
    return {
        "label": label,
        "mode": step.mode,
        "offered_rps": round(step.rate, 1) if step.mode == "open" else None,
        "connections": step.connections,
        "duration_s": step.duration_s,
        "requests": n,
        "achieved_rps": round(achieved, 1),
        "status_codes": codes,
        "latency": summarize(latency).to_dict(),
        "service_latency": summarize(service).to_dict(),
        "driver_lag": summarize(lag).to_dict(),
        "api_cpu_us_per_request": round(api_cpu_s * 1e6 / n, 1) if n else 0.0,
        "errors": res.errors,
        "oversell_check": check.to_dict(),
    }


def run_http_sale(target: Target, cfg: HttpSaleConfig, progress: Progress, e1_rps: float = 0.0) -> dict[str, Any]:
    """Start broker + API, run probe, sweep and measurement; return the report."""
    steps: list[dict[str, Any]] = []
    series: list[dict[str, Any]] = []
    n_steps = 3 + len(cfg.fractions)
    task = progress.add_task("P2: HTTP flash sale (probe, sweep, 80 %)", total=n_steps)
    ctx = mp.get_context("spawn")
    with broker_bootstrap() as bootstrap, api_server(target, bootstrap) as api, \
            ProcessPoolExecutor(max_workers=1, mp_context=ctx) as driver:

        def run(label: str, mode: str, duration: float, rate: float = 0.0, connections: int = 0) -> dict[str, Any]:
            expected = rate * duration if mode == "open" else 0
            if mode == "closed":  # the stock is sized after the fact: use the probe's estimate or a guess
                expected = max(1000.0, duration * 3000)
            stock = max(50, math.ceil(expected * cfg.stock_fraction))
            name = f"P2-{label}"
            skus = target.skus(name, cfg.skus)
            per_sku = -(-stock // len(skus))
            store = stock_skus(target, skus, per_sku)
            step = Step(mode=mode, duration_s=duration, connections=connections or cfg.connections, sku=skus[0],
                        rid_prefix=target.rid(f"{name}-"), rate=rate, skus=tuple(skus) if len(skus) > 1 else ())
            cpu0 = process_cpu_s(api.pid)
            res = driver.submit(run_step, api.host, api.port, api.token, step).result()
            cpu = process_cpu_s(api.pid) - cpu0
            positions = store.positions(skus)
            store.redis.close()
            report = summarize_step(label, step, per_sku, res, positions, cpu)
            report["stock"] = per_sku * len(skus)
            report["skus"] = len(skus)
            progress.advance(task)
            return {"report": report, "result": res}

        # warm-up: imports, connections, script cache of the server
        driver.submit(run_step, api.host, api.port, api.token,
                      Step("closed", 1.0, 8, target.sku("P2-warm"), target.rid("P2-warm-"))).result()
        # one client, one request at a time: the latency floor of the whole path
        steps.append(run("single-client", "closed", cfg.step_s, connections=1)["report"])
        probe = run("probe", "closed", cfg.probe_s)
        steps.append(probe["report"])
        estimate = probe["report"]["achieved_rps"]
        for f in cfg.fractions:
            steps.append(run(f"sweep-{f:g}", "open", cfg.step_s, max(1.0, f * estimate))["report"])
        # the sustainable throughput under an arrival rate (the closed-loop probe can pass it:
        # 64 requests always waiting make bigger coalesced batches)
        saturating = max(s["achieved_rps"] for s in steps if s["mode"] == "open")
        measure_rate = cfg.measure_fraction * saturating
        measured = run("measure", "open", cfg.measure_s, measure_rate)
        m = measured["report"]
        res = measured["result"]
        lat = [e - s for s, e in zip(res.sched, res.end, strict=True)]
        series = [i.__dict__ for i in time_series([e - res.t0 for e in res.end], lat,
                                                  [st == 201 for st in res.status], 0.0, 0.5)]
        api_log_tail = api.log.read_text(errors="replace")[-2000:]
    p99 = m["latency"]["p99_ms"]
    all_clean = all(s["oversell_check"]["ok"] for s in steps + [m])
    return {
        "name": "P2",
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()},
        "saturating_rps": saturating,
        "measured_at_rps": round(measure_rate, 1),
        "rps": m["achieved_rps"],
        "p50_ms": m["latency"]["p50_ms"],
        "p99_ms": p99,
        "single_client": {k: steps[0][k] for k in ("achieved_rps", "latency", "api_cpu_us_per_request")},
        "ratio_rps_vs_e1": ratio(m["achieved_rps"], e1_rps),
        "ratio_saturating_vs_e1": ratio(saturating, e1_rps),
        "target": f"p99 <= {P2_P99_MS:g} ms at {cfg.measure_fraction:.0%} of the saturating rate",
        "target_met": bool(p99 <= P2_P99_MS and all_clean),
        "zero_oversell": all_clean,
        "measure": m,
        "sweep": steps,
        "series": series,
        "api_log_tail": api_log_tail if "Traceback" in api_log_tail or "ERROR" in api_log_tail else "",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
