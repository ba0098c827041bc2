"""Support for the alert flow tests: the flash-sale scenario as input messages, and output readers.

Not a conftest: ``test_alerting_flow``, ``test_alerts_e2e`` and ``tests/chaos/test_alerts_crash``
import what they need from here. Event times are in 2030, so the wall-clock ticks of the alert step
never find a lot due while these tests run (ticks are tested with a fake clock).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from connectors.topics import Topics
from engine.domain.events import format_time, from_ms
from engine.domain.outputs import Alert, ReplenishmentTrigger
from engine.flow.source import RawMessage

BASE_MS = 1_893_456_000_000  # 2030-01-01T00:00:00Z
DAY = 86_400_000
HOUR = 3_600_000
MINUTE = 60_000

SKU = "FLASH-1"
OTHER_SKU = "FLASH-2"
SUPPLIER = "SUP-1"
LOC = "WH1"

POLICY = {"mode": "presell", "low_stock": 20, "pack_size": 10, "lead_time_days": 4}
OTHER_POLICY = {"mode": "presell", "use_reliability": True}


def at(day: int, hour: int = 0, minute: int = 0) -> int:
    return BASE_MS + day * DAY + hour * HOUR + minute * MINUTE


def iso(ms: int) -> str:
    return format_time(from_ms(ms))


@dataclass(frozen=True)
class Event:
    """One input event: which topic (base name), its body, its time (also the message timestamp)."""

    base: str
    body: dict[str, Any]
    time_ms: int
    key: str

    def value(self) -> bytes:
        return orjson.dumps(self.body)


def _ev(base: str, event_id: str, kind: str, time_ms: int, key: str, **payload: Any) -> Event:
    body = {"event_id": event_id, "type": kind, "occurred_at": iso(time_ms), **payload}
    return Event(base, body, time_ms, key)


def _order(rid: str, qty: int, time_ms: int, sku: str = SKU) -> Event:
    return _ev("orders", f"ev-{rid}", "order.placed", time_ms, sku, order_id=rid, channel="web",
               lines=[{"sku": sku, "qty": qty, "location": LOC}])


def _ship(rid: str, qty: int, time_ms: int) -> Event:
    return _ev("orders", f"ev-ship-{rid}", "order.shipped", time_ms, SKU, order_id=rid,
               lines=[{"sku": SKU, "qty": qty, "location": LOC}])


FLASH_ORDERS = [f"s-{i:02d}" for i in range(13)]
"""13 orders of 5 units: 12 drain ATP 60 to 0, the 13th is refused."""
PRESALE_ORDERS = ["p-1", "p-2", "p-3", "p-4"]
"""4 orders of 5 units drawing on lot L1 (presell)."""


def history() -> list[Event]:
    """Opening stock and two days of demand (8, then 12 units), shipped: on_hand 60, d = 9, σ² = 3."""
    return [
        _ev("adjustments", "ev-count", "stock.counted", at(0, 8), SKU, sku=SKU, location=LOC, on_hand=80),
        _order("h-0a", 3, at(0, 10)),
        _order("h-0b", 5, at(0, 11)),
        _ship("h-0a", 3, at(0, 12)),
        _ship("h-0b", 5, at(0, 12, 1)),
        _order("h-1a", 12, at(1, 10)),
        _ship("h-1a", 12, at(1, 12)),
    ]


def flash_sale() -> list[Event]:
    return [_order(rid, 5, at(2, 10, i)) for i, rid in enumerate(FLASH_ORDERS)]


def restock_and_presale() -> list[Event]:
    """Lot L1 (80 units, ETA day 9) answers the trigger; FLASH-2 gets lot L2 of the same supplier;
    four presale orders draw on L1."""
    return [
        _ev("inbound", "ev-L1", "inbound.created", at(2, 14), SKU, inbound_id="L1", sku=SKU, location=LOC,
            qty=80, eta=iso(at(9)), supplier_id=SUPPLIER),
        _ev("inbound", "ev-L2", "inbound.created", at(2, 14, 1), OTHER_SKU, inbound_id="L2", sku=OTHER_SKU,
            location=LOC, qty=50, eta=iso(at(9)), supplier_id=SUPPLIER),
        *[_order(rid, 5, at(2, 15, i)) for i, rid in enumerate(PRESALE_ORDERS)],
    ]


def slip_short_recover() -> list[Event]:
    """L1's ETA moves from day 9 to day 12; it arrives on day 11 with 10 of 80 units; 100 units are
    found the same day."""
    return [
        _ev("inbound", "ev-L1-slip", "inbound.updated", at(3, 12), SKU, inbound_id="L1", sku=SKU, eta=iso(at(12))),
        _ev("receipts", "ev-L1-rcpt", "receipt.posted", at(11, 12), SKU, receipt_id="R1", sku=SKU, location=LOC,
            qty=10, inbound_id="L1"),
        _ev("adjustments", "ev-found", "stock.adjusted", at(11, 13), SKU, sku=SKU, location=LOC, delta=100,
            reason="found"),
    ]


def scenario() -> list[Event]:
    """The whole issue-4 scenario, in log order."""
    return [*history(), *flash_sale(), *restock_and_presale(), *slip_short_recover()]


EXPECTED = [
    ("demand_surge", "firing", "WH1", 1),      # 30 units in 24 h against 19.2/day before
    ("low_stock", "firing", "WH1", 1),         # ATP 20 ≤ 20
    ("stockout", "firing", "WH1", 1),          # ATP 0
    ("order_unfulfillable", "firing", "WH1", 1),  # s-12, the first order refused
    ("low_stock", "resolved", "WH1", 1),       # lot L1 (presell): ATP 80 > 22
    ("stockout", "resolved", "WH1", 1),
    ("order_unfulfillable", "resolved", "WH1", 1),  # the next event, 8 h after the last refusal
    ("promise_slipped", "firing", "L1", 1),    # L1's ETA day 9 → day 12
    ("demand_surge", "resolved", "WH1", 1),    # the window moved past the sale
    ("promise_at_risk", "firing", "", 1),      # L1 arrived with 10 of 80
    ("low_stock", "firing", "WH1", 2),
    ("stockout", "firing", "WH1", 2),          # ATP −10
    ("oversold", "firing", "WH1", 1),
    ("promise_at_risk", "resolved", "", 1),    # 100 units found
    ("low_stock", "resolved", "WH1", 2),
    ("stockout", "resolved", "WH1", 2),
    ("oversold", "resolved", "WH1", 1),
]
"""The scenario's alert transitions of FLASH-1, in order: ``transitions()`` of what is published."""

TRIGGERS = [(1, "ev-s-03", 40, 20), (2, "ev-L1-slip", 60, 190), (3, "ev-L1-rcpt", -10, 70)]
"""The scenario's triggers: (episode, event, IP, qty). d, σ from the closed days (8, 12; then 85 on
the sale day; then 8 days without orders), L = 4 (policy), z(0.95), R = 1, pack 10:
⌈(50.70 − 40)/10⌉·10 = 20, ⌈(248.37 − 60)/10⌉·10 = 190, ⌈(58.06 + 10)/10⌉·10 = 70."""


class Feed:
    """Turns events into ``RawMessage``s with increasing offsets per topic (partition 0), as the
    flow's Kafka input would deliver them."""

    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self.offsets: dict[str, int] = {}

    def raw(self, event: Event) -> RawMessage:
        topic = self.topics.name(f"inventory.{event.base}")
        offset = self.offsets.get(topic, 0)
        self.offsets[topic] = offset + 1
        return RawMessage(topic, 0, offset, event.value(), event.key.encode(), event.time_ms)

    def all(self, events: Iterable[Event]) -> list[RawMessage]:
        return [self.raw(e) for e in events]


@dataclass(frozen=True)
class KafkaEvent:
    """An event as ``tests.integration.flowkit.produce`` sends it."""

    topic: str
    key: bytes
    value: bytes
    timestamp_ms: int


def kafka_messages(topics: Topics, events: Sequence[Event]) -> list[KafkaEvent]:
    return [KafkaEvent(topics.name(f"inventory.{e.base}"), e.key.encode(), e.value(), e.time_ms) for e in events]


# --- reading what came out ---------------------------------------------------------------------


def transitions(alerts: Iterable[Alert]) -> list[tuple[str, str, str, int]]:
    """``(kind, status, subject or location, episode)`` in publication order."""
    return [(a.kind, a.status, a.subject or a.location, a.episode) for a in alerts]


def identities(alerts: Iterable[Alert]) -> Counter[tuple[str, str, int]]:
    """How many messages carried each ``(alert_id, status, revision)`` — the consumer's dedupe key."""
    return Counter((a.alert_id, a.status, a.revision) for a in alerts)


def distinct(alerts: Iterable[Alert]) -> list[Alert]:
    """The alerts a deduplicating consumer keeps: the first of each identity, in order."""
    seen: set[tuple[str, str, int]] = set()
    out = []
    for a in alerts:
        ident = (a.alert_id, a.status, a.revision)
        if ident not in seen:
            seen.add(ident)
            out.append(a)
    return out


def trigger_ids(triggers: Iterable[ReplenishmentTrigger]) -> list[str]:
    return [t.trigger_id for t in triggers]


def ewma_days(days: Sequence[int], alpha: float = 0.25) -> tuple[float, float]:
    """d and σ of daily totals by the textbook EWMA recurrence (written out here, independently of
    ``engine.domain.demand``): the first day sets d, each next day x: diff = x − d, d += α·diff,
    var = (1 − α)·(var + α·diff²)."""
    d, var = float(days[0]), 0.0
    for x in days[1:]:
        diff = x - d
        d += alpha * diff
        var = (1 - alpha) * (var + alpha * diff * diff)
    return d, math.sqrt(var)
