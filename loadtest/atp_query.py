"""P4 — ATP of a batch of 100 SKUs in one call (``AtpClient.atp_many``: one pipelined round trip
of position scripts).

The SKUs look like a live catalogue: stock at two locations, an inbound lot, a few live holds.
One caller asks for the whole batch back to back; each call's latency is recorded.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from loadtest.progress import Progress
from loadtest.server_stats import SCRIPTS, ServerMeter
from loadtest.stats import ratio, summarize, time_series
from loadtest.target import Target
from loadtest.targets import P4_P99_MS

DAY_MS = 86_400_000


@dataclass(frozen=True)
class AtpQueryConfig:
    skus: int = 100
    queries: int = 5_000
    duration_s: float = 8.0
    seed: int = 11
    profile: bool = True  # also profile the position script (instrumented copy, 20 calls per SKU)

    def __post_init__(self) -> None:
        if not 1 <= self.skus <= 1000:
            raise ValueError("skus must be in [1, 1000]")
        if self.queries < 1 or self.duration_s <= 0:
            raise ValueError("queries and duration_s must be positive")


def stock_catalogue(target: Target, names: list[str], seed: int) -> None:
    """Counts at two locations, one inbound lot and three live holds for each SKU."""
    from engine.store.store import HoldRequest, Store, SupplyCommand

    rng = random.Random(seed)
    client = target.client()
    store = Store(client, prefix=target.prefix)
    now_ms = int(time.time() * 1000)
    commands = []
    for sku in names:
        for loc in ("dc-east", "dc-west"):
            commands.append(SupplyCommand(sku=sku, cmd="count", payload={"loc": loc, "on_hand": rng.randint(0, 500)}))
        commands.append(SupplyCommand(
            sku=sku, cmd="inbound_created",
            payload={"inbound_id": f"po-{sku}", "loc": "dc-east", "qty": rng.randint(10, 200),
                     "eta_ms": now_ms + rng.randint(1, 20) * DAY_MS, "supplier": "acme"},
        ))  # fmt: skip
    store.apply(commands)
    for sku in names:
        store.hold_batch(sku, [HoldRequest(rid=target.rid(f"p4-{sku}-{i}"), qty=1) for i in range(3)])
    client.close()


def run_atp_query(target: Target, cfg: AtpQueryConfig, progress: Progress, e16_rps: float = 0.0) -> dict[str, Any]:
    """Query the batch back to back until ``queries`` or ``duration_s``; return the report."""
    from engine.reservations.client import AtpClient

    names = [target.sku(f"P4-{i:04d}") for i in range(cfg.skus)]
    stock_catalogue(target, names, cfg.seed)
    conn = target.client()
    client = AtpClient(conn, prefix=target.prefix)
    for _ in range(50):  # warm-up: connection, script cache
        client.atp_many(names)
    task = progress.add_task(f"P4: atp_many of {cfg.skus} SKUs", total=cfg.queries)
    starts: list[float] = []
    ends: list[float] = []
    bad = 0
    with ServerMeter(conn) as meter:
        deadline = time.monotonic() + cfg.duration_s
        for i in range(cfg.queries):
            t = time.monotonic()
            if t >= deadline:
                break
            positions = client.atp_many(names)
            ends.append(time.monotonic())
            starts.append(t)
            if len(positions) != cfg.skus:
                bad += 1
            if i % 100 == 0:
                progress.update(task, completed=i)
    progress.update(task, completed=len(ends))
    client.close()
    conn.close()
    assert meter.result is not None
    phase = meter.result
    lat = [e - s for s, e in zip(starts, ends, strict=True)]
    took = ends[-1] - starts[0]
    summary = summarize(lat)
    positions_per_s = len(lat) * cfg.skus / took
    calls = phase.calls(SCRIPTS)
    profile = _position_profile(target, names) if cfg.profile else None
    return {
        "name": "P4",
        "config": cfg.__dict__,
        "queries": len(lat),
        "queries_per_s": round(len(lat) / took, 1),
        "positions_per_s": round(positions_per_s, 1),
        "ratio_positions_vs_e16": ratio(positions_per_s, e16_rps),
        "latency": summary.to_dict(),
        "target": f"p99 <= {P4_P99_MS:g} ms",
        "target_met": bad == 0 and summary.p99_ms <= P4_P99_MS,
        "incomplete_answers": bad,
        "script_usec_per_position": round(phase.usec_per_call(SCRIPTS), 2),
        "script_usec_per_query": round(phase.usec(SCRIPTS) / len(lat), 1),
        "server_cpu_us_per_query": round(phase.cpu_us_per(len(lat)), 1),
        "script_calls": calls,
        "position_script_profile": profile,
        "server": phase.to_dict(),
        "series": [i.__dict__ for i in time_series([e - starts[0] for e in ends], lat, [True] * len(lat), 0.0, 0.5)],
    }


def _position_profile(target: Target, names: list[str], rounds: int = 20) -> dict[str, Any]:
    """Where a position call's time goes: the instrumented copy of position.lua (see P6)."""
    from engine.store.keys import script_keys
    from engine.store.scripts import is_cluster
    from loadtest.script_cost import PROFILE_NOTE, instrumented, profile_segments

    source = instrumented("position", work="position figures")
    client = target.client()
    cluster = is_cluster(client)
    calls = ((script_keys(sku, target.prefix, cluster), [sku, 0, ""]) for _ in range(rounds) for sku in names)
    try:
        out = profile_segments(client, source, calls)
    finally:
        client.close()
    out["note"] = PROFILE_NOTE
    return out
