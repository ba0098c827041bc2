"""The alert, replenishment and supplier steps in the dataflow, on bytewax's TestingSource against the
real Redis (the outputs go to TestingSinks; ``test_alerts_e2e`` runs the same scenario through the
broker)."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
import redis as redis_lib
from bytewax.testing import TestingSink, TestingSource, run_main

from connectors.topics import Topics
from engine import metrics
from engine.domain.outputs import Alert, ReplenishmentTrigger
from engine.flow.alerting import AlertingOptions, attach_alerting
from engine.flow.dataflow import FlowStreams, build_flow
from engine.flow.records import Outcome
from engine.flow.runner import topic_bases
from engine.settings import Settings
from engine.store.store import Store
from tests.integration import alertkit as k
from tests.integration.alertkit import DAY, LOC, SKU, SUPPLIER, Event, at, iso

T = Topics()
NO_TICKS = AlertingOptions(ticks=False)


def defaults() -> Settings:
    """Engine defaults, untouched by the developer's ATP_* variables or atp.toml, but resolving
    as soon as clear: the scenario's trace is about levels (the resolve period in time is
    tests/unit/domain/test_alerts.py's)."""
    return Settings.model_construct(alert_resolve_after_s=0)


def run(
    redis: Any,
    items: list[Any],
    options: AlertingOptions = NO_TICKS,
    outcomes: list[tuple[str, Outcome]] | None = None,
    batch_size: int = 100,
    alerting: bool = True,
) -> tuple[list[Alert], list[ReplenishmentTrigger]]:
    alerts: list[Alert] = []
    triggers: list[ReplenishmentTrigger] = []

    def extra(streams: FlowStreams) -> None:
        attach_alerting(streams, settings=defaults(), store_factory=lambda: Store(redis),
                        alert_output=TestingSink(alerts), trigger_output=TestingSink(triggers), options=options)

    flow = build_flow("alert-test", TestingSource(items, batch_size=batch_size), lambda: Store(redis),
                      topic_bases(T), None, TestingSink(outcomes) if outcomes is not None else None,
                      extras=(extra,) if alerting else ())
    run_main(flow)
    return alerts, triggers


def set_policies(redis: Any) -> Store:
    store = Store(redis)
    store.set_policy(SKU, k.POLICY)
    store.set_policy(k.OTHER_SKU, k.OTHER_POLICY)
    return store


def counter(kind: str, status: str) -> float:
    return metrics.ALERTS.labels(kind, status)._value.get()


def lot_event(lot: str, sku: str, qty: int, eta_ms: int, time_ms: int, supplier: str = SUPPLIER) -> Event:
    return Event("inbound", {"event_id": f"ev-{lot}", "type": "inbound.created", "occurred_at": iso(time_ms),
                             "inbound_id": lot, "sku": sku, "location": LOC, "qty": qty, "eta": iso(eta_ms),
                             "supplier_id": supplier}, time_ms, sku)


def receipt_event(lot: str, sku: str, qty: int, time_ms: int) -> Event:
    return Event("receipts", {"event_id": f"ev-rcpt-{lot}", "type": "receipt.posted", "occurred_at": iso(time_ms),
                              "receipt_id": f"R-{lot}", "sku": sku, "location": LOC, "qty": qty,
                              "inbound_id": lot}, time_ms, sku)


def count_event(sku: str, on_hand: int, time_ms: int) -> Event:
    return Event("adjustments", {"event_id": f"ev-count-{sku}-{time_ms}", "type": "stock.counted",
                                 "occurred_at": iso(time_ms), "sku": sku, "location": LOC, "on_hand": on_hand},
                 time_ms, sku)



def test_the_flash_sale_scenario_publishes_each_transition_once_with_the_numbers_behind_it(redis: Any) -> None:
    store = set_policies(redis)
    before = counter("low_stock", "firing")
    alerts, triggers = run(redis, k.Feed(T).all(k.scenario()))

    assert k.transitions(alerts) == k.EXPECTED
    assert counter("low_stock", "firing") == before + 2
    by_kind = {(a.kind, a.status, a.episode): a for a in alerts}
    low = by_kind[("low_stock", "firing", 1)]
    assert (low.event_id, low.values["atp"], low.values["threshold"]) == ("ev-s-07", 20, 20)  # from the policy
    assert by_kind[("low_stock", "firing", 1)].alert_id == by_kind[("low_stock", "resolved", 1)].alert_id
    assert by_kind[("low_stock", "firing", 1)].alert_id != by_kind[("low_stock", "firing", 2)].alert_id
    # Exactly the reservations drawing on L1, newest first — not the flash-sale orders on on-hand.
    slipped = by_kind[("promise_slipped", "firing", 1)]
    assert [(r.rid, r.old_promised_ms, r.new_promised_ms) for r in slipped.reservations] == [
        (rid, at(9), at(12)) for rid in reversed(k.PRESALE_ORDERS)
    ]
    at_risk = by_kind[("promise_at_risk", "firing", 1)]
    assert [(r.rid, r.short) for r in at_risk.reservations] == [("p-4", 5), ("p-3", 5)]
    assert by_kind[("oversold", "firing", 1)].values["short"] == 10

    # Triggers: d and σ from the closed days, L = 4 (policy), z(0.95), R = 1, pack 10.
    assert [(t.episode, t.event_id, t.inventory_position, t.qty) for t in triggers] == k.TRIGGERS
    z = 1.6448536269514722
    for t, days in zip(triggers, ([8, 12], [8, 12, 85], [8, 12, 85] + [0] * 8), strict=True):
        d, sigma = k.ewma_days(days)
        rop = d * 4 + z * sigma * 2
        assert t.demand_per_day == pytest.approx(d) and t.demand_sigma == pytest.approx(sigma)
        assert t.reorder_point == pytest.approx(rop) and t.order_up_to == pytest.approx(rop + d)
        assert (t.lead_time_source, t.pack_size, t.location) == ("policy", 10, LOC)

    # The short receipt: SUP-1's fill rate drops to 1 + 0.2·(10/80 − 1) = 0.825; FLASH-2 uses
    # reliability, so its SUP-1 lot of 50 now promises 50 · 0.825 = 41.
    assert metrics.SUPPLIER_RELIABILITY.labels(SUPPLIER)._value.get() == pytest.approx(0.825)
    other = store.position(k.OTHER_SKU)
    assert (other["in_transit"], other["promisable_in_transit"]) == (50, 41)
    assert store.dump(k.OTHER_SKU)["reliability"] == {SUPPLIER: 825}


def test_replaying_the_log_with_no_state_republishes_the_same_messages_byte_for_byte(redis: Any) -> None:
    set_policies(redis)
    items = k.Feed(T).all(k.scenario())
    first_alerts, first_triggers = run(redis, items)
    journal = Store(redis).journal(k.OTHER_SKU)
    outcomes: list[tuple[str, Outcome]] = []

    again_alerts, again_triggers = run(redis, items, outcomes=outcomes, batch_size=7)

    assert {o.status for _, o in outcomes} == {"duplicate"}  # the store had applied everything
    assert [a.to_json() for a in again_alerts] == [a.to_json() for a in first_alerts]
    assert [t.to_json() for t in again_triggers] == [t.to_json() for t in first_triggers]
    assert Store(redis).journal(k.OTHER_SKU) == journal  # the reliability was not written again


def test_without_memos_a_replay_publishes_fewer_messages_but_never_a_new_id(redis: Any) -> None:
    set_policies(redis)
    items = k.Feed(T).all(k.scenario())
    first, first_triggers = run(redis, items)
    memos = list(redis.scan_iter(match="atp-am:*"))
    assert memos  # the observations whose replies mattered were kept
    redis.delete(*memos)  # as if their TTL had passed

    again, again_triggers = run(redis, items)

    assert set(k.identities(again)) < set(k.identities(first))
    assert set(k.trigger_ids(again_triggers)) <= set(k.trigger_ids(first_triggers))


def test_a_flow_killed_after_the_store_applied_publishes_the_same_messages_from_the_stashed_replies(
    redis: Any,
) -> None:
    items = k.Feed(T).all(k.scenario())
    set_policies(redis)
    first_alerts, first_triggers = run(redis, items)
    assert list(redis.scan_iter(match="atp-rp:*")) == []  # judged and memoised: no stash left
    if isinstance(redis, redis_lib.RedisCluster):
        redis.flushall(target_nodes=redis_lib.RedisCluster.PRIMARIES)
    else:
        redis.flushall()

    # The same log again from scratch, but every batch dies between the store and the alert step:
    # the store applied everything (and kept the replies), no memo was written.
    set_policies(redis)
    run(redis, items, alerting=False, outcomes=[])
    assert list(redis.scan_iter(match="atp-am:*")) == []
    assert list(redis.scan_iter(match="atp-rp:*"))

    again_alerts, again_triggers = run(redis, items, batch_size=7)  # all duplicates by offset

    assert [a.to_json() for a in again_alerts] == [a.to_json() for a in first_alerts]
    assert [t.to_json() for t in again_triggers] == [t.to_json() for t in first_triggers]
    assert list(redis.scan_iter(match="atp-rp:*")) == []  # judged now: the stash is gone
    assert list(redis.scan_iter(match="atp-am:*"))  # and the memos are there for a later replay


def test_an_event_sent_twice_counts_once_and_publishes_nothing_new(redis: Any) -> None:
    set_policies(redis)
    sale = k.flash_sale()[:5]  # 25 units: no surge yet (it takes 28.8), ATP 35
    alerts, triggers = run(redis, k.Feed(T).all([*k.history(), *sale, *sale]))

    assert [a.kind for a in alerts] == []  # counted twice, 50 units would have been a surge
    assert [t.episode for t in triggers] == [1]  # IP 40 at the 4th order, once
    assert Store(redis).position(SKU)["atp"] == 35


def test_a_late_receipt_fires_and_resolves_inbound_late_in_event_time(redis: Any) -> None:
    items = k.Feed(T).all([
        count_event("LATE-1", 5, at(0)),
        lot_event("LL", "LATE-1", 10, eta_ms=at(3), time_ms=at(1)),
        receipt_event("LL", "LATE-1", 10, time_ms=at(5)),
    ])
    alerts, _ = run(redis, items)

    late = [a for a in alerts if a.kind == "inbound_late"]
    # Fired at the instant the ETA passed (whoever noticed), resolved by the receipt.
    assert [(a.status, a.subject, a.event_id, a.occurred_ms) for a in late] == [
        ("firing", "LL", "", at(3) + 1), ("resolved", "LL", "ev-rcpt-LL", at(5))
    ]
    assert late[0].alert_id == late[1].alert_id and late[1].values["late_by_ms"] == 2 * DAY


def test_a_quiet_sku_gets_inbound_late_from_a_tick_and_its_receipt_resolves_it(redis: Any) -> None:
    feed = k.Feed(T)
    items = [
        *feed.all([count_event("QUIET-1", 5, at(0)), lot_event("LQ", "QUIET-1", 10, eta_ms=at(3), time_ms=at(1))]),
        TestingSource.PAUSE(timedelta(seconds=1.5)),  # no events: only a tick can notice the ETA passing
        *feed.all([receipt_event("LQ", "QUIET-1", 10, time_ms=at(4))]),
    ]
    started = time.monotonic()
    # The wall clock reads day 3, 06:00 (and runs); after 0.5 s without input the stream time follows it.
    options = AlertingOptions(wall_ms=lambda: at(3, 6) + int((time.monotonic() - started) * 1000),
                              idle_s=0.5, tick_interval_s=0.2)
    alerts, _ = run(redis, items, options=options)

    late = [(a.status, a.subject, a.event_id, a.occurred_ms) for a in alerts if a.kind == "inbound_late"]
    assert late == [("firing", "LQ", "", at(3) + 1), ("resolved", "LQ", "ev-rcpt-LQ", at(4))]


def test_reliability_is_written_back_only_to_skus_whose_policy_uses_it(redis: Any) -> None:
    store = Store(redis)
    store.set_policy("REL-USE", {"mode": "presell", "use_reliability": True})
    store.set_policy("REL-NOT", {"mode": "presell"})
    events = [
        lot_event("A1", "REL-USE", 100, eta_ms=at(5), time_ms=at(0)),
        lot_event("B1", "REL-NOT", 100, eta_ms=at(5), time_ms=at(0, 1)),
        lot_event("C1", "REL-SRC", 40, eta_ms=at(2), time_ms=at(0, 2)),
        receipt_event("C1", "REL-SRC", 10, time_ms=at(3)),  # late and a quarter: on time 0.8, fill 0.85
    ]
    items = k.Feed(T).all(events)
    alerts, _ = run(redis, items)

    score = 0.8 * 0.85
    unreliable = [a for a in alerts if a.kind == "supplier_unreliable"]
    assert [(a.status, a.subject, a.sku) for a in unreliable] == [("firing", SUPPLIER, "REL-SRC")]
    assert unreliable[0].values["score"] == pytest.approx(score)
    assert store.dump("REL-USE")["reliability"] == {SUPPLIER: 680}
    assert store.position("REL-USE")["promisable_in_transit"] == 68
    assert store.dump("REL-NOT")["reliability"] == {}
    assert store.position("REL-NOT")["promisable_in_transit"] == 100
    written = [j for j in store.journal("REL-USE") if j["cmd"] == "reliability"]
    assert [(j["event_id"], j["ref"]) for j in written] == [(f"rel.{SUPPLIER}.1.680", f"supplier:{SUPPLIER}")]

    again, _ = run(redis, items)  # a replay: same alert id, nothing written twice
    assert [a.alert_id for a in again if a.kind == "supplier_unreliable"] == [unreliable[0].alert_id]
    assert [j for j in store.journal("REL-USE") if j["cmd"] == "reliability"] == written


def test_outcomes_without_a_sku_are_skipped_and_the_stream_goes_on(redis: Any) -> None:
    cancel = Event("orders", {"event_id": "ev-cx", "type": "order.cancelled", "occurred_at": iso(at(0)),
                              "order_id": "never-placed"}, at(0), "X")
    items = k.Feed(T).all([cancel, count_event("GOES-ON", 3, at(0, 1))])
    outcomes: list[tuple[str, Outcome]] = []
    alerts, _ = run(redis, items, outcomes=outcomes)

    assert [(sku, o.status) for sku, o in outcomes] == [("", "not_found"), ("GOES-ON", "ok")]
    assert [(a.kind, a.sku) for a in alerts] == [("low_stock", "GOES-ON")]  # ATP 3 ≤ 10
