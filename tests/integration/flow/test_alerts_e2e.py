"""Issue 4 end to end through the real broker: the flash-sale scenario produced to the input topics,
the production flow (``run_flow``, which attaches the alert steps), the output topics read back —
and the whole log replayed on top, which may only repeat messages under the same ids."""

from __future__ import annotations

from typing import Any

import pytest

from connectors.topics import Topics
from engine import metrics
from engine.domain.outputs import STATEFUL_ALERT_KINDS, Alert, ReplenishmentTrigger
from engine.flow.runner import run_flow
from engine.settings import Settings
from engine.store.store import Store
from tests.integration import alertkit as k
from tests.integration.alertkit import SKU, SUPPLIER, at
from tests.integration.flowkit import Read, produce, read_topic

pytestmark = pytest.mark.kafka_compat  # also run on Apache Kafka (README, tests)


def published(bootstrap: str, topics: Topics) -> tuple[list[Read], list[Read]]:
    return read_topic(bootstrap, topics.alerts), read_topic(bootstrap, topics.replenishment)


def of_sku(msgs: list[Read], sku: str) -> list[Read]:
    return [m for m in msgs if m.key == sku.encode()]


def values(msgs: list[Read]) -> list[bytes | None]:
    return [m.value for m in msgs]


def test_flash_sale_slip_short_arrival_and_recovery_publish_the_right_alerts_and_triggers(
    settings: Settings, topics: Topics, redis: Any, kafka_bootstrap: str
) -> None:
    settings = settings.model_copy(update={"alert_resolve_after_s": 0})  # the trace is about levels
    store = Store(redis)
    store.set_policy(SKU, k.POLICY)
    store.set_policy(k.OTHER_SKU, k.OTHER_POLICY)
    produce(kafka_bootstrap, k.kafka_messages(topics, k.scenario()))

    run_flow(settings, topics, until_end=True, serve_metrics=False)

    alert_msgs, trigger_msgs = published(kafka_bootstrap, topics)
    alerts = [Alert.from_json(m.value) for m in of_sku(alert_msgs, SKU)]
    triggers = [ReplenishmentTrigger.from_json(m.value) for m in trigger_msgs]
    assert {m.key for m in alert_msgs} == {SKU.encode(), k.OTHER_SKU.encode()}
    assert {m.key for m in trigger_msgs} == {SKU.encode()}
    assert {h for m in alert_msgs for h, _ in m.headers} == {"alert.id", "alert.kind", "alert.status"}

    # The flash sale drains the SKU: low_stock, stockout, a refused order, the first trigger (qty 20).
    assert k.transitions(alerts) == k.EXPECTED
    assert [(t.episode, t.event_id, t.inventory_position, t.qty) for t in triggers] == k.TRIGGERS
    first = triggers[0]
    assert (first.demand_per_day, first.lead_time_days, first.pack_size) == (9.0, 4.0, 10)
    assert first.demand_sigma == pytest.approx(3**0.5) and first.order_up_to == pytest.approx(50.698, abs=1e-3)
    # The lot slips: exactly the four presale reservations drawing on it, newest first.
    kinds = {(a.kind, a.status): a for a in alerts}
    slipped = kinds[("promise_slipped", "firing")]
    assert [(r.rid, r.new_promised_at) for r in slipped.reservations] == [
        (rid, k.iso(at(12))) for rid in reversed(k.PRESALE_ORDERS)
    ]
    # It arrives short: the two newest lose their supply; the supplier's fill rate drops.
    at_risk = kinds[("promise_at_risk", "firing")]
    assert [(r.rid, r.short) for r in at_risk.reservations] == [("p-4", 5), ("p-3", 5)]
    assert metrics.SUPPLIER_RELIABILITY.labels(SUPPLIER)._value.get() == pytest.approx(0.825)
    assert store.position(k.OTHER_SKU)["promisable_in_transit"] == 41  # FLASH-2's SUP-1 lot discounted
    # Stock recovers: everything that fired is resolved under the id it fired with.
    firing = {a.alert_id for a in alerts if a.status == "firing" and a.kind in STATEFUL_ALERT_KINDS}
    assert firing == {a.alert_id for a in alerts if a.status == "resolved"}
    # FLASH-2 had no event after day 2; its lot L2 (ETA day 9) is late by the stream's time (day 11).
    quiet = [Alert.from_json(m.value) for m in of_sku(alert_msgs, k.OTHER_SKU)]
    assert [(a.kind, a.status, a.subject, a.occurred_ms, a.event_id) for a in quiet] == [
        ("inbound_late", "firing", "L2", at(9) + 1, "")
    ]

    # Replaying the whole log on top of the same Redis: only copies, under the same ids, byte for byte.
    run_flow(settings, topics, until_end=True, serve_metrics=False)

    alert_again, trigger_again = published(kafka_bootstrap, topics)
    for sku in (SKU, k.OTHER_SKU):  # one partition each: in order
        assert values(of_sku(alert_again, sku)) == values(of_sku(alert_msgs, sku)) * 2
    assert values(trigger_again) == values(trigger_msgs) * 2
    assert len(store.journal(k.OTHER_SKU)) == 3  # policy, lot, one reliability write: not written again
