"""The input event contract (README "Events"): models, the topic of each type, and ``parse_event``.

Every message on an input topic is one JSON object: the envelope (``event_id``, ``type``,
``occurred_at``, optional ``reason`` and ``ref``) plus the payload of its type.

Decisions where the design is silent:

* **Unknown fields are refused** (``extra="forbid"``, reason ``unknown_field``), in the envelope,
  the payload and order lines alike. A misspelt optional field would otherwise move stock
  silently — ``"locaton": "WH1"`` books the units at ``default`` — and an inventory record
  must not guess. A producer adding a field sends it to the DLQ, where it is visible at once,
  until the contract (and the schemas in ``schemas/``, ``additionalProperties: false``) says so.
* Types are strict: ``"5"``, ``5.0`` or ``true`` are not a quantity; ``5`` is not a SKU.
  ``null`` in an optional field means absent.
* Times are RFC 3339 strings *with* an offset (``Z`` or ``±hh:mm``), after the epoch and before
  2100 (``LATEST_TIME``).
* ``location`` may be left out of any event; it then means ``"default"``
  (``DEFAULT_LOCATION``), except in ``order.placed`` lines where no location means *any*.
* Lines of one SKU within an order are summed downstream (``engine.domain.commands``);
  an ``order.shipped`` naming one SKU at two different locations is refused
  (``conflicting_lines``) because one shipment command per (order, SKU) carries one location.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from engine.domain.ids import (
    DEFAULT_LOCATION,
    MAX_LINES,
    QTY_MAX,
    Channel,
    CustomerId,
    Delta,
    EventId,
    InboundId,
    Location,
    OnHand,
    OrderId,
    Qty,
    ReceiptId,
    Sku,
    SupplierId,
    is_valid_id,
)

MAX_EVENT_BYTES = 65_536
"""Default size limit of one message; larger ones are refused (``too_large``) before decoding."""

MAX_TEXT = 200

# Base topic names (connectors.topics holds the same constants; a test keeps them equal —
# the domain may not import the Kafka-side package).
ORDERS_TOPIC = "inventory.orders"
INBOUND_TOPIC = "inventory.inbound"
RECEIPTS_TOPIC = "inventory.receipts"
ADJUSTMENTS_TOPIC = "inventory.adjustments"

TOPIC_OF_TYPE: dict[str, str] = {
    "order.placed": ORDERS_TOPIC,
    "order.cancelled": ORDERS_TOPIC,
    "order.shipped": ORDERS_TOPIC,
    "inbound.created": INBOUND_TOPIC,
    "inbound.updated": INBOUND_TOPIC,
    "inbound.cancelled": INBOUND_TOPIC,
    "receipt.posted": RECEIPTS_TOPIC,
    "stock.adjusted": ADJUSTMENTS_TOPIC,
    "stock.counted": ADJUSTMENTS_TOPIC,
}
"""Event type → the base name of the only input topic it may arrive on."""

EVENT_TYPES: tuple[str, ...] = tuple(TOPIC_OF_TYPE)

PARSE_REASONS: tuple[str, ...] = (
    "empty",  # no value at all (a tombstone)
    "too_large",  # more than max_bytes
    "bad_json",  # not UTF-8 JSON
    "not_object",  # JSON, but not an object
    "unknown_type",  # `type` is not one of EVENT_TYPES
    "wrong_topic",  # a valid type on another type's topic
    "missing_field",  # a required field is absent
    "unknown_field",  # a field the contract does not have (a typo must not move stock)
    "wrong_type",  # a field has the wrong JSON type
    "out_of_range",  # a number or a list/text length outside its bounds
    "bad_id",  # an identifier that does not match its pattern
    "bad_time",  # not an RFC 3339 time with an offset, or before the epoch
    "conflicting_lines",  # one SKU at two locations in one shipment
    "invalid",  # anything else the models refuse
)
"""Every ``ParseError.reason`` (a bounded set: safe as a metric label)."""


# --- times -----------------------------------------------------------------------------------

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Event times are before this: a fixed bound (not the clock), so a replay parses as the first
#: pass did, yet a year-9999 typo cannot push a SKU's stream clock to the end of time.
LATEST_TIME = datetime(2100, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_RFC3339 = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ]([0-9]{2}:[0-9]{2}:[0-9]{2})(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def to_ms(moment: datetime) -> int:
    """Milliseconds since the epoch of an aware datetime (exact integer arithmetic, floor)."""
    return (moment - _EPOCH) // _MS


def from_ms(ms: int) -> datetime:
    """The UTC datetime of milliseconds since the epoch."""
    return _EPOCH + ms * _MS


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with millisecond precision, e.g. ``2025-01-01T08:00:00.000Z``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _rfc3339(value: Any) -> datetime:
    if not isinstance(value, str):
        raise PydanticCustomError("wrong_type", "must be an RFC 3339 time string")
    m = _RFC3339.fullmatch(value)
    if m is None:
        raise PydanticCustomError(
            "bad_time", "must be an RFC 3339 time with an offset, e.g. 2025-01-01T08:00:00Z"
        )
    date, clock, frac, offset = m.groups()
    frac = (frac or "")[:7]  # datetime keeps microseconds: '.' + 6 digits
    offset = "+00:00" if offset in ("Z", "z") else offset
    try:
        moment = datetime.fromisoformat(f"{date}T{clock}{frac}{offset}")
    except ValueError as exc:
        raise PydanticCustomError("bad_time", "not a valid date or time: {err}", {"err": str(exc)}) from None
    if to_ms(moment) <= 0:
        raise PydanticCustomError("bad_time", "must be after 1970-01-01T00:00:00Z")
    if moment >= LATEST_TIME:
        raise PydanticCustomError("bad_time", "must be before 2100-01-01T00:00:00Z")
    return moment


Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339), Field(description="RFC 3339 with offset")]
Text = Annotated[str, Field(strict=True, max_length=MAX_TEXT)]


# --- models ----------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EventBase(_Model):
    """The envelope every event carries."""

    event_id: EventId
    type: str
    occurred_at: Timestamp
    reason: Text | None = Field(None, description="why (kept in the SKU's movement journal)")
    ref: Text | None = Field(None, description="source document (kept in the movement journal)")

    @property
    def occurred_ms(self) -> int:
        return to_ms(self.occurred_at)


class OrderLine(_Model):
    sku: Sku
    qty: Qty
    location: Location | None = Field(None, description="absent = any location")


class CancelLine(_Model):
    sku: Sku
    qty: Qty | None = None
    location: Location | None = None


class ShipLine(_Model):
    sku: Sku
    qty: Qty
    location: Location = DEFAULT_LOCATION


class OrderPlaced(EventBase):
    """A channel order: confirm its hold if one exists, else reserve as committed."""

    type: Literal["order.placed"]
    order_id: OrderId = Field(description="also the reservation id of the order's checkout hold")
    channel: Channel
    customer_id: CustomerId | None = None
    lines: list[OrderLine] = Field(min_length=1, max_length=MAX_LINES)


class OrderCancelled(EventBase):
    """Release the order's reservation; without ``lines`` the SKUs come from the reservation index."""

    type: Literal["order.cancelled"]
    order_id: OrderId
    lines: list[CancelLine] | None = Field(None, min_length=1, max_length=MAX_LINES)


class OrderShipped(EventBase):
    """Units left the building: on_hand −, committed −."""

    type: Literal["order.shipped"]
    order_id: OrderId
    lines: list[ShipLine] = Field(min_length=1, max_length=MAX_LINES)

    @model_validator(mode="after")
    def _one_location_per_sku(self) -> OrderShipped:
        seen: dict[str, str] = {}
        for line in self.lines:
            if seen.setdefault(line.sku, line.location) != line.location:
                raise PydanticCustomError(
                    "conflicting_lines",
                    "sku {sku} appears at two locations ({a}, {b}) in one shipment; send one event per location",
                    {"sku": line.sku, "a": seen[line.sku], "b": line.location},
                )
        return self


class InboundCreated(EventBase):
    """A new inbound lot (in-transit +)."""

    type: Literal["inbound.created"]
    inbound_id: InboundId
    sku: Sku
    location: Location = DEFAULT_LOCATION
    qty: Qty
    eta: Timestamp
    supplier_id: SupplierId


class InboundUpdated(EventBase):
    """A lot's ETA and/or quantity changed (at least one of them is given)."""

    model_config = ConfigDict(json_schema_extra={"anyOf": [{"required": ["eta"]}, {"required": ["qty"]}]})

    type: Literal["inbound.updated"]
    inbound_id: InboundId
    sku: Sku
    eta: Timestamp | None = None
    qty: Qty | None = None

    @model_validator(mode="after")
    def _something_changes(self) -> InboundUpdated:
        if self.eta is None and self.qty is None:
            raise PydanticCustomError("missing_field", "inbound.updated needs eta or qty (or both)")
        return self


class InboundCancelled(EventBase):
    type: Literal["inbound.cancelled"]
    inbound_id: InboundId
    sku: Sku


class ReceiptPosted(EventBase):
    """Goods received (on_hand +); naming an inbound lot closes it."""

    type: Literal["receipt.posted"]
    receipt_id: ReceiptId
    sku: Sku
    location: Location = DEFAULT_LOCATION
    qty: Qty
    inbound_id: InboundId | None = None


class StockAdjusted(EventBase):
    """on_hand ± delta (damage, shrink, found…); the reason is required here."""

    type: Literal["stock.adjusted"]
    sku: Sku
    location: Location = DEFAULT_LOCATION
    delta: Delta
    reason: Annotated[str, Field(strict=True, min_length=1, max_length=MAX_TEXT)]


class StockCounted(EventBase):
    """An absolute count: on_hand = value."""

    type: Literal["stock.counted"]
    sku: Sku
    location: Location = DEFAULT_LOCATION
    on_hand: OnHand


Event = Annotated[
    OrderPlaced
    | OrderCancelled
    | OrderShipped
    | InboundCreated
    | InboundUpdated
    | InboundCancelled
    | ReceiptPosted
    | StockAdjusted
    | StockCounted,
    Field(discriminator="type"),
]
"""Any input event (a union discriminated by ``type``)."""

MODEL_OF_TYPE: dict[str, type[EventBase]] = {
    "order.placed": OrderPlaced,
    "order.cancelled": OrderCancelled,
    "order.shipped": OrderShipped,
    "inbound.created": InboundCreated,
    "inbound.updated": InboundUpdated,
    "inbound.cancelled": InboundCancelled,
    "receipt.posted": ReceiptPosted,
    "stock.adjusted": StockAdjusted,
    "stock.counted": StockCounted,
}


# --- parsing ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParseError:
    """Why a message is not a valid event.

    ``reason`` is one of ``PARSE_REASONS``; ``detail`` is for humans (field path and message).
    ``event_type`` / ``event_id`` are filled in when the message got far enough to show them.
    """

    reason: str
    detail: str
    event_type: str | None = None
    event_id: str | None = None


_RANGE_ERRORS = {
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
    "too_short",
    "too_long",
    "string_too_short",
    "string_too_long",
}
_CUSTOM = set(PARSE_REASONS)


def _reason_of(error: Any) -> str:
    kind: str = error["type"]
    if kind in _CUSTOM:
        return kind
    if kind == "missing":
        return "missing_field"
    if kind == "extra_forbidden":
        return "unknown_field"
    if kind == "string_pattern_mismatch":
        return "bad_id"
    if kind in _RANGE_ERRORS:
        return "out_of_range"
    if kind == "int_type":
        value = error.get("input")
        # orjson turns integers beyond 64 bits into floats: that is a huge number, not a fraction.
        if isinstance(value, float) and value.is_integer() and abs(value) > QTY_MAX:
            return "out_of_range"
        return "wrong_type"
    if kind.endswith("_type") or kind.endswith("_parsing") or kind == "int_from_float":
        return "wrong_type"
    if kind.startswith("datetime") or kind.startswith("timezone"):
        return "bad_time"
    return "invalid"


def _describe(error: Any, reason: str) -> str:
    where = ".".join(str(part) for part in error["loc"]) or "event"
    if reason == "out_of_range" and error["type"] == "int_type":
        return f"{where}: {error['input']:.3g} is far outside the allowed range"
    return f"{where}: {error['msg']}"


def parse_event(
    raw: bytes | bytearray | memoryview | None,
    topic: str | None = None,
    max_bytes: int = MAX_EVENT_BYTES,
) -> Event | ParseError:
    """Decode and validate one message.

    ``topic`` is the *base* name of the topic the message came from (``"inventory.orders"``,
    see ``TOPIC_OF_TYPE``); when given, an event of another topic's type is ``wrong_topic``.
    Never raises for bad input: returns a ``ParseError`` instead.
    """
    if raw is None or len(raw) == 0:
        return ParseError("empty", "the message has no value")
    if len(raw) > max_bytes:
        return ParseError("too_large", f"{len(raw)} bytes; at most {max_bytes} allowed")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return ParseError("bad_json", str(exc)[:200])
    if not isinstance(data, dict):
        return ParseError("not_object", f"the message is a JSON {type(data).__name__}, not an object")
    kind = data.get("type")
    event_id = data.get("event_id")
    event_id = event_id if is_valid_id("event_id", event_id) else None
    if kind is None:
        return ParseError("missing_field", "type: field required", None, event_id)
    if not isinstance(kind, str):
        return ParseError("wrong_type", "type: must be a string", None, event_id)
    model = MODEL_OF_TYPE.get(kind)
    if model is None:
        shown = kind[:60]
        return ParseError(
            "unknown_type", f"type {shown!r} is not one of {', '.join(EVENT_TYPES)}", None, event_id
        )
    if topic is not None and TOPIC_OF_TYPE[kind] != topic:
        return ParseError(
            "wrong_topic", f"{kind} belongs on {TOPIC_OF_TYPE[kind]}, not on {topic}", kind, event_id
        )
    try:
        return model.model_validate(data)  # type: ignore[return-value]  # one of the Event members
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        reason = _reason_of(first)
        return ParseError(reason, _describe(first, reason)[:300], kind, event_id)


def event_to_json(event: EventBase) -> bytes:
    """The wire form of an event (the inverse of ``parse_event``); absent optional fields are left out."""
    return orjson.dumps(event.model_dump(mode="json", exclude_none=True))
