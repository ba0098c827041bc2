"""parse_event: every event type parses; every kind of bad input gets its reason; nothing raises."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import connectors.topics as topic_names
from engine.domain import events
from engine.domain.events import (
    EVENT_TYPES,
    MAX_EVENT_BYTES,
    PARSE_REASONS,
    TOPIC_OF_TYPE,
    EventBase,
    InboundCreated,
    InboundUpdated,
    OrderCancelled,
    OrderPlaced,
    OrderShipped,
    ParseError,
    ReceiptPosted,
    StockAdjusted,
    StockCounted,
    event_to_json,
    from_ms,
    parse_event,
    to_ms,
)

WHEN = "2025-03-01T08:00:00Z"
WHEN_MS = 1_740_816_000_000

GOOD: dict[str, dict[str, Any]] = {
    "order.placed": {
        "order_id": "ord-1",
        "channel": "web",
        "customer_id": "cust:42",
        "lines": [{"sku": "A", "qty": 2}, {"sku": "B", "qty": 1, "location": "WH1"}],
    },
    "order.cancelled": {"order_id": "ord-1"},
    "order.shipped": {"order_id": "ord-1", "lines": [{"sku": "A", "qty": 2, "location": "WH1"}]},
    "inbound.created": {
        "inbound_id": "in-1",
        "sku": "A",
        "location": "WH1",
        "qty": 100,
        "eta": "2025-03-05T00:00:00+01:00",
        "supplier_id": "SUP-A",
    },
    "inbound.updated": {"inbound_id": "in-1", "sku": "A", "eta": "2025-03-06T00:00:00Z"},
    "inbound.cancelled": {"inbound_id": "in-1", "sku": "A"},
    "receipt.posted": {"receipt_id": "r-1", "sku": "A", "location": "WH1", "qty": 90, "inbound_id": "in-1"},
    "stock.adjusted": {"sku": "A", "location": "WH1", "delta": -3, "reason": "damage"},
    "stock.counted": {"sku": "A", "location": "WH1", "on_hand": 0},
}


def body(kind: str, **changes: Any) -> dict[str, Any]:
    data = {"event_id": "e-1", "type": kind, "occurred_at": WHEN, **GOOD[kind]}
    for key, value in changes.items():
        if value is _DROP:
            data.pop(key, None)
        else:
            data[key] = value
    return data


_DROP = object()


def raw(kind: str, **changes: Any) -> bytes:
    return orjson.dumps(body(kind, **changes))


def reason_of(data: bytes, topic: str | None = None) -> str:
    result = parse_event(data, topic)
    assert isinstance(result, ParseError), f"expected an error, got {result!r}"
    assert result.reason in PARSE_REASONS
    assert result.detail
    return result.reason


def test_the_topic_names_match_the_connectors_constants() -> None:
    assert events.ORDERS_TOPIC == topic_names.ORDERS
    assert events.INBOUND_TOPIC == topic_names.INBOUND
    assert events.RECEIPTS_TOPIC == topic_names.RECEIPTS
    assert events.ADJUSTMENTS_TOPIC == topic_names.ADJUSTMENTS
    assert set(TOPIC_OF_TYPE.values()) == set(topic_names.INPUT_TOPICS)


@pytest.mark.parametrize("kind", EVENT_TYPES)
def test_every_type_parses_on_its_own_topic(kind: str) -> None:
    event = parse_event(raw(kind), TOPIC_OF_TYPE[kind])
    assert isinstance(event, EventBase), event
    assert event.type == kind
    assert event.event_id == "e-1"
    assert event.occurred_ms == WHEN_MS


@pytest.mark.parametrize("kind", EVENT_TYPES)
def test_every_type_round_trips_through_its_wire_form(kind: str) -> None:
    event = parse_event(raw(kind))
    assert isinstance(event, EventBase)
    assert parse_event(event_to_json(event)) == event


@pytest.mark.parametrize("kind", EVENT_TYPES)
def test_an_event_on_another_types_topic_is_wrong_topic(kind: str) -> None:
    other = next(t for t in set(TOPIC_OF_TYPE.values()) if t != TOPIC_OF_TYPE[kind])
    result = parse_event(raw(kind), other)
    assert isinstance(result, ParseError)
    assert result.reason == "wrong_topic"
    assert result.event_type == kind and result.event_id == "e-1"


def test_fields_are_read_with_their_defaults() -> None:
    placed = parse_event(raw("order.placed"))
    assert isinstance(placed, OrderPlaced)
    assert [(ln.sku, ln.qty, ln.location) for ln in placed.lines] == [("A", 2, None), ("B", 1, "WH1")]
    assert placed.customer_id == "cust:42"
    created = parse_event(raw("inbound.created"))
    assert isinstance(created, InboundCreated)
    assert to_ms(created.eta) == to_ms(datetime(2025, 3, 4, 23, 0, tzinfo=UTC))
    counted = parse_event(raw("stock.counted", location=_DROP))
    assert isinstance(counted, StockCounted) and counted.location == "default"
    receipt = parse_event(raw("receipt.posted", inbound_id=_DROP, location=_DROP))
    assert isinstance(receipt, ReceiptPosted) and receipt.inbound_id is None and receipt.location == "default"
    shipped = parse_event(raw("order.shipped", lines=[{"sku": "A", "qty": 1}]))
    assert isinstance(shipped, OrderShipped) and shipped.lines[0].location == "default"
    cancelled = parse_event(raw("order.cancelled"))
    assert isinstance(cancelled, OrderCancelled) and cancelled.lines is None


def test_an_unknown_field_is_refused_so_a_typo_never_moves_stock() -> None:
    typo = parse_event(raw("stock.counted", location=_DROP, locaton="WH1"))
    assert isinstance(typo, ParseError) and typo.reason == "unknown_field" and "locaton" in typo.detail
    in_a_line = parse_event(raw("order.placed", lines=[{"sku": "A", "qty": 1, "qtty": 2}]))
    assert isinstance(in_a_line, ParseError) and in_a_line.reason == "unknown_field"
    assert isinstance(parse_event(raw("stock.counted")), StockCounted)  # the same event without it


def test_null_in_an_optional_field_means_absent() -> None:
    event = parse_event(raw("receipt.posted", inbound_id=None, reason=None, ref=None))
    assert isinstance(event, ReceiptPosted)
    assert (event.inbound_id, event.reason, event.ref) == (None, None, None)


@pytest.mark.parametrize(
    ("stamp", "expected"),
    [
        ("2025-03-01T08:00:00Z", WHEN_MS),
        ("2025-03-01t08:00:00z", WHEN_MS),
        ("2025-03-01T09:30:00+01:30", WHEN_MS),
        ("2025-03-01T08:00:00.1239Z", WHEN_MS + 123),
        ("2025-03-01T08:00:00.123456789Z", WHEN_MS + 123),
        ("2025-03-01 08:00:00-00:00", WHEN_MS),
    ],
)
def test_rfc3339_times_with_any_offset_become_epoch_milliseconds(stamp: str, expected: int) -> None:
    event = parse_event(raw("stock.counted", occurred_at=stamp))
    assert isinstance(event, EventBase), event
    assert event.occurred_ms == expected


@pytest.mark.parametrize(
    "stamp",
    [
        "2025-03-01T08:00:00",  # no offset
        "2025-03-01",
        "2025-03-01T08:00Z",  # no seconds
        "2025-02-30T08:00:00Z",  # no such day
        "2025-03-01T24:00:00Z",
        "1969-12-31T23:59:59Z",  # before the epoch
        "1970-01-01T00:00:00Z",  # 0 means "no time" on the wire
        "2025-03-01T08:00:00+0100",
        "２０２５-03-01T08:00:00Z",  # non-ASCII digits
        "",
    ],
)
def test_bad_times_are_bad_time(stamp: str) -> None:
    assert reason_of(raw("stock.counted", occurred_at=stamp)) == "bad_time"
    assert reason_of(raw("inbound.created", eta=stamp)) == "bad_time"


def test_a_number_as_time_is_wrong_type() -> None:
    assert reason_of(raw("stock.counted", occurred_at=1_740_816_000)) == "wrong_type"


BAD_CASES: list[tuple[str, bytes, str]] = [
    ("empty message", b"", "empty"),
    ("oversize", orjson.dumps(body("stock.counted", ref="x" * 200, pad="p" * MAX_EVENT_BYTES)), "too_large"),
    ("truncated json", raw("stock.counted")[:-5], "bad_json"),
    ("not utf-8", b'{"type": "\xff"}', "bad_json"),
    ("NaN", b'{"type": "stock.counted", "on_hand": NaN}', "bad_json"),
    ("a list", b"[1, 2]", "not_object"),
    ("a string", b'"order.placed"', "not_object"),
    ("unknown type", raw("stock.counted", type="stock.teleported"), "unknown_type"),
    ("type in upper case", raw("stock.counted", type="STOCK.COUNTED"), "unknown_type"),
    ("no type", raw("stock.counted", type=_DROP), "missing_field"),
    ("type not a string", raw("stock.counted", type=7), "wrong_type"),
    ("no event_id", raw("stock.counted", event_id=_DROP), "missing_field"),
    ("no occurred_at", raw("stock.counted", occurred_at=_DROP), "missing_field"),
    ("no on_hand", raw("stock.counted", on_hand=_DROP), "missing_field"),
    ("no sku", raw("inbound.created", sku=_DROP), "missing_field"),
    ("no supplier", raw("inbound.created", supplier_id=_DROP), "missing_field"),
    ("no lines", raw("order.placed", lines=_DROP), "missing_field"),
    ("no channel", raw("order.placed", channel=_DROP), "missing_field"),
    ("no line qty", raw("order.placed", lines=[{"sku": "A"}]), "missing_field"),
    ("adjustment without reason", raw("stock.adjusted", reason=_DROP), "missing_field"),
    ("update that changes nothing", raw("inbound.updated", eta=_DROP), "missing_field"),
    ("qty as string", raw("receipt.posted", qty="5"), "wrong_type"),
    ("qty as float", raw("receipt.posted", qty=5.0), "wrong_type"),
    ("qty as fraction", raw("receipt.posted", qty=5.5), "wrong_type"),
    ("qty as bool", raw("receipt.posted", qty=True), "wrong_type"),
    ("sku as number", raw("stock.counted", sku=12345), "wrong_type"),
    ("lines not a list", raw("order.placed", lines={"sku": "A", "qty": 1}), "wrong_type"),
    ("line not an object", raw("order.placed", lines=["A"]), "wrong_type"),
    ("reason not a string", raw("stock.counted", reason=["x"]), "wrong_type"),
    ("negative qty", raw("order.placed", lines=[{"sku": "A", "qty": -2}]), "out_of_range"),
    ("zero qty", raw("receipt.posted", qty=0), "out_of_range"),
    ("huge qty", raw("receipt.posted", qty=10**10), "out_of_range"),
    (
        "qty beyond 64 bits",
        raw("receipt.posted", qty=1).replace(b'"qty":1', b'"qty":' + b"9" * 30),
        "out_of_range",
    ),
    ("negative count", raw("stock.counted", on_hand=-1), "out_of_range"),
    ("zero delta", raw("stock.adjusted", delta=0), "out_of_range"),
    ("huge delta", raw("stock.adjusted", delta=-(10**9) - 1), "out_of_range"),
    ("no lines in list", raw("order.placed", lines=[]), "out_of_range"),
    (
        "101 lines",
        raw("order.placed", lines=[{"sku": f"S{i}", "qty": 1} for i in range(101)]),
        "out_of_range",
    ),
    ("empty cancel lines", raw("order.cancelled", lines=[]), "out_of_range"),
    ("long reason", raw("stock.counted", reason="r" * 201), "out_of_range"),
    ("long ref", raw("stock.counted", ref="r" * 201), "out_of_range"),
    ("empty adjustment reason", raw("stock.adjusted", reason=""), "out_of_range"),
    ("sku with a space", raw("stock.counted", sku="SKU 01"), "bad_id"),
    ("sku with a slash", raw("stock.counted", sku="a/../b"), "bad_id"),
    ("sku with a brace", raw("stock.counted", sku="a}b"), "bad_id"),
    ("sku too long", raw("stock.counted", sku="x" * 65), "bad_id"),
    ("sku with a newline", raw("stock.counted", sku="SKU\n"), "bad_id"),
    ("empty sku", raw("stock.counted", sku=""), "bad_id"),
    ("bad location", raw("stock.counted", location="wh 1"), "bad_id"),
    ("location any", raw("stock.counted", location="Any"), "bad_id"),
    ("order line at location any", raw("order.placed", lines=[{"sku": "A", "qty": 1, "location": "any"}]), "bad_id"),
    ("bad event id", raw("stock.counted", event_id="-e"), "bad_id"),
    ("bad order id", raw("order.cancelled", order_id="o rder"), "bad_id"),
    ("bad channel", raw("order.placed", channel="web/shop"), "bad_id"),
    (
        "bad line sku",
        raw("order.placed", lines=[{"sku": "ok", "qty": 1}, {"sku": "no way", "qty": 1}]),
        "bad_id",
    ),
    (
        "one sku shipped from two locations",
        raw(
            "order.shipped",
            lines=[{"sku": "A", "qty": 1, "location": "WH1"}, {"sku": "A", "qty": 1, "location": "WH2"}],
        ),
        "conflicting_lines",
    ),
]


@pytest.mark.parametrize(("data", "reason"), [c[1:] for c in BAD_CASES], ids=[c[0] for c in BAD_CASES])
def test_bad_input_gets_the_right_reason(data: bytes, reason: str) -> None:
    assert reason_of(data) == reason


def test_the_error_names_the_field_and_keeps_the_event_id() -> None:
    result = parse_event(raw("order.placed", lines=[{"sku": "A", "qty": 1}, {"sku": "B", "qty": 0}]))
    assert isinstance(result, ParseError)
    assert result.detail.startswith("lines.1.qty:")
    assert (result.event_type, result.event_id) == ("order.placed", "e-1")
    unnamed = parse_event(raw("stock.counted", event_id="bad id", on_hand=-1))
    assert isinstance(unnamed, ParseError) and unnamed.event_id is None


def test_the_size_limit_is_inclusive_and_configurable() -> None:
    data = raw("stock.counted")
    assert isinstance(parse_event(data, max_bytes=len(data)), StockCounted)
    assert reason_of_limit(data, len(data) - 1) == "too_large"


def reason_of_limit(data: bytes, limit: int) -> str:
    result = parse_event(data, max_bytes=limit)
    assert isinstance(result, ParseError)
    return result.reason


def test_inbound_updated_may_change_only_the_quantity() -> None:
    event = parse_event(raw("inbound.updated", eta=_DROP, qty=50))
    assert isinstance(event, InboundUpdated)
    assert (event.eta, event.qty) == (None, 50)


def test_adjustment_keeps_sign_and_reason() -> None:
    event = parse_event(raw("stock.adjusted", delta=7, reason="found"))
    assert isinstance(event, StockAdjusted) and (event.delta, event.reason) == (7, "found")


def test_time_helpers_are_exact_and_inverse() -> None:
    moment = datetime(2025, 3, 1, 9, 0, 0, 999_999, tzinfo=timezone(timedelta(hours=1)))
    assert to_ms(moment) == WHEN_MS + 999
    assert from_ms(WHEN_MS + 999) == datetime(2025, 3, 1, 8, 0, 0, 999_000, tzinfo=UTC)
    assert events.format_time(from_ms(WHEN_MS + 5)) == "2025-03-01T08:00:00.005Z"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(EVENT_TYPES),
    field=st.sampled_from(
        ["sku", "qty", "lines", "location", "eta", "delta", "on_hand", "occurred_at", "order_id"]
    ),
    value=json_values,
)
def test_any_value_in_any_field_gives_an_event_or_a_known_reason(kind: str, field: str, value: Any) -> None:
    try:
        data = raw(kind, **{field: value})
    except TypeError:  # orjson cannot encode integers beyond 64 bits
        return
    result = parse_event(data, TOPIC_OF_TYPE[kind])
    assert isinstance(result, EventBase) or result.reason in PARSE_REASONS


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    result = parse_event(data)
    assert isinstance(result, EventBase | ParseError)


def test_an_event_time_must_be_before_2100() -> None:
    late = parse_event(raw("stock.counted", occurred_at="9999-12-31T23:59:59Z"))
    assert isinstance(late, ParseError) and late.reason == "bad_time" and "2100" in late.detail
    assert isinstance(parse_event(raw("stock.counted", occurred_at="2099-12-31T23:59:59Z")), StockCounted)
