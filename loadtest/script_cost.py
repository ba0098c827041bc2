"""P6 — server-side cost of the hold script, from ``INFO commandstats``.

Figures:

* per hold call during E1 (one hold per FCALL: the function's whole cost);
* per hold during P1 (coalesced: one FCALL carries many holds);
* fixed cost per call and marginal cost per hold: redis-benchmark runs of the hold function with
  1 and with ``batch`` holds per call (and of a function returning 1 with the same KEYS / ARGV:
  the price of FCALL itself); the Redis commands the function issues are timed by commandstats
  too, so "Redis commands" and "Lua (interpreter, cjson)" are told apart;
* where the time goes inside the call: a copy of the library (its own name) whose hold entry
  reads the server's CPU clock (``os.clock``) at each step and returns the microseconds spent in each; the
  median over many calls is reported, with 1 and with ``batch`` holds per call. The copy only
  ever runs on the benchmark's own keys.
"""

from __future__ import annotations

import itertools
import re
import statistics
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from loadtest.limits import BENCHMARK_TIMEOUT_S, HUGE_STOCK, RAND_RANGE, ensure_redis_benchmark, stock_sku
from loadtest.progress import Progress
from loadtest.server_stats import SCRIPTS, PhaseStats, ServerMeter, is_script_command
from loadtest.stats import ratio
from loadtest.target import Target
from loadtest.targets import P6_M1_RATIO

# One local only: lib.lua already uses many of Lua's 200 locals per function. The marks live in
# the library; each call of the instrumented entry starts them afresh.
# (os.clock: the server's CPU time; TIME stands still while a script runs on Redis >= 7 / Valkey)
_MARKER = """local __P = { m = {} }
function __P.mark(name)
  __P.m[#__P.m + 1] = { name, math.floor(os.clock() * 1000000 + 0.5) }
end
"""
_MARKER_START = """
  __P.m = {}
  __P.mark('start')
  __P.mark('(one clock reading)')"""
_MARKER_RETURN = """
  local __out, __prev = {}, nil
  for _, m in ipairs(__P.m) do
    if __prev then __out[#__out + 1] = m[1]; __out[#__out + 1] = m[2] - __prev end
    __prev = m[2]
  end
  return __out"""
PROFILE_PREFIX = "atpprof_"


@dataclass(frozen=True)
class ScriptCostConfig:
    batch: int = 64
    calls_single: int = 10_000
    calls_batched: int = 400
    profile_calls: int = 2_000

    def __post_init__(self) -> None:
        if not 2 <= self.batch <= 1000:
            raise ValueError("batch must be in [2, 1000]")
        if min(self.calls_single, self.calls_batched, self.profile_calls) < 10:
            raise ValueError("call counts must be at least 10")


def instrument_entry(entry: str, work: str = "requests (checks, allocation, line json)") -> str:
    """An entry file whose body returns ``[segment, µs, …]`` instead of its reply (pure).

    A segment ends after the body's ``settle()`` line (expiry), before its ``flush()`` and before
    its final ``return``; ``work`` names the one between expiry and write-back. Whatever cannot be
    found is merged into the next segment. (``begin`` and FCALL itself run before the body: P6's
    call costs measure them.)
    """
    entry = re.sub(r"^(entry\('\w+', function\(\))$", lambda m: m.group(1) + _MARKER_START, entry,
                   count=1, flags=re.M)
    returns = list(re.finditer(r"^(\s*)return (.*)$", entry, flags=re.M))
    if returns:
        r = returns[-1]
        entry = (entry[: r.start()] + "  __P.mark('entry: write back (flush)')\n  local __reply = " + r.group(2) +
                 "\n  __P.mark('entry: reply encoding')" + _MARKER_RETURN + entry[r.end():])
    entry = re.sub(r"^(\s*)((?:F\.)?flush\(\)\s*)$", lambda m: f"{m.group(1)}__P.mark({_lua_str('entry: ' + work)})\n"
                   f"{m.group(1)}{m.group(2)}", entry, count=1, flags=re.M)
    entry = re.sub(r"^((?!\s*local function)(\s*).*\bsettle\(.*\).*)$", r"\1\n\2__P.mark('entry: expiry')", entry,
                   count=1, flags=re.M)
    return entry


def instrumented(entry: str, work: str = "requests (checks, allocation, line json)") -> Any:
    """A copy of the library (``atpprof_…``) whose ``entry`` is instrumented (``instrument_entry``):
    the ``LuaScript`` to call."""
    from engine.store import scripts

    def read(name: str) -> str:
        text = scripts._read(name)
        if name == "lib":
            return _MARKER + text
        return instrument_entry(text, work) if name == entry else text

    return scripts.entries(scripts.build_library(read, PROFILE_PREFIX))[entry]


def _lua_str(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


#: A function that does nothing, called with the hold's KEYS / ARGV: the price of FCALL itself.
EMPTY_LIBRARY = "#!lua name=atpbench\nredis.register_function('atpbench_empty', function() return 1 end)\n"


def _bench(target: Target, binary: str, function: str, library: str, sku_name: str, holds: int,
           calls: int) -> PhaseStats:
    """Run ``calls`` FCALL of ``function`` (loaded from ``library``) with ``holds`` hold requests
    each on a fresh SKU."""
    from engine.store.store import HoldRequest

    store = stock_sku(target, sku_name, HUGE_STOCK)
    client = store.redis
    sku = target.sku(sku_name)
    client.function_load(library, replace=True)
    _script, keys, args = store._hold_call(sku, [HoldRequest(rid=f"X{i}", qty=1) for i in range(holds)])
    template = target.rid("s-__rand_int__")
    argv = [template if isinstance(a, str) and re.fullmatch(r"X\d+", a) else str(a) for a in args]
    # -P 8: several calls per read, so the figures are about the script, not the socket.
    cmd = [binary, "-h", target.host, "-p", str(target.port), "-c", "4", "-P", "8", "-n", str(calls),
           "-r", str(RAND_RANGE), "-q"]
    if target.password:
        cmd += ["-a", target.password]
    cmd += ["FCALL", function, str(len(keys)), *keys, *argv]
    with ServerMeter(client) as meter:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=BENCHMARK_TIMEOUT_S)
    client.close()
    if done.returncode != 0:
        raise RuntimeError(f"redis-benchmark failed: {done.stderr.strip()[-300:]}")
    assert meter.result is not None
    return meter.result


def _per_call(phase: PhaseStats) -> dict[str, float]:
    calls = phase.calls(SCRIPTS)
    inner = sum(s.usec for name, s in phase.commands.items()
                if not is_script_command(name) and name not in ("script", "function"))
    return {
        "usec": phase.usec(SCRIPTS) / calls if calls else 0.0,
        "inner_usec": inner / calls if calls else 0.0,
        "cpu_us": phase.cpu_us_per(calls),
    }


def fixed_and_marginal(one: dict[str, float], many: dict[str, float], batch: int) -> dict[str, dict[str, float]]:
    """Split per-call figures measured with 1 and ``batch`` holds per call into a fixed part per
    call and a marginal part per hold (pure): ``cost(n) = fixed + n · marginal``."""
    marginal = {k: (many[k] - one[k]) / (batch - 1) for k in one}
    fixed = {k: one[k] - marginal[k] for k in one}
    return {"fixed": fixed, "per_hold": marginal}


def call_costs(target: Target, cfg: ScriptCostConfig, progress: Progress) -> dict[str, Any]:
    """commandstats of a function that returns 1 and of the hold function, with 1 and ``batch``
    holds per call."""
    from engine.store import scripts

    binary = ensure_redis_benchmark()
    hold = scripts.load_scripts()["hold"]
    runs = [("empty", "atpbench_empty", EMPTY_LIBRARY), ("hold", hold.function, hold.library.source)]
    task = progress.add_task("P6: hold function, 1 and batched holds per call", total=4)
    out: dict[str, Any] = {}
    for name, function, library in runs:
        one = _per_call(_bench(target, binary, function, library, f"P6-{name}-1", 1, cfg.calls_single))
        progress.advance(task)
        many = _per_call(_bench(target, binary, function, library, f"P6-{name}-{cfg.batch}", cfg.batch,
                                cfg.calls_batched))
        progress.advance(task)
        split = fixed_and_marginal(one, many, cfg.batch)
        out[name] = {
            "one_hold_per_call": {k: round(v, 2) for k, v in one.items()},
            f"{cfg.batch}_holds_per_call": {k: round(v, 2) for k, v in many.items()},
            "fixed_per_call": {k: round(v, 2) for k, v in split["fixed"].items()},
            "marginal_per_hold": {k: round(v, 2) for k, v in split["per_hold"].items()},
        }
    out["legend"] = ("usec: commandstats time inside FCALL; inner_usec: of that, the Redis commands "
                     "the script called; cpu_us: server CPU (all of it: sockets, parsing, script)")
    return out


def profile_segments(client: Any, script: Any, calls: Iterator[tuple[list[str], list[Any]]]) -> dict[str, Any]:
    """Run the instrumented entry ``script`` (``instrumented``) once per ``(keys, args)`` (16 per
    pipelined round trip) and return the median and mean microseconds of each segment, in order."""
    from engine.store import scripts

    scripts.load(client, script.library)
    samples: dict[str, list[float]] = {}
    order: list[str] = []
    n = 0
    while True:
        chunk = list(itertools.islice(calls, 16))
        if not chunk:
            break
        pipe = client.pipeline(transaction=False)
        for keys, args in chunk:
            pipe.execute_command(*scripts.fcall(script, keys, args))
        n += len(chunk)
        for flat in pipe.execute():
            for i in range(0, len(flat), 2):
                seg = flat[i].decode() if isinstance(flat[i], bytes) else str(flat[i])
                if seg not in samples:
                    samples[seg] = []
                    order.append(seg)
                samples[seg].append(float(flat[i + 1]))
    segments = [{"segment": s, "median_us": statistics.median(samples[s]),
                 "mean_us": round(statistics.fmean(samples[s]), 2)} for s in order]  # fmt: skip
    return {
        "calls": n,
        "sum_of_medians_us": round(sum(s["median_us"] for s in segments), 1),
        "segments": segments,
        "largest": [s["segment"] for s in sorted(segments, key=lambda s: -s["median_us"])[:4]],
    }


PROFILE_NOTE = ("server CPU microseconds (os.clock) per segment, each with one clock reading (see '(one clock "
                "reading)'); FCALL and begin (the call's fresh state) run before the first mark: call_costs has them")


def segment_profile(target: Target, cfg: ScriptCostConfig, progress: Progress) -> dict[str, Any]:
    """Median microseconds per segment of the instrumented hold script, with 1 and ``batch`` holds."""
    from engine.store.store import HoldRequest

    source = instrumented("hold")
    task = progress.add_task("P6: where the time goes (instrumented copy)", total=2)
    out: dict[str, Any] = {}
    for holds in (1, cfg.batch):
        name = f"P6-prof-{holds}"
        store = stock_sku(target, name, HUGE_STOCK)
        sku = target.sku(name)
        count = cfg.profile_calls if holds == 1 else max(10, cfg.profile_calls // 10)

        def calls(holds: int = holds, count: int = count, store: Any = store, sku: str = sku) -> Iterator[Any]:
            for n in range(count):
                reqs = [HoldRequest(rid=target.rid(f"pf{holds}-{n}-{i}"), qty=1) for i in range(holds)]
                _s, keys, args = store._hold_call(sku, reqs)
                yield keys, args

        out[f"{holds}_holds_per_call"] = profile_segments(store.redis, source, calls())
        store.redis.close()
        progress.advance(task)
    out["note"] = PROFILE_NOTE
    return out


def run_script_cost(target: Target, cfg: ScriptCostConfig, progress: Progress, e1: Any,
                    p1: dict[str, Any] | None, m1: Any = None, floor: Any = None) -> dict[str, Any]:
    """P6: the E1 and P1 figures beside M1 (the target: a hold call at most ``P6_M1_RATIO`` × M1's
    script time) and F1 (the floor of any engine hold: how much of that ratio is the engine's
    design), fixed vs marginal cost, and the in-script profile. Without M1 the target is not met."""
    per_call = e1.script_usec_per_call
    m1_us = m1.script_usec_per_call if m1 is not None else 0.0
    report: dict[str, Any] = {
        "name": "P6",
        "target": f"<= {P6_M1_RATIO:g} x M1's script time per hold call",
        "e1_usec_per_hold_call": round(per_call, 2),
        "e1_server_cpu_us_per_hold_call": round(e1.server_cpu_us_per_call, 2),
        "e1_redis_commands_usec_per_call": round(_per_call(e1.phase)["inner_usec"], 2),
        "m1_usec_per_call": round(m1_us, 2) if m1_us else None,
        "ratio_e1_vs_m1": ratio(per_call, m1_us),
        "target_met": bool(m1_us) and per_call <= P6_M1_RATIO * m1_us,
    }
    if floor is not None:
        f1_us = floor.script_usec_per_call
        report["f1_usec_per_call"] = round(f1_us, 2)
        report["ratio_f1_vs_m1"] = ratio(f1_us, m1_us)
        report["ratio_e1_vs_f1"] = ratio(per_call, f1_us)
    if p1 is not None:
        report["p1_holds_per_call"] = p1["holds_per_script_call"]
        report["p1_usec_per_hold"] = p1["script_usec_per_hold"]
        report["p1_server_cpu_us_per_hold"] = p1["server_cpu_us_per_hold"]
        report["p1_ratio_vs_m1"] = ratio(p1["script_usec_per_hold"], m1_us)
        report["p1_target_met"] = bool(m1_us) and p1["script_usec_per_hold"] <= P6_M1_RATIO * m1_us
    report["call_costs"] = call_costs(target, cfg, progress)
    report["profile"] = segment_profile(target, cfg, progress)
    return report
