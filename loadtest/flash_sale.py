"""P1 — a flash sale on one hot SKU through the Python checkout client.

``stock`` units of one SKU (or split evenly over ``skus`` SKUs, attempt i on SKU i mod ``skus``:
the Cluster comparison's wide sale), ``demand`` (≫ stock) reservation attempts of 1..``qty_max`` units,
made by ``callers`` concurrent callers per process (asyncio tasks on one ``AsyncAtpClient``, or
threads on one ``AtpClient``) in ``procs`` worker processes. The clients coalesce the concurrent
holds of one SKU into one script call. Every attempt is recorded; zero oversell is checked from
that history and the SKU's final position.

Reported: attempts/s over the whole sale, successes/s while stock lasted (the selling phase, up
to the last successful hold), latency percentiles, script calls and holds per call, and the
server's cost per hold — each rate next to E1.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import random
import resource
import threading
import time
from dataclasses import dataclass
from typing import Any

from loadtest.history import ERROR, OK, REFUSED, History, check_oversell_many
from loadtest.limits import stock_skus
from loadtest.progress import Progress
from loadtest.server_stats import SCRIPTS, ServerMeter
from loadtest.stats import ratio, summarize, time_series
from loadtest.target import Target
from loadtest.targets import P1_M16_RATIO

# start-up of a worker (imports, connections) plus the last calls in flight after the deadline
WORKER_GRACE_S = 60.0


@dataclass(frozen=True)
class FlashSaleConfig:
    """Shape of the sale. ``duration_s`` bounds the run whether or not the demand was used up."""

    stock: int = 50_000
    demand: int = 250_000
    # Two client processes (two checkout servers) on the hot SKU, each coalescing its own callers.
    callers: int = 128
    procs: int = 2
    mode: str = "async"  # async | threads
    qty_max: int = 1
    max_batch: int = 256
    connections: int = 64  # Redis connections per worker process
    duration_s: float = 20.0
    seed: int = 7
    skus: int = 1  # the stock split evenly over this many SKUs

    def __post_init__(self) -> None:
        if self.mode not in ("async", "threads"):
            raise ValueError("mode must be async or threads")
        for name in ("stock", "demand", "callers", "procs", "qty_max", "max_batch", "connections", "skus"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.duration_s <= 0:
            raise ValueError("duration_s must be positive")

    @property
    def stock_per_sku(self) -> int:
        return -(-self.stock // self.skus)


@dataclass(frozen=True)
class _Job:
    url: str
    cluster: bool
    prefix: str
    skus: tuple[str, ...]  # attempt i holds skus[i % len(skus)]
    rid_prefix: str
    attempts: int
    callers: int
    mode: str
    qty_max: int
    max_batch: int
    connections: int
    duration_s: float  # counted from when the worker is connected and ready
    seed: int


# ---------------------------------------------------------------------------- worker side


def _note(errors: dict[str, int], exc: BaseException) -> None:
    kind = f"{type(exc).__name__}: {exc}"[:200]
    errors[kind] = errors.get(kind, 0) + 1


async def _async_sale(job: _Job, done: Any, errors: dict[str, int]) -> History:
    import redis.asyncio as aioredis

    from engine.reservations.client import AsyncAtpClient

    if job.cluster:
        # Its pools raise MaxConnectionsError rather than wait: room for every caller on one node.
        redis: Any = aioredis.RedisCluster.from_url(job.url, max_connections=job.callers + job.connections)
    else:
        # A blocking pool: a caller waits for a free connection instead of failing (redis-py's
        # default pool raises MaxConnectionsError past 100 connections).
        pool = aioredis.BlockingConnectionPool.from_url(job.url, max_connections=job.connections, timeout=30)
        redis = aioredis.Redis(connection_pool=pool)
    client = AsyncAtpClient(redis, prefix=job.prefix, max_batch=job.max_batch)
    history = History()
    ids = iter(range(job.attempts))
    rng = random.Random(job.seed)
    await redis.ping()
    skus, qty_max, deadline = job.skus, job.qty_max, time.monotonic() + job.duration_s

    async def caller() -> None:
        for i in ids:  # one iterator shared by every caller: each id is used once
            now = time.monotonic()
            if now >= deadline:
                return
            qty = 1 if qty_max == 1 else rng.randint(1, qty_max)
            k = i % len(skus)
            try:
                result = await client.hold(f"{job.rid_prefix}{i}", [(skus[k], qty, None)])
                outcome = OK if result.ok else REFUSED
            except Exception as exc:
                outcome = ERROR
                _note(errors, exc)
            history.record(now, time.monotonic(), qty, outcome, k)
            done.value += 1

    try:
        await asyncio.gather(*(caller() for _ in range(job.callers)))
    finally:
        await redis.aclose()
    return history


def _threaded_sale(job: _Job, done: Any, errors: dict[str, int]) -> History:
    import redis

    from engine.reservations.client import AtpClient

    if job.cluster:
        conn: Any = redis.RedisCluster.from_url(job.url)
    else:
        pool = redis.BlockingConnectionPool.from_url(job.url, max_connections=job.connections, timeout=30)
        conn = redis.Redis(connection_pool=pool)
    client = AtpClient(conn, prefix=job.prefix, max_batch=job.max_batch)
    history = History()
    lock = threading.Lock()
    ids = iter(range(job.attempts))
    rng = random.Random(job.seed)
    conn.ping()
    deadline = time.monotonic() + job.duration_s

    def caller() -> None:
        local = History()
        while True:
            with lock:
                i = next(ids, None)
                qty = 1 if job.qty_max == 1 else rng.randint(1, job.qty_max)
            now = time.monotonic()
            if i is None or now >= deadline:
                break
            k = i % len(job.skus)
            try:
                result = client.hold(f"{job.rid_prefix}{i}", [(job.skus[k], qty, None)])
                outcome = OK if result.ok else REFUSED
            except Exception as exc:
                outcome = ERROR
                with lock:
                    _note(errors, exc)
            local.record(now, time.monotonic(), qty, outcome, k)
            done.value += 1
        with lock:
            history.extend(local)

    threads = [threading.Thread(target=caller) for _ in range(job.callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client.close()
    conn.close()
    return history


def _worker(job: _Job, done: Any, out: Any) -> None:
    """Entry of a worker process: run its share of the sale, send back the history."""
    try:
        errors: dict[str, int] = {}
        if job.mode == "async":
            history = asyncio.run(_async_sale(job, done, errors))
        else:
            history = _threaded_sale(job, done, errors)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out.send(("ok", (history, errors, usage.ru_utime + usage.ru_stime)))
    except BaseException as exc:  # report, never hang the parent
        out.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        out.close()


# ---------------------------------------------------------------------------- parent side


def run_flash_sale(target: Target, cfg: FlashSaleConfig, progress: Progress, name: str = "P1",
                   e1_rps: float = 0.0, m16_rps: float = 0.0) -> dict[str, Any]:
    """Run the sale and return its report (a JSON-ready dict); the target is judged against M16
    (``m16_rps``; not met when M16 could not run)."""
    skus = target.skus(f"{name}-hot", cfg.skus)
    store = stock_skus(target, skus, cfg.stock_per_sku)
    client = store.redis
    ctx = mp.get_context("spawn")
    share = -(-cfg.demand // cfg.procs)
    where = f"{cfg.skus} SKUs" if cfg.skus > 1 else "1 SKU"
    task = progress.add_task(f"{name}: flash sale, {where} ({cfg.procs}×{cfg.callers} {cfg.mode} callers)",
                             total=cfg.demand)
    workers = []
    with ServerMeter(client) as meter:
        for p in range(cfg.procs):
            done = ctx.Value("q", 0, lock=False)
            recv, send = ctx.Pipe(duplex=False)
            job = _Job(target.url, target.cluster, target.prefix, tuple(skus), target.rid(f"{name}-p{p}-"), share,
                       cfg.callers, cfg.mode, cfg.qty_max, cfg.max_batch, cfg.connections, cfg.duration_s,
                       cfg.seed + p)
            proc = ctx.Process(target=_worker, args=(job, done, send), daemon=True)
            proc.start()
            send.close()
            workers.append((proc, done, recv))
        results = []
        give_up = time.monotonic() + cfg.duration_s + WORKER_GRACE_S
        try:
            for proc, _done, recv in workers:
                while not recv.poll(0.2):
                    progress.update(task, completed=sum(d.value for _p, d, _r in workers))
                    if not proc.is_alive() and not recv.poll(0):
                        raise RuntimeError(f"{name}: a worker process died (exit code {proc.exitcode})")
                    if time.monotonic() > give_up:
                        raise RuntimeError(f"{name}: workers still busy {WORKER_GRACE_S:.0f} s after the sale's end")
                results.append(recv.recv())
                proc.join()
        finally:
            for proc, _done, _recv in workers:
                if proc.is_alive():
                    proc.terminate()
                    proc.join(5)
    progress.update(task, completed=sum(d.value for _p, d, _r in workers))
    errors = [r[1] for r in results if r[0] != "ok"]
    if errors:
        raise RuntimeError(f"{name}: worker failed: {errors[0]}")
    history = History()
    error_kinds: dict[str, int] = {}
    client_cpu_s = 0.0
    for _status, (part, kinds, cpu_s) in results:
        history.extend(part)
        client_cpu_s += cpu_s
        for kind, n in kinds.items():
            error_kinds[kind] = error_kinds.get(kind, 0) + n
    positions = store.positions(skus)
    client.close()
    assert meter.result is not None
    phase = meter.result
    report = _report(name, cfg, history, positions, phase, e1_rps, m16_rps)
    report["error_kinds"] = error_kinds
    # Who limits the rate: the client processes' CPU per hold (start-up included) and the share
    # of the sale's wall time Redis spent inside the hold script.
    report["client_cpu_us_per_hold"] = round(client_cpu_s * 1e6 / max(len(history), 1), 1)
    report["redis_script_busy_fraction"] = round(phase.usec(SCRIPTS) / 1e6 / max(report["duration_s"], 1e-9), 3)
    return report


def _report(name: str, cfg: FlashSaleConfig, history: History, positions: list[dict[str, Any]], phase: Any,
            e1_rps: float, m16_rps: float) -> dict[str, Any]:
    check = check_oversell_many(cfg.stock_per_sku, zip(history.sku, history.qty, history.outcome, strict=True),
                                positions)
    t0 = history.first_start()
    duration = max(history.last_end() - t0, 1e-9)
    sellout_end = history.last_end(OK)
    selling_s = max(sellout_end - t0, 1e-9) if sellout_end else 0.0
    attempts = len(history)
    successes = history.count(OK)
    in_selling = sum(1 for e in history.end if e <= sellout_end) if sellout_end else 0
    attempts_per_s = attempts / duration
    selling_per_s = in_selling / selling_s if selling_s else 0.0
    successes_per_s = successes / selling_s if selling_s else 0.0
    batches = phase.calls(SCRIPTS)
    script_usec = phase.usec(SCRIPTS)
    lat = history.latencies()
    ends = [e - t0 for e in history.end]
    oks = [o == OK for o in history.outcome]
    return {
        "name": name,
        "config": cfg.__dict__,
        "attempts": attempts,
        "successes": successes,
        "refusals": history.count(REFUSED),
        "errors": history.count(ERROR),
        "duration_s": round(duration, 3),
        "selling_s": round(selling_s, 3),
        "attempts_per_s": round(attempts_per_s, 1),
        "selling_attempts_per_s": round(selling_per_s, 1),
        "successes_per_s": round(successes_per_s, 1),
        "ratio_attempts_vs_e1": ratio(attempts_per_s, e1_rps),
        "ratio_successes_vs_e1": ratio(successes_per_s, e1_rps),
        "ratio_successes_vs_m16": ratio(successes_per_s, m16_rps),
        "target": f">= {P1_M16_RATIO:g} x M16 reservations/s (successes/s while stock lasted) and zero oversell",
        "target_met": bool(check.ok and m16_rps and successes_per_s >= P1_M16_RATIO * m16_rps),
        "latency": summarize(lat).to_dict(),
        "latency_ok": summarize(history.latencies(OK)).to_dict(),
        "latency_refused": summarize(history.latencies(REFUSED)).to_dict(),
        "script_calls": batches,
        "holds_per_script_call": round(attempts / batches, 2) if batches else 0.0,
        "script_usec_per_call": round(script_usec / batches, 2) if batches else 0.0,
        "script_usec_per_hold": round(script_usec / attempts, 3) if attempts else 0.0,
        "server_cpu_us_per_hold": round(phase.cpu_us_per(attempts), 3),
        "oversell_check": check.to_dict(),
        # of every SKU of the sale together
        "final_position": {k: sum(int(p.get(k) or 0) for p in positions)
                           for k in ("on_hand", "held", "committed", "atp", "oversold")},
        "server": phase.to_dict(),
        "series": [i.__dict__ for i in time_series(ends, lat, oks, 0.0, 0.5)],
    }
