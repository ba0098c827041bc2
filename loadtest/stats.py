"""Latency percentiles and per-interval time series (pure: no I/O, no clock).

Percentiles use the nearest-rank definition: ``p`` is the smallest recorded value such that at
least ``p`` percent of the samples are at or below it. It never interpolates, so a reported p99
is always a latency some request really had.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values; ``pct`` in (0, 100].

    Raises ``ValueError`` for an empty sequence or a percentage outside (0, 100].
    """
    if not sorted_values:
        raise ValueError("percentile of no samples")
    if not 0 < pct <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {pct}")
    # round first: 99.9 / 100 * 1000 is 999.0000000000001 in floating point, not 999
    rank = math.ceil(round(pct * len(sorted_values) / 100, 9))
    return float(sorted_values[max(rank, 1) - 1])


@dataclass(frozen=True)
class LatencySummary:
    """Latency figures in milliseconds over ``count`` samples (all zero when there are none)."""

    count: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def summarize(latencies_s: Sequence[float]) -> LatencySummary:
    """Percentiles of latencies given in seconds, reported in milliseconds."""
    if not latencies_s:
        return LatencySummary(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    xs = sorted(latencies_s)
    ms = 1000.0
    return LatencySummary(
        count=len(xs),
        mean_ms=sum(xs) / len(xs) * ms,
        p50_ms=percentile(xs, 50) * ms,
        p90_ms=percentile(xs, 90) * ms,
        p99_ms=percentile(xs, 99) * ms,
        p999_ms=percentile(xs, 99.9) * ms,
        max_ms=xs[-1] * ms,
    )


@dataclass(frozen=True)
class Interval:
    """One slice of a run: completions per second, successes per second and latency percentiles
    of the requests that completed in ``[t_s, t_s + width_s)`` (seconds from the run's start)."""

    t_s: float
    width_s: float
    per_s: float
    ok_per_s: float
    p50_ms: float
    p99_ms: float


def time_series(
    ends_s: Sequence[float],
    latencies_s: Sequence[float],
    ok: Sequence[bool],
    t0_s: float,
    width_s: float = 0.5,
) -> list[Interval]:
    """Bucket completed requests by completion time into intervals of ``width_s`` seconds from
    ``t0_s``. Every interval from the first to the last one holding a completion is returned, empty
    ones with zero rates. Completions before ``t0_s`` are ignored.

    Raises ``ValueError`` when the three sequences differ in length or ``width_s`` is not positive.
    """
    if not len(ends_s) == len(latencies_s) == len(ok):
        raise ValueError("ends, latencies and ok must have the same length")
    if width_s <= 0:
        raise ValueError("width_s must be positive")
    buckets: dict[int, list[float]] = {}
    oks: dict[int, int] = {}
    for end, lat, good in zip(ends_s, latencies_s, ok, strict=True):
        if end < t0_s:
            continue
        i = int((end - t0_s) // width_s)
        buckets.setdefault(i, []).append(lat)
        if good:
            oks[i] = oks.get(i, 0) + 1
    if not buckets:
        return []
    out = []
    for i in range(max(buckets) + 1):
        lats = sorted(buckets.get(i, []))
        out.append(
            Interval(
                t_s=i * width_s,
                width_s=width_s,
                per_s=len(lats) / width_s,
                ok_per_s=oks.get(i, 0) / width_s,
                p50_ms=percentile(lats, 50) * 1000 if lats else 0.0,
                p99_ms=percentile(lats, 99) * 1000 if lats else 0.0,
            )
        )
    return out


def ratio(value: float, limit: float) -> float | None:
    """``value / limit`` rounded to 3 places, or None when the limit is unknown or zero."""
    if not limit:
        return None
    return round(value / limit, 3)
