"""A realistic mixed event stream for demos, tests and benchmarks (``atp simulate``).

``generate(n, seed, …)`` yields ``n`` messages ``(topic, key, value)``:

* opening stock counts for the most popular SKUs (≤ 10 % of the stream);
* orders across channels — ``order.placed`` with 1–3 lines on Zipf-popular SKUs, some pinned
  to a location, most without; later about 85 % are shipped and 8 % cancelled (half of the
  cancellations name their lines, half leave the SKUs to the reservation index);
* inbound lots with ETAs and suppliers; some are re-dated or resized, a few cancelled; the
  rest are received — on time or late, in full or short, by how reliable the supplier is;
* stock adjustments (damage, shrink, found), cycle counts that find roughly what the books
  say, returns (receipts without a lot);
* with probability ``bad_fraction`` a bad message instead (see ``BAD_KINDS``), and with
  probability ``duplicate_fraction`` an exact re-send of an earlier good message.

Event time starts at ``start_time`` and the stream covers about ``days`` days of business;
follow-ups (shipments, receipts, …) are emitted when they fall due, so ``occurred_at`` never
goes backwards. Supply roughly matches demand, so positions go low and out of stock now and
then, as in a real shop.

Everything is a pure function of the arguments: the same seed and ``start_time`` give the
same bytes (``start_time=None`` means now, which then only shifts the times). Event ids are
``sim-<seed>-<index>``. Events are keyed by SKU; all events of one order are keyed by its
first line's SKU so that its placement, shipment and cancellation stay in one partition, in
order — a cancellation without lines included.

``produce(conf, topics, n, …)`` sends such a stream with an idempotent producer and a
progress bar and returns a ``ProduceReport``.
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
from bisect import bisect
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from connectors.topics import ADJUSTMENTS, INBOUND, ORDERS, RECEIPTS, Topics
from engine.domain.events import format_time, from_ms, to_ms
from engine.domain.ids import require_id

if TYPE_CHECKING:
    from rich.console import Console

    from engine.settings import Settings

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR

DEFAULT_LOCATIONS: tuple[str, ...] = ("WH1", "WH2", "STORE-1")
DEFAULT_CHANNELS: tuple[str, ...] = ("web", "app", "marketplace", "store")
DEFAULT_SUPPLIERS: tuple[str, ...] = ("SUP-A", "SUP-B", "SUP-C", "SUP-D", "SUP-E")

BAD_KINDS: dict[str, str] = {
    "bad_json": "bad_json",
    "unknown_type": "unknown_type",
    "missing_field": "missing_field",
    "wrong_type": "wrong_type",
    "negative_qty": "out_of_range",
    "huge_qty": "out_of_range",
    "bad_sku": "bad_id",
    "oversize": "too_large",
}
"""Kind of bad message the simulator writes → the ``ParseError.reason`` it must produce."""

_HUGE_PLACEHOLDER = "@huge@"
OVERSIZE_BYTES = 70_000  # above the parser's 64 KiB limit, far below the broker's 1 MB


class SimMessage(NamedTuple):
    """One message to produce: full topic name, key (the SKU, or None), JSON value."""

    topic: str
    key: bytes | None
    value: bytes


class Labeled(NamedTuple):
    """A message and what it is: ``bad`` names a ``BAD_KINDS`` key, ``duplicate`` marks a re-send."""

    message: SimMessage
    event_type: str | None
    bad: str | None = None
    duplicate: bool = False


def default_skus(count: int) -> list[str]:
    """``SKU-00001`` … — the catalogue used when the caller gives a number instead of names."""
    if not 1 <= count <= 1_000_000:
        raise ValueError("the number of SKUs must be between 1 and 1,000,000")
    return [f"SKU-{i:05d}" for i in range(1, count + 1)]


def _topic_names(topics: Topics | Mapping[str, str] | None) -> dict[str, str]:
    if topics is None:
        topics = Topics()
    if isinstance(topics, Topics):
        return {base: topics.name(base) for base in (ORDERS, INBOUND, RECEIPTS, ADJUSTMENTS)}
    missing = {ORDERS, INBOUND, RECEIPTS, ADJUSTMENTS} - set(topics)
    if missing:
        raise ValueError(f"topics mapping lacks {sorted(missing)}")
    return dict(topics)


def _checked(kind: str, values: Sequence[str], label: str) -> list[str]:
    if isinstance(values, str) or not values:
        raise ValueError(f"{label}: give a non-empty list of names")
    return [require_id(kind, v) for v in dict.fromkeys(values)]


@dataclass
class _Lot:
    inbound_id: str
    sku: str
    loc: str
    qty: int
    eta_ms: int
    supplier: str


@dataclass
class _Order:
    order_id: str
    channel: str
    lines: list[tuple[str, int, str | None]]  # (sku, qty, location or None = any)

    @property
    def key(self) -> bytes:
        return self.lines[0][0].encode()


# A follow-up event: (due_ms, seq, kind, lot or order); seq breaks ties so refs are never compared.
_Due = tuple[int, int, str, Any]


class Simulator:
    """The stream generator behind ``generate``; ``labeled()`` also says what each message is."""

    def __init__(
        self,
        n: int,
        seed: int = 0,
        skus: int | Sequence[str] = 200,
        locations: Sequence[str] = DEFAULT_LOCATIONS,
        channels: Sequence[str] = DEFAULT_CHANNELS,
        suppliers: Sequence[str] = DEFAULT_SUPPLIERS,
        bad_fraction: float = 0.0,
        start_time: datetime | None = None,
        topics: Topics | Mapping[str, str] | None = None,
        duplicate_fraction: float = 0.0,
        days: float = 7.0,
    ) -> None:
        if n < 0:
            raise ValueError("n must be ≥ 0")
        if not 0.0 <= bad_fraction <= 1.0 or not 0.0 <= duplicate_fraction <= 1.0:
            raise ValueError("bad_fraction and duplicate_fraction must be within [0, 1]")
        if not 0.0 < days <= 3650:
            raise ValueError("days must be within (0, 3650]")
        if start_time is not None and start_time.tzinfo is None:
            raise ValueError("start_time must carry a time zone")
        self.n = n
        self.seed = seed
        self.skus = default_skus(skus) if isinstance(skus, int) else _checked("sku", skus, "skus")
        self.locations = _checked("location", locations, "locations")
        self.channels = _checked("channel", channels, "channels")
        self.suppliers = _checked("supplier_id", suppliers, "suppliers")
        self.bad_fraction = bad_fraction
        self.duplicate_fraction = duplicate_fraction
        self.topic = _topic_names(topics)
        start = start_time if start_time is not None else datetime.now(UTC).replace(microsecond=0)
        self.now = to_ms(start)
        # About 56 % of the good messages are spontaneous (the rest are their follow-ups), so
        # this spacing makes the whole stream cover about `days`.
        self._mean_gap_ms = days * DAY / max(1.0, 0.56 * n)
        self._next_ms = self.now
        self._book: dict[tuple[str, str], int] = {}  # what the shop's books say is on hand
        self.rng = random.Random(seed)
        # Zipf-like popularity: a few hot SKUs take most of the demand, like a real catalogue.
        self._sku_cum = list(itertools.accumulate(1.0 / (i + 1) ** 1.1 for i in range(len(self.skus))))
        # Supplier i is on time and in full with probability ~0.97 - 0.12 i (floor 0.45).
        self._reliability = {s: max(0.45, 0.97 - 0.12 * i) for i, s in enumerate(self.suppliers)}
        self._channel_cum = list(itertools.accumulate(50 / (i + 1) for i in range(len(self.channels))))
        self._due: list[_Due] = []
        self._seq = itertools.count()
        self._follow_up = {
            "order_cancelled": self._order_cancelled,
            "order_shipped": self._order_shipped,
            "inbound_cancelled": self._inbound_cancelled,
            "inbound_updated": self._inbound_updated,
            "receipt_posted": self._receipt_posted,
        }
        self._ids = itertools.count(1)
        self._index = 0
        self._last_good: list[Labeled] = []
        # Opening counts: the most popular SKUs at every location, at most a tenth of the stream.
        positions = ((s, loc) for s in self.skus for loc in self.locations)
        self._opening = list(itertools.islice(positions, n // 10))
        self._opening.reverse()  # popped from the end

    # --- public -----------------------------------------------------------------------------

    def labeled(self) -> Iterator[Labeled]:
        """The ``n`` messages, each with its label."""
        for index in range(self.n):
            self._index = index
            roll = self.rng.random()
            if roll < self.bad_fraction:
                yield self._bad()
            elif roll < self.bad_fraction + self.duplicate_fraction and self._last_good:
                again = self.rng.choice(self._last_good)
                yield again._replace(duplicate=True)
            else:
                good = self._good()
                if len(self._last_good) >= 64:
                    self._last_good[self.rng.randrange(64)] = good
                else:
                    self._last_good.append(good)
                yield good

    def __iter__(self) -> Iterator[SimMessage]:
        return (item.message for item in self.labeled())

    # --- helpers ----------------------------------------------------------------------------

    def _event_id(self) -> str:
        return f"sim-{self.seed}-{self._index:09d}"

    def _sku(self) -> str:
        return self.skus[bisect(self._sku_cum, self.rng.random() * self._sku_cum[-1])]

    def _channel(self) -> str:
        return self.channels[bisect(self._channel_cum, self.rng.random() * self._channel_cum[-1])]

    def _envelope(self, kind: str, **payload: Any) -> dict[str, Any]:
        return {
            "event_id": self._event_id(),
            "type": kind,
            "occurred_at": format_time(from_ms(self.now)),
            **payload,
        }

    def _emit(self, base_topic: str, key: str | bytes | None, body: dict[str, Any]) -> Labeled:
        key_bytes = key.encode() if isinstance(key, str) else key
        return Labeled(SimMessage(self.topic[base_topic], key_bytes, orjson.dumps(body)), body["type"])

    def _schedule(self, delay_ms: int, kind: str, ref: Any) -> None:
        heapq.heappush(self._due, (self.now + max(0, delay_ms), next(self._seq), kind, ref))

    def _book_add(self, sku: str, loc: str, delta: int) -> None:
        self._book[(sku, loc)] = max(0, self._book.get((sku, loc), 0) + delta)

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}-{self.seed}-{next(self._ids)}"

    # --- good events ------------------------------------------------------------------------

    def _good(self) -> Labeled:
        if self._opening:
            sku, loc = self._opening.pop()
            on_hand = self.rng.randint(20, 400)
            self._book[(sku, loc)] = on_hand
            body = self._envelope(
                "stock.counted", sku=sku, location=loc, on_hand=on_hand, reason="opening count"
            )
            return self._emit(ADJUSTMENTS, sku, body)
        # A follow-up that falls due before the next spontaneous event goes first.
        if self._due and self._due[0][0] <= self._next_ms:
            due_ms, _, kind, ref = heapq.heappop(self._due)
            self.now = max(self.now, due_ms)
            return self._follow_up[kind](ref)
        self.now = self._next_ms
        self._next_ms += int(self.rng.expovariate(1.0 / self._mean_gap_ms)) + 1
        roll = self.rng.random()
        if roll < 0.78:
            return self._order_placed()
        if roll < 0.85:
            return self._inbound_created()
        if roll < 0.93:
            return self._stock_adjusted()
        if roll < 0.97:
            return self._stock_counted()
        return self._return_receipt()

    def _order_placed(self) -> Labeled:
        rng = self.rng
        roll = rng.random()
        n_lines = 1 if roll < 0.70 else 2 if roll < 0.92 else 3
        skus = list(dict.fromkeys(self._sku() for _ in range(n_lines)))
        pinned = rng.choice(self.locations) if rng.random() < 0.4 else None
        lines: list[tuple[str, int, str | None]] = []
        for sku in skus:
            roll = rng.random()
            qty = 1 if roll < 0.72 else 2 if roll < 0.88 else 3 if roll < 0.96 else rng.randint(4, 20)
            lines.append((sku, qty, pinned))
        order = _Order(self._new_id("ord"), self._channel(), lines)
        body = self._envelope(
            "order.placed",
            order_id=order.order_id,
            channel=order.channel,
            lines=[{"sku": s, "qty": q} | ({"location": loc} if loc else {}) for s, q, loc in lines],
        )
        if rng.random() < 0.5:
            body["customer_id"] = f"cust-{rng.randrange(20_000)}"
        fate = rng.random()
        if fate < 0.08:
            self._schedule(rng.randint(1 * MINUTE, 2 * HOUR), "order_cancelled", order)
        elif fate < 0.93:
            self._schedule(rng.randint(10 * MINUTE, DAY), "order_shipped", order)
        return self._emit(ORDERS, order.key, body)

    def _order_cancelled(self, order: _Order) -> Labeled:
        body = self._envelope("order.cancelled", order_id=order.order_id, reason="customer request")
        if self.rng.random() < 0.5:
            body["lines"] = [{"sku": s, "qty": q} for s, q, _ in order.lines]
        return self._emit(ORDERS, order.key, body)

    def _order_shipped(self, order: _Order) -> Labeled:
        # An order placed for "any" location ships from wherever the warehouse picked it.
        where = [loc or self.rng.choice(self.locations) for _, _, loc in order.lines]
        for (sku, qty, _), loc in zip(order.lines, where, strict=True):
            self._book_add(sku, loc, -qty)
        body = self._envelope(
            "order.shipped",
            order_id=order.order_id,
            lines=[
                {"sku": s, "qty": q, "location": w} for (s, q, _), w in zip(order.lines, where, strict=True)
            ],
        )
        return self._emit(ORDERS, order.key, body)

    def _inbound_created(self) -> Labeled:
        rng = self.rng
        lot = _Lot(
            inbound_id=self._new_id("in"),
            sku=self._sku(),
            loc=rng.choice(self.locations),
            qty=rng.choice((12, 24, 24, 36, 48, 60, 90)),  # ~ the demand it replaces
            eta_ms=self.now + rng.randint(6 * HOUR, 4 * DAY),
            supplier=rng.choice(self.suppliers),
        )
        body = self._envelope(
            "inbound.created",
            inbound_id=lot.inbound_id,
            sku=lot.sku,
            location=lot.loc,
            qty=lot.qty,
            eta=format_time(from_ms(lot.eta_ms)),
            supplier_id=lot.supplier,
            ref=f"PO-{lot.inbound_id}",
        )
        fate = rng.random()
        before_eta = max(MINUTE, lot.eta_ms - self.now)
        if fate < 0.05:
            self._schedule(rng.randint(MINUTE, before_eta), "inbound_cancelled", lot)
        elif fate < 0.30:
            self._schedule(rng.randint(MINUTE, before_eta), "inbound_updated", lot)
        else:
            self._schedule_receipt(lot)
        return self._emit(INBOUND, lot.sku, body)

    def _schedule_receipt(self, lot: _Lot) -> None:
        rng = self.rng
        late = rng.random() > self._reliability[lot.supplier]
        arrival = lot.eta_ms + (rng.randint(6 * HOUR, 2 * DAY) if late else -rng.randint(0, 6 * HOUR))
        self._schedule(max(arrival, self.now + MINUTE) - self.now, "receipt_posted", lot)

    def _inbound_updated(self, lot: _Lot) -> Labeled:
        rng = self.rng
        change: dict[str, Any] = {}
        if rng.random() < 0.7:  # the supplier announces a slip (or, rarely, an earlier date)
            shift = rng.randint(6 * HOUR, 2 * DAY) if rng.random() < 0.85 else -rng.randint(HOUR, 12 * HOUR)
            lot.eta_ms = max(self.now + HOUR, lot.eta_ms + shift)
            change["eta"] = format_time(from_ms(lot.eta_ms))
        if not change or rng.random() < 0.3:
            lot.qty = max(1, lot.qty + rng.choice((-1, 1)) * rng.randint(1, max(1, lot.qty // 4)))
            change["qty"] = lot.qty
        body = self._envelope(
            "inbound.updated", inbound_id=lot.inbound_id, sku=lot.sku, reason="supplier update", **change
        )
        self._schedule_receipt(lot)
        return self._emit(INBOUND, lot.sku, body)

    def _inbound_cancelled(self, lot: _Lot) -> Labeled:
        body = self._envelope(
            "inbound.cancelled", inbound_id=lot.inbound_id, sku=lot.sku, reason="supplier cancelled"
        )
        return self._emit(INBOUND, lot.sku, body)

    def _receipt_posted(self, lot: _Lot) -> Labeled:
        rng = self.rng
        short = rng.random() > self._reliability[lot.supplier]
        qty = max(1, int(lot.qty * rng.uniform(0.5, 0.95))) if short else lot.qty
        body = self._envelope(
            "receipt.posted",
            receipt_id=self._new_id("rcpt"),
            sku=lot.sku,
            location=lot.loc,
            qty=qty,
            inbound_id=lot.inbound_id,
            ref=f"ASN-{lot.inbound_id}",
        )
        if short:
            body["reason"] = "short shipment"
        self._book_add(lot.sku, lot.loc, qty)
        return self._emit(RECEIPTS, lot.sku, body)

    def _return_receipt(self) -> Labeled:
        sku, loc, qty = self._sku(), self.rng.choice(self.locations), self.rng.randint(1, 3)
        self._book_add(sku, loc, qty)
        body = self._envelope(
            "receipt.posted",
            receipt_id=self._new_id("rma"),
            sku=sku,
            location=loc,
            qty=qty,
            reason="customer return",
        )
        return self._emit(RECEIPTS, sku, body)

    def _stock_adjusted(self) -> Labeled:
        rng = self.rng
        reason, low, high = rng.choices(
            (("damage", -3, -1), ("shrink", -2, -1), ("found", 1, 3), ("expired", -5, -1)),
            weights=(40, 30, 20, 10),
        )[0]
        sku, loc, delta = self._sku(), rng.choice(self.locations), rng.randint(low, high)
        self._book_add(sku, loc, delta)
        body = self._envelope("stock.adjusted", sku=sku, location=loc, delta=delta, reason=reason)
        return self._emit(ADJUSTMENTS, sku, body)

    def _stock_counted(self) -> Labeled:
        # A cycle count mostly confirms the books, sometimes finds a few units more or less.
        sku, loc = self._sku(), self.rng.choice(self.locations)
        found = max(0, self._book.get((sku, loc), 0) + self.rng.choice((0, 0, 0, 0, -1, -2, 1)))
        self._book[(sku, loc)] = found
        body = self._envelope("stock.counted", sku=sku, location=loc, on_hand=found, reason="cycle count")
        return self._emit(ADJUSTMENTS, sku, body)

    # --- bad messages -----------------------------------------------------------------------

    def _bad(self) -> Labeled:
        kind = self.rng.choice(tuple(BAD_KINDS))
        sku = self._sku()
        base = self._envelope("stock.counted", sku=sku, location=self.rng.choice(self.locations), on_hand=5)
        topic = ADJUSTMENTS
        if kind == "bad_json":
            value = orjson.dumps(base)[: -self.rng.randint(2, 20)]  # a truncated object
            return Labeled(SimMessage(self.topic[topic], None, value), None, kind)
        if kind == "unknown_type":
            base["type"] = self.rng.choice(("stock.teleported", "order.placed.v2", "STOCK.COUNTED", ""))
        elif kind == "missing_field":
            del base["on_hand"]
        elif kind == "wrong_type":
            base["on_hand"] = self.rng.choice(("5", 5.5, [5], True))
        elif kind in ("negative_qty", "huge_qty"):
            topic = ORDERS
            # 10**30 does not fit JSON's usual 64-bit integers: it is spliced in as text below.
            qty = (
                -self.rng.randint(1, 10)
                if kind == "negative_qty"
                else self.rng.choice((10**10, 10**15, 10**30))
            )
            base = self._envelope(
                "order.placed",
                order_id=self._new_id("ord"),
                channel=self._channel(),
                lines=[{"sku": sku, "qty": _HUGE_PLACEHOLDER if qty > 2**63 else qty}],
            )
        elif kind == "bad_sku":
            base["sku"] = self.rng.choice(("SKU 01", "SKU/../x", "-SKU", "sku*", "x" * 65, "é-sku", "SKU\n"))
        elif kind == "oversize":
            base["ref"] = "x" * 150
            base["note"] = "padding " * (OVERSIZE_BYTES // 8)
        body_type = base.get("type") if isinstance(base.get("type"), str) else None
        value = orjson.dumps(base).replace(b'"' + _HUGE_PLACEHOLDER.encode() + b'"', str(10**30).encode())
        return Labeled(SimMessage(self.topic[topic], sku.encode(), value), body_type, kind)


def generate(
    n: int,
    seed: int = 0,
    skus: int | Sequence[str] = 200,
    locations: Sequence[str] = DEFAULT_LOCATIONS,
    channels: Sequence[str] = DEFAULT_CHANNELS,
    suppliers: Sequence[str] = DEFAULT_SUPPLIERS,
    bad_fraction: float = 0.0,
    start_time: datetime | None = None,
    topics: Topics | Mapping[str, str] | None = None,
    duplicate_fraction: float = 0.0,
    days: float = 7.0,
) -> Iterator[SimMessage]:
    """``n`` messages ``(topic, key, value)`` of a realistic stream (see the module docstring).

    ``skus`` is a list of SKU names or how many to make up. ``topics`` defaults to the
    production names. Raises ``ValueError`` for bad arguments (before yielding anything).
    """
    return iter(
        Simulator(
            n,
            seed,
            skus,
            locations,
            channels,
            suppliers,
            bad_fraction,
            start_time,
            topics,
            duplicate_fraction,
        )
    )


# --- producing --------------------------------------------------------------------------------


@dataclass
class ProduceReport:
    """What ``produce`` sent: counts by topic, by event type and by bad kind, failures, timing."""

    messages: int = 0
    delivered: int = 0
    failed: int = 0
    bad: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    by_topic: dict[str, int] = field(default_factory=dict)
    by_type: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every message was acknowledged by the broker."""
        return self.failed == 0 and self.delivered == self.messages

    @property
    def rate(self) -> float:
        """Messages per second, including the final flush."""
        return self.messages / self.elapsed_s if self.elapsed_s > 0 else 0.0


def _producer_conf(conf: Settings | Mapping[str, Any]) -> dict[str, Any]:
    from connectors.kafka import producer_conf, producer_config

    return producer_conf(conf) if isinstance(conf, Mapping) else producer_config(conf)


def produce(
    conf: Settings | Mapping[str, Any],
    topics: Topics | None = None,
    n: int = 10_000,
    *,
    seed: int = 0,
    skus: int | Sequence[str] = 200,
    locations: Sequence[str] = DEFAULT_LOCATIONS,
    channels: Sequence[str] = DEFAULT_CHANNELS,
    suppliers: Sequence[str] = DEFAULT_SUPPLIERS,
    bad_fraction: float = 0.0,
    duplicate_fraction: float = 0.0,
    start_time: datetime | None = None,
    days: float = 7.0,
    progress: bool = True,
    console: Console | None = None,
    flush_timeout_s: float = 60.0,
) -> ProduceReport:
    """Send ``n`` simulated messages to the input topics and wait until the broker has them all.

    ``conf`` is the engine ``Settings`` (an idempotent producer config is built from it) or a
    librdkafka config (``bootstrap.servers`` at least; idempotence and ``acks=all`` are added
    unless given). ``topics`` defaults to the production names; the topics must exist.
    ``progress`` shows a rich progress bar on ``console`` (stderr by default). Delivery
    failures do not raise: they are counted in the report (``report.ok`` is False, the first
    few ``errors`` say why). Bad arguments raise ``ValueError`` before anything is sent.
    """
    from confluent_kafka import KafkaException, Producer

    sim = Simulator(
        n,
        seed,
        skus,
        locations,
        channels,
        suppliers,
        bad_fraction,
        start_time,
        topics,
        duplicate_fraction,
        days,
    )
    report = ProduceReport()

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is None:
            report.delivered += 1
        else:
            report.failed += 1
            if len(report.errors) < 5:
                report.errors.append(str(err))

    try:
        producer = Producer(_producer_conf(conf))
    except KafkaException as exc:
        raise ValueError(f"bad producer configuration: {exc}") from exc
    started = time.perf_counter()
    with _progress_bar(progress, console, n) as advance:
        for item in sim.labeled():
            topic, key, value = item.message
            while True:
                try:
                    producer.produce(topic, value, key, on_delivery=on_delivery)
                    break
                except BufferError:  # the local queue is full: let deliveries drain
                    producer.poll(0.05)
            report.messages += 1
            report.by_topic[topic] = report.by_topic.get(topic, 0) + 1
            if item.bad is not None:
                report.bad[item.bad] = report.bad.get(item.bad, 0) + 1
            elif item.duplicate:
                report.duplicates += 1
            elif item.event_type is not None:
                report.by_type[item.event_type] = report.by_type.get(item.event_type, 0) + 1
            if report.messages % 1000 == 0:
                producer.poll(0)
                advance(1000)
        advance(report.messages % 1000)
        remaining = producer.flush(flush_timeout_s)
    report.elapsed_s = time.perf_counter() - started
    if remaining:
        report.failed += remaining
        report.errors.append(f"{remaining} messages still unacknowledged after {flush_timeout_s:g} s")
    return report


@contextmanager
def _progress_bar(enabled: bool, console: Console | None, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr (or nothing), as an ``advance(k)`` callable."""
    if not enabled:
        yield lambda k: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    bar = Progress(
        TextColumn("[bold]simulate[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console or Console(stderr=True),
    )
    task = bar.add_task("simulate", total=total, rate="")
    started = time.perf_counter()

    def advance(k: int) -> None:
        done = bar.tasks[0].completed + k
        elapsed = time.perf_counter() - started
        rate = f"{done / elapsed:,.0f} msg/s" if elapsed > 0 else ""
        bar.update(task, advance=k, rate=rate)

    with bar:
        yield advance
