"""What the HTTP client returns: frozen dataclasses built from the API's JSON bodies.

The shapes are the API's own (``ReservationOut``, ``AtpOut``, ``RefusedOut`` in
``engine/api/models.py``, documented in the OpenAPI document): times are integer milliseconds
since the epoch (``*_ms``, 0 = none) with their RFC 3339 twin (``*_at``, None = none). Members a
newer server adds are ignored, so an older client keeps working; a member these types need
and the body lacks makes the call raise ``UnexpectedReply``.

``Reservation`` and ``Refused`` both have ``ok`` (True / False), so the result of ``hold`` can
be branched on without ``isinstance``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


@dataclass(frozen=True)
class Allocation:
    """Where units of a line come from: ``kind`` ``oh`` (on hand at ``location``), ``lot``
    (inbound lot ``ref``), ``bo`` (backorder) or ``short`` (lost its supply, awaiting
    re-allocation)."""

    kind: str
    ref: str
    location: str
    qty: int

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Allocation:
        return cls(str(body["kind"]), str(body["ref"]), str(body["location"]), int(body["qty"]))


@dataclass(frozen=True)
class ReservationLine:
    """One SKU line of a reservation: ``location`` None = any location; ``atp_after`` is the
    ATP of the line's location (or the SKU) right after the hold."""

    sku: str
    qty: int
    location: str | None
    state: str
    expires_ms: int
    expires_at: str | None
    promised_ms: int
    promised_at: str | None
    atp_after: int
    allocations: tuple[Allocation, ...]

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ReservationLine:
        return cls(
            sku=str(body["sku"]),
            qty=int(body["qty"]),
            location=_opt_str(body.get("location")),
            state=str(body["state"]),
            expires_ms=int(body["expires_ms"]),
            expires_at=_opt_str(body.get("expires_at")),
            promised_ms=int(body["promised_ms"]),
            promised_at=_opt_str(body.get("promised_at")),
            atp_after=int(body["atp_after"]),
            allocations=tuple(Allocation.from_body(a) for a in body["allocations"]),
        )


@dataclass(frozen=True)
class Reservation:
    """A reservation as the API answered it.

    ``state`` is held / committed / shipped / released / expired (partial if the lines
    differ); ``promised_ms`` the latest promised date over the lines; ``expires_ms`` the
    earliest expiry of a held line (0 = none); lines ordered by SKU. ``replayed`` is True when
    the API answered a hold as a repeat of an earlier one with the same ``Idempotency-Key``; it
    takes no part in equality, so a replayed reservation equals the original.
    """

    reservation_id: str
    state: str
    promised_ms: int
    promised_at: str | None
    expires_ms: int
    expires_at: str | None
    lines: tuple[ReservationLine, ...]
    replayed: bool = field(default=False, compare=False)

    @property
    def ok(self) -> bool:
        """True: the reservation exists (see ``Refused.ok``)."""
        return True

    @classmethod
    def from_body(cls, body: Mapping[str, Any], *, replayed: bool = False) -> Reservation:
        return cls(
            reservation_id=str(body["reservation_id"]),
            state=str(body["state"]),
            promised_ms=int(body["promised_ms"]),
            promised_at=_opt_str(body.get("promised_at")),
            expires_ms=int(body["expires_ms"]),
            expires_at=_opt_str(body.get("expires_at")),
            lines=tuple(ReservationLine.from_body(line) for line in body["lines"]),
            replayed=replayed,
        )


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True)
class RefusedLine:
    """A line of a refused hold. ``available``: the units it could have taken (the stock,
    bounded by the guard that refused it); ``stock``: the units its SKU could promise, guards
    aside; ``requested``: the units asked of its SKU by all the lines (lines of one SKU are
    held as one and refused together); ``reason``: why it was refused, None when it was not the
    line refused. ``requested`` and ``stock`` are None from a server that does not send them."""

    sku: str
    qty: int
    location: str | None
    available: int
    reason: str | None
    requested: int | None = None
    stock: int | None = None

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> RefusedLine:
        return cls(
            sku=str(body["sku"]),
            qty=int(body["qty"]),
            location=_opt_str(body.get("location")),
            available=int(body["available"]),
            reason=_opt_str(body.get("reason")),
            requested=_opt_int(body.get("requested")),
            stock=_opt_int(body.get("stock")),
        )


@dataclass(frozen=True)
class Guard:
    """The flash-sale guard that refused a hold: its ``name`` (order_cap / customer_limit /
    channel_quota), the policy's ``limit``, the units already ``used`` by the customer or
    channel (None for order_cap) and the ``room`` it still allows."""

    name: str
    limit: int
    used: int | None
    room: int

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Guard:
        return cls(str(body["name"]), int(body["limit"]), _opt_int(body.get("used")), int(body["room"]))


@dataclass(frozen=True)
class Refused:
    """A hold refused whole (409 ``refused``): nothing is held, and a retry with the same
    reservation id is evaluated afresh.

    ``reason`` is insufficient / order_cap / customer_limit / channel_quota; ``sku`` the SKU
    that could not be served; ``guard`` the guard that refused (None for insufficient stock);
    ``body`` the whole reply, for members a newer server adds."""

    reservation_id: str
    reason: str
    detail: str
    lines: tuple[RefusedLine, ...]
    sku: str | None = None
    guard: Guard | None = None
    body: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def ok(self) -> bool:
        """False: nothing was held (see ``Reservation.ok``)."""
        return False

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Refused:
        guard = body.get("guard")
        return cls(
            reservation_id=str(body["reservation_id"]),
            reason=str(body["reason"]),
            detail=str(body.get("detail") or body.get("title") or ""),
            lines=tuple(RefusedLine.from_body(line) for line in body["lines"]),
            sku=_opt_str(body.get("sku")),
            guard=Guard.from_body(guard) if isinstance(guard, Mapping) else None,
            body=dict(body),
        )


@dataclass(frozen=True)
class LocationFigures:
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
    backordered: int = 0

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> LocationFigures:
        figures = {f.name: int(body[f.name]) for f in fields(cls) if f.name != "backordered"}
        # a server that predates `backordered` says it as bo_alloc
        return cls(**figures, backordered=int(body.get("backordered", figures["bo_alloc"])))


@dataclass(frozen=True)
class Atp:
    """A SKU's position: buckets, ATP (what can be sold), units promisable from on-hand stock
    now, the next promise date, the units of live reservations that lost their supply
    (``oversold``) and the units sold beyond supply under the backorder policy (``backordered``).

    ATP of a location = on_hand + promisable_in_transit − min(safety, on_hand) − (held +
    committed − backordered), negative only when oversold; ``safety`` is the min(safety,
    on_hand) held back. With a ``location`` the figures are that location's; otherwise sums
    over locations, and ``atp`` adds the remaining backorder allowance. ``locations`` has the
    figures of each location. An unknown SKU has ATP 0.
    """

    sku: str
    location: str | None
    on_hand: int
    safety: int
    held: int
    committed: int
    in_transit: int
    promisable_in_transit: int
    atp: int
    promisable_now: int
    next_promise_ms: int
    next_promise_at: str | None
    oversold: int
    locations: Mapping[str, LocationFigures]
    backordered: int = 0

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> Atp:
        return cls(
            sku=str(body["sku"]),
            location=_opt_str(body.get("location")),
            on_hand=int(body["on_hand"]),
            safety=int(body["safety"]),
            held=int(body["held"]),
            committed=int(body["committed"]),
            in_transit=int(body["in_transit"]),
            promisable_in_transit=int(body["promisable_in_transit"]),
            atp=int(body["atp"]),
            promisable_now=int(body["promisable_now"]),
            next_promise_ms=int(body["next_promise_ms"]),
            next_promise_at=_opt_str(body.get("next_promise_at")),
            oversold=int(body["oversold"]),
            backordered=int(body.get("backordered", 0)),
            locations={str(name): LocationFigures.from_body(figs) for name, figs in body["locations"].items()},
        )


HoldResult = Reservation | Refused
