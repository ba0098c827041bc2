"""The reservation service's values: what a caller asks (``LineRequest``) and what it gets
back (``Reservation`` or ``Refusal``, together ``Result``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LineRequest:
    """One requested line: ``location`` None means any location."""

    sku: str
    qty: int
    location: str | None = None


@dataclass(frozen=True)
class Allocation:
    """Where units of a line come from: kind ``oh`` (on hand at ``location``), ``lot`` (inbound lot
    ``ref``), ``bo`` (backordered) or ``short`` (lost its supply, at risk)."""

    kind: str
    ref: str
    location: str
    qty: int


@dataclass(frozen=True)
class ReservedLine:
    """One SKU line of a reservation as the store holds it (``location`` None = any)."""

    sku: str
    qty: int
    location: str | None
    state: str
    expires_ms: int
    promised_ms: int
    atp_after: int
    allocations: list[Allocation] = field(default_factory=list)

    @classmethod
    def from_wire(cls, line: dict[str, Any]) -> ReservedLine:
        """From the store's line dict (docs/semantics.md "line")."""
        return cls(
            sku=line["sku"],
            qty=line["qty"],
            location=line["loc"] or None,
            state=line["state"],
            expires_ms=line["expires_ms"],
            promised_ms=line["promised_ms"],
            atp_after=line["atp_after"],
            allocations=[Allocation(k, r, loc, q) for k, r, loc, q in line["alloc"]],
        )


@dataclass(frozen=True)
class Reservation:
    """A reservation that exists. ``status`` ok (changed now) or duplicate (the same call again,
    or nothing left to change). ``state`` is the lines' common state (``partial`` if they differ);
    ``promised_ms`` the latest promised date; ``expires_ms`` the earliest expiry of a held line
    (0 = none); ``atp_after`` the ATP of each line's SKU (at its location) after the hold."""

    status: str
    reservation_id: str
    state: str
    lines: list[ReservedLine]
    promised_ms: int
    expires_ms: int
    atp_after: dict[str, int]
    ok: bool = True


@dataclass(frozen=True)
class Refusal:
    """A call that did not succeed: ``status`` refused / conflict / not_found, with a reason.

    For a refused hold, ``reason`` is one of ``engine.store.wire.HOLD_REFUSALS``,
    ``sku`` names the line that could not be served and ``available`` gives what each line's SKU
    could take in stock (the refused line: exactly what the script saw; the others: their ATP
    after the rollback); a guard's ``limit`` and ``used`` are what the script saw too. For a lifecycle call, ``reason`` is the state that forbids it and ``lines`` the
    reservation as it is. A lifecycle call on several SKUs is all or nothing; the one exception
    is a release racing a shipment of another line: the lines it did release stay released and
    are in ``changed`` (so they can be published), else ``changed`` is None.
    """

    status: str
    reservation_id: str
    reason: str
    sku: str | None = None
    available: dict[str, int] = field(default_factory=dict)
    lines: list[ReservedLine] = field(default_factory=list)
    changed: Reservation | None = None
    ok: bool = False
    limit: int | None = None  # the broken guard's limit (order_cap, customer_limit, channel_quota)
    used: int | None = None  # units already counted against a customer_limit or channel_quota


Result = Reservation | Refusal
