"""The history and burst modes of ``loadtest.stream_bench``: their events and their arithmetic (pure).

* **history** — the rate over the first and the last tenth of one long backlog: a store whose
  per-event cost grows with what it holds shows a last tenth slower than the first.
* **burst** — a flash sale: orders of one line on a few hot SKUs at a fixed rate for a while,
  produced while the flow runs; the lag over time, and how long after the last order the flow
  has caught up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from engine.domain.events import format_time, from_ms

Point = tuple[float, float]
"""(seconds, events through so far); counts never go down."""


def time_at(points: Sequence[Point], count: float) -> float | None:
    """When the running count reached ``count``, interpolated linearly between the two points
    around it; None if it never did."""
    prev_t, prev_n = 0.0, 0.0
    for t, n in points:
        if n >= count:
            if n == prev_n:
                return t
            return prev_t + (t - prev_t) * (count - prev_n) / (n - prev_n)
        prev_t, prev_n = t, n
    return None


def segment_rates(
    points: Sequence[Point], total: int, fraction: float = 0.1, skip: float = 0.01
) -> dict[str, Any]:
    """Events/s over the first and the last ``fraction`` of ``total`` events, and their ratio.

    The first segment starts after the first ``skip`` of the events, so the start-up (connecting,
    loading the scripts, the first fetch) is not counted as the store's cost.
    """
    if not 0 < skip < fraction <= 0.5:
        raise ValueError("need 0 < skip < fraction <= 0.5")
    marks = {
        "first": (skip * total, fraction * total),
        "last": ((1 - fraction) * total, float(total)),
    }
    out: dict[str, Any] = {"fraction": fraction, "skip": skip}
    for name, (lo, hi) in marks.items():
        t0, t1 = time_at(points, lo), time_at(points, hi)
        rate = (hi - lo) / (t1 - t0) if t0 is not None and t1 is not None and t1 > t0 else None
        out[f"{name}_events_per_s"] = round(rate, 1) if rate is not None else None
    first, last = out["first_events_per_s"], out["last_events_per_s"]
    out["last_over_first"] = round(last / first, 4) if first and last else None
    return out


def hot_skus(count: int, token: str) -> list[str]:
    """The burst's SKUs: ``HOT-<token>-00`` …"""
    return [f"HOT-{token}-{i:02d}" for i in range(count)]


def seed_receipt(sku: str, n: int, token: str, at_ms: int, qty: int) -> bytes:
    """A ``receipt.posted`` that stocks ``sku`` before the burst."""
    return orjson.dumps({
        "event_id": f"bseed-{token}-{n}", "type": "receipt.posted", "occurred_at": format_time(from_ms(at_ms)),
        "receipt_id": f"bseed-{token}-{n}", "sku": sku, "qty": qty,
    })  # fmt: skip


def burst_order(n: int, sku: str, token: str, at_ms: int) -> bytes:
    """The ``n``-th order of the burst: one unit of ``sku``."""
    return orjson.dumps({
        "event_id": f"burst-{token}-{n}", "type": "order.placed", "occurred_at": format_time(from_ms(at_ms)),
        "order_id": f"burst-{token}-{n}", "channel": "web", "lines": [{"sku": sku, "qty": 1}],
    })  # fmt: skip


def due(rate: float, elapsed_s: float, duration_s: float) -> int:
    """How many orders a steady ``rate`` has sent ``elapsed_s`` into a burst of ``duration_s``."""
    return int(rate * min(max(elapsed_s, 0.0), duration_s))


def catch_up(series: Sequence[dict[str, Any]], produced_until_s: float) -> float | None:
    """Seconds from the end of production until the lag (``series``: ``{t_s, lag}`` samples) was
    0 again; None if it never was."""
    for s in series:
        if s["t_s"] >= produced_until_s and s["lag"] <= 0:
            return round(s["t_s"] - produced_until_s, 3)
    return None
