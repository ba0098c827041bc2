"""The output messages: ``Alert`` (topic ``inventory.alerts``) and ``ReplenishmentTrigger``
(topic ``inventory.replenishment``).

Both are JSON objects serialised with orjson, keyed by SKU (``message_key``), with a
``schema_version`` and a deterministic id, so a consumer can dedupe redelivered or replayed
messages: an alert's identity is ``(alert_id, status, revision)``, a trigger's is ``trigger_id``.
``model_json_schema()`` of each model is the published JSON Schema.

Conventions shared with the wire shapes of docs/semantics.md: no nulls — an absent location,
subject or supplier is ``""``, an absent time is ``0`` / ``""``.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Literal, Self, get_args

import orjson
from pydantic import BaseModel, ConfigDict, Field

from engine.domain.schemas import register_schema

SCHEMA_VERSION = 1
#: Alerts are at version 2: order_unfulfillable became an episode per SKU and location (subject
#: '', values orders / units, the latest orders in reservations), stockout and
#: order_unfulfillable became warnings. Triggers stay at version 1.
ALERT_SCHEMA_VERSION = 2


AlertKind = Literal[
    "low_stock",
    "stockout",
    "oversold",
    "order_unfulfillable",
    "promise_at_risk",
    "promise_slipped",
    "inbound_late",
    "demand_surge",
    "supplier_unreliable",
]
ALERT_KINDS: tuple[str, ...] = get_args(AlertKind)
#: Kinds that are one-shot notices; every other kind has a firing → resolved life.
ONE_SHOT_KINDS = frozenset({"promise_slipped"})
STATEFUL_ALERT_KINDS = frozenset(ALERT_KINDS) - ONE_SHOT_KINDS

Severity = Literal["info", "warning", "critical"]
AlertStatus = Literal["firing", "resolved"]
ALERT_STATUSES: tuple[str, ...] = get_args(AlertStatus)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SHA1_HEX = r"^[0-9a-f]{40}$"


def rfc3339(ms: int) -> str:
    """Milliseconds since the epoch as RFC 3339 UTC with milliseconds, e.g. ``2025-01-01T08:00:00.000Z``."""
    moment = _EPOCH + timedelta(milliseconds=ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def stable_id(*parts: object) -> str:
    """sha1 hex of the parts joined by ``|``: the same inputs give the same id in every run."""
    return hashlib.sha1("|".join(str(p) for p in parts).encode()).hexdigest()


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_json(self) -> bytes:
        """The message value (UTF-8 JSON bytes)."""
        return orjson.dumps(self.model_dump(mode="json"))

    @classmethod
    def from_json(cls, data: bytes | str) -> Self:
        """Parse a message value (raises ``pydantic.ValidationError`` when it does not match)."""
        return cls.model_validate(orjson.loads(data))


class ReservationImpact(BaseModel):
    """One reservation named by a promise alert."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rid: str = Field(description="reservation id")
    short: int = Field(0, ge=0, description="units of the reservation left without supply (promise_at_risk)")
    old_promised_ms: int = Field(0, ge=0, description="promised date before the change (promise_slipped)")
    new_promised_ms: int = Field(0, ge=0, description="promised date after the change (promise_slipped)")
    old_promised_at: str = Field("", description="old_promised_ms as RFC 3339, '' when 0")
    new_promised_at: str = Field("", description="new_promised_ms as RFC 3339, '' when 0")


class Alert(_Message):
    """One alert transition. A condition fires once when it becomes true and resolves once when it
    is clearly false again (hysteresis); the one-shot kind ``promise_slipped`` only fires."""

    schema_version: Literal[2] = ALERT_SCHEMA_VERSION
    alert_id: str = Field(
        pattern=_SHA1_HEX,
        description="sha1 of kind|sku|location|subject|episode (supplier alerts: kind|||supplier|episode; "
        "one-shot alerts: the triggering event id in place of the episode); shared by the firing "
        "and the resolved message of one episode",
    )
    kind: AlertKind
    status: AlertStatus
    severity: Severity
    sku: str = Field(description="the SKU (for supplier_unreliable: the SKU whose receipt moved the score)")
    location: str = Field("", description="'' when the alert is about the whole SKU or a supplier")
    subject: str = Field(
        "",
        description="what the alert is about beyond the position: the inbound lot id (inbound_late), "
        "the supplier id (supplier_unreliable); '' otherwise",
    )
    episode: int = Field(ge=1, description="1 for the first firing of this condition, +1 per later firing")
    revision: int = Field(
        0,
        ge=0,
        description="0, or n > 0 for the n-th follow-up firing message of the same episode "
        "(promise_at_risk when more reservations become at risk; order_unfulfillable with its totals "
        "while refusals go on)",
    )
    occurred_at: str = Field(description="event time (or tick / re-check time) of the transition, RFC 3339")
    occurred_ms: int = Field(ge=0, description="occurred_at in milliseconds since the epoch")
    event_id: str = Field(
        "",
        description="the input event that caused it: a stream event, or the reservation event "
        "(res:<reservation_id>:<change>) of a change made through the API; '' for a periodic tick or "
        "re-check",
    )
    supplier: str = ""
    summary: str = Field(description="one human-readable sentence")
    values: dict[str, int | float] = Field(
        default_factory=dict, description="the numbers that explain the alert (ATP, threshold, rates, …)"
    )
    reservations: list[ReservationImpact] = Field(
        default_factory=list,
        description="affected reservations, newest first (promise alerts; order_unfulfillable: the latest "
        "refused orders, at most 20)",
    )

    def message_key(self) -> bytes:
        """The Kafka key: the SKU."""
        return self.sku.encode()


class ReplenishmentTrigger(_Message):
    """A reorder recommendation for one (SKU, location): IP ≤ ROP, order ``qty``.

    ``ROP = d·L + z·σ·√L``, ``S = ROP + d·R``, ``qty = ceil((S − IP) / pack) · pack``.
    """

    schema_version: Literal[1] = SCHEMA_VERSION
    trigger_id: str = Field(pattern=_SHA1_HEX, description="sha1 of replenishment|sku|location|episode")
    sku: str
    location: str
    episode: int = Field(ge=1, description="1 for the first trigger of this position, +1 per later one")
    occurred_at: str = Field(description="event time of the observation that raised it, RFC 3339")
    occurred_ms: int = Field(ge=0)
    event_id: str = Field(
        "",
        description="the input event that raised it: a stream event, or the reservation event "
        "(res:<reservation_id>:<change>) of a change made through the API; '' for a periodic tick or "
        "re-check",
    )
    qty: int = Field(ge=1, description="units to order: S − IP rounded up to the pack size")
    pack_size: int = Field(ge=1)
    demand_per_day: float = Field(ge=0, description="d: EWMA of daily demand")
    demand_sigma: float = Field(ge=0, description="σ: EWMA spread of daily demand")
    lead_time_days: float = Field(gt=0, description="L")
    lead_time_source: Literal["policy", "learned", "default"]
    service_level: float = Field(gt=0, lt=1)
    z: float = Field(description="standard normal quantile of the service level")
    review_period_days: float = Field(gt=0, description="R")
    reorder_point: float = Field(description="ROP = d·L + z·σ·√L")
    order_up_to: float = Field(description="S = ROP + d·R")
    inventory_position: int = Field(description="IP = on_hand + in_transit − committed − held")
    on_hand: int
    in_transit: int
    committed: int
    held: int

    def message_key(self) -> bytes:
        """The Kafka key: the SKU."""
        return self.sku.encode()


class DlqValue(BaseModel):
    """The JSON value of a record on ``inventory.dlq``: a message the flow could not use, where
    it came from and why (written by ``connectors.dlq.DlqRecord.to_json``)."""

    model_config = ConfigDict(extra="forbid", title="DLQ record")

    dlq_id: str = Field(description="topic:partition:offset of the bad message (the same on every replay)")
    topic: str
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    timestamp_ms: int = Field(ge=0, description="the bad message's broker timestamp, 0 = none")
    reason: str = Field(description="machine reason, e.g. bad_json, unknown_field, missing_field")
    detail: str = Field(max_length=500, description="for humans: field path and message")
    event_type: str | None = Field(description="the event's type when it could be read")
    event_id: str | None = Field(description="the event's id when it could be read")
    key_b64: str | None = Field(description="the original key, base64")
    original_b64: str | None = Field(description="the original value byte for byte (base64), cut past 512 KiB")
    original_size: int = Field(ge=0, description="bytes of the whole original value")
    original_truncated: bool
    original_sha256: str = Field(pattern="^[0-9a-f]{64}$", description="of the whole original value")


#: The store's entries whose calls change a SKU, so a change record may name them.
ChangeEntry = Literal["hold", "reservation", "apply", "apply_many", "position", "sweep", "publish"]
CHANGE_ENTRIES: tuple[str, ...] = get_args(ChangeEntry)


class ExpiredLine(BaseModel):
    """A line a change record's call expired (its hold ran out, or was reverted to a time past)."""

    model_config = ConfigDict(extra="forbid", title="Expired line")

    rid: str = Field(description="the reservation id")
    qty: int = Field(ge=1)
    location: str = Field(description="'' when the hold named no location")
    expires_ms: int = Field(ge=0, description="when it expired")
    channel: str = Field(description="'' = none")
    customer_id: str = Field(description="'' = none")
    promised_ms: int = Field(ge=0)
    atp_after: int


class ChangeRecordValue(BaseModel):
    """The JSON value of a record on ``inventory.changes`` (key: the SKU): one script call that
    changed the SKU, as the script wrote it to the SKU's log (docs/changelog.md). Replaying a
    SKU's records in ``q`` order on an empty keyspace gives the state the live one had."""

    model_config = ConfigDict(extra="forbid", title="Change record")

    sku: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    q: int = Field(ge=1, description="the SKU's change number: 1, 2, 3, … in the order Redis applied them")
    fn: ChangeEntry = Field(description="the store entry that ran")
    now_ms: int = Field(ge=0, description="the call's time, ms since the epoch")
    args: list[str] = Field(description="the entry's arguments after the SKU and the time")
    stash: list[str] = Field([], description="apply's reply stash keys, without the key prefix")
    expired: list[ExpiredLine] = Field([], description="the lines the call expired (an effect, for consumers)")


register_schema("alert", Alert)
register_schema("replenishment-trigger", ReplenishmentTrigger)
register_schema("dlq-record", DlqValue)
register_schema("change-record", ChangeRecordValue)
