"""The checkout's own changes raise the alerts: a flash sale done only through the HTTP API.

Real Redis, the suite's broker, ``atp serve`` in its own process and the production flow
(``run_flow``, tailing) in a thread. Nothing but the API touches the SKUs' reservations; stock
comes from the ops endpoints, history and a lot from the input topics:

* three holds sell SALE-1 out: ``stockout`` within 5 s, resolved by a restock;
* a hold that expires (the API's sweeper) ends EXPIRE-1's sell-out: the flow's re-check or the
  relay's ``reservation.expired`` event, whichever comes first, resolves it;
* holds of SURGE-1 twice the hourly rate of the day before: ``demand_surge``;
* holds of REPL-1 bring its inventory position to the reorder point: one trigger, and only one
  although the same orders are then confirmed and placed on the stream under the same ids.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from connectors.topics import Topics
from engine.domain.events import format_time, from_ms
from engine.domain.outputs import Alert, ReplenishmentTrigger
from engine.flow.runner import run_flow
from engine.settings import Settings
from engine.store.store import Store
from tests.integration.api_harness import ADMIN, api_processes, bearer
from tests.integration.flowkit import Msg, produce

LOC = "WH1"
HOUR = 3_600_000
SALE, EXPIRE, SURGE, REPL = "SALE-1", "EXPIRE-1", "SURGE-1", "REPL-1"
WITHIN_S = 5.0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def event(topic: str, sku: str, body: dict[str, Any], at_ms: int) -> Msg:
    body = {**body, "occurred_at": format_time(from_ms(at_ms))}
    return Msg(topic, sku.encode(), orjson.dumps(body), at_ms)


def order(topics: Topics, rid: str, sku: str, qty: int, at_ms: int) -> Msg:
    return event(
        topics.orders,
        sku,
        {
            "event_id": f"ev-{rid}",
            "type": "order.placed",
            "order_id": rid,
            "channel": "web",
            "lines": [{"sku": sku, "qty": qty, "location": LOC}],
        },
        at_ms,
    )


class Tail:
    """Every message of a topic so far, read on demand (from the start, all partitions)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        parts = (
            AdminClient({"bootstrap.servers": bootstrap})
            .list_topics(topic, timeout=10)
            .topics[topic]
            .partitions
        )
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "checkout-alerts-tail",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 20,
            }
        )
        self._consumer.assign([TopicPartition(topic, p, 0) for p in sorted(parts)])
        self.values: list[bytes] = []

    def read(self) -> list[bytes]:
        for msg in self._consumer.consume(500, 0.05):
            if msg.error() is None:
                self.values.append(msg.value())
            else:
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
        return self.values

    def close(self) -> None:
        self._consumer.close()


class Outputs:
    def __init__(self, bootstrap: str, topics: Topics) -> None:
        self._alerts = Tail(bootstrap, topics.alerts)
        self._triggers = Tail(bootstrap, topics.replenishment)

    def alerts(self, sku: str) -> list[Alert]:
        return [a for a in map(Alert.from_json, self._alerts.read()) if a.sku == sku]

    def triggers(self, sku: str) -> list[ReplenishmentTrigger]:
        return [t for t in map(ReplenishmentTrigger.from_json, self._triggers.read()) if t.sku == sku]

    def close(self) -> None:
        self._alerts.close()
        self._triggers.close()


def wait_for(what: str, found: Callable[[], Any], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = found()
        if got:
            return got
        assert time.monotonic() < deadline, f"no {what} within {timeout_s:g} s"
        time.sleep(0.05)


def alert(outputs: Outputs, sku: str, kind: str, status: str) -> Callable[[], Alert | None]:
    return lambda: next((a for a in outputs.alerts(sku) if (a.kind, a.status) == (kind, status)), None)


@pytest.fixture
def flow(settings: Settings, topics: Topics) -> Iterator[Settings]:
    """The production flow tailing the topics in a thread, with windows a test can fill: resolve
    as soon as clear, a one-hour surge window over a one-day baseline."""
    flow_settings = settings.model_copy(
        update={"alert_resolve_after_s": 0, "demand_window_hours": 1, "demand_baseline_days": 1}
    )
    stop = threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            run_flow(flow_settings, topics, stop, serve_metrics=False)
        except BaseException as exc:  # reported by the test, not lost in the thread
            failed.append(exc)

    thread = threading.Thread(target=run, name="checkout-alerts-flow", daemon=True)
    thread.start()
    try:
        yield flow_settings
    finally:
        stop.set()
        thread.join(60)
    assert not failed, failed
    assert not thread.is_alive(), "the flow did not stop"


def inside_one_hour() -> None:
    """Demand is counted in UTC hours and days: keep the scenario inside one hour."""
    left_s = 3600 - time.time() % 3600
    if left_s < 90:
        time.sleep(left_s + 1)


def test_a_flash_sale_through_the_api_raises_stockout_surge_and_one_trigger(
    flow: Settings, settings: Settings, topics: Topics, redis: Any, kafka_bootstrap: str
) -> None:
    inside_one_hour()
    store = Store(redis)
    store.set_policy(REPL, {"lead_time_days": 1, "pack_size": 10, "low_stock": 45})
    now = now_ms()
    hour = now // HOUR * HOUR
    # SURGE-1's history on the stream: 2 units an hour over the 24 hours before this one (48/day).
    history = [
        event(
            topics.adjustments,
            SURGE,
            {
                "event_id": "ev-surge-count",
                "type": "stock.counted",
                "sku": SURGE,
                "location": LOC,
                "on_hand": 1000,
            },
            hour - 26 * HOUR,
        )
    ]
    history += [order(topics, f"h-{i:02d}", SURGE, 2, hour - (24 - i) * HOUR + 60_000) for i in range(24)]
    produce(kafka_bootstrap, history)
    outputs = Outputs(kafka_bootstrap, topics)
    with (
        api_processes(settings, 1, args=["--topic-suffix", topics.suffix]) as (url,),
        httpx.Client(base_url=url, headers=bearer(ADMIN), timeout=10) as api,
    ):

        def hold(rid: str, sku: str, qty: int, ttl_s: int = 600) -> None:
            body = {"lines": [{"sku": sku, "qty": qty, "location": LOC}], "ttl_seconds": ttl_s}
            reply = api.post("/v1/reservations", json=body, headers={"Idempotency-Key": rid})
            assert reply.status_code == 201, reply.text

        def count(sku: str, on_hand: int) -> None:
            reply = api.post("/v1/counts", json={"sku": sku, "location": LOC, "on_hand": on_hand})
            assert reply.status_code == 202, reply.text

        for sku, on_hand in ((SALE, 30), (EXPIRE, 10), (REPL, 100)):
            count(sku, on_hand)
        wait_for(
            "stock and history applied by the flow",
            lambda: (
                all(store.position(s)["on_hand"] == n for s, n in ((SALE, 30), (EXPIRE, 10), (REPL, 100)))
                and store.position(SURGE)["committed"] == 48
            ),
            60,
        )

        # The flash sale: three holds take SALE-1 from 30 to 0.
        for i in range(3):
            hold(f"sale-{i}", SALE, 10)
        sold_out = time.monotonic()
        stockout = wait_for("stockout", alert(outputs, SALE, "stockout", "firing"), WITHIN_S)
        assert time.monotonic() - sold_out <= WITHIN_S
        assert stockout.values["atp"] == 0 and stockout.event_id.startswith("res:sale-")
        assert alert(outputs, SALE, "low_stock", "firing")()
        # A restock through the ops API ends it.
        reply = api.post(
            "/v1/adjustments", json={"sku": SALE, "location": LOC, "delta": 40, "reason": "restock"}
        )
        assert reply.status_code == 202, reply.text
        resolved = wait_for("stockout resolved", alert(outputs, SALE, "stockout", "resolved"), WITHIN_S)
        assert (resolved.alert_id, resolved.values["atp"]) == (stockout.alert_id, 40)

        # A sell-out ended by an expiry: whichever comes first resolves it, the flow's re-check
        # (no event) or the relay's reservation.expired event for the line the expiry removed.
        hold("exp-1", EXPIRE, 10, ttl_s=2)
        wait_for("stockout of the held SKU", alert(outputs, EXPIRE, "stockout", "firing"), WITHIN_S)
        ended = wait_for(
            "stockout resolved after the expiry", alert(outputs, EXPIRE, "stockout", "resolved"), 20
        )
        assert ended.event_id in ("", f"res:exp-1:expired:{EXPIRE}") and ended.values["atp"] == 10

        # Checkout demand twice the rate of the day before: a surge (48/day before; 4 units in 1 h = 96/day).
        hold("surge-1", SURGE, 2)
        hold("surge-2", SURGE, 2)
        surge = wait_for("demand_surge", alert(outputs, SURGE, "demand_surge", "firing"), WITHIN_S)
        assert (surge.values["recent_units"], surge.values["baseline_per_day"]) == (4, 48)
        assert surge.values["growth_pct"] == 100

        # Checkout demand alone brings REPL-1 to its reorder point: d = 50/day (today's holds),
        # L = 1 day, σ = 0 → ROP = 50 ≥ IP = 100 − 50 held; S = ROP + d·1 = 100 → 50 units.
        hold("r-1", REPL, 30)
        hold("r-2", REPL, 20)
        asked = time.monotonic()
        (trigger,) = wait_for("replenishment trigger", lambda: outputs.triggers(REPL), WITHIN_S)
        assert time.monotonic() - asked <= WITHIN_S
        assert (trigger.demand_per_day, trigger.inventory_position, trigger.reorder_point, trigger.qty) == (
            50,
            50,
            50,
            50,
        )
        # r-1 confirmed, r-3 held: low_stock (ATP 45) says the flow has judged both.
        assert api.post("/v1/reservations/r-1/confirm").status_code == 200
        hold("r-3", REPL, 5)
        low = wait_for("low_stock of REPL-1", alert(outputs, REPL, "low_stock", "firing"), WITHIN_S)
        assert low.event_id == "res:r-3:held"
    # The order system places r-1 (confirmed) and r-2 (still held) on the stream under the same
    # ids, then a lot of 20 answers the trigger. Counted once, demand is 55/day: IP = 100 + 20 − 55
    # = 65 > ROP 55, nothing more to order. Counted twice (r-2 by its stream order, or r-1 by its
    # confirm), ROP would be ≥ 75 and a second trigger would follow the lot.
    later = now_ms()
    produce(
        kafka_bootstrap,
        [
            order(topics, "r-1", REPL, 30, later),
            order(topics, "r-2", REPL, 20, later + 1),
            event(
                topics.inbound,
                REPL,
                {
                    "event_id": "ev-L1",
                    "type": "inbound.created",
                    "inbound_id": "L1",
                    "sku": REPL,
                    "location": LOC,
                    "qty": 20,
                    "eta": format_time(datetime.fromtimestamp(later / 1000 + 3 * 86_400, UTC)),
                    "supplier_id": "SUP-1",
                },
                later + 2,
            ),
        ],
    )
    wait_for("the lot applied", lambda: store.position(REPL)["in_transit"] == 20, 30)
    position = store.position(REPL)
    assert (position["committed"], position["held"]) == (50, 5)  # r-2's stream order confirmed it
    time.sleep(3)  # the alert step runs right after the store applied the lot; give it ample time
    assert [t.trigger_id for t in outputs.triggers(REPL)] == [trigger.trigger_id]
    assert len(outputs.alerts(SURGE)) == 1  # the surge fired once: no new episode
    outputs.close()
