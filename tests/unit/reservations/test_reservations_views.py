"""The API's JSON bodies and reservation events, built from client records (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from engine.api.models import AtpOut
from engine.reservations.events import encode, expired_event, publish_args, reservation_event
from engine.reservations.types import Allocation, Reservation, ReservedLine
from engine.reservations.views import position_view, reservation_view, rfc3339

T0 = 1_735_718_400_000  # 2025-01-01T08:00:00Z


def reservation(state: str = "held", expires_ms: int = T0 + 60_000) -> Reservation:
    lines = [
        ReservedLine("B", 2, "WH1", state, expires_ms, T0, 5, [Allocation("oh", "WH1", "WH1", 2)]),
        ReservedLine("A", 3, None, state, expires_ms, T0 + 86_400_000, 0,
                     [Allocation("oh", "WH1", "WH1", 1), Allocation("lot", "PO-7", "WH2", 2)]),
    ]
    return Reservation("ok", "R1", state, lines, T0 + 86_400_000, expires_ms, {"A": 0, "B": 5})


def test_times_are_rfc3339_utc_and_zero_means_none() -> None:
    assert rfc3339(T0) == "2025-01-01T08:00:00.000Z"
    assert rfc3339(0) is None


def test_reservation_view_orders_lines_and_names_allocations() -> None:
    view = reservation_view(reservation())
    assert [line["sku"] for line in view["lines"]] == ["A", "B"]
    assert view["promised_at"] == "2025-01-02T08:00:00.000Z"
    assert view["expires_at"] == "2025-01-01T08:01:00.000Z"
    first = view["lines"][0]
    assert first["location"] is None
    assert first["allocations"][1] == {"kind": "lot", "ref": "PO-7", "location": "WH2", "qty": 2}


def test_position_view_keeps_the_location_asked_and_fills_dates() -> None:
    wire = {"sku": "A", "on_hand": 5, "safety": 0, "held": 1, "committed": 0, "in_transit": 10,
            "promisable_in_transit": 8, "atp": 12, "promisable_now": 4, "next_promise_ms": T0, "oversold": 0,
            "locations": {"WH1": {"on_hand": 5, "safety": 0, "held": 1, "committed": 0, "in_transit": 10,
                                  "promisable_in_transit": 8, "atp": 12, "oh_alloc": 1, "bo_alloc": 0,
                                  "short": 0}}}
    view = position_view(wire, "WH1")
    assert view["location"] == "WH1" and view["atp"] == 12
    assert view["next_promise_at"] == "2025-01-01T08:00:00.000Z"
    assert view["locations"]["WH1"]["oh_alloc"] == 1
    assert view["backordered"] == 0 and view["locations"]["WH1"]["backordered"] == 0


def test_position_view_names_backordered_units_per_location_and_for_the_sku() -> None:
    loc = {"on_hand": 0, "safety": 0, "held": 3, "committed": 0, "in_transit": 0, "promisable_in_transit": 0,
           "atp": 0, "oh_alloc": 0, "bo_alloc": 3, "short": 0}
    wire = {"sku": "A", "on_hand": 0, "safety": 0, "held": 3, "committed": 0, "in_transit": 0,
            "promisable_in_transit": 0, "atp": 2, "promisable_now": 0, "next_promise_ms": 0, "oversold": 0,
            "backordered": 3, "locations": {"WH1": loc}}
    view = position_view(wire)
    assert (view["atp"], view["backordered"], view["oversold"]) == (2, 3, 0)
    assert view["locations"]["WH1"]["backordered"] == 3
    AtpOut.model_validate(view)


@pytest.mark.parametrize("change", ["held", "confirmed", "released"])
def test_event_ids_are_deterministic_per_change(change: str) -> None:
    event = reservation_event(change, reservation(), channel="web", occurred_at=datetime(2025, 1, 1, tzinfo=UTC))
    assert event["event_id"] == f"res:R1:{change}"
    assert event["type"] == f"reservation.{change}"
    assert event["occurred_at"] == "2025-01-01T00:00:00.000Z"
    assert event["channel"] == "web" and event["customer_id"] is None
    assert orjson.loads(encode(event)) == event
    assert "expires_at" not in event["lines"][0]


def test_an_expired_line_has_the_event_shape_of_the_other_changes() -> None:
    line = {"rid": "R1", "qty": 2, "location": "", "expires_ms": 1_735_689_600_000, "channel": "web",
            "customer_id": "", "promised_ms": 1_735_689_000_000, "atp_after": 5}
    event = expired_event("SKU-1", line)
    held = reservation_event("held", reservation())
    assert event.keys() == held.keys() and event["lines"][0].keys() == held["lines"][0].keys()
    assert (event["event_id"], event["type"], event["state"]) == ("res:R1:expired:SKU-1", "reservation.expired", "expired")
    assert event["occurred_at"] == "2025-01-01T00:00:00.000Z"  # when it expired
    assert (event["channel"], event["customer_id"], event["lines"][0]["location"]) == ("web", None, None)
    assert (event["lines"][0]["sku"], event["lines"][0]["qty"], event["lines"][0]["allocations"]) == ("SKU-1", 2, [])


def test_each_extension_has_its_own_event_id() -> None:
    first = reservation_event("extended", reservation(expires_ms=T0 + 60_000))
    second = reservation_event("extended", reservation(expires_ms=T0 + 120_000))
    assert first["event_id"] == f"res:R1:extended:{T0 + 60_000}"
    assert first["event_id"] != second["event_id"]


def test_unknown_change_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown reservation change"):
        reservation_event("shipped", reservation())  # type: ignore[arg-type]


def test_rfc3339_agrees_with_format_time_across_the_cache() -> None:
    from engine.domain.events import format_time, from_ms
    from engine.reservations import views

    samples = [1, 999, 1000, T0, T0 + 1, T0 + 999, T0 + 86_400_000 * 365 * 3 + 7, 253_402_300_799_999]
    samples += [T0 + 1_000 * i + i % 1000 for i in range(views._SECONDS_KEPT + 10)]  # past the cache size
    for ms in samples:
        assert rfc3339(ms) == format_time(from_ms(ms)), ms
    assert len(views._SECONDS) <= views._SECONDS_KEPT


def test_event_lines_are_the_reply_lines_without_the_rfc3339_twins() -> None:
    res = reservation()
    reply_lines = reservation_view(res)["lines"]
    event_lines = reservation_event("held", res)["lines"]
    assert event_lines == [{k: v for k, v in line.items() if not k.endswith("_at")} for line in reply_lines]
    assert [list(line) for line in event_lines] == [
        [k for k in line if not k.endswith("_at")] for line in reply_lines
    ]


def test_a_reservations_events_wait_in_the_log_of_its_first_sku() -> None:
    whole = reservation()
    sku, rid, value, change = publish_args("held", whole, channel="web")
    assert (sku, rid, change) == ("A", "R1", "held")
    assert orjson.loads(value) == orjson.loads(encode(reservation_event("held", whole, channel="web"))) | {
        "occurred_at": orjson.loads(value)["occurred_at"]}
    # only line B released (a refused release): still A's log, where the held event waits
    part = Reservation("ok", "R1", "released", whole.lines[:1], T0, 0, {"B": 5})
    assert publish_args("released", part)[0] == "B"
    assert publish_args("released", part, skus=["B", "A"])[0] == "A"
