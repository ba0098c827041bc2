"""Observation.from_reply: wire replies (oracle and Lua shapes) to validated records; bad shapes refused."""

import pytest

from engine.domain.observation import (
    AtRisk,
    ClosedLot,
    LocationFigures,
    Observation,
    ObservationError,
    Slip,
    parse_position,
)
from engine.domain.oracle import HoldRequest, SkuBook

T0 = 1_735_689_600_000
POS = {
    "sku": "SKU-1",
    "atp": 7,
    "oversold": 2,
    "locations": {
        "WH2": {
            "on_hand": 1,
            "safety": 0,
            "held": 0,
            "committed": 0,
            "in_transit": 0,
            "promisable_in_transit": 0,
            "atp": 1,
            "oh_alloc": 0,
            "bo_alloc": 0,
            "short": 0,
        },
        "WH1": {
            "on_hand": 10,
            "safety": 1,
            "held": 2,
            "committed": 3,
            "in_transit": 5,
            "promisable_in_transit": 2,
            "atp": 6,
            "oh_alloc": 5,
            "bo_alloc": 0,
            "short": 2,
        },
    },
}


def reply(**extra):
    return {"status": "ok", "at_risk": [], "slipped": [], "position": POS, **extra}


def test_receipt_reply_with_a_closed_lot():
    obs = Observation.from_reply(
        sku="SKU-1",
        command="receipt",
        args={"loc": "WH1", "qty": 4, "inbound_id": "PO-1"},
        reply=reply(
            lot={"inbound_id": "PO-1", "qty": 5, "eta_ms": T0, "supplier": "ACME"},
            at_risk=[{"rid": "r2", "short": 2}],
            slipped=[{"rid": "r1", "old_ms": T0, "new_ms": T0 + 1}],
        ),
        occurred_ms=T0 + 9,
        event_id="ev-1",
    )
    assert (obs.location, obs.qty, obs.inbound_id, obs.occurred_ms, obs.event_id) == (
        "WH1",
        4,
        "PO-1",
        T0 + 9,
        "ev-1",
    )
    assert obs.lot == ClosedLot("PO-1", 5, T0, "ACME")
    assert obs.at_risk == (AtRisk("r2", 2),) and obs.slipped == (Slip("r1", T0, T0 + 1),)
    assert obs.position is not None and list(obs.position.locations) == ["WH1", "WH2"]  # sorted
    wh1 = obs.position.locations["WH1"]
    assert wh1 == LocationFigures(10, 1, 2, 3, 5, 2, 6, 2) and wh1.inventory_position == 10
    assert (obs.position.atp, obs.position.oversold) == (7, 2)


def test_lua_empty_tables_decode_as_empty_lists():
    pos = dict(POS, locations=[])
    obs = Observation.from_reply(
        sku="SKU-1",
        command="count",
        args={"loc": "WH1", "on_hand": 0},
        reply={"status": "ok", "at_risk": {}, "slipped": {}, "position": pos},
        occurred_ms=T0,
    )
    assert (
        obs.at_risk == () and obs.slipped == () and obs.position is not None and obs.position.locations == {}
    )


def test_order_location_is_named_else_where_it_was_allocated_else_default():
    book = SkuBook("SKU-1")
    book.apply("count", {"loc": "A", "on_hand": 2}, T0)
    book.apply("count", {"loc": "B", "on_hand": 5}, T0)
    args = {"rid": "o1", "qty": 6, "loc": "", "channel": "web"}
    r = book.apply("order_placed", args, T0, event_id="e1")
    obs = Observation.from_reply(sku="SKU-1", command="order_placed", args=args, reply=r, occurred_ms=T0)
    assert (obs.rid, obs.qty, obs.channel, obs.location) == ("o1", 6, "web", "B")  # 2 from A, 4 from B
    args = {"rid": "o2", "qty": 50, "channel": "web"}
    r = book.apply("order_placed", args, T0, event_id="e2")
    obs = Observation.from_reply(sku="SKU-1", command="order_placed", args=args, reply=r, occurred_ms=T0)
    assert (obs.status, obs.reason, obs.available, obs.location) == ("refused", "insufficient", 1, "default")
    args = {"rid": "o3", "qty": 1, "loc": "A"}
    book.hold_batch([HoldRequest("o3", 1, "A")], T0)
    r = book.apply("order_placed", args, T0, event_id="e3")
    assert (
        Observation.from_reply(
            sku="SKU-1", command="order_placed", args=args, reply=r, occurred_ms=T0
        ).location
        == "A"
    )


def test_inbound_commands_carry_the_lot_fields():
    created = Observation.from_reply(
        sku="SKU-1",
        command="inbound_created",
        args={"inbound_id": "PO-1", "loc": "WH1", "qty": 40, "eta_ms": T0, "supplier": "ACME"},
        reply=reply(),
        occurred_ms=T0,
    )
    assert (created.inbound_id, created.location, created.qty, created.eta_ms, created.supplier) == (
        "PO-1",
        "WH1",
        40,
        T0,
        "ACME",
    )
    updated = Observation.from_reply(
        sku="SKU-1",
        command="inbound_updated",
        args={"inbound_id": "PO-1", "eta_ms": T0 + 5},
        reply=reply(),
        occurred_ms=T0,
    )
    assert (updated.eta_ms, updated.qty) == (T0 + 5, 0)


@pytest.mark.parametrize(
    ("command", "args", "rep", "message"),
    [
        ("explode", {}, reply(), "unknown command"),
        ("count", {"loc": "WH1"}, {"status": "weird"}, "reply.status"),
        ("receipt", {"loc": "WH1", "qty": "4"}, reply(), "args.qty must be an integer"),
        ("receipt", {"loc": "WH1", "qty": 0}, reply(), "args.qty must be ≥ 1"),
        ("receipt", {"loc": "bad loc", "qty": 1}, reply(), "args.loc"),
        ("order_placed", {"qty": 1}, reply(), "args.rid"),
        ("count", {"loc": "WH1"}, reply(at_risk=[{"rid": "r1"}]), "at_risk.short"),
        ("count", {"loc": "WH1"}, reply(slipped="x"), "reply.slipped must be a list"),
        (
            "count",
            {"loc": "WH1"},
            reply(position={"locations": {"WH1": {"atp": 1.5}}}),
            "atp must be an integer",
        ),
        ("count", {"loc": "WH1"}, reply(position={"locations": {"../x": {}}}), "location"),
        (
            "receipt",
            {"loc": "WH1", "qty": 1},
            reply(lot={"inbound_id": "PO-1", "qty": 1, "eta_ms": 0}),
            "lot.supplier",
        ),
    ],
)
def test_bad_shapes_are_refused_with_the_field_named(command, args, rep, message):
    with pytest.raises(ObservationError, match=message):
        Observation.from_reply(sku="SKU-1", command=command, args=args, reply=rep, occurred_ms=T0)


def test_bad_sku_event_id_or_time_are_refused():
    with pytest.raises(ObservationError, match="sku"):
        Observation.from_reply(
            sku="bad sku", command="count", args={"loc": "A"}, reply=reply(), occurred_ms=T0
        )
    with pytest.raises(ObservationError, match="event_id"):
        Observation.from_reply(
            sku="S", command="count", args={"loc": "A"}, reply=reply(), occurred_ms=T0, event_id="x y"
        )
    with pytest.raises(ObservationError, match="occurred_ms"):
        Observation.from_reply(sku="S", command="count", args={"loc": "A"}, reply=reply(), occurred_ms=-1)
    with pytest.raises(ObservationError, match="position must be an object"):
        parse_position([1])
    tick = Observation.tick("S", T0)
    assert (tick.command, tick.occurred_ms, tick.position) == ("tick", T0, None)


def test_a_position_names_backordered_units_and_the_backorder_room():
    book = SkuBook("SKU-1")
    book.apply("policy", {"policy": {"mode": "backorder", "backorder_limit": 6}}, T0)
    book.apply("count", {"loc": "WH1", "on_hand": 2}, T0)
    book.hold_batch([HoldRequest("r1", 5, "WH1")], T0)
    pos = parse_position(book.position(T0))
    assert (pos.atp, pos.backordered, pos.backorder_room) == (3, 3, 3)
    assert (pos.locations["WH1"].atp, pos.locations["WH1"].backordered) == (0, 3)
