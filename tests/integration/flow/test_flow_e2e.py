"""End to end through the real broker: presell holds on an inbound lot, a short receipt, an ETA slip,
a cancelled order and a count — every bucket and the outcomes, step by step."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from bytewax.testing import TestingSink

from connectors.topics import Topics
from engine.domain.events import format_time, from_ms
from engine.flow.records import Outcome
from engine.flow.runner import run_flow
from engine.settings import Settings
from engine.store.store import Store
from engine.store.wire import HoldRequest
from tests.integration.flowkit import Msg, produce

pytestmark = pytest.mark.kafka_compat  # also run on Apache Kafka (README, tests)

SKU = "E2E-1"
DAY = 86_400_000


_clock = [int(time.time() * 1000)]


def event(topic: str, event_id: str, kind: str, **payload: Any) -> Msg:
    """One event; its message timestamp is its event time, a millisecond after the previous one's,
    so the flow's merge of the four topics follows the order the scenario is written in."""
    _clock[0] += 1
    body = {"event_id": event_id, "type": kind, "occurred_at": format_time(from_ms(_clock[0])), **payload}
    return Msg(topic, SKU.encode(), orjson.dumps(body), _clock[0])


def flow(settings: Settings, topics: Topics) -> list[Outcome]:
    outcomes: list[tuple[str, Outcome]] = []
    run_flow(settings, topics, until_end=True, outcome_sink=TestingSink(outcomes), serve_metrics=False)
    return [o for _, o in outcomes]


def buckets(store: Store) -> dict[str, Any]:
    p = store.position(SKU)
    wh1 = p["locations"]["WH1"]
    return {k: wh1[k] for k in ("on_hand", "held", "committed", "in_transit", "promisable_in_transit", "atp",
                                "oh_alloc", "short")}


def test_presell_holds_short_receipt_eta_slip_cancel_and_count_through_the_broker(
    settings: Settings, topics: Topics, redis: Any, kafka_bootstrap: str, tmp_path: Any
) -> None:
    settings = settings.model_copy(update={"recovery_dir": str(tmp_path / "recovery"), "snapshot_interval_s": 0.2})
    store = Store(redis)
    store.set_policy(SKU, {"mode": "presell"})
    now = int(time.time() * 1000)
    d10, d5, d12 = now + 10 * DAY, now + 5 * DAY, now + 12 * DAY

    # 1. An inbound lot of 100 arrives in ten days.
    produce(kafka_bootstrap, [event(topics.inbound, "ev-1", "inbound.created", inbound_id="L1", sku=SKU,
                                    location="WH1", qty=100, eta=format_time(from_ms(d10)), supplier_id="SUP-A")])
    [lot] = flow(settings, topics)
    assert (lot.cmd, lot.status) == ("inbound_created", "ok")
    assert buckets(store) == {"on_hand": 0, "held": 0, "committed": 0, "in_transit": 100,
                              "promisable_in_transit": 100, "atp": 100, "oh_alloc": 0, "short": 0}

    # 2. Checkout holds sell against the lot before it arrives (presell).
    h1, h2 = store.hold_batch(SKU, [HoldRequest("o1", 30, "WH1", 600_000, "web"),
                                    HoldRequest("o2", 40, "WH1", 600_000, "web")])
    assert (h1["status"], h2["status"]) == ("ok", "ok")
    assert h1["line"]["alloc"] == [["lot", "L1", "WH1", 30]] and h1["line"]["promised_ms"] == d10
    assert buckets(store)["held"] == 70 and buckets(store)["atp"] == 30

    # 3. The orders are placed (the holds become commitments), the lot arrives 40 short, a second
    #    lot is announced and then slips, the first order is cancelled, and a count finds 55.
    produce(kafka_bootstrap, [
        event(topics.orders, "ev-2", "order.placed", order_id="o1", channel="web",
              lines=[{"sku": SKU, "qty": 30, "location": "WH1"}]),
        event(topics.orders, "ev-3", "order.placed", order_id="o2", channel="web",
              lines=[{"sku": SKU, "qty": 40, "location": "WH1"}]),
        event(topics.receipts, "ev-4", "receipt.posted", receipt_id="R1", sku=SKU, location="WH1", qty=60,
              inbound_id="L1"),
        event(topics.inbound, "ev-5", "inbound.created", inbound_id="L2", sku=SKU, location="WH1", qty=50,
              eta=format_time(from_ms(d5)), supplier_id="SUP-B"),
        event(topics.inbound, "ev-6", "inbound.updated", inbound_id="L2", sku=SKU, eta=format_time(from_ms(d12))),
        event(topics.orders, "ev-7", "order.cancelled", order_id="o1"),
        event(topics.adjustments, "ev-8", "stock.counted", sku=SKU, location="WH1", on_hand=55),
    ])
    outcomes = {o.event_id: o for o in flow(settings, topics)}  # resumes after step 1 (recovery)

    assert sorted(outcomes) == [f"ev-{i}" for i in range(2, 9)]
    assert {e: o.status for e, o in outcomes.items()} == dict.fromkeys(outcomes, "ok")
    assert outcomes["ev-2"].reply["line"]["state"] == "committed"

    receipt = outcomes["ev-4"].reply
    assert receipt["lot"]["qty"] == 100 and receipt["lot"]["supplier"] == "SUP-A"  # for supplier stats
    assert receipt["at_risk"] == [{"rid": "o2", "short": 10}]  # the newest order lost 10 units
    assert receipt["position"]["oversold"] == 10

    new_lot = outcomes["ev-5"].reply  # the short units are re-promised from the new lot
    assert new_lot["at_risk"] == []
    assert [(s["rid"], s["new_ms"]) for s in new_lot["slipped"]] == [("o2", d5)]

    slip = outcomes["ev-6"].reply
    assert slip["slipped"] == [{"rid": "o2", "old_ms": d5, "new_ms": d12}]

    cancel = outcomes["ev-7"]
    assert (cancel.sku, cancel.reply["line"]["state"]) == (SKU, "released")

    count = outcomes["ev-8"].reply["position"]
    assert (count["on_hand"], count["oversold"]) == (55, 0)
    assert buckets(store) == {"on_hand": 55, "held": 0, "committed": 40, "in_transit": 50,
                              "promisable_in_transit": 50, "atp": 65, "oh_alloc": 30, "short": 0}
    line = store.get_line(SKU, "o2")["line"]
    assert sorted(line["alloc"]) == [["lot", "L2", "WH1", 10], ["oh", "WH1", "WH1", 30]]
    assert line["promised_ms"] == d12
