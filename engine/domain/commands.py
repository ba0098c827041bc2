"""Events → per-SKU store commands (docs/semantics.md, "Supply events").

One event becomes one command per SKU it touches, never more: the store deduplicates by
``event_id`` and by input offset *per SKU*, so two commands of one event for the same SKU would
see the second skipped as a duplicate. Hence:

* order lines of one SKU are summed into one command. In ``order.placed`` the location is the
  lines' common location, or ``""`` (any) when they name different ones or none;
  ``order.shipped`` cannot name one SKU at two locations (the parser refuses it).
* ``order.cancelled`` releases by reservation id: one command per distinct SKU of its lines;
  without lines, one command with ``sku=None`` and ``needs_lookup=True`` — the flow finds the
  SKUs of the reservation (``atp:rid:{rid}``) and issues the command once per SKU.

Payloads are the scripts' units: integer milliseconds since the epoch, no nulls (an absent
location is ``""``, an absent time or quantity is ``0``). The reservation id of an order is its
``order_id``. ``ref`` is the event's ``ref``, or the business document's id (order, inbound
lot, receipt) when the event has none, so the movement journal always names a source.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.domain.events import (
    EventBase,
    InboundCancelled,
    InboundCreated,
    InboundUpdated,
    OrderCancelled,
    OrderPlaced,
    OrderShipped,
    ReceiptPosted,
    StockAdjusted,
    StockCounted,
    to_ms,
)

EVENT_COMMANDS: tuple[str, ...] = (
    "inbound_created",
    "inbound_updated",
    "inbound_cancelled",
    "receipt",
    "adjust",
    "count",
    "ship",
    "order_placed",
    "order_cancelled",
)
"""Every ``SkuCommand.cmd`` an event turns into (``to_commands``)."""

SUPPLY_COMMANDS: tuple[str, ...] = (*EVENT_COMMANDS, "policy", "reliability")
"""Every per-SKU command of docs/semantics.md: those of events, and the operator's policy and a
supplier's reliability."""

REBALANCING = frozenset(
    {"inbound_created", "inbound_updated", "inbound_cancelled", "receipt", "adjust", "count", "policy", "reliability"}
)
"""The commands after which over-allocated supply is given back and shorts are re-filled."""

ANY_LOCATION = ""


@dataclass(frozen=True, slots=True)
class SkuCommand:
    """One store command for one SKU, derived from one event.

    ``sku`` is None only when ``needs_lookup`` is true (an ``order.cancelled`` without lines).
    The flow adds ``source`` (``topic:partition``) and ``offset`` when it applies the command.
    ``payload`` must not be mutated.
    """

    sku: str | None
    cmd: str
    event_id: str
    payload: dict[str, Any]
    reason: str
    ref: str
    occurred_ms: int
    needs_lookup: bool = False
    event_type: str = field(default="")

    def for_sku(self, sku: str) -> SkuCommand:
        """The same command bound to ``sku`` (used by the flow after a reservation lookup)."""
        return SkuCommand(
            sku,
            self.cmd,
            self.event_id,
            self.payload,
            self.reason,
            self.ref,
            self.occurred_ms,
            False,
            self.event_type,
        )


def _make(
    event: EventBase, sku: str | None, cmd: str, payload: dict[str, Any], document: str, lookup: bool = False
) -> SkuCommand:
    return SkuCommand(
        sku=sku,
        cmd=cmd,
        event_id=event.event_id,
        payload=payload,
        reason=event.reason or "",
        ref=event.ref or document,
        occurred_ms=event.occurred_ms,
        needs_lookup=lookup,
        event_type=event.type,
    )


def _order_placed(e: OrderPlaced) -> list[SkuCommand]:
    qty: dict[str, int] = {}
    loc: dict[str, str] = {}
    for line in e.lines:
        where = line.location or ANY_LOCATION
        qty[line.sku] = qty.get(line.sku, 0) + line.qty
        # a SKU asked for at two different locations (or at one and at any) may come from any
        loc[line.sku] = where if loc.setdefault(line.sku, where) == where else ANY_LOCATION
    customer = e.customer_id or ""
    return [
        _make(
            e,
            sku,
            "order_placed",
            {"rid": e.order_id, "loc": loc[sku], "qty": q, "channel": e.channel, "customer": customer},
            e.order_id,
        )
        for sku, q in qty.items()
    ]


def _order_cancelled(e: OrderCancelled) -> list[SkuCommand]:
    payload = {"rid": e.order_id}
    if e.lines is None:
        return [_make(e, None, "order_cancelled", payload, e.order_id, lookup=True)]
    skus = dict.fromkeys(line.sku for line in e.lines)
    return [_make(e, sku, "order_cancelled", payload, e.order_id) for sku in skus]


def _order_shipped(e: OrderShipped) -> list[SkuCommand]:
    qty: dict[str, int] = {}
    loc: dict[str, str] = {}
    for line in e.lines:
        qty[line.sku] = qty.get(line.sku, 0) + line.qty
        loc.setdefault(line.sku, line.location)  # one location per SKU, checked by the model
    return [
        _make(e, sku, "ship", {"rid": e.order_id, "loc": loc[sku], "qty": q}, e.order_id)
        for sku, q in qty.items()
    ]


def _inbound_created(e: InboundCreated) -> list[SkuCommand]:
    payload = {
        "inbound_id": e.inbound_id,
        "loc": e.location,
        "qty": e.qty,
        "eta_ms": to_ms(e.eta),
        "supplier": e.supplier_id,
    }
    return [_make(e, e.sku, "inbound_created", payload, e.inbound_id)]


def _inbound_updated(e: InboundUpdated) -> list[SkuCommand]:
    payload = {
        "inbound_id": e.inbound_id,
        "eta_ms": to_ms(e.eta) if e.eta is not None else 0,  # 0 = unchanged
        "qty": e.qty or 0,  # 0 = unchanged (a lot's qty is never 0)
    }
    return [_make(e, e.sku, "inbound_updated", payload, e.inbound_id)]


def _inbound_cancelled(e: InboundCancelled) -> list[SkuCommand]:
    return [_make(e, e.sku, "inbound_cancelled", {"inbound_id": e.inbound_id}, e.inbound_id)]


def _receipt(e: ReceiptPosted) -> list[SkuCommand]:
    payload = {"loc": e.location, "qty": e.qty, "inbound_id": e.inbound_id or ""}
    return [_make(e, e.sku, "receipt", payload, e.receipt_id)]


def _adjust(e: StockAdjusted) -> list[SkuCommand]:
    return [_make(e, e.sku, "adjust", {"loc": e.location, "delta": e.delta}, "")]


def _count(e: StockCounted) -> list[SkuCommand]:
    return [_make(e, e.sku, "count", {"loc": e.location, "on_hand": e.on_hand}, "")]


_BUILDERS: dict[type[EventBase], Any] = {
    OrderPlaced: _order_placed,
    OrderCancelled: _order_cancelled,
    OrderShipped: _order_shipped,
    InboundCreated: _inbound_created,
    InboundUpdated: _inbound_updated,
    InboundCancelled: _inbound_cancelled,
    ReceiptPosted: _receipt,
    StockAdjusted: _adjust,
    StockCounted: _count,
}


def to_commands(event: EventBase) -> list[SkuCommand]:
    """The store commands of one parsed event, one per SKU, in the order the SKUs first appear."""
    builder = _BUILDERS.get(type(event))
    if builder is None:
        raise TypeError(f"not an input event: {type(event).__name__}")
    commands: list[SkuCommand] = builder(event)
    return commands
