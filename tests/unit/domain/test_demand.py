"""Demand statistics on hand-computed cases: daily EWMA rate and spread, growth window, bookkeeping."""

import copy
import math
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.domain.demand import (
    DAY_MS,
    HOUR_MS,
    DemandParams,
    DemandRate,
    DemandReading,
    advance,
    demand_rate,
    observe,
    rates,
    reading,
    readings,
    record_order,
)
from engine.domain.observation import Observation

T0 = 1_735_689_600_000  # 2025-01-01T00:00:00Z, a UTC day boundary
HOUR = HOUR_MS
P = DemandParams()  # alpha 0.25, 24 h window, 7-day baseline


def test_first_closed_day_initialises_the_rate_then_the_ewma_follows_by_hand():
    s = record_order(None, T0 + 3 * HOUR, 4, P)
    s = record_order(s, T0 + 9 * HOUR, 6, P)  # day 0: 10 units
    s = record_order(s, T0 + DAY_MS + HOUR, 20, P)  # closes day 0
    assert (s.days, s.rate, s.var) == (1, 10.0, 0.0)
    s = record_order(s, T0 + 3 * DAY_MS, 5, P)  # closes day 1 (20) and day 2 (0)
    # day 1: diff = 10, incr = 2.5 → d = 12.5, var = 0.75·(0 + 10·2.5) = 18.75
    # day 2: diff = −12.5, incr = −3.125 → d = 9.375, var = 0.75·(18.75 + 12.5·3.125) = 43.359375
    assert s.days == 3 and s.day_qty == 5
    assert s.rate == pytest.approx(9.375)
    assert s.var == pytest.approx(43.359375)
    rate = demand_rate(s)
    assert (rate.d, rate.days) == (pytest.approx(9.375), 3)
    assert rate.sigma == pytest.approx(math.sqrt(43.359375))  # 6.5848


def test_before_a_day_closes_the_rate_is_the_day_so_far():
    s = record_order(None, T0 + HOUR, 7, P)
    s = record_order(s, T0 + 2 * HOUR, 5, P)
    assert demand_rate(s) == DemandRate(12.0, 0.0, 0)
    assert demand_rate(None).d == 0.0


def test_steady_demand_converges_to_its_rate_with_no_spread():
    s = None
    for day in range(30):
        s = record_order(s, T0 + day * DAY_MS, 10, P)
    assert s is not None
    advance(s, T0 + 30 * DAY_MS, P)
    assert demand_rate(s).d == pytest.approx(10.0) and demand_rate(s).sigma == pytest.approx(0.0)


def test_a_time_only_advance_decays_a_quiet_sku_and_a_huge_gap_is_bounded():
    s = record_order(None, T0, 10, P)
    advance(s, T0 + 2 * DAY_MS, P)  # day 0 = 10, day 1 = 0
    assert s.days == 2 and s.rate == pytest.approx(7.5)
    advance(s, T0 + 10_000 * DAY_MS, P)
    assert s.days == 2 + 1 + 400  # day 2 closed, then at most 400 zero days folded
    assert s.rate < 1e-40 and s.hours == {}


def test_growth_compares_the_last_24_hours_with_the_seven_days_before():
    s = record_order(None, T0, 99, P)  # hour 0: starts the history, outside both windows later
    for k in range(1, 8):
        s = record_order(s, T0 + k * DAY_MS, 10, P)  # hours 24, 48, …, 168
    s = record_order(s, T0 + 8 * DAY_MS, 25, P)  # hour 192 = now
    r = reading(s, T0 + 8 * DAY_MS, P)
    # window: hours 169..192 → 25 units; baseline: hours 1..168 → 70 units over 7 days
    assert r == DemandReading(recent_units=25, baseline_per_day=10.0, baseline_days=7.0, window_hours=24)
    assert r.growth_pct == pytest.approx(150.0)
    assert 0 not in s.hours  # pruned: older than window + baseline


def test_a_short_history_averages_over_the_days_it_has_and_needs_one_full_day():
    s = record_order(None, T0, 12, P)
    assert not reading(s, T0 + 46 * HOUR, P).has_baseline  # 23 h of history before the window
    s = record_order(s, T0 + 47 * HOUR, 30, P)
    r = reading(s, T0 + 47 * HOUR, P)  # window hours 24..47; baseline hours 0..23 = 1 day
    assert (r.recent_units, r.baseline_per_day, r.baseline_days) == (30, 12.0, 1.0)
    assert r.growth_pct == pytest.approx(150.0)
    assert DemandReading(30, 0.0, 1.0, 24).growth_pct is None


def test_a_late_order_counts_in_the_open_day_and_its_own_hour():
    s = record_order(None, T0, 1, P)
    s = record_order(s, T0 + DAY_MS + 5 * HOUR, 3, P)
    s = record_order(s, T0 + 2 * HOUR, 4, P)  # producer clock skew: day 0 already closed
    assert (s.days, s.rate, s.day_qty) == (1, 1.0, 7)
    assert s.hours[(T0 + 2 * HOUR) // HOUR_MS] == 4
    # The window never moves back before the clock (T0 + 29 h): hours 6..29 hold only the 3 units.
    assert reading(s, T0, P).recent_units == 3


def order(loc: str, qty: int, t: int, status: str = "ok") -> Observation:
    return Observation(
        sku="SKU-1", command="order_placed", occurred_ms=t, status=status, rid="o", qty=qty, location=loc
    )


def test_observe_counts_applied_and_refused_orders_per_location_but_not_duplicates():
    book = observe(None, order("WH1", 3, T0), P)
    book = observe(book, order("WH1", 2, T0 + 1, status="refused"), P)
    book = observe(book, order("WH1", 50, T0 + 2, status="duplicate"), P)
    book = observe(book, order("WH2", 4, T0 + 3), P)
    book = observe(
        book, Observation(sku="SKU-1", command="ship", occurred_ms=T0 + 4, qty=9, location="WH1"), P
    )
    assert {loc: s.day_qty for loc, s in book.items()} == {"WH1": 5, "WH2": 4}
    book = observe(book, Observation.tick("SKU-1", T0 + DAY_MS), P)  # a tick closes the day everywhere
    assert {loc: r.d for loc, r in rates(book).items()} == {"WH1": 5.0, "WH2": 4.0}
    assert list(readings(book, T0 + DAY_MS, P)) == ["WH1", "WH2"]


def test_a_late_order_inside_the_baseline_updates_the_cached_baseline():
    s = record_order(None, T0, 5, P)
    s = record_order(s, T0 + 40 * HOUR, 5, P)
    s = record_order(s, T0 + 80 * HOUR, 5, P)
    before = reading(s, T0 + 80 * HOUR, P)  # baseline: hours 0..56 (2.375 days) hold 10 units
    s = record_order(s, T0 + 50 * HOUR, 7, P)  # late, inside that baseline
    after = reading(s, T0 + 50 * HOUR, P)
    assert (before.baseline_days, after.baseline_days) == (2.375, 2.375)
    assert after.baseline_per_day == pytest.approx(17 / 2.375) and after.recent_units == 5


def test_stats_pickle_and_params_are_validated():
    s = record_order(None, T0, 5, P)
    s = record_order(s, T0 + DAY_MS, 7, P)
    assert pickle.loads(pickle.dumps(s)) == s
    with pytest.raises(ValueError):
        DemandParams(alpha=0)
    with pytest.raises(ValueError):
        record_order(None, T0, -1, P)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([-30 * HOUR, -5 * HOUR, 0, HOUR, 20 * HOUR, 40 * HOUR]), st.integers(1, 50)
        ),
        max_size=40,
    )
)
def test_cached_window_sums_match_a_fresh_count(steps):
    s = None
    t = T0 + 10 * DAY_MS
    for delta, qty in steps:
        t = max(T0, t + delta)  # mostly forward, sometimes a late event
        s = record_order(s, t, qty, P)
        got = reading(s, t, P)
        fresh = copy.deepcopy(s)
        fresh.sums_key = (-1, 0, 0)
        assert got == reading(fresh, t, P)
