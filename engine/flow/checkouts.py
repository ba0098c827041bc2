"""What the alert step learns besides the stream: the API's reservation events, and re-checks.

The API changes a SKU's figures without an event on the input topics: holds, confirms and releases
(the sweeper's expiries, too). The rules must see those changes within seconds, yet the checkout's
hot path must not pay for it. So the API only publishes what it changed, as it already does, to
``inventory.reservations`` (``engine.reservations.events``), and the flow reads that topic:

```
inventory.reservations ─► checkout_in ─► checkout_parse ─► (sku, CheckoutLine) ─┐
recheck_in (every few seconds: SKUs with a firing condition) ─► (sku, RECHECK) ─┴► checkout_read
```

``checkout_read`` (``engine.flow.alerting.CheckoutRead``) reads the position of every SKU a batch
touches — one read per SKU per batch, whatever the number of events — and hands the alert step one
``Checkout`` per SKU: the lines (their demand) and the figures as they are now.

Re-checks cover the changes nobody publishes: the ``Watchlist`` holds the SKUs of this process
with a condition that may resolve without an event (firing low_stock, stockout, oversold,
promise_at_risk, demand_surge, order_unfulfillable), and ``RecheckSource`` names at most
``limit`` of them per worker every ``interval_s``, in turn.

Where the reservations topic starts: a flow that resumes reads on from its snapshot (the demand
it counted is in the same snapshot); one that has never read it starts at its end, so a first start
(or a flow run without a recovery dir) does not count again, as today's demand, checkouts already
judged or long past — their figures are in the positions it reads anyway.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from confluent_kafka import Consumer, KafkaException, TopicPartition

from engine.domain.events import to_ms
from engine.domain.ids import DEFAULT_LOCATION, is_valid_id
from engine.domain.outputs import STATEFUL_ALERT_KINDS
from engine.flow.log_identity import source_name
from engine.flow.source import ALL_GROUP, KafkaInput, RawMessage, ResumeState, group_name, partition_counts

log = logging.getLogger(__name__)

DEMAND_CHANGES = frozenset({"held", "confirmed"})
"""The reservation changes whose units are demand (once per reservation id)."""
JUDGED_CHANGES = DEMAND_CHANGES | {"released", "expired"}
"""The changes that move a SKU's figures (an ``extended`` hold moves none; ``expired`` comes from
the change log's relay, docs/changelog.md)."""
RECHECKED_KINDS = STATEFUL_ALERT_KINDS - {"inbound_late", "supplier_unreliable"}
"""Conditions a re-check may resolve: those judged on figures or on the passing of time.
(``inbound_late`` has its own ticks; ``supplier_unreliable`` is judged per supplier.)"""
_EVENT_TYPE_PREFIX = "reservation."


@dataclass(frozen=True, slots=True)
class CheckoutLine:
    """One SKU's line of one reservation event."""

    rid: str
    change: str
    qty: int
    location: str
    """Where its demand counts: the line's location, else where most of it was allocated, else
    ``default`` (as for a stream order)."""
    occurred_ms: int
    event_id: str


RECHECK = None
"""The value of a ``(sku, RECHECK)`` item: judge the SKU's figures again, nothing happened."""

CheckoutItem = tuple[str, CheckoutLine | None]


def parse_reservation(raw: RawMessage) -> list[CheckoutItem]:
    """``(sku, CheckoutLine)`` for each line of the reservation event in ``raw``; [] for an event
    that changes no figures, or one that cannot be read (logged: the API writes these, so that is a
    bug, not bad input to dead-letter)."""
    try:
        event = orjson.loads(raw.value or b"")
        change = event["type"].removeprefix(_EVENT_TYPE_PREFIX)
        if change not in JUDGED_CHANGES:
            return []
        rid, event_id = event["reservation_id"], event["event_id"]
        occurred_ms = to_ms(datetime.fromisoformat(event["occurred_at"]))
        out: list[CheckoutItem] = []
        for line in event["lines"]:
            sku, qty = line["sku"], line["qty"]
            if not is_valid_id("sku", sku) or type(qty) is not int:
                raise ValueError(f"bad line {line!r}")
            out.append((sku, CheckoutLine(rid, change, qty, _demand_location(line), occurred_ms, event_id)))
        return out
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        log.warning("unreadable reservation event at %s:%d: %s", raw.source, raw.offset, exc)
        return []


def parse_reservations(batch: list[RawMessage]) -> list[CheckoutItem]:
    """``flat_map_batch`` mapper over ``parse_reservation``."""
    return [item for raw in batch for item in parse_reservation(raw)]


def _demand_location(line: Mapping[str, Any]) -> str:
    named = line.get("location")
    if named:
        return str(named)
    per: dict[str, int] = {}
    for alloc in line.get("allocations") or ():
        loc = alloc.get("location")
        if loc:
            per[loc] = per.get(loc, 0) + int(alloc.get("qty", 0))
    if per:
        best = max(per.values())
        return next(loc for loc, qty in per.items() if qty == best)
    return DEFAULT_LOCATION


class CheckoutInput(KafkaInput):
    """``KafkaInput`` over the reservations topic that starts at the topic's end when it has no
    resume state (see the module doc)."""

    def build_part(self, step_id: str, for_part: str, resume_state: ResumeState | None) -> Any:
        if resume_state is None:
            resume_state = self._ends(for_part)
        return super().build_part(step_id, for_part, resume_state)

    def _ends(self, for_part: str) -> ResumeState:
        counts = partition_counts(self._conf, self._topics)
        members = [
            (t, p) for t in self._topics for p in range(counts[t]) if for_part in (ALL_GROUP, group_name(p))
        ]
        consumer = Consumer({**self._conf, "group.id": "atp-flow-checkouts", "enable.auto.commit": False})
        try:
            ends: ResumeState = {}
            for topic, part in members:
                _low, high = consumer.get_watermark_offsets(TopicPartition(topic, part), timeout=30)
                ends[source_name(topic, part)] = high
            return ends
        except KafkaException as exc:
            raise RuntimeError(f"cannot read the end of {', '.join(self._topics)}: {exc}") from exc
        finally:
            consumer.close()


class Watchlist:
    """The SKUs of this process that have a condition a re-check may resolve (thread-safe: the
    alert step's workers write it, the re-check partitions read it)."""

    def __init__(self) -> None:
        self._skus: dict[str, None] = {}
        self._lock = threading.Lock()

    def mark(self, sku: str, watched: bool) -> None:
        with self._lock:
            if watched:
                self._skus.setdefault(sku, None)
            else:
                self._skus.pop(sku, None)

    def take(self, limit: int) -> list[str]:
        """Up to ``limit`` SKUs, in turn: those taken go to the back of the line."""
        with self._lock:
            taken = list(self._skus)[:limit]
            for sku in taken:
                del self._skus[sku]
                self._skus[sku] = None
            return taken

    def __len__(self) -> int:
        return len(self._skus)


class RecheckSource(DynamicSource[CheckoutItem]):
    """Every ``interval_s``, on every worker: ``(sku, RECHECK)`` for up to ``limit`` SKUs of the
    watchlist. Ends when ``stop_event`` is set (with the flow's input)."""

    def __init__(
        self, watchlist: Watchlist, interval_s: float, limit: int, stop_event: threading.Event | None = None
    ) -> None:
        if interval_s <= 0 or limit < 1:
            raise ValueError("need interval_s > 0 and limit ≥ 1")
        self.watchlist = watchlist
        self.interval_s = interval_s
        self.limit = limit
        self.stop_event = stop_event

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _RecheckPartition:
        return _RecheckPartition(self)


class _RecheckPartition(StatelessSourcePartition[CheckoutItem]):
    def __init__(self, source: RecheckSource) -> None:
        self._src = source
        self._interval = timedelta(seconds=source.interval_s)
        self._next = datetime.now(UTC) + self._interval

    def next_batch(self) -> Sequence[CheckoutItem]:
        src = self._src
        if src.stop_event is not None and src.stop_event.is_set():
            raise StopIteration()
        now = datetime.now(UTC)
        if now < self._next:
            return []
        self._next = now + self._interval
        return [(sku, RECHECK) for sku in src.watchlist.take(src.limit)]

    def next_awake(self) -> datetime | None:
        # wake often enough to see the stop event, and otherwise once an interval
        return min(self._next, datetime.now(UTC) + timedelta(milliseconds=200))
