"""Checkout changes in the alert step, driven directly (no dataflow, no I/O): reservation events read,
demand counted once per reservation id, figures judged, re-checks listed."""

from __future__ import annotations

import pickle
from dataclasses import replace
from typing import Any

import orjson

from engine.domain.demand import COUNTED_FOR_MS, COUNTED_MAX, CountedOrders
from engine.domain.observation import parse_position
from engine.flow.alert_monitor import Checkout, MonitorConfig, PolicyKnobs, Seen, SkuLogic
from engine.flow.checkouts import DEMAND_CHANGES, CheckoutLine, Watchlist, parse_reservation
from engine.flow.records import Outcome
from engine.flow.source import RawMessage
from engine.flow.stream_clock import StreamClock
from engine.reservations.events import expired_event
from engine.settings import Settings

T0 = 1_893_456_000_000
HOUR = 3_600_000
KNOBS = PolicyKnobs(low_stock=10)


def position(atp: int, held: int = 0) -> Any:
    loc = {
        "on_hand": atp + held,
        "safety": 0,
        "held": held,
        "committed": 0,
        "in_transit": 0,
        "promisable_in_transit": 0,
        "atp": atp,
        "oh_alloc": 0,
        "bo_alloc": 0,
        "short": 0,
    }
    return parse_position({"sku": "A", "atp": atp, "oversold": 0, "locations": {"WH1": loc}})


def line(rid: str, qty: int, t: int, change: str = "held") -> CheckoutLine:
    return CheckoutLine(rid, change, qty, "WH1", t, f"res:{rid}:{change}")


def logic(watchlist: Watchlist | None = None) -> SkuLogic:
    settings = Settings.model_construct(alert_resolve_after_s=0)
    stream = StreamClock(idle_s=3600, wall_ms=lambda: T0)
    return SkuLogic(MonitorConfig(settings, stream, ticks=False, watchlist=watchlist), None)


def demand_units(lg: SkuLogic) -> int:
    assert lg.state is not None
    return sum(s.day_qty for s in lg.state.monitor.demand.values())


def test_a_reservation_event_becomes_one_line_per_sku_with_where_its_demand_counts() -> None:
    event = {
        "event_id": "res:R1:held",
        "type": "reservation.held",
        "reservation_id": "R1",
        "occurred_at": "2030-01-01T00:00:00.000Z",
        "state": "held",
        "channel": None,
        "customer_id": None,
        "lines": [
            {"sku": "A", "qty": 3, "location": "WH1", "allocations": []},
            {
                "sku": "B",
                "qty": 2,
                "location": None,
                "allocations": [{"kind": "oh", "ref": "", "location": "WH2", "qty": 2}],
            },
            {"sku": "C", "qty": 1, "location": None, "allocations": []},
        ],
    }
    raw = RawMessage("inventory.reservations", 0, 7, orjson.dumps(event))
    assert parse_reservation(raw) == [
        ("A", CheckoutLine("R1", "held", 3, "WH1", T0, "res:R1:held")),
        ("B", CheckoutLine("R1", "held", 2, "WH2", T0, "res:R1:held")),
        ("C", CheckoutLine("R1", "held", 1, "default", T0, "res:R1:held")),
    ]
    extended = {**event, "type": "reservation.extended", "event_id": "res:R1:extended:1"}
    assert parse_reservation(RawMessage("inventory.reservations", 0, 8, orjson.dumps(extended))) == []
    assert parse_reservation(RawMessage("inventory.reservations", 0, 9, b"{not json")) == []


def test_an_expired_line_from_the_change_log_is_judged_but_is_no_demand() -> None:
    line = {"rid": "R1", "qty": 2, "location": "WH1", "expires_ms": T0, "channel": "", "customer_id": "",
            "promised_ms": T0, "atp_after": 0}
    raw = RawMessage("inventory.reservations", 0, 10, orjson.dumps(expired_event("A", line)))
    assert parse_reservation(raw) == [("A", CheckoutLine("R1", "expired", 2, "WH1", T0, "res:R1:expired:A"))]
    assert "expired" not in DEMAND_CHANGES


def test_counted_orders_remember_each_id_once_within_their_bounds() -> None:
    counted = CountedOrders()
    assert counted.first("R1", T0) and not counted.first("R1", T0 + 1)
    assert counted.first("", T0) and counted.first("", T0)  # no id: every one counts
    assert counted.first("R2", T0 + COUNTED_FOR_MS + 1)  # R1 is now too old to remember
    assert list(counted.ids) == ["R2"]
    for i in range(COUNTED_MAX + 1):
        counted.first(f"X{i}", T0 + COUNTED_FOR_MS + 2)
    assert len(counted.ids) == COUNTED_MAX and next(iter(counted.ids)) == "X1"  # R2 and X0 forgotten


def test_a_sell_out_by_holds_fires_and_a_re_check_after_the_expiry_resolves_it() -> None:
    watch = Watchlist()
    lg = logic(watch)
    (emitted,), _ = lg.on_batch(
        [Checkout("A", (line("R1", 5, T0), line("R2", 5, T0 + 1)), position(0, 10), KNOBS)]
    )
    assert [(a.kind, a.status, a.event_id) for a in emitted.alerts] == [
        ("low_stock", "firing", "res:R2:held"),
        ("stockout", "firing", "res:R2:held"),
    ]
    assert watch.take(10) == ["A"]
    (emitted,), _ = lg.on_batch([Checkout("A", (), position(20), KNOBS)])  # the holds expired
    assert {(a.kind, a.status, a.event_id) for a in emitted.alerts} == {
        ("low_stock", "resolved", ""),
        ("stockout", "resolved", ""),
    }
    assert watch.take(10) == []
    assert logic().on_batch([Checkout("B", (), position(0), KNOBS)])[0] == []  # nothing known of B


def test_held_confirmed_and_placed_on_the_stream_counts_once_and_survives_a_snapshot() -> None:
    lg = logic()
    lg.on_batch([Checkout("A", (line("R1", 4, T0),), position(96, 4), KNOBS)])
    lg.on_batch([Checkout("A", (line("R1", 4, T0 + 1, "confirmed"),), position(96), KNOBS)])
    assert demand_units(lg) == 4
    resumed = SkuLogic(lg.cfg, pickle.loads(lg.snapshot()))
    order = Outcome(
        sku="A",
        event_id="ev-R1",
        event_type="order.placed",
        cmd="order_placed",
        payload={"rid": "R1", "qty": 4, "loc": "WH1", "channel": "web"},
        source="inventory.orders:0",
        offset=0,
        occurred_ms=T0 + HOUR,
        reply={
            "status": "ok",
            "at_risk": [],
            "slipped": [],
            "position": {"sku": "A", "atp": 96, "oversold": 0, "locations": {}},
        },
    )
    resumed.on_batch([Seen(order, KNOBS)])
    assert demand_units(resumed) == 4
    resumed.on_batch(
        [Seen(replace(order, offset=1, event_id="ev-R9", payload={**order.payload, "rid": "R9"}), KNOBS)]
    )
    assert demand_units(resumed) == 8
