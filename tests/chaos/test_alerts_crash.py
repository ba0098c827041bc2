"""R15 (docs/quality.md): a threshold crossed, recovered and crossed again, with a crash in between.

The flow runs with recovery on bytewax's TestingSource (so the crash point is exact: an in-process
abort), applying to the real Redis and publishing to the real broker. A snapshot is taken after
the opening stock; the abort comes later, so the restarted flow replays a tail the store has
already applied. What a deduplicating consumer sees must equal an uninterrupted run: one firing
and one resolved message per crossing, one trigger per crossing, the same ids, and every repeated
message identical to its first copy.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from connectors.topics import Topics
from engine.domain.outputs import Alert, ReplenishmentTrigger
from engine.flow.alerting import AlertingOptions, alerts_sink, attach_alerting, triggers_sink
from engine.flow.dataflow import FlowStreams, build_flow
from engine.flow.records import Outcome
from engine.flow.runner import prepare_recovery, topic_bases
from engine.settings import Settings
from engine.store.store import Store
from tests.integration import alertkit as k
from tests.integration.alertkit import LOC, Event, at, iso
from tests.integration.flowkit import read_topic

pytestmark = [pytest.mark.slow, pytest.mark.kafka_compat]  # ~10 s a case: the crash needs a snapshot first, and epochs are wall-clock

SKU = "R15-1"
POLICY = {"low_stock": 10, "lead_time_days": 1}
EPOCH = timedelta(seconds=3)
# The input closes an epoch after emitting a batch, so: the opening, a pause longer than an epoch, an
# empty batch (a short pause) that closes epoch 1 — the snapshot holds the opening only — and then the
# moves, all in epoch 2 with the crash.
SETTLE = [TestingSource.PAUSE(timedelta(seconds=3.5)), TestingSource.PAUSE(timedelta(seconds=0.1))]
DRAIN = timedelta(seconds=1)  # lets the batch before the abort reach the broker, well inside the epoch


def _event(base: str, event_id: str, kind: str, time_ms: int, **payload: Any) -> Event:
    body = {"event_id": event_id, "type": kind, "occurred_at": iso(time_ms), **payload}
    return Event(base, body, time_ms, SKU)


def _adjust(n: int, delta: int) -> Event:
    return _event("adjustments", f"adj-{n}", "stock.adjusted", at(1, 9, n), sku=SKU, location=LOC, delta=delta,
                  reason="found" if delta > 0 else "damage")


OPENING = [
    _event("adjustments", "open", "stock.counted", at(0, 8), sku=SKU, location=LOC, on_hand=40),
    _event("orders", "o-1", "order.placed", at(0, 9), order_id="o-1", channel="web",
           lines=[{"sku": SKU, "qty": 10, "location": LOC}]),  # ATP 30; d = 10/day once day 0 closes
]
CROSS_1, RECOVER_1 = _adjust(1, -22), _adjust(2, 20)  # ATP 8 (≤ 10, IP ≤ ROP = 10), then 28
CROSS_2, RECOVER_2 = _adjust(3, -20), _adjust(4, 20)

CRASH_POINTS = {
    "after-the-first-firing": 1,
    "between-the-crossings": 2,
    "after-the-second-firing": 3,
}


def _items(crash_after: int | None) -> list[Any]:
    feed = k.Feed(Topics())
    items: list[Any] = [*feed.all(OPENING), *(SETTLE if crash_after else [])]
    moves = feed.all([CROSS_1, RECOVER_1, CROSS_2, RECOVER_2])
    for n, raw in enumerate(moves, start=1):
        items.append(raw)
        if n == crash_after:
            items += [TestingSource.PAUSE(DRAIN), TestingSource.ABORT()]
    return items


def _flow(redis: Any, items: list[Any], alert_out: Any, trigger_out: Any, outcomes: list[Any]) -> Any:
    settings = Settings.model_construct(alert_resolve_after_s=0)  # crossings minutes apart resolve at once

    def extra(streams: FlowStreams) -> None:
        attach_alerting(streams, settings=settings, store_factory=lambda: Store(redis), alert_output=alert_out,
                        trigger_output=trigger_out, options=AlertingOptions(ticks=False))

    return build_flow("r15", TestingSource(items, batch_size=100), lambda: Store(redis), topic_bases(Topics()),
                      None, TestingSink(outcomes), extras=(extra,))


def _reference(redis: Any) -> tuple[list[Alert], list[ReplenishmentTrigger]]:
    alerts: list[Alert] = []
    triggers: list[ReplenishmentTrigger] = []
    run_main(_flow(redis, _items(None), TestingSink(alerts), TestingSink(triggers), []))
    return alerts, triggers


@pytest.mark.parametrize("crash_after", list(CRASH_POINTS.values()), ids=list(CRASH_POINTS))
def test_a_crash_between_crossings_publishes_one_firing_and_one_resolved_per_crossing_with_the_same_ids(
    redis: Any, topics: Topics, kafka_bootstrap: str, tmp_path: Path, crash_after: int
) -> None:
    Store(redis).set_policy(SKU, POLICY)
    ref_alerts, ref_triggers = _reference(redis)
    assert k.transitions(ref_alerts) == [
        ("low_stock", "firing", LOC, 1), ("low_stock", "resolved", LOC, 1),
        ("low_stock", "firing", LOC, 2), ("low_stock", "resolved", LOC, 2),
    ]
    assert [(t.episode, t.qty, t.inventory_position) for t in ref_triggers] == [(1, 12, 8), (2, 12, 8)]

    redis.flushall()
    Store(redis).set_policy(SKU, POLICY)
    conf = {"bootstrap.servers": kafka_bootstrap}
    recovery = prepare_recovery(tmp_path / "recovery")
    items = _items(crash_after)  # one list for both runs: the abort fires only once
    crashed: list[tuple[str, Outcome]] = []
    run_main(_flow(redis, items, alerts_sink(conf, topics.alerts), triggers_sink(conf, topics.replenishment),
                   crashed), epoch_interval=EPOCH, recovery_config=recovery)  # an abort ends run_main quietly
    assert len(crashed) == len(OPENING) + crash_after  # it stopped at the crash point
    resumed: list[tuple[str, Outcome]] = []
    run_main(_flow(redis, items, alerts_sink(conf, topics.alerts), triggers_sink(conf, topics.replenishment),
                   resumed), epoch_interval=EPOCH, recovery_config=recovery)

    # The restart replayed a tail the store had applied: every move up to the crash, as duplicates.
    replayed = [o.event_id for _, o in resumed if o.status == "duplicate" and o.reply.get("reason") == "offset"]
    assert replayed == [e.body["event_id"] for e in [CROSS_1, RECOVER_1, CROSS_2, RECOVER_2][:crash_after]]

    published = [Alert.from_json(m.value) for m in read_topic(kafka_bootstrap, topics.alerts)]
    assert all(m.key == SKU.encode() for m in read_topic(kafka_bootstrap, topics.alerts))
    assert [a.to_json() for a in k.distinct(published)] == [a.to_json() for a in ref_alerts]
    first_copy = {(a.alert_id, a.status, a.revision): a.to_json() for a in k.distinct(published)}
    assert all(a.to_json() == first_copy[(a.alert_id, a.status, a.revision)] for a in published)
    assert max(k.identities(published).values()) == 2  # the tail was published twice, same ids

    triggers = [ReplenishmentTrigger.from_json(m.value) for m in read_topic(kafka_bootstrap, topics.replenishment)]
    assert sorted(set(t.to_json() for t in triggers)) == sorted(t.to_json() for t in ref_triggers)
