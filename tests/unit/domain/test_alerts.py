"""Alert rules on hand-computed cases: transitions, hysteresis, deterministic ids, one-shots, lots."""

import hashlib
import pickle

import orjson
import pytest

from engine.domain.alerts import AlertPolicy, AlertState, evaluate, tick
from engine.domain.demand import DemandReading
from engine.domain.observation import AtRisk, LocationFigures, Observation, PositionFigures, Slip
from engine.domain.oracle import DAY_MS, HoldRequest, SkuBook
from engine.domain.outputs import Alert
from engine.domain.policy import Policy
from engine.settings import Settings

T0 = 1_735_689_600_000  # 2025-01-01T00:00:00Z
HOUR = 3_600_000
SKU = "SKU-1"
POLICY = AlertPolicy(low_stock=10, resolve_after_ms=0)


def sha1(*parts: object) -> str:
    return hashlib.sha1("|".join(str(p) for p in parts).encode()).hexdigest()


def position(**per_loc: dict[str, int]) -> PositionFigures:
    locs = {name: LocationFigures(**figs) for name, figs in per_loc.items()}
    return PositionFigures(
        atp=sum(f.atp for f in locs.values()), oversold=sum(f.short for f in locs.values()), locations=locs
    )


def seen(atp: int, t: int, short: int = 0, loc: str = "default", event: str = "") -> Observation:
    return Observation(
        sku=SKU,
        command="adjust",
        occurred_ms=t,
        event_id=event or f"e{t}",
        location=loc,
        # 5 units committed: a location in use (an empty one is not judged)
        position=position(**{loc: {"atp": atp, "on_hand": max(atp, 0) + 5, "committed": 5, "short": short}}),
    )


def run(
    atps: list[int], policy: AlertPolicy = POLICY, state: AlertState | None = None
) -> tuple[AlertState, list[Alert]]:
    out: list[Alert] = []
    for i, atp in enumerate(atps):
        state, alerts = evaluate(state, seen(atp, T0 + i * 1000), T0 + i * 1000, policy)
        out += alerts
    assert state is not None
    return state, out


def kinds(alerts: list[Alert]) -> list[tuple[str, str, int]]:
    return [(a.kind, a.status, a.episode) for a in alerts]


# --- low_stock / stockout / oversold -----------------------------------------------------------


def test_low_stock_fires_at_threshold_and_resolves_only_above_the_band():
    # T = 10, band = max(1, ceil(10/10)) = 1: fire at ATP ≤ 10, resolve at ATP > 11.
    _, alerts = run([20, 11, 10, 11, 10, 11, 12])
    assert kinds(alerts) == [("low_stock", "firing", 1), ("low_stock", "resolved", 1)]
    firing, resolved = alerts
    assert firing.occurred_ms == T0 + 2000 and resolved.occurred_ms == T0 + 6000
    assert firing.values["atp"] == 10 and firing.values["threshold"] == 10
    assert resolved.values["resolve_above"] == 11
    assert firing.severity == "warning" and firing.location == "default"


def test_threshold_crossed_recovered_and_crossed_again_gives_one_pair_per_crossing_with_distinct_ids():
    _, alerts = run([50, 9, 10, 8, 30, 12, 7, 9, 40])
    assert kinds(alerts) == [
        ("low_stock", "firing", 1),
        ("low_stock", "resolved", 1),
        ("low_stock", "firing", 2),
        ("low_stock", "resolved", 2),
    ]
    ids = [a.alert_id for a in alerts]
    assert ids[0] == ids[1] == sha1("low_stock", SKU, "default", "", 1)
    assert ids[2] == ids[3] == sha1("low_stock", SKU, "default", "", 2)
    assert ids[0] != ids[2]


def test_small_oscillation_around_the_threshold_does_not_flap():
    _, alerts = run([10, 11] * 20)
    assert kinds(alerts) == [("low_stock", "firing", 1)]


def test_band_is_ten_percent_of_a_larger_threshold():
    policy = AlertPolicy(low_stock=50, resolve_after_ms=0)  # band ceil(5.0) = 5 → resolves above 55
    assert policy.low_stock_band == 5
    _, alerts = run([60, 50, 55, 56], policy)
    assert kinds(alerts) == [("low_stock", "firing", 1), ("low_stock", "resolved", 1)]
    assert alerts[1].values["atp"] == 56


def test_threshold_zero_disables_low_stock_and_resolves_a_firing_one():
    state, alerts = run([5])
    assert kinds(alerts) == [("low_stock", "firing", 1)]
    _, alerts = evaluate(state, seen(5, T0 + 5000), T0 + 5000, AlertPolicy(low_stock=0, resolve_after_ms=0))
    assert kinds(alerts) == [("low_stock", "resolved", 1)]
    _, alerts = run([5, 0, 5], AlertPolicy(low_stock=0, resolve_after_ms=0))
    assert [a.kind for a in alerts] == ["stockout", "stockout"]


def test_stockout_fires_at_zero_and_resolves_only_above_the_band():
    # T = 10, band 1: one unit back (ATP 1) does not end the sell-out; ATP 2 does
    _, alerts = run([12, 3, 0, -2, 1, 0, 2, 0])
    assert kinds(alerts) == [
        ("low_stock", "firing", 1),
        ("stockout", "firing", 1),
        ("stockout", "resolved", 1),
        ("stockout", "firing", 2),
    ]
    assert alerts[1].severity == "warning"  # a sell-out is what a sale brings; no one is paged
    assert alerts[1].alert_id == sha1("stockout", SKU, "default", "", 1)
    assert (alerts[2].values["atp"], alerts[2].values["resolve_above"]) == (2, 1)


def test_a_condition_resolves_only_once_clear_for_the_resolve_period_without_a_break():
    # one observation a minute, a 5-minute period: the clears at minutes 1, 3 and 5 are each broken
    # by a new dip, so it is one episode; clear from minute 7, it resolves at minute 12
    policy = AlertPolicy(low_stock=0, resolve_after_ms=5 * 60_000)
    state, out = None, []
    for minute, atp in enumerate([0, 5, 0, 5, 0, 5, 0, 5, 5, 5, 5, 5, 5, 0]):
        state, alerts = evaluate(state, seen(atp, T0 + minute * 60_000), T0 + minute * 60_000, policy)
        out += alerts
    assert [(a.kind, a.status, a.episode, (a.occurred_ms - T0) // 60_000) for a in out] == [
        ("stockout", "firing", 1, 0),
        ("stockout", "resolved", 1, 12),
        ("stockout", "firing", 2, 13),
    ]


def test_oversold_fires_while_reservations_lack_supply():
    state, alerts = evaluate(None, seen(-3, T0, short=3), T0, AlertPolicy(low_stock=0, resolve_after_ms=0))
    assert kinds(alerts) == [("stockout", "firing", 1), ("oversold", "firing", 1)]
    assert alerts[1].values["short"] == 3
    _, alerts = evaluate(state, seen(0, T0 + 1, short=0), T0 + 1, AlertPolicy(low_stock=0, resolve_after_ms=0))
    assert kinds(alerts) == [("oversold", "resolved", 1)]


def test_locations_are_judged_separately_in_sorted_order():
    obs = Observation(
        sku=SKU,
        command="count",
        occurred_ms=T0,
        position=position(WH2={"atp": 0, "on_hand": 4, "committed": 4}, WH1={"atp": 5, "on_hand": 5},
                          WH3={"atp": 100, "on_hand": 100}, WH4={"atp": 0}),
    )
    _, alerts = evaluate(None, obs, T0, POLICY)
    assert [(a.kind, a.location) for a in alerts] == [
        ("low_stock", "WH1"),
        ("low_stock", "WH2"),
        ("stockout", "WH2"),
    ]  # WH4 holds nothing and sells nothing: its ATP 0 is no sell-out


def backordering(room: int, t: int) -> Observation:
    """WH1 sold out on hand and selling on backorder (ATP 0, 8 backordered), ``room`` units of
    backorder allowance left: the SKU's ATP counts them, no location's does."""
    wh1 = LocationFigures(on_hand=4, committed=12, atp=0, backordered=8)
    pos = PositionFigures(atp=room, locations={"WH1": wh1}, backordered=8)
    return Observation(sku=SKU, command="order_placed", occurred_ms=t, event_id=f"e{t}", position=pos)


def test_backorders_raise_no_stockout_while_backorder_room_remains():
    state, alerts = evaluate(None, backordering(5, T0), T0, POLICY)
    assert kinds(alerts) == [("low_stock", "firing", 1)]  # stock is low: selling on backorder
    assert alerts[0].values["backordered"] == 8
    state, alerts = evaluate(state, backordering(0, T0 + 1000), T0 + 1000, POLICY)
    assert kinds(alerts) == [("stockout", "firing", 1)]
    assert alerts[0].values["backorder_room"] == 0
    # the allowance back above the band (a backorder released): the location can sell again
    _, alerts = evaluate(state, backordering(2, T0 + 2000), T0 + 2000, POLICY)
    assert kinds(alerts) == [("stockout", "resolved", 1)]
    assert "backorder room 2" in alerts[0].summary and alerts[0].values["backorder_room"] == 2


def test_a_location_sold_out_by_orders_is_judged_when_empty():
    sold = {"WH1": DemandReading(recent_units=20, baseline_per_day=0.0, baseline_days=0, window_hours=24)}
    gone = Observation(sku=SKU, command="ship", occurred_ms=T0, position=position(WH1={"atp": 0}))
    _, alerts = evaluate(None, gone, T0, POLICY, demand=sold)
    assert [(a.kind, a.location) for a in alerts] == [("low_stock", "WH1"), ("stockout", "WH1")]


def test_an_empty_location_is_judged_once_it_has_demand():
    quiet = Observation(sku=SKU, command="count", occurred_ms=T0, position=position(WH9={"atp": 0}))
    assert evaluate(None, quiet, T0, POLICY)[1] == []
    wanted = {"WH9": DemandReading(recent_units=3, baseline_per_day=0.0, baseline_days=0, window_hours=24)}
    _, alerts = evaluate(None, quiet, T0, POLICY, demand=wanted)
    assert [(a.kind, a.location) for a in alerts] == [("low_stock", "WH9"), ("stockout", "WH9")]


# --- one-shots ---------------------------------------------------------------------------------


def refused_order(event: str = "ev-9", rid: str = "order-7", at: int = T0) -> Observation:
    return Observation(
        sku=SKU,
        command="order_placed",
        occurred_ms=at,
        event_id=event,
        status="refused",
        reason="insufficient",
        rid=rid,
        qty=5,
        available=2,
        location="WH1",
        position=position(WH1={"atp": 2, "on_hand": 2}),
    )


def test_refused_orders_are_one_order_unfulfillable_episode_with_their_totals():
    policy = AlertPolicy(low_stock=0, resolve_after_ms=0, unfulfillable_quiet_ms=HOUR)
    state, alerts = evaluate(None, refused_order(), T0, policy)
    [first] = alerts
    assert (first.kind, first.status, first.severity) == ("order_unfulfillable", "firing", "warning")
    assert (first.subject, first.location, first.revision) == ("", "WH1", 0)
    assert first.values == {"orders": 1, "units": 5, "qty": 5, "available": 2}
    assert first.alert_id == sha1("order_unfulfillable", SKU, "WH1", "", 1)
    assert [r.rid for r in first.reservations] == ["order-7"]
    # more refusals within the quiet period: gathered, silent
    for i in range(30):
        state, alerts = evaluate(state, refused_order(f"ev-{i}", rid=f"o-{i}", at=T0 + i * 60_000), T0, policy)
        assert alerts == []
    # still refusing an hour after the totals were sent: one follow-up of the same episode
    state, [update] = evaluate(state, refused_order("ev-u", rid="o-u", at=T0 + HOUR), T0, policy)
    assert (update.status, update.episode, update.revision, update.alert_id) == ("firing", 1, 1, first.alert_id)
    assert (update.values["orders"], update.values["units"]) == (32, 160)
    assert [r.rid for r in update.reservations][:3] == ["o-u", "o-29", "o-28"]
    assert len(update.reservations) == 20  # newest first, bounded
    # an hour without a refusal: the next observation resolves it with the totals
    quiet = Observation(sku=SKU, command="count", occurred_ms=T0 + 2 * HOUR + 1, status="ok")
    _, [done] = evaluate(state, quiet, T0 + 2 * HOUR + 1, policy)
    assert (done.status, done.alert_id, done.values) == ("resolved", first.alert_id, {"orders": 32, "units": 160})


def test_accepted_or_duplicate_order_raises_nothing():
    ok = Observation(sku=SKU, command="order_placed", occurred_ms=T0, status="ok", rid="o1", qty=1)
    dup = Observation(sku=SKU, command="order_placed", occurred_ms=T0, status="duplicate", rid="o1", qty=1)
    assert evaluate(None, ok, T0, POLICY)[1] == []
    assert evaluate(None, dup, T0, POLICY)[1] == []


def test_promise_slipped_names_each_later_date_once():
    obs = Observation(
        sku=SKU,
        command="inbound_updated",
        occurred_ms=T0,
        event_id="upd-1",
        inbound_id="PO-1",
        eta_ms=T0 + 5 * DAY_MS,
        slipped=(Slip("r2", T0 + 2 * DAY_MS, T0 + 5 * DAY_MS), Slip("r1", T0 + DAY_MS, T0 + 5 * DAY_MS)),
        position=position(default={"atp": 50, "on_hand": 50}),
    )
    state, alerts = evaluate(None, obs, T0, POLICY)
    [alert] = alerts
    assert (alert.kind, alert.status, alert.subject, alert.location) == (
        "promise_slipped",
        "firing",
        "PO-1",
        "",
    )
    assert [(r.rid, r.old_promised_ms, r.new_promised_ms) for r in alert.reservations] == [
        ("r2", T0 + 2 * DAY_MS, T0 + 5 * DAY_MS),
        ("r1", T0 + DAY_MS, T0 + 5 * DAY_MS),
    ]
    assert alert.reservations[0].new_promised_at == "2025-01-06T00:00:00.000Z"
    assert alert.values == {"reservations": 2, "max_delay_ms": 4 * DAY_MS}
    assert alert.alert_id == sha1("promise_slipped", SKU, "", "PO-1", "event:upd-1")
    # An earlier date is not a slip; nothing else fires.
    earlier = Observation(
        sku=SKU, command="inbound_updated", occurred_ms=T0, slipped=(Slip("r3", T0 + DAY_MS, T0),)
    )
    assert evaluate(state, earlier, T0, POLICY)[1] == []


# --- promise_at_risk ---------------------------------------------------------------------------


def risk(t: int, *items: tuple[str, int]) -> Observation:
    short = sum(s for _, s in items)
    return Observation(
        sku=SKU,
        command="inbound_cancelled",
        occurred_ms=t,
        inbound_id="PO-9",
        at_risk=tuple(AtRisk(r, s) for r, s in items),
        position=position(default={"atp": 100 - short, "on_hand": 100, "short": short}),
    )


def test_promise_at_risk_fires_once_adds_a_revision_for_new_reservations_and_resolves():
    policy = AlertPolicy(low_stock=0, resolve_after_ms=0)
    state, a1 = evaluate(None, risk(T0, ("r2", 3), ("r1", 1)), T0, policy)
    at_risk = [a for a in a1 if a.kind == "promise_at_risk"]
    assert [(a.status, a.episode, a.revision) for a in at_risk] == [("firing", 1, 0)]
    assert [(r.rid, r.short) for r in at_risk[0].reservations] == [("r2", 3), ("r1", 1)]
    assert at_risk[0].values["short"] == 4
    first_id = at_risk[0].alert_id
    assert first_id == sha1("promise_at_risk", SKU, "", "", 1)

    state, a2 = evaluate(state, risk(T0 + 1, ("r2", 3), ("r1", 1)), T0 + 1, policy)
    assert [a for a in a2 if a.kind == "promise_at_risk"] == []

    state, a3 = evaluate(state, risk(T0 + 2, ("r3", 2), ("r2", 3)), T0 + 2, policy)
    [rev] = [a for a in a3 if a.kind == "promise_at_risk"]
    assert (rev.status, rev.episode, rev.revision, rev.alert_id) == ("firing", 1, 1, first_id)
    assert [r.rid for r in rev.reservations] == ["r3", "r2"]

    state, a4 = evaluate(state, risk(T0 + 3), T0 + 3, policy)
    [done] = [a for a in a4 if a.kind == "promise_at_risk"]
    assert (done.status, done.alert_id) == ("resolved", first_id)
    assert sorted(r.rid for r in done.reservations) == ["r1", "r2", "r3"]

    _, a5 = evaluate(state, risk(T0 + 4, ("r9", 1)), T0 + 4, policy)
    [again] = [a for a in a5 if a.kind == "promise_at_risk"]
    assert (again.episode, again.revision) == (2, 0)
    assert again.alert_id == sha1("promise_at_risk", SKU, "", "", 2)


def test_a_tick_without_position_leaves_promise_at_risk_alone():
    state, _ = evaluate(None, risk(T0, ("r1", 1)), T0, POLICY)
    state, alerts = tick(state, T0 + HOUR, POLICY)
    assert alerts == [] and state.conditions[("promise_at_risk", "", "")].firing


# --- inbound_late ------------------------------------------------------------------------------


def inbound(t: int, lot: str = "PO-1", eta: int = T0 + 10 * HOUR, qty: int = 40) -> Observation:
    return Observation(
        sku=SKU,
        command="inbound_created",
        occurred_ms=t,
        event_id=f"in-{lot}",
        inbound_id=lot,
        location="WH1",
        qty=qty,
        eta_ms=eta,
        supplier="ACME",
    )


def received(t: int, lot: str = "PO-1", qty: int = 40) -> Observation:
    from engine.domain.observation import ClosedLot

    return Observation(
        sku=SKU,
        command="receipt",
        occurred_ms=t,
        event_id=f"rc-{lot}",
        location="WH1",
        qty=qty,
        inbound_id=lot,
        lot=ClosedLot(lot, 40, T0 + 10 * HOUR, "ACME"),
    )


def test_inbound_late_fires_from_a_tick_on_a_quiet_sku_and_resolves_at_receipt():
    state, alerts = evaluate(None, inbound(T0), T0, POLICY)
    assert alerts == []
    state, alerts = tick(state, T0 + 10 * HOUR, POLICY)  # exactly at the ETA: not late yet
    assert alerts == []
    state, alerts = tick(state, T0 + 10 * HOUR + 1, POLICY)
    [late] = alerts
    assert (late.kind, late.status, late.location, late.subject, late.supplier) == (
        "inbound_late",
        "firing",
        "WH1",
        "PO-1",
        "ACME",
    )
    assert late.event_id == "" and late.occurred_ms == T0 + 10 * HOUR + 1
    assert late.values == {"eta_ms": T0 + 10 * HOUR, "qty": 40, "late_by_ms": 1}
    assert late.alert_id == sha1("inbound_late", SKU, "WH1", "PO-1", 1)
    state, alerts = tick(state, T0 + 20 * HOUR, POLICY)
    assert alerts == []
    state, alerts = evaluate(state, received(T0 + 30 * HOUR, qty=35), T0 + 30 * HOUR, POLICY)
    [done] = alerts
    assert (done.status, done.alert_id) == ("resolved", late.alert_id)
    assert done.values["received_qty"] == 35 and done.values["late_by_ms"] == 20 * HOUR
    assert state.lots == {} and not any(k[0] == "inbound_late" for k in state.conditions)


def test_inbound_late_respects_the_grace_period():
    state, _ = evaluate(None, inbound(T0), T0, POLICY)
    policy = AlertPolicy(inbound_grace_ms=HOUR)
    assert tick(state, T0 + 11 * HOUR, policy)[1] == []
    assert [a.status for a in tick(state, T0 + 11 * HOUR + 1, policy)[1]] == ["firing"]


def test_a_lot_received_late_between_observations_never_fires():
    state, _ = evaluate(None, inbound(T0), T0, POLICY)
    state, alerts = evaluate(state, received(T0 + 50 * HOUR), T0 + 50 * HOUR, POLICY)
    assert alerts == [] and state.lots == {}


def test_eta_moved_out_resolves_and_passing_it_again_opens_episode_two():
    state, _ = evaluate(None, inbound(T0), T0, POLICY)
    state, [late] = tick(state, T0 + 11 * HOUR, POLICY)
    moved = Observation(
        sku=SKU,
        command="inbound_updated",
        occurred_ms=T0 + 12 * HOUR,
        inbound_id="PO-1",
        eta_ms=T0 + 48 * HOUR,
    )
    state, alerts = evaluate(state, moved, T0 + 12 * HOUR, POLICY)
    assert kinds(alerts) == [("inbound_late", "resolved", 1)]
    state, alerts = tick(state, T0 + 49 * HOUR, POLICY)
    assert kinds(alerts) == [("inbound_late", "firing", 2)]
    assert alerts[0].alert_id == sha1("inbound_late", SKU, "WH1", "PO-1", 2) != late.alert_id
    cancelled = Observation(
        sku=SKU, command="inbound_cancelled", occurred_ms=T0 + 50 * HOUR, inbound_id="PO-1"
    )
    state, alerts = evaluate(state, cancelled, T0 + 50 * HOUR, POLICY)
    assert kinds(alerts) == [("inbound_late", "resolved", 2)]
    assert "cancelled" in alerts[0].summary and state.lots == {}


def test_the_clock_never_goes_back_for_an_out_of_order_event():
    state, _ = evaluate(None, inbound(T0), T0, POLICY)
    state, [late] = tick(state, T0 + 11 * HOUR, POLICY)
    state, alerts = evaluate(state, seen(50, T0 + HOUR), T0 + HOUR, POLICY)  # old event time
    assert alerts == [] and state.clock_ms == T0 + 11 * HOUR


def test_a_refused_or_duplicate_inbound_is_not_booked():
    dup = Observation(
        sku=SKU, command="inbound_created", occurred_ms=T0, status="duplicate", inbound_id="PO-1", eta_ms=T0
    )
    state, _ = evaluate(None, dup, T0, POLICY)
    assert state.lots == {}


# --- demand_surge ------------------------------------------------------------------------------


def surge(state: AlertState | None, recent: int, baseline: float, days: float = 7.0, t: int = T0):
    obs = Observation.tick(SKU, t)
    return evaluate(state, obs, t, POLICY, demand={"WH1": DemandReading(recent, baseline, days, 24)})


def test_demand_surge_needs_fifty_percent_growth_and_resolves_below_twenty_five():
    # baseline 10/day: fire at ≥ max(10, 15) = 15, resolve below max(5, 12.5) = 12.5
    state, alerts = surge(None, 14, 10.0)
    assert alerts == []
    state, alerts = surge(state, 15, 10.0)
    [fired] = alerts
    assert (fired.kind, fired.status, fired.location, fired.severity) == (
        "demand_surge",
        "firing",
        "WH1",
        "info",
    )
    assert fired.values["growth_pct"] == pytest.approx(50.0)
    assert fired.values["fire_level"] == 15 and fired.values["resolve_below"] == 12.5
    state, alerts = surge(state, 13, 10.0)
    assert alerts == []
    state, alerts = surge(state, 12, 10.0)
    assert kinds(alerts) == [("demand_surge", "resolved", 1)]


def test_small_volumes_are_no_surge():
    state, alerts = surge(None, 2, 1.0)  # +100 % but 2 units < 10
    assert alerts == []
    state, alerts = surge(state, 10, 0.0)  # from nothing: 10 units is enough
    assert kinds(alerts) == [("demand_surge", "firing", 1)] and "growth_pct" not in alerts[0].values
    assert surge(None, 500, 0.0, days=0.0)[1] == []  # no baseline yet: not judged


# --- determinism, recovery, serialisation ------------------------------------------------------


def scenario() -> list[Observation]:
    atps = [40, 9, 11, 10, 12, 30, 8, 0, 5, 13, 9]
    return [seen(a, T0 + i * 1000, event=f"ev-{i}") for i, a in enumerate(atps)]


def test_a_replay_from_a_pickled_snapshot_gives_the_same_messages_as_an_uninterrupted_run():
    events = scenario()
    state: AlertState | None = None
    straight: list[Alert] = []
    for obs in events:
        state, alerts = evaluate(state, obs, obs.occurred_ms, POLICY)
        straight += alerts

    # Crash after event 5: the snapshot taken after event 3 is restored and events 4.. replayed.
    state = None
    recovered: list[Alert] = []
    snapshot = b""
    for i, obs in enumerate(events[:6]):
        state, alerts = evaluate(state, obs, obs.occurred_ms, POLICY)
        recovered += alerts
        if i == 3:
            snapshot = pickle.dumps(state)
    state = pickle.loads(snapshot)
    replayed: list[Alert] = []
    for obs in events[4:]:
        state, alerts = evaluate(state, obs, obs.occurred_ms, POLICY)
        replayed += alerts

    # Every message of the uninterrupted run appears, with the same id; duplicates are identical.
    assert {(a.alert_id, a.status) for a in recovered + replayed} == {
        (a.alert_id, a.status) for a in straight
    }
    assert [a for a in replayed if a.occurred_ms >= events[6].occurred_ms] == [
        a for a in straight if a.occurred_ms >= events[6].occurred_ms
    ]
    assert kinds(straight) == [
        ("low_stock", "firing", 1),
        ("low_stock", "resolved", 1),
        ("low_stock", "firing", 2),
        ("stockout", "firing", 1),
        ("stockout", "resolved", 1),
        ("low_stock", "resolved", 2),
        ("low_stock", "firing", 3),
    ]


def test_state_pickles_with_lots_and_conditions():
    state, _ = evaluate(None, inbound(T0), T0, POLICY)
    state, _ = evaluate(state, risk(T0 + 1, ("r1", 2)), T0 + 1, POLICY)
    state, _ = tick(state, T0 + 11 * HOUR, POLICY)
    clone = pickle.loads(pickle.dumps(state))
    assert clone == state and clone.firing() == state.firing()
    assert ("inbound_late", "WH1", "PO-1") in clone.firing()


def test_alert_serialises_to_json_that_parses_back_and_is_keyed_by_sku():
    _, [alert] = run([5])
    data = orjson.loads(alert.to_json())
    assert data["schema_version"] == 2 and data["occurred_at"] == "2025-01-01T00:00:00.000Z"
    assert data["kind"] == "low_stock" and data["status"] == "firing"
    assert Alert.from_json(alert.to_json()) == alert
    assert alert.message_key() == b"SKU-1"
    assert "alert_id" in Alert.model_json_schema()["required"]


def test_state_of_another_sku_is_refused():
    state, _ = run([5])
    other = Observation(sku="SKU-2", command="count", occurred_ms=T0)
    with pytest.raises(ValueError, match="SKU-2"):
        evaluate(state, other, T0, POLICY)


def test_policy_from_settings_uses_the_sku_threshold_when_set():
    settings = Settings(low_stock_threshold=7, demand_surge_pct=80)
    assert AlertPolicy.from_settings(settings) == AlertPolicy(low_stock=7, demand_surge_pct=80.0)
    assert AlertPolicy.from_settings(settings, Policy(low_stock=25)).low_stock == 25
    assert AlertPolicy.from_settings(settings, Policy()).low_stock == 7
    with pytest.raises(ValueError):
        AlertPolicy(low_stock=-1)


# --- through the oracle's real replies ---------------------------------------------------------


def test_oracle_replies_drive_stockout_at_risk_and_slip_alerts():
    book = SkuBook(SKU, policy=Policy(mode="presell"))
    state: AlertState | None = None
    out: list[Alert] = []

    def step(cmd: str, args: dict, t: int, event: str) -> None:
        nonlocal state
        reply = book.apply(cmd, args, t, event_id=event)
        obs = Observation.from_reply(
            sku=SKU, command=cmd, args=args, reply=reply, occurred_ms=t, event_id=event
        )
        state, alerts = evaluate(state, obs, t, AlertPolicy(low_stock=5, resolve_after_ms=0))
        out.extend(alerts)

    step("count", {"loc": "WH1", "on_hand": 4}, T0, "c1")
    step(
        "inbound_created",
        {"inbound_id": "PO-1", "loc": "WH1", "qty": 10, "eta_ms": T0 + DAY_MS, "supplier": "ACME"},
        T0,
        "i1",
    )
    book.hold_batch([HoldRequest("r1", 6, "WH1"), HoldRequest("r2", 5, "WH1")], T0)  # r2 draws on PO-1 only
    step("inbound_updated", {"inbound_id": "PO-1", "eta_ms": T0 + 3 * DAY_MS}, T0 + 1, "u1")
    step("inbound_cancelled", {"inbound_id": "PO-1"}, T0 + 2, "x1")
    step("receipt", {"loc": "WH1", "qty": 20}, T0 + 3, "g1")

    assert [(a.kind, a.status) for a in out] == [
        ("low_stock", "firing"),  # count: ATP 4 ≤ 5
        ("low_stock", "resolved"),  # + a promisable lot of 10: ATP 14 > 6
        ("promise_slipped", "firing"),  # the lot both holds draw on moves out by 2 days
        ("low_stock", "firing"),  # the holds (taken outside the stream) left ATP 3
        ("promise_at_risk", "firing"),  # the lot is cancelled: 7 held units lose their supply
        ("stockout", "firing"),  # ATP 4 - 11 = -7
        ("oversold", "firing"),
        ("promise_at_risk", "resolved"),  # 20 received: every line re-supplied from on-hand
        ("low_stock", "resolved"),  # ATP 24 - 11 = 13
        ("stockout", "resolved"),
        ("oversold", "resolved"),
    ]
    slipped = out[2]
    assert {r.rid for r in slipped.reservations} == {"r1", "r2"}
    assert all(r.new_promised_ms == T0 + 3 * DAY_MS for r in slipped.reservations)
    at_risk = out[4]
    assert [(r.rid, r.short) for r in at_risk.reservations] == [("r2", 5), ("r1", 2)]
    assert at_risk.values == {"reservations": 2, "short": 7, "oversold": 7}
    assert out[5].values["atp"] == -7 and out[6].values["short"] == 7
