"""to_commands: one command per SKU per event, in the scripts' units, as in docs/semantics.md."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from engine.dev.simulate import generate
from engine.domain.commands import EVENT_COMMANDS, SkuCommand, to_commands
from engine.domain.events import EventBase, parse_event

WHEN = "2025-03-01T08:00:00Z"
WHEN_MS = 1_740_816_000_000


def event(kind: str, **fields: Any) -> EventBase:
    parsed = parse_event(orjson.dumps({"event_id": "e-9", "type": kind, "occurred_at": WHEN, **fields}))
    assert isinstance(parsed, EventBase), parsed
    return parsed


def only(commands: list[SkuCommand]) -> SkuCommand:
    assert len(commands) == 1
    return commands[0]


def test_order_placed_becomes_one_order_placed_per_sku_with_the_order_id_as_reservation() -> None:
    cmds = to_commands(
        event(
            "order.placed",
            order_id="ord-1",
            channel="web",
            customer_id="c-1",
            lines=[{"sku": "A", "qty": 2, "location": "WH1"}, {"sku": "B", "qty": 1}],
        )
    )
    assert [(c.sku, c.cmd, c.payload) for c in cmds] == [
        ("A", "order_placed", {"rid": "ord-1", "loc": "WH1", "qty": 2, "channel": "web", "customer": "c-1"}),
        ("B", "order_placed", {"rid": "ord-1", "loc": "", "qty": 1, "channel": "web", "customer": "c-1"}),
    ]
    assert all(c.event_id == "e-9" and c.occurred_ms == WHEN_MS and not c.needs_lookup for c in cmds)
    assert all(c.ref == "ord-1" and c.reason == "" and c.event_type == "order.placed" for c in cmds)


@pytest.mark.parametrize(
    ("locations", "expected"),
    [
        (["WH1", "WH1"], "WH1"),  # same place: keep it
        (["WH1", "WH2"], ""),  # two places: any
        (["WH1", None], ""),  # a place and any: any
        ([None, None], ""),
        (["WH2", "WH1", "WH2"], ""),
    ],
)
def test_order_lines_of_one_sku_are_summed_and_keep_a_location_only_when_all_agree(
    locations: list[str | None], expected: str
) -> None:
    lines = [
        {"sku": "A", "qty": i + 1} | ({"location": loc} if loc else {}) for i, loc in enumerate(locations)
    ]
    cmd = only(to_commands(event("order.placed", order_id="o", channel="app", lines=lines)))
    assert cmd.payload["qty"] == sum(range(1, len(locations) + 1))
    assert cmd.payload["loc"] == expected
    assert cmd.payload["customer"] == ""


def test_order_cancelled_with_lines_releases_the_reservation_once_per_sku() -> None:
    cmds = to_commands(
        event(
            "order.cancelled",
            order_id="o-7",
            lines=[{"sku": "A"}, {"sku": "B", "qty": 1}, {"sku": "A", "qty": 2}],
        )
    )
    assert [(c.sku, c.cmd, c.payload, c.needs_lookup) for c in cmds] == [
        ("A", "order_cancelled", {"rid": "o-7"}, False),
        ("B", "order_cancelled", {"rid": "o-7"}, False),
    ]


def test_order_cancelled_without_lines_needs_a_reservation_lookup() -> None:
    cmd = only(to_commands(event("order.cancelled", order_id="o-7", reason="fraud")))
    assert (cmd.sku, cmd.cmd, cmd.payload, cmd.needs_lookup) == (
        None,
        "order_cancelled",
        {"rid": "o-7"},
        True,
    )
    assert cmd.reason == "fraud"
    bound = cmd.for_sku("A")
    assert (bound.sku, bound.needs_lookup, bound.payload, bound.event_id) == (
        "A",
        False,
        {"rid": "o-7"},
        "e-9",
    )


def test_order_shipped_sums_lines_per_sku_at_their_location() -> None:
    cmds = to_commands(
        event(
            "order.shipped",
            order_id="o-3",
            lines=[
                {"sku": "A", "qty": 1, "location": "WH1"},
                {"sku": "B", "qty": 4},
                {"sku": "A", "qty": 2, "location": "WH1"},
            ],
        )
    )
    assert [(c.sku, c.cmd, c.payload) for c in cmds] == [
        ("A", "ship", {"rid": "o-3", "loc": "WH1", "qty": 3}),
        ("B", "ship", {"rid": "o-3", "loc": "default", "qty": 4}),
    ]


def test_inbound_created_opens_a_lot_with_eta_in_milliseconds() -> None:
    cmd = only(
        to_commands(
            event(
                "inbound.created",
                inbound_id="in-1",
                sku="A",
                qty=100,
                eta="2025-03-05T00:00:00+01:00",
                supplier_id="SUP-A",
                ref="PO-77",
            )
        )
    )
    eta_ms = int(datetime(2025, 3, 4, 23, 0, tzinfo=UTC).timestamp() * 1000)
    assert (cmd.sku, cmd.cmd, cmd.ref) == ("A", "inbound_created", "PO-77")
    assert cmd.payload == {
        "inbound_id": "in-1",
        "loc": "default",
        "qty": 100,
        "eta_ms": eta_ms,
        "supplier": "SUP-A",
    }


def test_inbound_updated_uses_zero_for_what_does_not_change() -> None:
    eta_only = only(
        to_commands(event("inbound.updated", inbound_id="in-1", sku="A", eta="2025-03-01T08:00:01Z"))
    )
    assert eta_only.payload == {"inbound_id": "in-1", "eta_ms": WHEN_MS + 1000, "qty": 0}
    qty_only = only(to_commands(event("inbound.updated", inbound_id="in-1", sku="A", qty=40)))
    assert qty_only.payload == {"inbound_id": "in-1", "eta_ms": 0, "qty": 40}
    assert qty_only.cmd == "inbound_updated" and qty_only.ref == "in-1"


def test_inbound_cancelled_closes_the_lot() -> None:
    cmd = only(to_commands(event("inbound.cancelled", inbound_id="in-1", sku="A")))
    assert (cmd.sku, cmd.cmd, cmd.payload) == ("A", "inbound_cancelled", {"inbound_id": "in-1"})


def test_receipt_names_its_lot_or_empty() -> None:
    with_lot = only(
        to_commands(
            event("receipt.posted", receipt_id="r-1", sku="A", location="WH1", qty=9, inbound_id="in-1")
        )
    )
    assert (with_lot.cmd, with_lot.payload, with_lot.ref) == (
        "receipt",
        {"loc": "WH1", "qty": 9, "inbound_id": "in-1"},
        "r-1",
    )
    without = only(to_commands(event("receipt.posted", receipt_id="r-2", sku="A", qty=1)))
    assert without.payload == {"loc": "default", "qty": 1, "inbound_id": ""}


def test_adjustment_and_count_carry_location_and_reason() -> None:
    adjust = only(to_commands(event("stock.adjusted", sku="A", location="WH2", delta=-4, reason="damage")))
    assert (adjust.cmd, adjust.payload, adjust.reason, adjust.ref) == (
        "adjust",
        {"loc": "WH2", "delta": -4},
        "damage",
        "",
    )
    count = only(to_commands(event("stock.counted", sku="A", on_hand=0, ref="count-sheet-3")))
    assert (count.cmd, count.payload, count.ref) == (
        "count",
        {"loc": "default", "on_hand": 0},
        "count-sheet-3",
    )


def test_commands_are_frozen() -> None:
    cmd = only(to_commands(event("stock.counted", sku="A", on_hand=1)))
    with pytest.raises(AttributeError):
        cmd.sku = "B"  # type: ignore[misc]


def test_a_simulated_stream_never_gives_two_commands_of_one_event_for_one_sku() -> None:
    seen_cmds: set[str] = set()
    start = datetime(2025, 3, 1, tzinfo=UTC)
    for message in generate(3000, seed=4, start_time=start):
        parsed = parse_event(message.value)
        assert isinstance(parsed, EventBase), parsed
        cmds = to_commands(parsed)
        assert cmds
        skus = [c.sku for c in cmds]
        assert len(skus) == len(set(skus))
        assert all((c.sku is None) == c.needs_lookup for c in cmds)
        # payloads hold no nulls: the scripts use "" and 0 for absent values
        assert all(v is not None for c in cmds for v in c.payload.values())
        seen_cmds.update(c.cmd for c in cmds)
    assert seen_cmds == set(EVENT_COMMANDS)


def test_a_non_event_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        to_commands(object())  # type: ignore[arg-type]
