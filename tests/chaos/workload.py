"""A deterministic mixed stream spread evenly over many SKUs, for the crash and replay tests.

``engine.dev.simulate`` models a real catalogue (Zipf-popular SKUs); these tests need 100k+ events
in a few minutes instead, so orders are spread evenly and every SKU's book stays small. Every
event type appears, orders are keyed by their first SKU (as the simulator does), half the
cancellations leave their lines out, and about 1 % of the messages are bad (DLQ traffic, so the
tests can check that replayed outputs carry the same ids).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import orjson

from connectors.topics import Topics
from engine.domain.events import format_time, from_ms

BASE_MS = 1_893_456_000_000  # 2030-01-01T00:00:00Z: ETAs stay in the future of any wall clock here
DAY_MS = 86_400_000
LOCATIONS = ("WH1", "WH2")
SUPPLIERS = ("SUP-A", "SUP-B", "SUP-C")


@dataclass(frozen=True, slots=True)
class Message:
    topic: str
    key: bytes | None
    value: bytes
    timestamp_ms: int


class _Gen:
    def __init__(self, n: int, seed: int, skus: int, topics: Topics, bad_fraction: float) -> None:
        self.n = n
        self.rng = random.Random(seed)
        self.skus = [f"C-{i:05d}" for i in range(skus)]
        self.t = topics
        self.bad_fraction = bad_fraction
        self.seed = seed
        self.i = 0
        self.open_orders: list[tuple[str, list[tuple[str, int]]]] = []
        self.open_lots: list[tuple[str, str, str, int, int]] = []  # id, sku, loc, qty, eta
        self.order_seq = 0
        self.lot_seq = 0

    def envelope(self, kind: str, **payload: object) -> dict[str, object]:
        return {
            "event_id": f"ch-{self.seed}-{self.i}",
            "type": kind,
            "occurred_at": format_time(from_ms(BASE_MS + self.i * 1000)),
            **payload,
        }

    def msg(self, topic: str, key: str | None, body: dict[str, object] | bytes) -> Message:
        value = body if isinstance(body, bytes) else orjson.dumps(body)
        return Message(topic, key.encode() if key else None, value, BASE_MS + self.i)

    def __iter__(self) -> Iterator[Message]:
        opening = [(s, loc) for s in self.skus for loc in LOCATIONS][: self.n // 10]
        for i in range(self.n):
            self.i = i
            if i < len(opening):
                sku, loc = opening[self.i]
                yield self.msg(self.t.adjustments, sku, self.envelope(
                    "stock.counted", sku=sku, location=loc, on_hand=self.rng.randint(5, 40)))
                continue
            if self.rng.random() < self.bad_fraction:
                yield self.bad()
                continue
            yield self.good()

    def bad(self) -> Message:
        sku = self.rng.choice(self.skus)
        kind = self.rng.randrange(3)
        if kind == 0:
            return self.msg(self.t.orders, sku, b'{"event_id": "broken", "type": ')
        if kind == 1:
            return self.msg(self.t.adjustments, sku, self.envelope("stock.teleported", sku=sku))
        return self.msg(self.t.adjustments, sku, self.envelope(
            "stock.counted", sku=sku, location="WH1", on_hand=-5))

    def good(self) -> Message:
        r = self.rng.random()
        rng = self.rng
        if r < 0.30 or (r < 0.53 and not self.open_orders):
            self.order_seq += 1
            oid = f"o-{self.seed}-{self.order_seq}"
            skus = rng.sample(self.skus, rng.choice((1, 1, 1, 2)))
            lines = [(s, rng.randint(1, 3)) for s in skus]
            self.open_orders.append((oid, lines))
            return self.msg(self.t.orders, skus[0], self.envelope(
                "order.placed", order_id=oid, channel=rng.choice(("web", "app")),
                lines=[{"sku": s, "qty": q, "location": "WH1"} for s, q in lines]))
        if r < 0.45:
            oid, lines = self.open_orders.pop(rng.randrange(len(self.open_orders)))
            return self.msg(self.t.orders, lines[0][0], self.envelope(
                "order.shipped", order_id=oid,
                lines=[{"sku": s, "qty": q, "location": "WH1"} for s, q in lines]))
        if r < 0.53:
            oid, lines = self.open_orders.pop(rng.randrange(len(self.open_orders)))
            body = self.envelope("order.cancelled", order_id=oid)
            if rng.random() < 0.5:
                body["lines"] = [{"sku": s} for s, _ in lines]
            return self.msg(self.t.orders, lines[0][0], body)
        if r < 0.63 or (r < 0.78 and not self.open_lots):
            self.lot_seq += 1
            lot = (f"lot-{self.seed}-{self.lot_seq}", rng.choice(self.skus), rng.choice(LOCATIONS),
                   rng.randint(10, 60), BASE_MS + rng.randint(2, 20) * DAY_MS)
            self.open_lots.append(lot)
            lid, sku, loc, qty, eta = lot
            return self.msg(self.t.inbound, sku, self.envelope(
                "inbound.created", inbound_id=lid, sku=sku, location=loc, qty=qty,
                eta=format_time(from_ms(eta)), supplier_id=rng.choice(SUPPLIERS)))
        if r < 0.68:
            k = rng.randrange(len(self.open_lots))
            lid, sku, loc, qty, eta = self.open_lots[k]
            eta += rng.randint(1, 5) * DAY_MS
            self.open_lots[k] = (lid, sku, loc, qty, eta)
            return self.msg(self.t.inbound, sku, self.envelope(
                "inbound.updated", inbound_id=lid, sku=sku, eta=format_time(from_ms(eta))))
        if r < 0.76:
            lid, sku, loc, qty, _ = self.open_lots.pop(rng.randrange(len(self.open_lots)))
            got = qty if rng.random() < 0.7 else max(1, qty - rng.randint(1, 9))
            return self.msg(self.t.receipts, sku, self.envelope(
                "receipt.posted", receipt_id=f"r-{lid}", sku=sku, location=loc, qty=got, inbound_id=lid))
        if r < 0.78:
            lid, sku, _, _, _ = self.open_lots.pop(rng.randrange(len(self.open_lots)))
            return self.msg(self.t.inbound, sku, self.envelope("inbound.cancelled", inbound_id=lid, sku=sku))
        sku = rng.choice(self.skus)
        if r < 0.93:
            return self.msg(self.t.adjustments, sku, self.envelope(
                "stock.adjusted", sku=sku, location=rng.choice(LOCATIONS), delta=rng.choice((-3, -2, -1, 1, 2, 4, 6)),
                reason=rng.choice(("damage", "found", "shrink"))))
        return self.msg(self.t.adjustments, sku, self.envelope(
            "stock.counted", sku=sku, location=rng.choice(LOCATIONS), on_hand=rng.randint(0, 50)))


def stream(n: int, seed: int, topics: Topics, skus: int = 2000, bad_fraction: float = 0.01) -> list[Message]:
    """``n`` messages: opening counts first (≤ 10 %), then a deterministic mix of every event type."""
    return list(_Gen(n, seed, skus, topics, bad_fraction))
