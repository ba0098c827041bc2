"""Replenishment math and triggers on hand-computed cases."""

import hashlib
import math
import pickle

import orjson
import pytest

from engine.domain.demand import DemandRate
from engine.domain.observation import ClosedLot, LocationFigures, Observation, PositionFigures
from engine.domain.outputs import ReplenishmentTrigger
from engine.domain.policy import Policy
from engine.domain.replenishment import (
    ReplenishmentPolicy,
    ReplenishmentState,
    evaluate,
    order_qty,
    order_up_to,
    reorder_point,
    trigger_id,
    z_for,
)
from engine.settings import Settings

T0 = 1_735_689_600_000
DAY = 86_400_000
SKU = "SKU-1"
RATE = {"WH1": DemandRate(d=10.0, sigma=3.0, days=30)}
POLICY = ReplenishmentPolicy(service_level=0.95, review_period_days=1.0, lead_time_days=4.0, pack_size=10)
ROP = 10 * 4 + z_for(0.95) * 3 * 2  # 49.869…
S = ROP + 10  # 59.869…


def test_reorder_point_hand_check():
    # d = 10/day, σ = 3, L = 4 days, z = 1.645 → ROP = 40 + 1.645·3·2 = 49.87
    assert reorder_point(10, 3, 4, 1.645) == pytest.approx(49.87)
    assert z_for(0.95) == pytest.approx(1.6449, abs=1e-4)
    assert reorder_point(10, 3, 4, z_for(0.95)) == pytest.approx(49.87, abs=0.01)
    assert z_for(0.5) == pytest.approx(0.0, abs=1e-12)
    assert reorder_point(0, 0, 7, 2.0) == 0.0


def test_order_up_to_and_pack_rounding():
    s = order_up_to(49.87, 10, 1)
    assert s == pytest.approx(59.87)
    assert order_qty(s, 0, 1) == 60  # ceil(59.87)
    assert order_qty(s, 30, 1) == 30  # ceil(29.87)
    assert order_qty(s, 10, 12) == 60  # ceil(49.87 / 12 = 4.16) = 5 packs
    assert order_qty(s, -7, 25) == 75  # oversold positions order the backlog too: ceil(66.87 / 25) = 3
    assert order_qty(s, 60, 1) == 0
    assert order_qty(59.000000000001, 0, 1) == 59  # float noise costs no extra unit
    assert math.isclose(order_qty(0.5, 0, 1), 1)


def at(on_hand: int, t: int, committed: int = 0, held: int = 0, in_transit: int = 0) -> Observation:
    figs = LocationFigures(on_hand=on_hand, committed=committed, held=held, in_transit=in_transit)
    return Observation(
        sku=SKU,
        command="adjust",
        occurred_ms=t,
        event_id=f"e{t}",
        location="WH1",
        position=PositionFigures(locations={"WH1": figs}),
    )


def run(observations, state=None, policy=POLICY, rates=RATE):
    out = []
    for obs in observations:
        state, triggers = evaluate(state, obs, rates, policy)
        out += triggers
    return state, out


def test_a_trigger_carries_every_number_when_ip_drops_to_the_reorder_point():
    # IP = 50 − 5 = 45 ≤ 49.87: qty = ceil((59.87 − 45) / 10) · 10 = 20
    state, [trig] = run([at(60, T0, committed=5), at(50, T0 + 1, committed=5)])
    assert trig.trigger_id == hashlib.sha1(f"replenishment|{SKU}|WH1|1".encode()).hexdigest()
    assert (trig.sku, trig.location, trig.episode, trig.event_id) == (SKU, "WH1", 1, f"e{T0 + 1}")
    assert trig.qty == 20 and trig.pack_size == 10
    assert (trig.demand_per_day, trig.demand_sigma) == (10.0, 3.0)
    assert (trig.lead_time_days, trig.lead_time_source) == (4.0, "policy")
    assert (trig.service_level, trig.review_period_days) == (0.95, 1.0)
    assert trig.z == pytest.approx(1.6449, abs=1e-4)
    assert trig.reorder_point == pytest.approx(49.87, abs=0.01)
    assert trig.order_up_to == pytest.approx(59.87, abs=0.01)
    assert (trig.inventory_position, trig.on_hand, trig.committed, trig.held, trig.in_transit) == (
        45,
        50,
        5,
        0,
        0,
    )
    assert trig.occurred_at == "2025-01-01T00:00:00.001Z"


def test_one_open_trigger_until_ip_recovers_then_a_new_episode():
    _, triggers = run(
        [
            at(45, T0),  # IP 45: trigger 1
            at(40, T0 + 1),  # still open: nothing
            at(30, T0 + 2, held=5),  # IP 25: nothing
            at(49, T0 + 3),  # IP 49 ≤ ROP: still open
            at(50, T0 + 4),  # IP 50 > 49.87: closes silently
            at(49, T0 + 5),  # trigger 2
        ]
    )
    assert [(t.episode, t.inventory_position, t.qty) for t in triggers] == [(1, 45, 20), (2, 49, 20)]
    assert triggers[1].trigger_id == trigger_id(SKU, "WH1", 2) != triggers[0].trigger_id


def inbound(t: int, qty: int, lot: str = "PO-1", on_hand: int = 45) -> Observation:
    return Observation(
        sku=SKU,
        command="inbound_created",
        occurred_ms=t,
        inbound_id=lot,
        location="WH1",
        qty=qty,
        eta_ms=t + 3 * DAY,
        supplier="ACME",
        position=PositionFigures(locations={"WH1": LocationFigures(on_hand=on_hand, in_transit=qty)}),
    )


def received(t: int, on_hand: int, lot: str = "PO-1") -> Observation:
    return Observation(
        sku=SKU,
        command="receipt",
        occurred_ms=t,
        location="WH1",
        qty=5,
        inbound_id=lot,
        lot=ClosedLot(lot, 5, t, "ACME"),
        position=PositionFigures(locations={"WH1": LocationFigures(on_hand=on_hand)}),
    )


def test_a_lot_created_answers_the_trigger_and_a_too_small_one_raises_the_next_at_once():
    state, triggers = run([at(45, T0), inbound(T0 + 1, qty=2)])
    # The lot closes trigger 1; IP = 47 is still ≤ ROP: trigger 2 for ceil((59.87 − 47)/10)·10 = 20
    assert [(t.episode, t.inventory_position, t.qty) for t in triggers] == [(1, 45, 20), (2, 47, 20)]
    _, triggers = run([at(45, T0), inbound(T0 + 1, qty=20)])
    assert [t.episode for t in triggers] == [1]  # IP 65: answered


def test_a_receipt_of_a_lot_closes_the_open_trigger():
    _, triggers = run([at(100, T0), inbound(T0, qty=5, on_hand=100), at(45, T0 + 1), at(44, T0 + 2)])
    assert [t.episode for t in triggers] == [1]
    _, triggers = run(
        [at(100, T0), inbound(T0, qty=5, on_hand=100), at(40, T0 + 1), received(T0 + 2, on_hand=45)]
    )
    # IP 45 after the receipt is still ≤ ROP: the answered trigger is followed by a new one
    assert [(t.episode, t.inventory_position) for t in triggers] == [(1, 40), (2, 45)]


def test_the_lead_time_is_learned_from_the_positions_own_lots():
    policy = ReplenishmentPolicy(service_level=0.95, pack_size=1, default_lead_time_days=7.0)
    rates = {"WH1": DemandRate(10.0, 0.0, 10)}  # σ = 0: ROP = 10·L, S = ROP + 10
    state, triggers = run([at(100, T0), inbound(T0, qty=5, on_hand=100)], policy=policy, rates=rates)
    assert triggers == []  # IP 105 > ROP 70 (default L = 7)
    state, triggers = run([received(T0 + 3 * DAY, on_hand=105)], state=state, policy=policy, rates=rates)
    pos = state.positions["WH1"]
    assert (pos.lead.days, pos.lead.samples, pos.lots) == (3.0, 1, {})
    assert triggers == []  # learned L = 3: ROP 30 < IP 105
    state, [trig] = run([at(30, T0 + 4 * DAY)], state=state, policy=policy, rates=rates)
    assert (trig.lead_time_days, trig.lead_time_source, trig.reorder_point, trig.qty) == (
        3.0,
        "learned",
        30.0,
        10,
    )


def test_without_demand_only_a_backlog_is_reordered():
    none = {"WH1": DemandRate(0.0, 0.0, 0)}
    policy = ReplenishmentPolicy(pack_size=1)
    _, triggers = run([at(0, T0)], policy=policy, rates=none)
    assert triggers == []  # IP 0 ≤ ROP 0 but S − IP = 0: nothing to order
    _, [trig] = run([at(0, T0, committed=5)], policy=policy, rates=none)
    assert (trig.qty, trig.inventory_position, trig.lead_time_source) == (5, -5, "default")
    _, triggers = run([at(0, T0, committed=5)], policy=policy, rates={})  # no stats at all
    assert [t.qty for t in triggers] == [5]


def test_ticks_and_positionless_observations_emit_nothing_and_state_pickles():
    state, _ = run([at(45, T0), inbound(T0 + 1, qty=30)])
    state, triggers = evaluate(state, Observation.tick(SKU, T0 + DAY), RATE, POLICY)
    assert triggers == []
    clone = pickle.loads(pickle.dumps(state))
    assert clone == state and clone.positions["WH1"].lots == {"PO-1": T0 + 1}
    with pytest.raises(ValueError, match="SKU-2"):
        evaluate(ReplenishmentState("SKU-2"), at(1, T0), RATE, POLICY)


def test_trigger_json_round_trips_and_is_keyed_by_sku():
    _, [trig] = run([at(45, T0)])
    data = orjson.loads(trig.to_json())
    assert data["schema_version"] == 1 and data["qty"] == 20 and data["reorder_point"] == trig.reorder_point
    assert ReplenishmentTrigger.from_json(trig.to_json()) == trig
    assert trig.message_key() == b"SKU-1"


def test_policy_from_settings_and_sku_policy():
    settings = Settings(service_level=0.99, review_period_days=2, default_lead_time_days=5)
    p = ReplenishmentPolicy.from_settings(settings, Policy(pack_size=6, lead_time_days=3))
    assert (p.service_level, p.review_period_days, p.default_lead_time_days) == (0.99, 2.0, 5.0)
    assert (p.pack_size, p.lead_time_days) == (6, 3.0)
    assert ReplenishmentPolicy.from_settings(settings).lead_time_days == 0.0
    with pytest.raises(ValueError):
        ReplenishmentPolicy(service_level=1.0)
    with pytest.raises(ValueError):
        ReplenishmentPolicy(pack_size=0)
