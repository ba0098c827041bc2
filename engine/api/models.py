"""Request and response bodies of the HTTP API (they generate the OpenAPI document).

Requests are strict and closed (``extra="forbid"``): an unknown field, a number where a
string is expected or a string where a number is expected is a 422 with a reason, never a
guess. Identifiers use the patterns of docs/semantics.md (``engine.domain.ids``).

Times are integer milliseconds since the epoch (``*_ms``, 0 = none) with an RFC 3339 twin
(``*_at``, null = none) for people reading the JSON.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.domain.ids import (
    DEFAULT_LOCATION,
    MAX_HOLD_TTL_S,
    MAX_LINES,
    Channel,
    CustomerId,
    Delta,
    EventId,
    Location,
    OnHand,
    Qty,
    Sku,
)
from engine.store.wire import GUARDS, HOLD_REFUSALS

MAX_QUERY_SKUS = 1000

TtlSeconds = Annotated[int, Field(strict=True, ge=1, le=MAX_HOLD_TTL_S, description="hold lifetime in seconds")]
Reason = Annotated[
    str, Field(strict=True, min_length=1, max_length=200, description="why (damage, shrink, found, cycle_count…)")
]
Ref = Annotated[str, Field(strict=True, min_length=1, max_length=200, description="source document")]


class _Closed(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- ATP -----------------------------------------------------------------------------------


class LocationFigures(BaseModel):
    """The buckets of one location."""

    on_hand: int
    safety: int
    held: int
    committed: int
    in_transit: int
    promisable_in_transit: int
    atp: int
    oh_alloc: int
    bo_alloc: int
    short: int
    backordered: int = Field(description="units sold beyond supply under the backorder policy (= bo_alloc)")


class AtpOut(BaseModel):
    """A SKU's position: buckets, ATP, what can be promised now and the next promise date.

    With a ``location`` the figures are that location's; otherwise sums over locations.
    """

    sku: str
    location: str | None = Field(None, description="the location asked for; null = all locations")
    on_hand: int
    safety: int = Field(description="units held back for safety: per location min(policy safety, on_hand)")
    held: int
    committed: int
    in_transit: int
    promisable_in_transit: int
    atp: int = Field(
        description="what can be sold: per location on_hand + promisable_in_transit − min(safety, on_hand) − "
        "(held + committed − backordered); for the SKU the sum plus the remaining backorder allowance. "
        "Negative only when oversold"
    )
    promisable_now: int = Field(description="units promisable from on-hand stock today")
    next_promise_ms: int = Field(description="earliest ETA of an inbound lot with promisable units; 0 = none")
    next_promise_at: str | None = None
    oversold: int = Field(description="units of live reservations that lost their supply")
    backordered: int = Field(description="units sold beyond supply under the backorder policy")
    locations: dict[str, LocationFigures]


class AtpQueryIn(_Closed):
    """Positions of up to 1000 SKUs in one call."""

    skus: list[Sku] = Field(min_length=1, max_length=MAX_QUERY_SKUS)
    location: Location | None = None


class AtpQueryOut(BaseModel):
    """One position per SKU asked, in the order asked (duplicates answered once)."""

    positions: list[AtpOut]


# --- reservations ----------------------------------------------------------------------------


class LineIn(_Closed):
    """One line: ``qty`` units of ``sku``, at ``location`` or (absent) at any location."""

    sku: Sku
    qty: Qty
    location: Location | None = None


class ReservationIn(_Closed):
    """A checkout's hold. The ``Idempotency-Key`` header is its reservation id."""

    lines: list[LineIn] = Field(min_length=1, max_length=MAX_LINES)
    ttl_seconds: TtlSeconds | None = Field(
        None, description="default: the server's default_hold_ttl_s; the hold ends at the whole second after it"
    )
    channel: Channel | None = None
    customer_id: CustomerId | None = None


class ExtendIn(_Closed):
    """Keep a hold alive for ``ttl_seconds`` more from now (until the whole second after)."""

    ttl_seconds: TtlSeconds


class AllocationOut(BaseModel):
    """Where units of a line come from: on-hand (``oh``), an inbound lot (``lot``, ref = lot id),
    backorder (``bo``) or lost supply awaiting re-allocation (``short``)."""

    kind: Literal["oh", "lot", "bo", "short"]
    ref: str
    location: str
    qty: int


class LineOut(BaseModel):
    """One SKU line of a reservation as the store holds it."""

    sku: str
    qty: int
    location: str | None = Field(description="null = any location")
    state: str
    expires_ms: int = Field(description="when a held line ends: a whole second; 0 = not held")
    expires_at: str | None
    promised_ms: int
    promised_at: str | None
    atp_after: int = Field(description="ATP of the line's location (or the SKU) right after the hold")
    allocations: list[AllocationOut]


class ReservationOut(BaseModel):
    """A reservation: its state, lines, allocations and promised dates."""

    reservation_id: str
    state: str = Field(description="held / committed / shipped / released / expired; partial if lines differ")
    promised_ms: int = Field(description="latest promised date over the lines")
    promised_at: str | None
    expires_ms: int = Field(description="earliest expiry of a held line; 0 = none")
    expires_at: str | None
    lines: list[LineOut]


class RefusedLine(BaseModel):
    """A line of a refused reservation and what it could have had."""

    sku: str
    qty: int
    location: str | None
    requested: int = Field(description="units asked of this SKU by all the reservation's lines: "
                           "lines of one SKU are held as one and refused together")
    available: int = Field(description="units of this SKU the reservation could have taken: the "
                           "stock, bounded by the guard that refused it")
    stock: int = Field(description="units in stock this SKU could promise, guards aside")
    reason: str | None = Field(description="why this line was refused; null = it was not the refused line")


class GuardOut(BaseModel):
    """The flash-sale guard that refused a hold (docs/semantics.md, "Policy")."""

    name: Literal[GUARDS]  # type: ignore[valid-type]  # Literal[("a", "b")] is Literal["a", "b"]
    limit: int = Field(description="the policy's limit: units per reservation, customer or channel")
    used: int | None = Field(description="units already held or bought by the customer or channel; "
                             "null for order_cap")
    room: int = Field(description="units the guard still allows")


class ProblemOut(BaseModel):
    """Every error is an RFC 9457 problem (``application/problem+json``) with the code's own
    members beside these."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="urn:atp-engine:problem:<error>")
    title: str = Field(description="the error code's fixed summary")
    status: int = Field(description="the HTTP status")
    error: str = Field(description="the stable, machine-readable error code")
    detail: Any = Field(description="this occurrence, for humans")


class RefusedOut(ProblemOut):
    """409: the reservation was refused whole; nothing is held."""

    error: Literal["refused"]
    detail: str
    reservation_id: str
    reason: str = Field(description=" / ".join(HOLD_REFUSALS))
    sku: str | None = Field(description="the SKU that could not be served")
    guard: GuardOut | None = Field(description="the guard that refused; null for insufficient stock")
    lines: list[RefusedLine]


class NotAllowedOut(ProblemOut):
    """409: the operation is not possible in the reservation's current state."""

    error: Literal["not_allowed"]
    detail: str
    reservation_id: str
    state: str
    reservation: ReservationOut | None = None


# --- ops --------------------------------------------------------------------------------------


class AdjustmentIn(_Closed):
    """A stock adjustment (damage, shrink, found…), published as ``stock.adjusted``."""

    sku: Sku
    location: Location = DEFAULT_LOCATION
    delta: Delta
    reason: Reason
    ref: Ref | None = None
    event_id: EventId | None = Field(None, description="your dedupe key; generated when absent")


class CountIn(_Closed):
    """A physical count, published as ``stock.counted``."""

    sku: Sku
    location: Location = DEFAULT_LOCATION
    on_hand: OnHand
    reason: Reason | None = None
    ref: Ref | None = None
    event_id: EventId | None = Field(None, description="your dedupe key; generated when absent")


class AcceptedOut(BaseModel):
    """202: the event is in the log; the flow applies it."""

    event_id: str
    type: str
    topic: str


# --- errors (documented in OpenAPI) ------------------------------------------------------------


class ErrorOut(ProblemOut):
    """An error: a stable code, a human detail, and code-specific members."""


class ReasonOut(BaseModel):
    field: str
    reason: str
    message: str


class InvalidOut(ProblemOut):
    """422: what is wrong, field by field."""

    error: Literal["invalid_request", "idempotency_conflict"]
    detail: str
    reasons: list[ReasonOut] = []


class HealthOut(BaseModel):
    status: str
    checks: dict[str, bool] = {}
    reason: str | None = None


# --- listing reservations -------------------------------------------------------------------


class ListedLineOut(LineOut):
    """A line as a listing shows it: whom and which channel it counts against, too."""

    customer_id: str | None = Field(description="the customer the line counts against; null = none")
    channel: str | None = Field(description="the sales channel the line counts against; null = none")


class ListedReservationOut(ReservationOut):
    """A reservation in a listing. With ``sku`` in the query only its line of that SKU, and
    ``state`` is that line's (read the whole reservation with ``GET /v1/reservations/{rid}``)."""

    lines: list[ListedLineOut]


class ReservationPageOut(BaseModel):
    """One page of a listing. It may hold fewer items than ``limit``, even none, while
    ``next_cursor`` is not null: each page does a bounded amount of work."""

    items: list[ListedReservationOut]
    next_cursor: str | None = Field(
        description="pass it as `cursor` (with the same filters) for the next page; null = the listing is complete"
    )


class JournalEntryOut(BaseModel):
    """One command applied to a SKU."""

    n: int = Field(description="its number among the SKU's applied commands")
    at_ms: int = Field(description="when it was applied (Redis time)")
    at: str | None
    cmd: str = Field(description="the store command: receipt, adjust, count, order_placed, policy, …")
    qty: int | None = Field(description="the quantity it named (qty, delta or the counted on_hand)")
    reason: str
    ref: str
    event_id: str = Field(description="the input event's id; '' for an operator command")


class JournalPageOut(BaseModel):
    """A page of a SKU's journal, newest first."""

    sku: str
    entries: list[JournalEntryOut]
    next_before: int | None = Field(description="pass as before= for the next page; null at the end")
