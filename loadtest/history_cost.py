"""P7 — one hot SKU whose history grows: what each operation kind costs at N reservation lines.

For each size N (``--p7-sizes``, default 10k,100k) a fresh SKU is built to N lines, each of 1
unit: ``live_fraction`` of them live (held for an hour, a quarter committed), the rest ended
(released, expired and shipped, a third each, kept for the retention). The SKU is in presell
mode (``cap_pm`` 1000); live lines draw on on-hand stock first (a fifth of them), then on three
lots by ETA: ``big`` carries half of the live lines, ``cancel`` a fifth, ``tail`` a tenth plus
spare capacity for what the operations below add or move. Then, in this order, each operation
kind is timed on that SKU:

* ``hold``, ``confirm``, ``release``: ``reps`` single calls each (live held lines);
* ``eta_slip``: ``inbound_updated`` of the big lot, five days later (every line on it re-dated);
* ``cancel``: ``inbound_cancelled`` of the cancel lot (its lines go short, spare supply refills);
* ``count_shed``: a count lowering on-hand by a tenth of the live lines (the newest lines
  holding on-hand units lose them);
* ``receipt``: the big lot arrives (its allocations move to on-hand);
* ``due_expiry``: min(``due_max``, N/2) holds made to expire at one moment; once due, the next
  hold call on the SKU gives their units back (one due bucket) and holds;
* ``purge``: ``Store.purge`` of every ended line (retention ``retention_ms``), a bounded number
  of lines per script call.

Per operation: the client's wall time per call; the server's time per script call from
``INFO commandstats`` (the script commands of ``server_stats.SCRIPT_COMMANDS``, minus the calls of
the other client, which SLOWLOG times one by one); the longest single call on the hot SKU from
SLOWLOG (``slowlog-log-slower-than`` 10 µs during the operation: every script call); and the
latency of a second client — another process holding qty 1 on another SKU at a steady rate,
open loop on its own connections, as independent customers would — as p50 / p99 / max of its
holds that overlapped the operation. The other client's idle latency at each size is its
baseline.

Targets, checked at the largest size: no call over 1 ms; server time per call at most 1.5 × the
same operation's at the smallest size (10k by default); the other SKU's hold p99 at most 5 ms;
a single hold at most 2 × M1's script time per call.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import re
import statistics
import subprocess
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from loadtest.progress import Progress
from loadtest.server_stats import is_script_command, parse_command_stats, script_totals
from loadtest.stats import percentile, ratio, summarize
from loadtest.target import Target
from loadtest.targets import P6_M1_RATIO, P7_MAX_CALL_MS, P7_MAX_GROWTH, P7_OTHER_P99_MS

OPS = ("hold", "confirm", "release", "eta_slip", "cancel", "count_shed", "receipt", "due_expiry", "purge")
OP_TITLES = {
    "hold": "single hold", "confirm": "confirm", "release": "release", "eta_slip": "ETA slip of the big lot",
    "cancel": "cancel of a lot", "count_shed": "count that sheds", "receipt": "receipt of the big lot",
    "due_expiry": "hold after N_due came due", "purge": "purge (Store.purge)",
}  # fmt: skip

# Keys of their own: Store.purge scans every SKU under its prefix, so P7's purge meets P7's SKUs only.
P7_PREFIX = "ltp7"
HOT_CLIENT = "p7-hot"
OTHER_CLIENT = "p7-other"
LOC = "A"
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
MIN_SIZE = 1_000
MAX_SIZE = 10_000_000
#: A pause after each operation, once the other client has caught up with its schedule.
SETTLE_S = 0.2
IDLE_S = 1.0
WORKER_GRACE_S = 30.0


@dataclass(frozen=True)
class Targets:
    """The quality bar of P7 (checked at the largest size)."""

    max_call_ms: float = P7_MAX_CALL_MS
    max_growth: float = P7_MAX_GROWTH
    other_p99_ms: float = P7_OTHER_P99_MS
    hold_vs_m1: float = P6_M1_RATIO


TARGETS = Targets()


@dataclass(frozen=True)
class HistoryCostConfig:
    """Sizes and pacing of P7. ``other_rate`` paces the other client (holds/s): steady customers
    on another SKU, not a second load generator competing for the machine's two cores; they
    share at most ``other_connections`` connections."""

    sizes: tuple[int, ...] = (10_000, 100_000)
    live_fraction: float = 0.5
    due_max: int = 50_000
    reps: int = 100
    batch: int = 1_000
    other_rate: float = 500.0
    other_connections: int = 256
    retention_ms: int = 1
    slowlog_max_len: int = 50_000
    # Not 0: Store.purge pipelines a GET per purged line (the reservation index), and at threshold 0
    # those would push the script calls out of SLOWLOG. Every engine script call takes far longer
    # than 10 µs (M1, three commands, takes ~5), a plain GET far less; a script call that was
    # faster would show as an incomplete split (``slowlog.complete``).
    slowlog_threshold_us: int = 10

    def __post_init__(self) -> None:
        if not self.sizes:
            raise ValueError("P7 needs at least one size")
        for n in self.sizes:
            if not MIN_SIZE <= n <= MAX_SIZE:
                raise ValueError(f"P7 sizes must be in [{MIN_SIZE}, {MAX_SIZE}], got {n}")
        if not 0.5 <= self.live_fraction < 1.0:
            raise ValueError("live_fraction must be in [0.5, 1)")
        if not 1 <= self.reps <= 1000 or not 10 <= self.batch <= 5000 or self.due_max < 1:
            raise ValueError("reps must be in [1, 1000], batch in [10, 5000], due_max at least 1")
        if not 1 <= self.other_rate <= 20_000 or not 1 <= self.other_connections <= 1000:
            raise ValueError("other_rate must be in [1, 20000] holds/s, other_connections in [1, 1000]")
        if self.retention_ms < 1 or self.slowlog_max_len < 1000 or not 0 <= self.slowlog_threshold_us <= 1000:
            raise ValueError("retention_ms must be at least 1, slowlog_max_len at least 1000, "
                             "slowlog_threshold_us in [0, 1000]")
        smallest = Shape.of(min(self.sizes), self.live_fraction, self.due_max, self.reps, self.batch)
        if smallest.held < 2 * self.reps:  # confirm and release each take reps held lines
            raise ValueError(f"reps {self.reps} needs {2 * self.reps} held lines; the smallest size has {smallest.held}")


# ---------------------------------------------------------------------------- pure parts

_SIZE = re.compile(r"(\d+(?:\.\d+)?)([km]?)")


def parse_sizes(text: str) -> tuple[int, ...]:
    """``"10k,100k,1m"`` -> ``(10000, 100000, 1000000)``: sorted, without repeats; a number with
    an optional k / m suffix (any case) each. Raises ``ValueError`` naming a bad item or a size
    outside [1000, 10m]."""
    out = set()
    for item in text.split(","):
        item = item.strip().lower()
        m = _SIZE.fullmatch(item)
        if m is None:
            raise ValueError(f"bad P7 size {item!r}: a number with an optional k or m suffix, e.g. 10k")
        value = float(m.group(1)) * {"": 1, "k": 1_000, "m": 1_000_000}[m.group(2)]
        if value != int(value):
            raise ValueError(f"P7 size {item!r} is not a whole number of lines")
        if not MIN_SIZE <= value <= MAX_SIZE:
            raise ValueError(f"P7 size {item!r} is outside [1k, 10m]")
        out.add(int(value))
    return tuple(sorted(out))


def size_label(n: int) -> str:
    """10000 -> "10k", 1000000 -> "1m", 2500 -> "2500"."""
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}m"
    if n % 1_000 == 0:
        return f"{n // 1_000}k"
    return str(n)


@dataclass(frozen=True)
class Shape:
    """How a SKU of ``size`` lines is built (pure arithmetic, every count at least 1)."""

    size: int
    live: int
    released: int
    expired: int
    shipped: int
    on_hand_live: int  # on-hand units the live lines take
    big: int  # units (= live lines) on the big lot
    cancel: int
    tail: int  # live lines on the tail lot
    spare: int  # tail capacity beyond them
    due: int
    shed: int  # on-hand units the shedding count takes away

    @property
    def held(self) -> int:
        """Live lines left held (a quarter of them are reserved as committed)."""
        return self.live - self.live // 4

    @classmethod
    def of(cls, size: int, live_fraction: float, due_max: int, reps: int, batch: int) -> Shape:
        live = max(4, math.ceil(size * live_fraction))
        ended = size - live
        released = ended // 3
        expired = ended // 3
        shipped = ended - released - expired
        on_hand_live = live // 5
        big = live // 2
        cancel = live // 5
        tail = live - on_hand_live - big - cancel
        due = max(1, min(due_max, size // 2))
        shed = max(1, live // 10)
        # the cancelled lot's lines and the shed lines are refilled from spare supply where it lasts;
        # the single holds and the due holds always need it
        spare = cancel + shed + due + 4 * reps + batch
        return cls(size, live, released, expired, shipped, on_hand_live, big, cancel, tail, spare, due, shed)


@dataclass(frozen=True)
class Attribution:
    """The hot client's share of one operation's server time."""

    calls: int
    usec: int
    slowlog_calls: int
    slowlog_usec: int
    longest_usec: int
    other_calls: int
    complete: bool  # SLOWLOG logged every script call (else the split is an estimate)
    durations: tuple[int, ...] = ()  # the hot client's calls, µs, sorted
    other_durations: tuple[int, ...] = ()  # the other client's calls, µs, sorted: a control


def attribute(total_calls: int, total_usec: int, entries: Sequence[dict[str, Any]], hot: str, other: str,
              max_len: int) -> Attribution:
    """Split the script commands' commandstats delta of one operation (all clients) into the hot
    client's part, taking out the other client's calls as SLOWLOG timed them (pure).

    ``entries`` are SLOWLOG entries as redis-py parses them (``command``, ``duration`` in µs,
    ``client_name``); only script commands count. ``complete`` says SLOWLOG logged every script
    call of the operation (the calls it names add up to the commandstats delta, and it did not
    fill up); otherwise the hot client's part is the total less the other client's logged calls,
    an over-estimate.
    """
    hot_calls = hot_usec = longest = other_calls = other_usec = third = 0
    durations, other_durations = [], []
    for e in entries:
        command = e.get("command") or b""
        first = command.split(maxsplit=1)[0] if command else b""
        if not is_script_command(first):
            continue
        name = e.get("client_name") or b""
        name = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        duration = int(e["duration"])
        if name == other:
            other_calls += 1
            other_usec += duration
            other_durations.append(duration)
        elif name == hot:
            hot_calls += 1
            hot_usec += duration
            longest = max(longest, duration)
            durations.append(duration)
        else:
            third += 1
    return Attribution(
        calls=max(0, total_calls - other_calls), usec=max(0, total_usec - other_usec),
        slowlog_calls=hot_calls, slowlog_usec=hot_usec, longest_usec=longest, other_calls=other_calls,
        complete=len(entries) < max_len and hot_calls + other_calls + third == total_calls,
        durations=tuple(sorted(durations)), other_durations=tuple(sorted(other_durations)),
    )  # fmt: skip


def window_latencies(sched: Sequence[float], ends: Sequence[float], t0: float, t1: float,
                     sent: Sequence[float] | None = None) -> list[float]:
    """Latencies in seconds of the samples whose span, from scheduled send time to end, overlapped
    ``[t0, t1]`` (pure): end − scheduled time, or end − actual send time when ``sent`` is given."""
    starts = sched if sent is None else sent
    return [e - a for s, a, e in zip(sched, starts, ends, strict=True) if s <= t1 and e >= t0]


def _met(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def evaluate(runs: Sequence[dict[str, Any]], m1_usec: float | None, e1_usec: float | None,
             targets: Targets = TARGETS) -> dict[str, Any]:
    """Per operation: the figures at every size, their ratios to their baselines and whether the
    targets are met at the largest size (pure).

    ``runs`` are P7's runs in size order, each ``{"size", "ops": {op: {"server_usec_per_call",
    "longest_call_ms", "other": {"p99_ms"}}}, "other_idle": {"p99_ms"}}``. Baselines: the same
    operation at the smallest size (server time per call), the other client's idle p99 at the
    same size, M1 and E1 (a single hold). With one size there is no growth to check (None).
    """
    if not runs:
        return {"ops": {}, "missed": [], "target_met": None}
    first, last = runs[0], runs[-1]
    ops: dict[str, Any] = {}
    missed: list[str] = []
    for op in OPS:
        if op not in last["ops"]:
            continue
        per_size = {size_label(r["size"]): r["ops"][op]["server_usec_per_call"] for r in runs if op in r["ops"]}
        base = first["ops"].get(op, {}).get("server_usec_per_call") if len(runs) > 1 else None
        top = last["ops"][op]
        growth = ratio(top["server_usec_per_call"], base) if base else None
        longest = top["longest_call_ms"]
        p99 = top["other"]["p99_ms"] if top["other"]["count"] else None
        idle = (last.get("other_idle") or {}).get("p99_ms")
        entry = {
            "server_usec_per_call": per_size,
            "growth": growth,
            "growth_met": _met(growth, targets.max_growth),
            "longest_call_ms": longest,
            "longest_call_vs_target": ratio(longest, targets.max_call_ms),
            "longest_call_met": _met(longest, targets.max_call_ms),
            "other_p99_ms": p99,
            "other_p99_vs_idle": ratio(p99, idle) if p99 is not None and idle else None,
            "other_p99_met": _met(p99, targets.other_p99_ms),
        }
        if op == "hold":
            hold = top["server_usec_per_call"]
            entry["vs_m1"] = ratio(hold, m1_usec) if m1_usec else None
            entry["vs_m1_met"] = _met(entry["vs_m1"], targets.hold_vs_m1)
            entry["vs_e1"] = ratio(hold, e1_usec) if e1_usec else None
        checks = {"growth": entry["growth_met"], "longest call": entry["longest_call_met"],
                  "other p99": entry["other_p99_met"], "vs M1": entry.get("vs_m1_met")}  # fmt: skip
        entry["missed"] = [name for name, ok in checks.items() if ok is False]
        entry["met"] = None if all(ok is None for ok in checks.values()) else not entry["missed"]
        missed.extend(f"{op}: {name}" for name in entry["missed"])
        ops[op] = entry
    return {
        "baseline_size": size_label(first["size"]),
        "largest_size": size_label(last["size"]),
        "ops": ops,
        "missed": missed,
        "target_met": not missed,
    }


def headline(p7: dict[str, Any]) -> list[dict[str, Any]]:
    """The summary rows of P7 (``report.summary_rows`` adds the bench name): one per operation at
    the largest size — server µs per call, longest call, other SKU's hold p99 — and the single
    hold against M1 (pure)."""
    ev = p7.get("targets") or {}
    rows = []
    t = TARGETS
    for op, e in (ev.get("ops") or {}).items():
        top = e["server_usec_per_call"][ev["largest_size"]]
        note = f" (missed: {', '.join(e['missed'])})" if e["missed"] else ""
        rows.append({
            "figure": f"{OP_TITLES[op]} at {ev['largest_size']}: us/call, longest call ms, other SKU p99 ms{note}",
            "value": [top, e["longest_call_ms"], e["other_p99_ms"] if e["other_p99_ms"] is not None else 0.0],
            "unit": "us / ms / ms",
            "vs": f"at {ev['baseline_size']}" if e["growth"] is not None else None,
            "ratio": e["growth"],
            "target": f"<= {t.max_growth} x, <= {t.max_call_ms:g} ms, p99 <= {t.other_p99_ms:g} ms",
            "met": e["met"],
        })  # fmt: skip
    hold = (ev.get("ops") or {}).get("hold")
    if hold and hold.get("vs_m1") is not None:
        rows.append({
            "figure": f"single hold at {ev['largest_size']}: server time per call vs M1",
            "value": hold["server_usec_per_call"][ev["largest_size"]], "unit": "us", "vs": "M1",
            "ratio": hold["vs_m1"], "target": f"<= {t.hold_vs_m1:g} x M1", "met": hold["vs_m1_met"],
        })  # fmt: skip
    return rows


# ---------------------------------------------------------------------------- the other client


@dataclass(frozen=True)
class _OtherJob:
    url: str
    prefix: str
    sku: str
    rid_prefix: str
    rate: float
    connections: int


async def _other_loop(job: _OtherJob, active: Any, stop: Any, done_until: Any) -> tuple[array, array, array, dict]:
    import asyncio
    from collections import deque

    import redis.asyncio as aioredis

    from engine.store.store import AsyncStore
    from engine.store.wire import HoldRequest

    # Open loop on a pool: each hold goes out on schedule on a free connection, as independent
    # customers' holds would, whatever the ones before it are waiting for. (One paced connection
    # would fall behind many short calls in a row and count its own backlog as their cost.)
    pool = aioredis.BlockingConnectionPool.from_url(job.url, max_connections=job.connections, timeout=120,
                                                    client_name=OTHER_CLIENT)
    store = AsyncStore(aioredis.Redis(connection_pool=pool), prefix=job.prefix)
    sched, started, ends = array("d"), array("d"), array("d")
    errors: dict[str, int] = {}
    fired: deque[tuple[int, float]] = deque()  # (n, scheduled time) in firing order
    finished: set[int] = set()
    tasks: set[asyncio.Task[None]] = set()

    async def one(n: int, at: float) -> None:
        start = time.monotonic()
        try:
            reply = (await store.hold_batch(job.sku, [HoldRequest(f"{job.rid_prefix}{n}", 1, ttl_ms=HOUR_MS)]))[0]
            if reply["status"] != "ok":
                errors[f"status {reply['status']}"] = errors.get(f"status {reply['status']}", 0) + 1
        except Exception as exc:  # keep measuring; the parent reports what went wrong
            kind = f"{type(exc).__name__}: {exc}"[:200]
            errors[kind] = errors.get(kind, 0) + 1
        sched.append(at)
        started.append(start)
        ends.append(time.monotonic())
        finished.add(n)
        while fired and fired[0][0] in finished:  # every hold scheduled up to here has finished
            done, done_at = fired.popleft()
            finished.discard(done)
            done_until.value = done_at

    interval = 1.0 / job.rate
    n = 0
    next_t: float | None = None
    while not stop.is_set():
        if not active.is_set():
            next_t = None
            await asyncio.sleep(0.05)
            continue
        now = time.monotonic()
        if next_t is None:
            next_t = now
        if now < next_t:
            await asyncio.sleep(next_t - now)
        fired.append((n, next_t))
        task = asyncio.create_task(one(n, next_t))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
        next_t += interval
    if tasks:
        await asyncio.wait(tasks, timeout=WORKER_GRACE_S)
    await pool.aclose()
    return sched, started, ends, errors


def _other_client(job: _OtherJob, active: Any, stop: Any, done_until: Any, out: Any) -> None:
    """Entry of the other client's process: hold qty 1 on its SKU every 1/rate s while ``active``
    is set, recording (scheduled time, start, end) per hold; send them when ``stop`` is set."""
    try:
        import asyncio

        sched, started, ends, errors = asyncio.run(_other_loop(job, active, stop, done_until))
        out.send(("ok", (sched.tobytes(), started.tobytes(), ends.tobytes(), errors)))
    except BaseException as exc:  # report, never hang the parent
        out.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        out.close()


class _Other:
    """The other client's process: start, pause / resume, stop and collect its samples."""

    def __init__(self, target: Target, sku: str, rate: float, connections: int) -> None:
        ctx = mp.get_context("spawn")
        self.active = ctx.Event()
        self.stop_event = ctx.Event()
        self.done_until = ctx.Value("d", 0.0, lock=False)  # every hold scheduled up to this time has finished
        self._recv, send = ctx.Pipe(duplex=False)
        job = _OtherJob(target.url, P7_PREFIX, sku, target.rid("p7-o"), rate, connections)
        self.proc = ctx.Process(target=_other_client, args=(job, self.active, self.stop_event, self.done_until, send),
                                daemon=True)
        self.proc.start()
        send.close()
        self.sched: array = array("d")
        self.sent: array = array("d")
        self.ends: array = array("d")
        self.errors: dict[str, int] = {}

    def resume(self) -> None:
        self.active.set()

    def pause(self) -> None:
        self.active.clear()

    def check(self) -> None:
        if not self.proc.is_alive():
            raise RuntimeError(f"P7: the other client's process died (exit code {self.proc.exitcode})")

    def collect(self) -> None:
        """Stop the process and keep its samples."""
        self.stop_event.set()
        self.active.set()  # wake it from its pause
        if not self._recv.poll(WORKER_GRACE_S):
            raise RuntimeError("P7: the other client did not report its samples")
        status, payload = self._recv.recv()
        self.proc.join(5)
        if status != "ok":
            raise RuntimeError(f"P7: the other client failed: {payload}")
        sched, sent, ends, self.errors = payload
        self.sched.frombytes(sched)
        self.sent.frombytes(sent)
        self.ends.frombytes(ends)

    def close(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)

    def latency(self, t0: float, t1: float) -> dict[str, Any]:
        """Latency of the holds that overlapped ``[t0, t1]``, from the moment each hold started (a
        wait for a free connection included); ``from_schedule``: from its scheduled time, the
        client process's own late starts included (CPU starvation on a busy machine)."""
        out = summarize(window_latencies(self.sched, self.ends, t0, t1, sent=self.sent)).to_dict()
        lat = summarize(window_latencies(self.sched, self.ends, t0, t1))
        out["from_schedule"] = {"p50_ms": round(lat.p50_ms, 4), "p99_ms": round(lat.p99_ms, 4),
                                "max_ms": round(lat.max_ms, 4)}
        return out

    def wait_caught_up(self, t: float, timeout_s: float = 60.0) -> None:
        """Wait until the client has finished every hold scheduled up to ``t``: the holds a long
        operation held back must not land in the next operation's window."""
        give_up = time.monotonic() + timeout_s
        while self.done_until.value < t:
            self.check()
            if time.monotonic() > give_up:
                raise RuntimeError(f"P7: the other client is still {t - self.done_until.value:.1f} s behind")
            time.sleep(0.01)


# ---------------------------------------------------------------------------- measuring one operation


class _Meter:
    """SLOWLOG at a low threshold and a commandstats reading around one operation; each reading is a
    MULTI block, so no call of the other client falls between SLOWLOG and commandstats."""

    def __init__(self, client: Any, max_len: int, threshold_us: int, restore_threshold: int) -> None:
        self.client = client
        self.max_len = max_len
        self.threshold = threshold_us
        self.restore = restore_threshold
        self._before = (0, 0)

    def __enter__(self) -> _Meter:
        self.client.config_set("slowlog-log-slower-than", self.threshold)
        pipe = self.client.pipeline(transaction=True)
        pipe.slowlog_reset()
        pipe.info("commandstats")
        _reset, info = pipe.execute()
        s = script_totals(parse_command_stats(info))
        self._before = (s.calls, s.usec)
        return self

    def read(self) -> Attribution:
        pipe = self.client.pipeline(transaction=True)
        pipe.info("commandstats")
        pipe.slowlog_get(self.max_len)
        info, entries = pipe.execute()
        self.client.config_set("slowlog-log-slower-than", self.restore)
        self.client.slowlog_reset()
        s = script_totals(parse_command_stats(info))
        return attribute(s.calls - self._before[0], s.usec - self._before[1], entries, HOT_CLIENT, OTHER_CLIENT,
                         self.max_len)

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:  # an operation failed: leave the server as it was
            with contextlib.suppress(Exception):
                self.client.config_set("slowlog-log-slower-than", self.restore)
                self.client.slowlog_reset()


@dataclass
class _Op:
    """One timed operation: per-call wall times, its window and what the server said."""

    name: str
    walls_s: list[float] = field(default_factory=list)
    t0: float = 0.0
    t1: float = 0.0
    server: Attribution | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def timed(self, fn: Callable[[], Any]) -> Any:
        start = time.monotonic()
        out = fn()
        self.walls_s.append(time.monotonic() - start)
        return out

    def to_dict(self, other: _Other | None) -> dict[str, Any]:
        s = self.server
        assert s is not None
        walls = sorted(self.walls_s)
        out = {
            "client_calls": len(walls),
            "wall_ms_median": round(statistics.median(walls) * 1000, 3),
            "wall_ms_max": round(walls[-1] * 1000, 3),
            "wall_ms_total": round(sum(walls) * 1000, 3),
            "script_calls": s.calls,
            "server_usec": s.usec,
            "server_usec_per_call": round(s.usec / s.calls, 1) if s.calls else 0.0,
            "server_usec_per_client_call": round(s.usec / len(walls), 1) if walls else 0.0,
            "longest_call_ms": round(s.longest_usec / 1000, 3),
            "call_usec_median": statistics.median(s.durations) if s.durations else None,
            "call_usec_p99": percentile(s.durations, 99) if s.durations else None,
            "slowlog": {"calls": s.slowlog_calls, "usec": s.slowlog_usec, "other_client_calls": s.other_calls,
                        "complete": s.complete},
            # the other SKU's hold (small, no history) on the same server at the same time: when it
            # grows with the size too, the growth is the server's or the machine's, not the history's
            "other_call_usec_median": statistics.median(s.other_durations) if s.other_durations else None,
            "detail": self.detail,
        }  # fmt: skip
        if other is not None:
            out["other"] = other.latency(self.t0, self.t1)
        return out


# ---------------------------------------------------------------------------- one size


class _Hot:
    """The hot SKU of one size: building it and running the operations on it."""

    def __init__(self, target: Target, client: Any, cfg: HistoryCostConfig, size: int, progress: Progress) -> None:
        from engine.store.store import Store

        self.target = target
        self.client = client
        self.cfg = cfg
        self.store = Store(client, prefix=P7_PREFIX)
        self.label = size_label(size)
        self.sku = target.sku(f"P7-hot-{self.label}")
        self.shape = Shape.of(size, cfg.live_fraction, cfg.due_max, cfg.reps, cfg.batch)
        self.progress = progress
        self.held: list[str] = []  # live held rids, oldest first
        self.n = 0  # rids made
        self.build_hold_s = 0.0  # seconds per hold while building live lines (sizes the due build)
        self.big_eta_ms = 0
        self.on_hand_before = 0
        self.lots = {"big": target.rid(f"p7-{self.label}-big"), "cancel": target.rid(f"p7-{self.label}-cancel"),
                     "tail": target.rid(f"p7-{self.label}-tail")}  # fmt: skip

    # -- building

    def _rids(self, count: int, tag: str) -> list[str]:
        rids = [self.target.rid(f"p7-{self.label}-{tag}{self.n + i}") for i in range(count)]
        self.n += count
        return rids

    def _hold(self, rids: Sequence[str], ttl_ms: int = HOUR_MS, commit: bool = False, commit_every: int = 0) -> None:
        """Hold 1 unit per rid, ``batch`` requests per call; every ``commit_every``-th request (or
        all with ``commit``) reserved as committed."""
        from engine.store.wire import checked_hold_request

        for i in range(0, len(rids), self.cfg.batch):
            chunk = rids[i:i + self.cfg.batch]
            # every field is valid by construction: skip the per-request checks
            reqs = [checked_hold_request(rid, 1, "", ttl_ms, "", "",
                                         commit or (commit_every > 0 and (i + j) % commit_every == commit_every - 1))
                    for j, rid in enumerate(chunk)]
            replies = self.store.hold_batch(self.sku, reqs)
            bad = [r for r in replies if r["status"] != "ok"]
            if bad:
                raise RuntimeError(f"P7 build of {self.label}: {len(bad)} holds not booked, e.g. {bad[0]}")

    def _supply(self, cmd: str, **payload: Any) -> dict[str, Any]:
        from engine.store.wire import SupplyCommand

        reply = self.store.apply([SupplyCommand(self.sku, cmd, payload)])[0]
        if reply["status"] != "ok":
            raise RuntimeError(f"P7 {cmd} on {self.label}: {reply.get('status')} {reply.get('reason', '')}")
        return reply

    def _release_all(self, rids: Sequence[str]) -> None:
        from engine.store import scripts
        from engine.store.wire import decode_reply

        # Store has no batch release: one pipelined round trip of the store's own calls
        calls = [self.store._op_call("release", self.sku, rid) for rid in rids]
        for raw in scripts.call_many(self.client, calls):
            if decode_reply(raw)["status"] != "ok":
                raise RuntimeError(f"P7 build of {self.label}: a release failed: {raw!r}")

    def _ship_all(self, rids: Sequence[str]) -> None:
        from engine.store.wire import SupplyCommand

        cmds = [SupplyCommand(self.sku, "ship", {"rid": rid, "loc": LOC, "qty": 1}) for rid in rids]
        for reply in self.store.apply(cmds):
            if reply["status"] != "ok" or reply["line"]["state"] != "shipped":
                raise RuntimeError(f"P7 build of {self.label}: a ship failed: {reply}")

    def build(self) -> dict[str, Any]:
        """Policy, the ended history (oldest), on-hand and lots, then the live lines."""
        sh, b = self.shape, self.cfg.batch
        task = self.progress.add_task(f"P7 {self.label}: build {sh.size:,} lines", total=sh.size)
        t0 = time.monotonic()
        self.store.set_policy(self.sku, {"mode": "presell", "cap_pm": 1000})
        # the expired kind holds its units until the second it comes due: room for all of them, so the
        # build never waits on the clock
        self._supply("count", loc=LOC, on_hand=sh.shipped + sh.expired + 2 * b)
        left = {"shipped": sh.shipped, "released": sh.released, "expired": sh.expired}
        while any(left.values()):  # the three kinds interleaved, as a real history ends them
            for kind in ("shipped", "released", "expired"):
                k = min(b, left[kind])
                if not k:
                    continue
                rids = self._rids(k, kind[0])
                if kind == "shipped":
                    self._hold(rids, commit=True)
                    self._ship_all(rids)
                elif kind == "released":
                    self._hold(rids)
                    self._release_all(rids)
                else:
                    self._hold(rids, ttl_ms=1)  # expired by the next call on the SKU
                left[kind] -= k
                self.progress.advance(task, k)
        time.sleep(1.01)  # the last of them come due (holds end at whole seconds)
        self._supply("count", loc=LOC, on_hand=sh.on_hand_live)  # gives back the last ones on the way
        self.store.sweep()  # and the expired lines are buried, as the sweeper does in service
        now = self._server_ms()
        self._supply("inbound_created", inbound_id=self.lots["big"], loc=LOC, qty=sh.big, eta_ms=now + 10 * DAY_MS,
                     supplier="sup-big")
        self._supply("inbound_created", inbound_id=self.lots["cancel"], loc=LOC, qty=sh.cancel,
                     eta_ms=now + 20 * DAY_MS, supplier="sup-cancel")
        self._supply("inbound_created", inbound_id=self.lots["tail"], loc=LOC, qty=sh.tail + sh.spare,
                     eta_ms=now + 30 * DAY_MS, supplier="sup-tail")
        t_live = time.monotonic()
        for i in range(0, sh.live, b):
            rids = self._rids(min(b, sh.live - i), "l")
            self._hold(rids, commit_every=4)  # a quarter committed
            self.held.extend(rid for j, rid in enumerate(rids) if j % 4 != 3)
            self.progress.advance(task, len(rids))
        self.build_hold_s = (time.monotonic() - t_live) / sh.live
        return {"seconds": round(time.monotonic() - t0, 2), "shape": asdict(sh), **self.census()}

    def census(self) -> dict[str, Any]:
        """Lines by state, read without expiring anything."""
        from engine.store import scripts
        from engine.store.keys import sku_keys
        from engine.store.wire import decode_reply

        keys = sku_keys(self.sku, P7_PREFIX)
        pos = decode_reply(scripts.call(self.client, *self.store._call("position", self.sku, "", "1")))
        lots = self.client.hgetall(keys.lots)
        return {
            "lines": self.client.hlen(keys.res), "ended_lines": self.client.zcard(keys.dead),
            "held_units": pos["held"], "committed_units": pos["committed"], "on_hand": pos["on_hand"],
            "oversold": pos["oversold"], "lots": {k.decode(): v.decode() for k, v in lots.items()},
        }  # fmt: skip

    def _server_ms(self) -> int:
        secs, micros = self.client.time()
        return int(secs) * 1000 + int(micros) // 1000

    # -- the operations

    def run_op(self, name: str, meter: _Meter, other: _Other, fn: Callable[[_Op], None]) -> _Op:
        op = _Op(name)
        other.check()
        with meter:
            op.t0 = time.monotonic()
            fn(op)
            op.t1 = time.monotonic()
            op.server = meter.read()
        other.wait_caught_up(op.t1)
        time.sleep(SETTLE_S)
        return op

    def op_hold(self, op: _Op) -> None:
        from engine.store.wire import HoldRequest

        for rid in self._rids(self.cfg.reps, "h"):
            reply = op.timed(lambda rid=rid: self.store.hold_batch(self.sku, [HoldRequest(rid, 1, ttl_ms=HOUR_MS)]))
            if reply[0]["status"] != "ok":
                raise RuntimeError(f"P7 hold on {self.label}: {reply[0]}")

    def _lifecycle(self, op: _Op, method: str) -> None:
        rids, self.held = self.held[-self.cfg.reps:], self.held[:-self.cfg.reps]
        for rid in rids:
            reply = op.timed(lambda rid=rid: getattr(self.store, method)(self.sku, rid))
            if reply["status"] != "ok":
                raise RuntimeError(f"P7 {method} on {self.label}: {reply}")

    def op_confirm(self, op: _Op) -> None:
        self._lifecycle(op, "confirm")

    def op_release(self, op: _Op) -> None:
        self._lifecycle(op, "release")

    def _one_supply(self, op: _Op, cmd: str, **payload: Any) -> dict[str, Any]:
        from engine.store.wire import SupplyCommand

        command = SupplyCommand(self.sku, cmd, payload)
        reply = op.timed(lambda: self.store.apply([command])[0])
        if reply["status"] != "ok":
            raise RuntimeError(f"P7 {cmd} on {self.label}: {reply.get('status')} {reply.get('reason', '')}")
        op.detail.update(slipped=len(reply["slipped"]), at_risk=len(reply["at_risk"]),
                         oversold=reply["position"]["oversold"])
        return reply

    def prepare(self, name: str) -> None:
        """Reads an operation needs, made before its measured window (a read through a script
        would count as the operation's server time)."""
        from engine.store.keys import sku_keys

        if name == "eta_slip":
            raw = self.client.hget(sku_keys(self.sku, P7_PREFIX).lots, self.lots["big"])
            self.big_eta_ms = int(raw.decode().split(",")[2])  # '<loc>,<qty>,<eta_ms>,<supplier>,<alloc>'
        elif name == "count_shed":
            self.on_hand_before = int(self.census()["on_hand"])

    def op_eta_slip(self, op: _Op) -> None:
        self._one_supply(op, "inbound_updated", inbound_id=self.lots["big"], eta_ms=self.big_eta_ms + 5 * DAY_MS)

    def op_cancel(self, op: _Op) -> None:
        self._one_supply(op, "inbound_cancelled", inbound_id=self.lots["cancel"])

    def op_count_shed(self, op: _Op) -> None:
        self._one_supply(op, "count", loc=LOC, on_hand=max(0, self.on_hand_before - self.shape.shed))
        op.detail["on_hand_before"] = self.on_hand_before

    def op_receipt(self, op: _Op) -> None:
        self._one_supply(op, "receipt", loc=LOC, qty=self.shape.big, inbound_id=self.lots["big"])

    def prepare_due(self, other: _Other) -> dict[str, Any]:
        """Hold ``shape.due`` lines that all come due at one moment (the other client paused while
        they are made); returns the moment (server ms) and the held units before."""
        from engine.domain.oracle import due_at

        due = self.shape.due
        other.pause()
        task = self.progress.add_task(f"P7 {self.label}: {due:,} holds to come due", total=due)
        # every hold expires at the same moment: far enough ahead that the last batch is made in
        # time, and a whole second (holds end at one)
        deadline = due_at(self._server_ms() + int(2000 * due * self.build_hold_s) + 1000)
        b = self.cfg.batch
        for i in range(0, due, b):
            ttl = deadline - self._server_ms()
            if ttl < 50:
                raise RuntimeError(f"P7 {self.label}: the due holds took longer to make than planned")
            self._hold(self._rids(min(b, due - i), "d"), ttl_ms=ttl)
            self.progress.advance(task, min(b, due - i))
        held = self.census()["held_units"]
        other.resume()
        while self._server_ms() <= deadline + 5:
            time.sleep(0.01)
        return {"deadline_ms": deadline, "held_units_before": held}

    def op_due_expiry(self, op: _Op) -> None:
        from engine.store.wire import HoldRequest

        rid = self._rids(1, "x")[0]
        reply = op.timed(lambda: self.store.hold_batch(self.sku, [HoldRequest(rid, 1, ttl_ms=HOUR_MS)]))
        if reply[0]["status"] != "ok":
            raise RuntimeError(f"P7 hold after the due holds on {self.label}: {reply[0]}")

    def op_purge(self, op: _Op) -> None:
        op.detail["lines_purged"] = op.timed(lambda: self.store.purge(self.cfg.retention_ms))

    def drop(self) -> None:
        from engine.store.keys import sku_keys

        self.client.unlink(*sku_keys(self.sku, P7_PREFIX).all)


def _engine_tree() -> dict[str, Any]:
    """Which engine code ran: the commit, and engine files changed in the work tree (the checkout is
    shared, so a run may measure uncommitted work)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "engine"], cwd=root, capture_output=True,
                               text=True, timeout=10).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": head, "engine_changes_uncommitted": [line[3:] for line in dirty if line.strip()]}


@contextlib.contextmanager
def _slowlog_config(client: Any, max_len: int) -> Iterator[int]:
    """Room in SLOWLOG for every call of an operation; the server's settings are put back after.
    Yields the threshold to restore between operations."""
    before = client.config_get("slowlog-*")
    threshold = int(before.get("slowlog-log-slower-than", 10_000))
    client.config_set("slowlog-max-len", max_len)
    try:
        yield threshold
    finally:
        client.config_set("slowlog-log-slower-than", threshold)
        client.config_set("slowlog-max-len", int(before.get("slowlog-max-len", 128)))
        client.slowlog_reset()


def _load_scripts(client: Any) -> None:
    """The engine's library loaded up front: a first call's load (a failed FCALL, then FUNCTION
    LOAD) must not land in a measured operation."""
    from engine.store import scripts

    scripts.load(client, scripts.load_library())


def _cleanup(target: Target, client: Any) -> None:
    keys = list(client.scan_iter(match=f"{P7_PREFIX}:{{LT-{target.token}-*", count=1000))
    for i in range(0, len(keys), 1000):
        client.unlink(*keys[i:i + 1000])


def run_history_cost(target: Target, cfg: HistoryCostConfig, progress: Progress, e1: Any = None,
                     m1: Any = None) -> dict[str, Any]:
    """P7 on ``target``: every size in turn, each operation timed; the report (a JSON-ready dict).
    ``e1`` / ``m1`` are this run's ``LimitResult`` of E1 and M1 (None: no ratio to them)."""
    from engine.store.store import Store
    from engine.store.wire import SupplyCommand

    e1_usec = e1.script_usec_per_call if e1 is not None else None
    m1_usec = m1.script_usec_per_call if m1 is not None else None
    client = target.client(client_name=HOT_CLIENT)
    other_sku = target.sku("P7-other")
    Store(client, prefix=P7_PREFIX).apply([SupplyCommand(other_sku, "count", {"loc": LOC, "on_hand": 10**9})])
    _load_scripts(client)
    other = _Other(target, other_sku, cfg.other_rate, cfg.other_connections)
    runs: list[dict[str, Any]] = []
    windows: list[tuple[dict[str, Any], _Op]] = []
    idle_windows: list[tuple[dict[str, Any], float, float]] = []
    t_start = time.monotonic()
    try:
        with _slowlog_config(client, cfg.slowlog_max_len) as threshold:
            meter = _Meter(client, cfg.slowlog_max_len, cfg.slowlog_threshold_us, threshold)
            for size in cfg.sizes:
                hot = _Hot(target, client, cfg, size, progress)
                other.pause()
                run: dict[str, Any] = {"size": size, "label": hot.label, "build": hot.build(), "ops": {}}
                other.check()
                other.resume()
                t0 = time.monotonic()
                time.sleep(IDLE_S)
                idle_windows.append((run, t0, time.monotonic()))
                task = progress.add_task(f"P7 {hot.label}: operations", total=len(OPS))
                for name in OPS:
                    prep = hot.prepare_due(other) if name == "due_expiry" else None
                    hot.prepare(name)
                    op = hot.run_op(name, meter, other, getattr(hot, f"op_{name}"))
                    if prep is not None:
                        held_after = hot.census()["held_units"]
                        op.detail.update(due_holds=hot.shape.due, expired=prep["held_units_before"] + 1 - held_after)
                    windows.append((run, op))
                    progress.advance(task)
                run["after"] = hot.census()
                hot.drop()
                runs.append(run)
            other.collect()
    finally:
        other.close()
        _cleanup(target, client)
        client.close()
    for run, op in windows:
        run["ops"][op.name] = op.to_dict(other)
    for run, t0, t1 in idle_windows:
        run["other_idle"] = other.latency(t0, t1)
    targets = evaluate(runs, m1_usec, e1_usec)
    report = {
        "name": "P7",
        "config": {**asdict(cfg), "sizes": [size_label(n) for n in cfg.sizes]},
        "target": (f"at the largest size: no call > {TARGETS.max_call_ms:g} ms (SLOWLOG); server time per call "
                   f"<= {TARGETS.max_growth} x at the smallest size; other SKU's hold p99 <= "
                   f"{TARGETS.other_p99_ms:g} ms; single hold <= {TARGETS.hold_vs_m1:g} x M1"),
        "target_met": targets["target_met"],
        "m1_usec_per_call": round(m1_usec, 2) if m1_usec else None,
        "e1_usec_per_call": round(e1_usec, 2) if e1_usec else None,
        "seconds": round(time.monotonic() - t_start, 1),
        "engine": _engine_tree(),
        "other_client": {"rate_per_s": cfg.other_rate, "holds": len(other.sched), "errors": other.errors},
        "runs": runs,
        "targets": targets,
        "table": table_rows(runs),
    }
    report["headline"] = headline(report)
    return report


def table_rows(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per size × operation: the figures a reader compares first (pure)."""
    rows = []
    for run in runs:
        for op in OPS:
            o = run["ops"].get(op)
            if o is None:
                continue
            other = o.get("other") or {}
            rows.append({
                "size": run["label"], "op": op, "client_calls": o["client_calls"], "script_calls": o["script_calls"],
                "wall_ms_median": o["wall_ms_median"], "server_usec_per_call": o["server_usec_per_call"],
                "longest_call_ms": o["longest_call_ms"], "other_p99_ms": other.get("p99_ms"),
                "other_max_ms": other.get("max_ms"), "other_samples": other.get("count"),
            })  # fmt: skip
    return rows
