"""What ATP, safety, oversold and backordered mean, per location and for the network, as the Lua
scripts report them (docs/semantics.md "Derived figures"), and what the alert rules make of them."""

from __future__ import annotations

from typing import Any

import pytest

from engine.domain.alerts import AlertPolicy, evaluate
from engine.domain.observation import Observation, parse_position
from engine.store.invariants import check_invariants
from engine.store.store import Store
from engine.store.wire import HoldRequest, SupplyCommand

T0 = 1_700_000_000_000
DAY = 86_400_000
ALERTS = AlertPolicy(low_stock=3, resolve_after_ms=0)


@pytest.fixture
def store(redis: Any) -> Store:
    return Store(redis, now_ms=T0)


def supply(store: Store, command: str, **payload: Any) -> dict[str, Any]:
    return store.apply([SupplyCommand("S", command, payload)])[0]


def hold(store: Store, rid: str, qty: int, loc: str = "") -> dict[str, Any]:
    return store.hold_batch("S", [HoldRequest(rid, qty, loc)])[0]


def judged(store: Store) -> list[tuple[str, str, str]]:
    """The alert transitions of a first look at the SKU's position as the store reports it."""
    obs = Observation.checkout("S", T0, parse_position(store.position("S")))
    _, alerts = evaluate(None, obs, T0, ALERTS)
    return [(a.kind, a.status, a.location) for a in alerts]


def assert_network_atp_is_what_a_hold_can_take(store: Store) -> None:
    """The SKU's ATP plus what is oversold is exactly what a hold of any location may take."""
    pos = store.position("S")
    refused = hold(store, "probe-over", pos["atp"] + pos["oversold"] + 1)
    assert (refused["status"], refused["available"]) == ("refused", pos["atp"] + pos["oversold"])
    assert store.position("S") == pos  # a refusal changes nothing


def test_an_empty_location_with_safety_shows_atp_0_and_raises_nothing(store: Store) -> None:
    store.set_policy("S", {"safety": 5})
    supply(store, "count", loc="A", on_hand=20)
    supply(store, "count", loc="B", on_hand=0)
    supply(store, "count", loc="C", on_hand=3)
    pos = store.position("S")
    figures = {loc: (f["safety"], f["atp"]) for loc, f in pos["locations"].items()}
    assert figures == {"A": (5, 15), "B": (0, 0), "C": (3, 0)}
    assert (pos["safety"], pos["atp"], pos["oversold"], pos["backordered"]) == (8, 15, 0, 0)
    assert store.position("S", "B")["atp"] == 0
    # B is empty and nobody asks for it: nothing; C holds only safety stock: nothing to promise there
    assert judged(store) == [("low_stock", "firing", "C"), ("stockout", "firing", "C")]
    assert_network_atp_is_what_a_hold_can_take(store)
    assert check_invariants(store.redis) == []


def test_a_backorder_sale_is_backordered_not_oversold(store: Store) -> None:
    store.set_policy("S", {"mode": "backorder", "backorder_limit": 10, "backorder_days": 7, "safety": 1})
    supply(store, "count", loc="A", on_hand=5)
    assert store.position("S")["atp"] == 4 + 10
    sold = hold(store, "r1", 8, "A")
    assert sold["line"]["alloc"] == [["oh", "A", "A", 4], ["bo", "", "A", 4]]
    assert sold["line"]["atp_after"] == 0  # ATP of A: its stock is sold, the backorders take nothing
    pos = store.position("S")
    assert (pos["atp"], pos["backordered"], pos["oversold"]) == (6, 4, 0)
    assert (pos["locations"]["A"]["atp"], pos["locations"]["A"]["bo_alloc"]) == (0, 4)
    assert_network_atp_is_what_a_hold_can_take(store)
    # selling on backorder at A: stock is low there, but A is not out while the room lasts
    assert judged(store) == [("low_stock", "firing", "A")]

    network = hold(store, "r2", 6)
    assert network["line"]["atp_after"] == 0  # the SKU's ATP: the room is used up
    pos = store.position("S")
    assert (pos["atp"], pos["backordered"], pos["oversold"]) == (0, 10, 0)
    assert judged(store) == [("low_stock", "firing", "A"), ("stockout", "firing", "A")]
    assert_network_atp_is_what_a_hold_can_take(store)

    # stock received is sellable again; the backorders keep their allocation (and the room stays used)
    supply(store, "receipt", loc="A", qty=6)
    pos = store.position("S")
    assert (pos["on_hand"], pos["backordered"], pos["oversold"], pos["atp"]) == (11, 10, 0, 6)
    assert judged(store) == []
    assert_network_atp_is_what_a_hold_can_take(store)
    assert check_invariants(store.redis) == []


@pytest.mark.parametrize("mode", ["strict", "presell", "backorder"])
def test_network_atp_is_what_a_hold_can_take(store: Store, mode: str) -> None:
    store.set_policy("S", {"mode": mode, "cap_pm": 500, "backorder_limit": 7, "safety": 2})
    supply(store, "count", loc="A", on_hand=10)
    supply(store, "count", loc="B", on_hand=1)
    supply(store, "inbound_created", inbound_id="L1", loc="B", qty=20, eta_ms=T0 + 3 * DAY, supplier="s")
    assert_network_atp_is_what_a_hold_can_take(store)
    capacity = {"strict": 8, "presell": 8 + 10, "backorder": 8 + 10 + 7}[mode]  # B: 1 unit, all safety
    assert store.position("S")["atp"] == capacity

    assert hold(store, "r1", 5)["status"] == "ok"
    assert hold(store, "r2", 2, "B")["status"] == ("refused" if mode == "strict" else "ok")
    assert_network_atp_is_what_a_hold_can_take(store)

    # supply shrinks under live reservations: what is short is oversold, and ATP is net of it
    supply(store, "adjust", loc="A", delta=-8)
    supply(store, "inbound_cancelled", inbound_id="L1")
    pos = store.position("S")
    assert pos["atp"] == -pos["oversold"] + (7 - pos["backordered"] if mode == "backorder" else 0)
    assert sum(f["atp"] for f in pos["locations"].values()) == -pos["oversold"]
    assert_network_atp_is_what_a_hold_can_take(store)
    assert check_invariants(store.redis) == []
