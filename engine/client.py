"""The Python client for checkouts: ATP queries and reservations, sync (``AtpClient``) and async
(``AsyncAtpClient``).

A reservation may have several lines. Lines of one SKU are summed into one store line; a
reservation of one SKU is one atomic script call; across SKUs it is a saga (hold line by line in
sorted SKU order, roll back the held lines on the first refusal), so a refused reservation leaves
no trace. ``reservation_id`` is the idempotency key.

Concurrent single-SKU holds on the same SKU are coalesced into one ``hold_batch`` script call
(DESIGN §3); each reservation in a batch is still all-or-nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

NotImplementedYet = NotImplementedError


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
    """One SKU line of a reservation as the store holds it."""

    sku: str
    qty: int
    location: str | None
    state: str
    expires_ms: int
    promised_ms: int
    atp_after: int
    allocations: list[Allocation] = field(default_factory=list)


@dataclass(frozen=True)
class Reservation:
    """A reservation that exists: ``status`` ok (done now) or duplicate (the same call again)."""

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

    For a refused hold, ``sku`` names the line that could not be served and ``available`` gives
    what each line's SKU could still take (the ATP that was available to it).
    """

    status: str
    reservation_id: str
    reason: str
    sku: str | None = None
    available: dict[str, int] = field(default_factory=dict)
    lines: list[ReservedLine] = field(default_factory=list)
    ok: bool = False


Result = Reservation | Refusal


class AtpClient:
    """Sync client over ``redis.Redis`` / ``redis.RedisCluster`` (thread-safe; coalesces holds
    of concurrent threads on one SKU).

    ``now_ms`` is for tests only (a fixed clock for the scripts).
    """

    def __init__(self, redis: Any, *, prefix: str = "atp", default_ttl_s: int = 600,
                 coalesce: bool = True, max_batch: int = 256, now_ms: Any = None) -> None:
        raise NotImplementedYet

    def atp(self, sku: str, location: str | None = None) -> dict[str, Any]:
        """The SKU's position (semantics.md "position"), of one location or all."""
        raise NotImplementedYet

    def atp_many(self, skus: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Positions of several SKUs in one round trip: sku -> position."""
        raise NotImplementedYet

    def hold(self, reservation_id: str, lines: Sequence[LineRequest | tuple[str, int, str | None]],
             ttl_s: int | None = None, channel: str | None = None,
             customer_id: str | None = None) -> Result:
        """Hold every line or none. Lines are ``LineRequest`` or ``(sku, qty, location|None)``.

        Raises ``ValueError`` for bad ids or quantities, or lines of one SKU naming different
        locations. Returns a ``Reservation`` (ok / duplicate) or a ``Refusal`` (refused / conflict).
        """
        raise NotImplementedYet

    def confirm(self, reservation_id: str) -> Result:
        """Held → committed on every line."""
        raise NotImplementedYet

    def release(self, reservation_id: str) -> Result:
        """Release every line; units come back exactly once."""
        raise NotImplementedYet

    def extend(self, reservation_id: str, ttl_s: int) -> Result:
        """Keep a held reservation alive ``ttl_s`` seconds from now."""
        raise NotImplementedYet

    def get_reservation(self, reservation_id: str) -> Result:
        """The reservation (status ok) or a ``Refusal`` with status not_found."""
        raise NotImplementedYet

    def close(self) -> None:
        """Stop the coalescing machinery (the redis client stays the caller's)."""


class AsyncAtpClient:
    """Async client over ``redis.asyncio.Redis`` / ``RedisCluster``; same methods as ``AtpClient``,
    coalescing concurrent tasks' holds on one SKU."""

    def __init__(self, redis: Any, *, prefix: str = "atp", default_ttl_s: int = 600,
                 coalesce: bool = True, max_batch: int = 256, now_ms: Any = None) -> None:
        raise NotImplementedYet

    async def atp(self, sku: str, location: str | None = None) -> dict[str, Any]:
        """See ``AtpClient.atp``."""
        raise NotImplementedYet

    async def atp_many(self, skus: Sequence[str]) -> dict[str, dict[str, Any]]:
        """See ``AtpClient.atp_many``."""
        raise NotImplementedYet

    async def hold(self, reservation_id: str, lines: Sequence[LineRequest | tuple[str, int, str | None]],
                   ttl_s: int | None = None, channel: str | None = None,
                   customer_id: str | None = None) -> Result:
        """See ``AtpClient.hold``."""
        raise NotImplementedYet

    async def confirm(self, reservation_id: str) -> Result:
        """See ``AtpClient.confirm``."""
        raise NotImplementedYet

    async def release(self, reservation_id: str) -> Result:
        """See ``AtpClient.release``."""
        raise NotImplementedYet

    async def extend(self, reservation_id: str, ttl_s: int) -> Result:
        """See ``AtpClient.extend``."""
        raise NotImplementedYet

    async def get_reservation(self, reservation_id: str) -> Result:
        """See ``AtpClient.get_reservation``."""
        raise NotImplementedYet
