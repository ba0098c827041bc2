"""Demand statistics per (SKU, location), in event time, from order quantities.

Two views of the same orders:

* **Daily rate** for replenishment. Orders are summed into UTC day buckets; when a day closes
  (an order or a tick of a later day arrives), its total ``x`` is folded into an EWMA with weight
  ``alpha``: ``diff = x − d; d += alpha·diff; var = (1 − alpha)·(var + alpha·diff²)`` — the
  exponentially weighted mean and variance of the daily totals, σ = √var. Days without orders
  between two active days count as 0. The first closed day initialises ``d = x, var = 0``. Until a
  day has closed, ``d`` is the open day's units so far (the only evidence there is) and σ = 0.
* **Growth** for the ``demand_surge`` alert: ``recent`` = units in the last ``window_hours``
  (hourly buckets, the current hour included) against ``baseline`` = the average units per day in
  the ``baseline_days`` before that window. Only days since the first recorded order count towards
  the baseline, and at least one full day of them is needed (before that there is no baseline and no
  surge is judged). The surge rule and its hysteresis are in ``engine.domain.alerts``.

What counts as demand: every ``order_placed`` that was applied or refused (a refused order is still
demand — that is what ``order_unfulfillable`` reports), and every checkout hold or confirm made
through the API (``count_order``); duplicates count nothing, cancellations and releases are not
subtracted. One reservation id is one order: a checkout held, then confirmed, then placed on the
stream under the same id counts once, with the quantity and time it was first seen (``CountedOrders``
remembers the ids counted, bounded). An order older than the open day (producer clock skew) is added
to the open day and, when its hour is still kept, to its own hour.

State is plain picklable dataclasses; functions mutate and return the state they are given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.domain.observation import Observation

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
MAX_ZERO_DAYS = 400
"""Longer gaps fold at most this many zero days: by then (1 − alpha)^400 has erased the past."""
COUNTED_MAX = 5_000
"""Reservation ids a SKU remembers as counted. Past it the oldest are forgotten: an order whose
hold and stream placement lie further apart than this many other orders of the SKU counts twice."""
COUNTED_FOR_MS = 7 * DAY_MS
"""How long a counted id is remembered (event time, from the newest counted): a checkout placed on
the stream later than this counts again."""


@dataclass(frozen=True)
class DemandParams:
    """Tuning of the statistics (defaults suit daily retail demand)."""

    alpha: float = 0.25
    window_hours: int = 24
    baseline_days: int = 7

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if not 1 <= self.window_hours <= 24 * 31:
            raise ValueError(f"window_hours must be in 1..744, got {self.window_hours}")
        if not 1 <= self.baseline_days <= 90:
            raise ValueError(f"baseline_days must be in 1..90, got {self.baseline_days}")

    @classmethod
    def from_settings(cls, settings: Any) -> DemandParams:
        """From ``Settings.demand_alpha``, ``demand_window_hours``, ``demand_baseline_days``."""
        return cls(alpha=float(settings.demand_alpha), window_hours=int(settings.demand_window_hours),
                   baseline_days=int(settings.demand_baseline_days))


@dataclass
class DemandStats:
    """Demand of one (SKU, location)."""

    first_ms: int
    """Event time of the first order recorded: where the history starts."""
    day: int
    """The open UTC day (ms // DAY_MS)."""
    day_qty: int = 0
    days: int = 0
    """Closed days folded into the EWMA."""
    rate: float = 0.0
    var: float = 0.0
    hours: dict[int, int] = field(default_factory=dict)
    """Hour index (ms // HOUR_MS) → units; only hours still inside window + baseline are kept."""
    clock_ms: int = 0
    """The latest time seen (orders and ticks)."""
    sums_key: tuple[int, int, int] = (-1, 0, 0)
    """(hour, window_hours, baseline_days) the cached window sums below are for: ``reading`` is
    called on every observation, so the sums are kept up to date instead of re-added each time."""
    sum_recent: int = 0
    sum_base: int = 0


@dataclass
class CountedOrders:
    """The reservation ids whose units were counted as demand at one SKU → when (event time), in the
    order counted. Bounded by ``COUNTED_MAX`` and ``COUNTED_FOR_MS``; plain data, so it is snapshotted
    with the rest of the SKU's rule state and a replay after a crash decides as the first pass did."""

    ids: dict[str, int] = field(default_factory=dict)

    def first(self, rid: str, at_ms: int) -> bool:
        """True (and ``rid`` remembered) the first time ``rid`` is seen; False after that. An empty
        id is never remembered: every such order counts."""
        if not rid:
            return True
        ids = self.ids
        if rid in ids:
            return False
        ids[rid] = at_ms
        horizon = at_ms - COUNTED_FOR_MS
        while True:  # the oldest first; ``rid`` itself is always kept
            oldest = next(iter(ids))
            if len(ids) <= COUNTED_MAX and ids[oldest] >= horizon:
                return True
            del ids[oldest]


@dataclass(frozen=True)
class DemandRate:
    """The figures replenishment uses: ``d`` units/day and its spread ``sigma``."""

    d: float
    sigma: float
    days: int


@dataclass(frozen=True)
class DemandReading:
    """Growth of demand at one instant (input of the ``demand_surge`` rule)."""

    recent_units: int
    baseline_per_day: float
    baseline_days: float
    """How many days the baseline averages over (0 = no baseline yet)."""
    window_hours: int

    @property
    def has_baseline(self) -> bool:
        return self.baseline_days >= 1

    @property
    def recent_per_day(self) -> float:
        """The window's units scaled to one day (equal to ``recent_units`` for a 24 h window)."""
        return self.recent_units * 24 / self.window_hours

    @property
    def growth_pct(self) -> float | None:
        """(recent per day − baseline) / baseline · 100, or None without a positive baseline."""
        if not self.has_baseline or self.baseline_per_day <= 0:
            return None
        return (self.recent_per_day - self.baseline_per_day) / self.baseline_per_day * 100


def record_order(stats: DemandStats | None, occurred_ms: int, qty: int, params: DemandParams) -> DemandStats:
    """Count ``qty`` units ordered at ``occurred_ms``; returns the (new or updated) stats."""
    if qty < 0 or occurred_ms < 0:
        raise ValueError("qty and occurred_ms must be ≥ 0")
    if stats is None:
        stats = DemandStats(first_ms=occurred_ms, day=occurred_ms // DAY_MS)
    advance(stats, occurred_ms, params)
    stats.day_qty += qty
    hour = occurred_ms // HOUR_MS
    if hour >= _oldest_kept_hour(stats.clock_ms, params):
        stats.hours[hour] = stats.hours.get(hour, 0) + qty
        if stats.sums_key == (stats.sums_key[0], params.window_hours, params.baseline_days):
            start, base_start = _windows(stats, stats.sums_key[0], params)
            if start <= hour <= stats.sums_key[0]:
                stats.sum_recent += qty
            elif base_start <= hour < start:
                stats.sum_base += qty
    return stats


def advance(stats: DemandStats, now_ms: int, params: DemandParams) -> DemandStats:
    """Let time pass to ``now_ms``: close the days before it and drop hours no window needs.
    A time before the open day changes nothing."""
    stats.clock_ms = max(stats.clock_ms, now_ms)
    day = now_ms // DAY_MS
    if day > stats.day:
        _fold(stats, stats.day_qty, params.alpha)
        for _ in range(min(day - stats.day - 1, MAX_ZERO_DAYS)):
            _fold(stats, 0, params.alpha)
        stats.day = day
        stats.day_qty = 0
    oldest = _oldest_kept_hour(stats.clock_ms, params)
    if stats.hours and min(stats.hours) < oldest:
        stats.hours = {h: q for h, q in stats.hours.items() if h >= oldest}
    return stats


def demand_rate(stats: DemandStats | None) -> DemandRate:
    """``d`` and ``σ`` per day (zeros when nothing was ever ordered)."""
    if stats is None:
        return DemandRate(0.0, 0.0, 0)
    if stats.days == 0:
        return DemandRate(float(stats.day_qty), 0.0, 0)
    return DemandRate(stats.rate, math.sqrt(stats.var), stats.days)


def reading(stats: DemandStats | None, now_ms: int, params: DemandParams) -> DemandReading:
    """Recent units against the baseline at ``now_ms`` — or at the latest time the stats have seen,
    if later (a late event does not move the window back). Only the cached window sums change."""
    if stats is None:
        return DemandReading(0, 0.0, 0.0, params.window_hours)
    now_h = max(now_ms, stats.clock_ms) // HOUR_MS
    window_start, base_start = _windows(stats, now_h, params)
    key = (now_h, params.window_hours, params.baseline_days)
    if stats.sums_key != key:
        stats.sums_key = key
        stats.sum_recent = sum(q for h, q in stats.hours.items() if window_start <= h <= now_h)
        stats.sum_base = sum(q for h, q in stats.hours.items() if base_start <= h < window_start)
    recent = stats.sum_recent
    base_hours = window_start - base_start
    if base_hours < 24:
        return DemandReading(recent, 0.0, 0.0, params.window_hours)
    base_days = base_hours / 24
    return DemandReading(recent, stats.sum_base / base_days, base_days, params.window_hours)


def _windows(stats: DemandStats, now_h: int, params: DemandParams) -> tuple[int, int]:
    """First hour of the recent window ending at ``now_h``, and first hour of the baseline before it
    (never before the first recorded order)."""
    window_start = now_h - params.window_hours + 1
    return window_start, max(window_start - params.baseline_days * 24, stats.first_ms // HOUR_MS)


# --- per SKU: one DemandStats per location -----------------------------------------------------


def observe(
    book: dict[str, DemandStats] | None,
    obs: Observation,
    params: DemandParams,
    counted: CountedOrders | None = None,
) -> dict[str, DemandStats]:
    """Update a SKU's per-location stats with one observation: orders add demand (once per
    reservation id when ``counted`` is given), every observation (ticks included) lets time pass.
    Returns the book (a plain dict location → stats)."""
    book = {} if book is None else book
    if obs.command == "order_placed" and obs.status in ("ok", "refused"):
        count_order(book, counted, obs.rid, obs.location, obs.qty, obs.occurred_ms, params)
    for stats in book.values():
        advance(stats, obs.occurred_ms, params)
    return book


def count_order(
    book: dict[str, DemandStats],
    counted: CountedOrders | None,
    rid: str,
    location: str,
    qty: int,
    occurred_ms: int,
    params: DemandParams,
) -> bool:
    """Add ``qty`` units ordered at ``location`` under reservation ``rid`` to ``book``, unless that id
    was counted already; True when it counted."""
    if qty <= 0 or (counted is not None and not counted.first(rid, occurred_ms)):
        return False
    book[location] = record_order(book.get(location), occurred_ms, qty, params)
    return True


def readings(book: Mapping[str, DemandStats], now_ms: int, params: DemandParams) -> dict[str, DemandReading]:
    """``reading`` of every location, sorted by location."""
    return {loc: reading(book[loc], now_ms, params) for loc in sorted(book)}


def rates(book: Mapping[str, DemandStats]) -> dict[str, DemandRate]:
    """``demand_rate`` of every location, sorted by location."""
    return {loc: demand_rate(book[loc]) for loc in sorted(book)}


def _fold(stats: DemandStats, x: int, alpha: float) -> None:
    if stats.days == 0:
        stats.rate, stats.var = float(x), 0.0
    else:
        diff = x - stats.rate
        incr = alpha * diff
        stats.rate += incr
        stats.var = (1 - alpha) * (stats.var + diff * incr)
    stats.days += 1


def _oldest_kept_hour(clock_ms: int, params: DemandParams) -> int:
    return clock_ms // HOUR_MS - params.window_hours - params.baseline_days * 24 + 1
