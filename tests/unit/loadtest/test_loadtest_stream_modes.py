"""The arithmetic and events of stream_bench's history and burst modes (loadtest/stream_modes.py), pure."""

from __future__ import annotations

import pytest

from engine.domain.events import OrderPlaced, ReceiptPosted, parse_event
from loadtest.stream_modes import burst_order, catch_up, due, hot_skus, seed_receipt, segment_rates, time_at


def test_time_at_interpolates_between_samples_and_says_never() -> None:
    points = [(1.0, 0), (2.0, 100), (3.0, 100), (4.0, 300)]
    assert time_at(points, 50) == pytest.approx(1.5)
    assert time_at(points, 100) == pytest.approx(2.0)
    assert time_at(points, 200) == pytest.approx(3.5)
    assert time_at(points, 301) is None


def test_segment_rates_compare_the_last_tenth_with_the_first() -> None:
    # 1,000 events/s for the first half, 500/s after: the last tenth runs at half the first
    points = [(float(t), 1000.0 * t) for t in range(6)] + [(5.0 + t, 5000.0 + 500.0 * t) for t in range(1, 11)]
    rates = segment_rates(points, 10_000)
    assert rates["first_events_per_s"] == pytest.approx(1000.0)
    assert rates["last_events_per_s"] == pytest.approx(500.0)
    assert rates["last_over_first"] == pytest.approx(0.5)


def test_segment_rates_of_a_run_that_never_finished() -> None:
    rates = segment_rates([(1.0, 0), (2.0, 5000)], 10_000)
    assert rates["first_events_per_s"] == pytest.approx(5000.0)
    assert rates["last_events_per_s"] is None and rates["last_over_first"] is None
    with pytest.raises(ValueError):
        segment_rates([], 10, fraction=0.01, skip=0.01)


def test_burst_events_are_valid_orders_and_receipts_of_the_hot_skus() -> None:
    skus = hot_skus(3, "ab12")
    assert skus == ["HOT-ab12-00", "HOT-ab12-01", "HOT-ab12-02"]
    order = parse_event(burst_order(7, skus[1], "ab12", 1_800_000_000_000), "inventory.orders")
    assert isinstance(order, OrderPlaced)
    assert [(line.sku, line.qty) for line in order.lines] == [(skus[1], 1)]
    assert order.event_id == order.order_id == "burst-ab12-7"
    receipt = parse_event(seed_receipt(skus[0], 0, "ab12", 1_800_000_000_000, 10**8), "inventory.receipts")
    assert isinstance(receipt, ReceiptPosted) and receipt.sku == skus[0] and receipt.qty == 10**8


def test_due_paces_the_burst_and_stops_at_its_end() -> None:
    assert due(5000, 0.0, 60) == 0
    assert due(5000, 0.5, 60) == 2500
    assert due(5000, 61.0, 60) == 300_000
    assert due(5000, -1.0, 60) == 0


def test_catch_up_is_the_first_lag_zero_after_production_ended() -> None:
    series = [{"t_s": 1.0, "lag": 0}, {"t_s": 60.5, "lag": 9000}, {"t_s": 61.0, "lag": 10}, {"t_s": 63.5, "lag": 0}]
    assert catch_up(series, 60.0) == pytest.approx(3.5)
    assert catch_up(series[:3], 60.0) is None
