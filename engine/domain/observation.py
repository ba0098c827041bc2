"""What the alert, demand, supplier and replenishment rules see of one applied per-SKU command.

The flow applies a command to a SKU (docs/semantics.md, "Supply events") and gets a *supply reply*
``{status, reason?, at_risk, slipped, lot?, line?, available?, position}``. ``Observation.from_reply``
turns that reply, the command's own arguments and the event's time into one validated record;
``Observation.tick`` is the periodic observation of a quiet SKU (time only, position optional);
``Observation.checkout`` a position read after changes made outside the stream (API holds, confirms,
releases, expiries).

All records are frozen plain dataclasses (picklable, cheap to compare).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.domain.commands import SUPPLY_COMMANDS
from engine.domain.ids import DEFAULT_LOCATION, id_problem

TICK = "tick"
"""The command name of a periodic observation (no event behind it)."""

CHECKOUT = "checkout"
"""The command name of a position read after changes the stream does not carry (the API's holds,
confirms and releases, expiries): the rules judge the figures as they are now."""

STATUSES: tuple[str, ...] = ("ok", "duplicate", "refused", "conflict", "not_found")


class ObservationError(ValueError):
    """A reply or command that does not have the documented shape; the message says what is wrong."""


@dataclass(frozen=True)
class LocationFigures:
    """The buckets of one location after the command (``position.locations[loc]``)."""

    on_hand: int = 0
    safety: int = 0
    held: int = 0
    committed: int = 0
    in_transit: int = 0
    promisable_in_transit: int = 0
    atp: int = 0
    short: int = 0
    backordered: int = 0
    """Units sold beyond supply under the backorder policy (the wire's ``bo_alloc``)."""

    @property
    def inventory_position(self) -> int:
        """IP = on_hand + in_transit − committed − held (README "Alerts and replenishment")."""
        return self.on_hand + self.in_transit - self.committed - self.held


@dataclass(frozen=True)
class PositionFigures:
    """The SKU's position after the command: SKU totals and figures per location."""

    atp: int = 0
    oversold: int = 0
    locations: Mapping[str, LocationFigures] = field(default_factory=dict)
    backordered: int = 0

    @property
    def backorder_room(self) -> int:
        """The backorder allowance left (mode backorder): the SKU's ATP counts it and no location's
        does, as it belongs to no location until a hold places it."""
        return max(0, self.atp - sum(f.atp for f in self.locations.values()))


@dataclass(frozen=True)
class AtRisk:
    """A live reservation line with ``short`` units that lost their supply."""

    rid: str
    short: int


@dataclass(frozen=True)
class Slip:
    """A reservation line whose promised date moved from ``old_ms`` to ``new_ms``."""

    rid: str
    old_ms: int
    new_ms: int


@dataclass(frozen=True)
class ClosedLot:
    """The inbound lot a receipt closed (the reply's ``lot``): what was expected, when, from whom."""

    inbound_id: str
    qty: int
    eta_ms: int
    supplier: str


@dataclass(frozen=True)
class Observation:
    """One applied command (or a tick) as the rules see it. Absent text is ``""``, absent numbers 0.

    Per command, the fields that carry meaning:

    * ``order_placed``: ``rid``, ``qty`` (ordered), ``location`` (named, else where it was allocated,
      else ``default``), ``channel``, ``available`` (refusals);
    * ``inbound_created``: ``inbound_id``, ``location``, ``qty``, ``eta_ms``, ``supplier``;
    * ``inbound_updated``: ``inbound_id``, ``eta_ms`` / ``qty`` (0 = unchanged);
    * ``inbound_cancelled``: ``inbound_id``;
    * ``receipt``: ``location``, ``qty`` (received), ``inbound_id``, ``lot`` (the closed lot, if any);
    * ``ship`` / ``adjust`` / ``count``: ``location`` (and ``qty`` for ship).
    """

    sku: str
    command: str
    occurred_ms: int
    event_id: str = ""
    status: str = "ok"
    reason: str = ""
    position: PositionFigures | None = None
    at_risk: tuple[AtRisk, ...] = ()
    slipped: tuple[Slip, ...] = ()
    location: str = ""
    qty: int = 0
    rid: str = ""
    channel: str = ""
    available: int = 0
    inbound_id: str = ""
    eta_ms: int = 0
    supplier: str = ""
    lot: ClosedLot | None = None

    @property
    def applied(self) -> bool:
        """True when the command changed the SKU (status ``ok``)."""
        return self.status == "ok"

    @classmethod
    def tick(cls, sku: str, now_ms: int, position: PositionFigures | None = None) -> Observation:
        """A periodic observation: only time passes (and, if the caller read one, a fresh position)."""
        _check_id("sku", sku)
        return cls(
            sku=sku, command=TICK, occurred_ms=_int("now_ms", now_ms, 0), status="ok", position=position
        )

    @classmethod
    def checkout(cls, sku: str, now_ms: int, position: PositionFigures, event_id: str = "") -> Observation:
        """A position read after changes made outside the stream; ``event_id`` names the latest
        reservation event behind it ('' for a re-check nobody asked for)."""
        _check_id("sku", sku)
        if event_id:
            _check_id("event_id", event_id)
        return cls(sku=sku, command=CHECKOUT, occurred_ms=_int("now_ms", now_ms, 0), event_id=event_id,
                   status="ok", position=position)

    @classmethod
    def from_reply(
        cls,
        *,
        sku: str,
        command: str,
        args: Mapping[str, Any],
        reply: Mapping[str, Any],
        occurred_ms: int,
        event_id: str = "",
    ) -> Observation:
        """Build from the command sent (``args``, the payload of docs/semantics.md) and its supply reply.

        Raises ``ObservationError`` naming the first field that is missing or of the wrong type.
        """
        _check_id("sku", sku)
        if command not in SUPPLY_COMMANDS:
            raise ObservationError(f"unknown command {command!r}")
        if event_id:
            _check_id("event_id", event_id)
        if not isinstance(args, Mapping) or not isinstance(reply, Mapping):
            raise ObservationError("args and reply must be mappings")
        status = reply.get("status")
        if status not in STATUSES:
            raise ObservationError(f"reply.status must be one of {STATUSES}, got {status!r}")
        kw: dict[str, Any] = {
            "sku": sku,
            "command": command,
            "occurred_ms": _int("occurred_ms", occurred_ms, 0),
            "event_id": event_id,
            "status": status,
            "reason": _str("reply.reason", reply.get("reason", "")),
            "position": parse_position(reply["position"]) if "position" in reply else None,
            "at_risk": tuple(_at_risk(reply.get("at_risk", []))),
            "slipped": tuple(_slipped(reply.get("slipped", []))),
        }
        if command == "order_placed":
            kw["rid"] = _id("args.rid", "reservation_id", args.get("rid"))
            kw["qty"] = _int("args.qty", args.get("qty"), 1)
            kw["channel"] = _str("args.channel", args.get("channel", ""))
            kw["available"] = _int("reply.available", reply.get("available", 0), None)
            kw["location"] = _order_location(args, reply)
        elif command in ("inbound_created", "inbound_updated", "inbound_cancelled"):
            kw["inbound_id"] = _id("args.inbound_id", "inbound_id", args.get("inbound_id"))
            if command == "inbound_created":
                kw["location"] = _id("args.loc", "location", args.get("loc"))
                kw["qty"] = _int("args.qty", args.get("qty"), 1)
                kw["eta_ms"] = _int("args.eta_ms", args.get("eta_ms"), 0)
                kw["supplier"] = _id("args.supplier", "supplier_id", args.get("supplier"))
            elif command == "inbound_updated":
                kw["qty"] = _int("args.qty", args.get("qty") or 0, 0)
                kw["eta_ms"] = _int("args.eta_ms", args.get("eta_ms") or 0, 0)
        elif command == "receipt":
            kw["location"] = _id("args.loc", "location", args.get("loc"))
            kw["qty"] = _int("args.qty", args.get("qty"), 1)
            inbound_id = args.get("inbound_id") or ""
            kw["inbound_id"] = _id("args.inbound_id", "inbound_id", inbound_id) if inbound_id else ""
            if reply.get("lot"):
                kw["lot"] = _closed_lot(reply["lot"])
        elif command in ("ship", "adjust", "count"):
            kw["location"] = _id("args.loc", "location", args.get("loc"))
            if command == "ship":
                kw["qty"] = _int("args.qty", args.get("qty"), 1)
                kw["rid"] = _id("args.rid", "reservation_id", args.get("rid"))
        elif command == "order_cancelled":
            kw["rid"] = _id("args.rid", "reservation_id", args.get("rid"))
        return cls(**kw)


def parse_position(data: Any) -> PositionFigures:
    """The wire ``position`` as ``PositionFigures``; raises ``ObservationError`` on a bad shape."""
    if not isinstance(data, Mapping):
        raise ObservationError("position must be an object")
    locs_raw = data.get("locations", {})
    if isinstance(locs_raw, list) and not locs_raw:  # Lua's cjson encodes an empty table as []
        locs_raw = {}
    if not isinstance(locs_raw, Mapping):
        raise ObservationError("position.locations must be an object")
    locs: dict[str, LocationFigures] = {}
    for name in sorted(locs_raw):  # sorted: Lua and Python order keys differently
        _check_id("location", name)
        raw = locs_raw[name]
        if not isinstance(raw, Mapping):
            raise ObservationError(f"position.locations.{name} must be an object")
        locs[name] = LocationFigures(
            **{
                key: _int(f"position.locations.{name}.{key}", raw.get(_WIRE_NAME.get(key, key), 0), None)
                for key in LocationFigures.__dataclass_fields__
            }
        )
    return PositionFigures(
        atp=_int("position.atp", data.get("atp", 0), None),
        oversold=_int("position.oversold", data.get("oversold", 0), 0),
        locations=locs,
        backordered=_int("position.backordered", data.get("backordered", 0), 0),
    )


#: LocationFigures fields the wire position names otherwise
_WIRE_NAME = {"backordered": "bo_alloc"}


def _order_location(args: Mapping[str, Any], reply: Mapping[str, Any]) -> str:
    """Where an order's demand counts: its named location, else the location that supplied most of
    it (ties: first in allocation order), else ``default``."""
    loc = args.get("loc") or ""
    if loc:
        return _id("args.loc", "location", loc)
    line = reply.get("line")
    if isinstance(line, Mapping):
        per: dict[str, int] = {}
        for alloc in line.get("alloc") or []:
            if isinstance(alloc, Sequence) and len(alloc) == 4 and isinstance(alloc[2], str) and alloc[2]:
                per[alloc[2]] = per.get(alloc[2], 0) + _int("line.alloc.qty", alloc[3], 0)
        if per:
            best = max(per.values())
            return _id("line.alloc.loc", "location", next(k for k, v in per.items() if v == best))
    return DEFAULT_LOCATION


def _at_risk(items: Any) -> list[AtRisk]:
    if isinstance(items, Mapping) and not items:
        return []
    if not isinstance(items, list):
        raise ObservationError("reply.at_risk must be a list")
    out = []
    for item in items:
        if not isinstance(item, Mapping):
            raise ObservationError("reply.at_risk entries must be objects")
        out.append(
            AtRisk(
                rid=_id("at_risk.rid", "reservation_id", item.get("rid")),
                short=_int("at_risk.short", item.get("short"), 1),
            )
        )
    return out


def _slipped(items: Any) -> list[Slip]:
    if isinstance(items, Mapping) and not items:
        return []
    if not isinstance(items, list):
        raise ObservationError("reply.slipped must be a list")
    out = []
    for item in items:
        if not isinstance(item, Mapping):
            raise ObservationError("reply.slipped entries must be objects")
        out.append(
            Slip(
                rid=_id("slipped.rid", "reservation_id", item.get("rid")),
                old_ms=_int("slipped.old_ms", item.get("old_ms"), 0),
                new_ms=_int("slipped.new_ms", item.get("new_ms"), 0),
            )
        )
    return out


def _closed_lot(data: Any) -> ClosedLot:
    if not isinstance(data, Mapping):
        raise ObservationError("reply.lot must be an object")
    return ClosedLot(
        inbound_id=_id("lot.inbound_id", "inbound_id", data.get("inbound_id")),
        qty=_int("lot.qty", data.get("qty"), 1),
        eta_ms=_int("lot.eta_ms", data.get("eta_ms"), 0),
        supplier=_id("lot.supplier", "supplier_id", data.get("supplier")),
    )


def _int(name: str, value: Any, minimum: int | None) -> int:
    if type(value) is not int:
        raise ObservationError(f"{name} must be an integer, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ObservationError(f"{name} must be ≥ {minimum}, got {value}")
    return value


def _str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ObservationError(f"{name} must be a string, got {type(value).__name__}")
    return value


def _check_id(kind: str, value: Any) -> None:
    problem = id_problem(kind, value)
    if problem is not None:
        raise ObservationError(problem)


def _id(name: str, kind: str, value: Any) -> str:
    problem = id_problem(kind, value)
    if problem is not None:
        raise ObservationError(f"{name}: {problem}")
    return value
