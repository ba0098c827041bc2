"""P6 — server-side cost of the hold script, from ``INFO commandstats``.

Figures:

* per hold call during E1 (one hold per EVALSHA: the script's whole cost);
* per hold during P1 (coalesced: one EVALSHA carries many holds);
* fixed cost per call and marginal cost per hold: redis-benchmark runs of the script with 1 and
  with ``batch`` holds per call (and of ``return 1`` with the same KEYS / ARGV: the price of
  EVALSHA itself); the Redis commands the script issues are timed by commandstats too, so
  "Redis commands" and "Lua (interpreter, cjson)" are told apart;
* where the time goes inside the script: an instrumented copy of the current script reads the
  server clock (``TIME``) at every section of lib.lua and at each step of hold.lua, and returns
  the microseconds spent in each; the median over many calls is reported, with 1 and with
  ``batch`` holds per call. The copy only ever runs on the benchmark's own keys.
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
from loadtest.server_stats import PhaseStats, ServerMeter
from loadtest.target import Target

TARGET_US = 5.0

# One local only: lib.lua already uses many of Lua's 200 locals per function.
_MARKER = """local __P = { m = {} }
function __P.mark(name)
  local t = redis.call('TIME')
  __P.m[#__P.m + 1] = { name, tonumber(t[1]) * 1000000 + tonumber(t[2]) }
end
__P.mark('start')
__P.mark('(one clock reading)')
"""
_MARKER_RETURN = """
local __out, __prev = {}, nil
for _, m in ipairs(__P.m) do
  if __prev then __out[#__out + 1] = m[1]; __out[#__out + 1] = m[2] - __prev end
  __prev = m[2]
end
return __out
"""
_SECTION = re.compile(r"^-{20,} ?(.*)$", re.M)


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


def instrumented(lib: str, entry: str, work: str = "requests (checks, allocation, line json)") -> str:
    """An instrumented copy of lib.lua + an entry script that returns ``[segment, µs, …]`` (pure).

    A segment ends at every section separator of lib.lua (named after the section it closes),
    after the entry's ``expire_due()`` line, before its ``flush()`` and before its final
    ``return`` (the entry's segments are named ``entry: …``; ``work`` names the one between lazy
    expiry and write-back). Whatever cannot be found is merged into the next segment.
    """
    parts = []
    last = 0
    name = "lib: header"
    for m in _SECTION.finditer(lib):
        parts.append(lib[last:m.start()])
        parts.append(f"__P.mark({_lua_str(name)})\n")
        name = "lib: " + (m.group(1).strip() or "section")
        last = m.start()
    parts.append(lib[last:])
    parts.append(f"\n__P.mark({_lua_str(name)})\n")
    returns = list(re.finditer(r"^return .*$", entry, flags=re.M))
    if returns:
        r = returns[-1]
        entry = entry[: r.start()] + "__P.mark('entry: write back (flush)')\nlocal __reply = " + \
            r.group(0)[len("return "):] + "\n__P.mark('entry: reply encoding')\n" + entry[r.end():]
    entry = re.sub(r"^(flush\(\)\s*)$", lambda m: f"__P.mark({_lua_str('entry: ' + work)})\n{m.group(1)}", entry,
                   count=1, flags=re.M)
    entry = re.sub(r"^((?!local function).*\bexpire_due\(\).*)$", r"\1\n__P.mark('entry: lazy expiry')", entry,
                   count=1, flags=re.M)
    return _MARKER + "".join(parts) + "\n" + entry + _MARKER_RETURN


def _lua_str(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _bench(target: Target, binary: str, source: str, sku_name: str, holds: int, calls: int) -> PhaseStats:
    """Run ``calls`` EVALSHA of ``source`` with ``holds`` hold requests each on a fresh SKU."""
    from engine.store.store import HoldRequest

    store = stock_sku(target, sku_name, HUGE_STOCK)
    client = store.redis
    sku = target.sku(sku_name)
    sha = client.script_load(source)
    _script, keys, args = store._hold_call(sku, [HoldRequest(rid=f"X{i}", qty=1) for i in range(holds)])
    template = target.rid("s-__rand_int__")
    argv = [template if isinstance(a, str) and re.fullmatch(r"X\d+", a) else str(a) for a in args]
    # -P 8: several calls per read, so the figures are about the script, not the socket.
    cmd = [binary, "-h", target.host, "-p", str(target.port), "-c", "4", "-P", "8", "-n", str(calls),
           "-r", str(RAND_RANGE), "-q"]
    if target.password:
        cmd += ["-a", target.password]
    cmd += ["EVALSHA", sha, str(len(keys)), *keys, *argv]
    with ServerMeter(client) as meter:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=BENCHMARK_TIMEOUT_S)
    client.close()
    if done.returncode != 0:
        raise RuntimeError(f"redis-benchmark failed: {done.stderr.strip()[-300:]}")
    assert meter.result is not None
    return meter.result


def _per_call(phase: PhaseStats) -> dict[str, float]:
    calls = phase.calls("evalsha")
    inner = sum(s.usec for name, s in phase.commands.items() if name not in ("evalsha", "eval", "script"))
    return {
        "usec": phase.usec("evalsha") / calls if calls else 0.0,
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
    """commandstats of ``return 1`` and of the hold script, with 1 and ``batch`` holds per call."""
    from engine.store import scripts

    binary = ensure_redis_benchmark()
    full = scripts.load_scripts()["hold"].source
    runs = [("empty", "return 1"), ("hold", full)]
    task = progress.add_task("P6: hold script, 1 and batched holds per call", total=4)
    out: dict[str, Any] = {}
    for name, source in runs:
        one = _per_call(_bench(target, binary, source, f"P6-{name}-1", 1, cfg.calls_single))
        progress.advance(task)
        many = _per_call(_bench(target, binary, source, f"P6-{name}-{cfg.batch}", cfg.batch, cfg.calls_batched))
        progress.advance(task)
        split = fixed_and_marginal(one, many, cfg.batch)
        out[name] = {
            "one_hold_per_call": {k: round(v, 2) for k, v in one.items()},
            f"{cfg.batch}_holds_per_call": {k: round(v, 2) for k, v in many.items()},
            "fixed_per_call": {k: round(v, 2) for k, v in split["fixed"].items()},
            "marginal_per_hold": {k: round(v, 2) for k, v in split["per_hold"].items()},
        }
    out["legend"] = ("usec: commandstats time inside EVALSHA; inner_usec: of that, the Redis commands "
                     "the script called; cpu_us: server CPU (all of it: sockets, parsing, script)")
    return out


def profile_segments(client: Any, source: str, calls: Iterator[tuple[list[str], list[Any]]]) -> dict[str, Any]:
    """Run the instrumented ``source`` once per ``(keys, args)`` (16 per pipelined round trip)
    and return the median and mean microseconds of each segment, in script order."""
    sha = client.script_load(source)
    samples: dict[str, list[float]] = {}
    order: list[str] = []
    n = 0
    while True:
        chunk = list(itertools.islice(calls, 16))
        if not chunk:
            break
        pipe = client.pipeline(transaction=False)
        for keys, args in chunk:
            pipe.evalsha(sha, len(keys), *keys, *args)
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


PROFILE_NOTE = ("each segment also pays one TIME call (see '(one clock reading)'); 'lib: <section>' is the "
                "shared prelude, run on every call: building that section's closures and loading state")


def segment_profile(target: Target, cfg: ScriptCostConfig, progress: Progress) -> dict[str, Any]:
    """Median microseconds per segment of the instrumented hold script, with 1 and ``batch`` holds."""
    from engine.store import scripts
    from engine.store.store import HoldRequest

    source = instrumented(scripts._read("lib"), scripts._read("hold"))
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
                    p1: dict[str, Any] | None) -> dict[str, Any]:
    """P6: the E1 and P1 figures, fixed vs marginal cost, and the in-script profile."""
    per_call = e1.script_usec_per_call
    report: dict[str, Any] = {
        "name": "P6",
        "target": f"<= {TARGET_US} us per hold call",
        "e1_usec_per_hold_call": round(per_call, 2),
        "e1_server_cpu_us_per_hold_call": round(e1.server_cpu_us_per_call, 2),
        "e1_redis_commands_usec_per_call": round(_per_call(e1.phase)["inner_usec"], 2),
        "ratio_e1_vs_target": round(per_call / TARGET_US, 2),
        "target_met": per_call <= TARGET_US,
    }
    if p1 is not None:
        report["p1_holds_per_call"] = p1["holds_per_script_call"]
        report["p1_usec_per_hold"] = p1["script_usec_per_hold"]
        report["p1_server_cpu_us_per_hold"] = p1["server_cpu_us_per_hold"]
        report["p1_target_met"] = p1["script_usec_per_hold"] <= TARGET_US
    report["call_costs"] = call_costs(target, cfg, progress)
    report["profile"] = segment_profile(target, cfg, progress)
    return report
