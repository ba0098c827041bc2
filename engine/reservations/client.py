"""The Python client for checkouts: ATP queries and reservations, sync (``AtpClient``) and async
(``AsyncAtpClient``).

A reservation may have several lines; lines of one SKU are summed into one store line. The
logic (``engine.reservations.saga``) is written once; the two clients carry out its I/O, blocking
or awaiting, and coalesce concurrent holds on one SKU (``engine.reservations.coalesce``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from engine.reservations.coalesce import (
    AsyncCoalescer,
    HoldItem,
    HoldOutcome,
    SyncCoalescer,
    _claims_of,
    _outcomes,
    _unclaim,
)
from engine.reservations.saga import _T, Steps, _ClientBase, _ttl_ms
from engine.reservations.types import LineRequest, Result
from engine.store.store import AsyncStore, Clock, Store


def _delete_many(redis: Any, keys: list[str]) -> None:
    # one DEL per key in one pipeline: the keys live in different cluster slots
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.delete(key)
    pipe.execute()


async def _adelete_many(redis: Any, keys: list[str]) -> None:
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.delete(key)
    await pipe.execute()


class AtpClient(_ClientBase):
    """Sync client over ``redis.Redis`` / ``redis.RedisCluster``; thread-safe, and it coalesces
    the holds of concurrent threads on one SKU (``coalesce=False``: one call per hold).

    ``now_ms`` is for tests only (a fixed clock for the scripts, see ``Store``).
    """

    def __init__(self, redis: Any, *, prefix: str = "atp", default_ttl_s: int = 600,
                 coalesce: bool = True, max_batch: int = 256, now_ms: Clock = None) -> None:
        super().__init__(prefix, default_ttl_s, max_batch)
        self.redis = redis
        self.store = Store(redis, prefix, now_ms)
        self._coalescer = SyncCoalescer(self._send, max_batch) if coalesce else None

    # --- ATP

    def atp(self, sku: str, location: str | None = None) -> dict[str, Any]:
        """The SKU's position (semantics.md "position"), of one location or all."""
        return self.store.position(sku, location)

    def atp_many(self, skus: Sequence[str], location: str | None = None) -> dict[str, dict[str, Any]]:
        """Positions of several SKUs in one round trip: sku -> position (in the order asked)."""
        unique = list(dict.fromkeys(skus))
        return dict(zip(unique, self.store.positions(unique, location), strict=True))

    # --- reservations

    def hold(self, reservation_id: str, lines: Sequence[LineRequest | tuple[str, int, str | None]],
             ttl_s: int | None = None, channel: str | None = None,
             customer_id: str | None = None) -> Result:
        """Hold every line or none. Lines are ``LineRequest`` or ``(sku, qty, location|None)``.

        Raises ``ValueError`` for bad ids, quantities or ttl, or lines of one SKU naming different
        locations. Returns a ``Reservation`` (ok / duplicate) or a ``Refusal`` (refused / conflict).
        """
        reqs = self._requests(reservation_id, lines, ttl_s, channel, customer_id)
        return self._drive(self._hold_steps(reservation_id, reqs))

    def confirm(self, reservation_id: str) -> Result:
        """Held → committed on every line."""
        return self._drive(self._each_steps(reservation_id, "confirm"))

    def release(self, reservation_id: str) -> Result:
        """Release every line; units come back exactly once."""
        return self._drive(self._each_steps(reservation_id, "release"))

    def extend(self, reservation_id: str, ttl_s: int) -> Result:
        """Keep a held reservation alive ``ttl_s`` seconds from now."""
        return self._drive(self._each_steps(reservation_id, "extend", _ttl_ms(ttl_s)))

    def get_reservation(self, reservation_id: str) -> Result:
        """The reservation (status ok) or a ``Refusal`` with status not_found."""
        return self._drive(self._each_steps(reservation_id, "get_line"))

    def close(self) -> None:
        """Nothing to stop (the redis client stays the caller's)."""

    # --- I/O

    def _drive(self, steps: Steps[_T]) -> _T:
        try:
            effect = next(steps)
            while True:
                effect = steps.send(self._do(effect))
        except StopIteration as done:
            return done.value

    def _do(self, effect: tuple[Any, ...]) -> Any:
        kind = effect[0]
        if kind == "hold":
            return self._hold_item(effect[1], effect[2])
        if kind == "store":
            return getattr(self.store, effect[1])(*effect[2:])
        if kind == "get":
            return self.redis.get(effect[1])
        if kind == "set":
            return self.redis.set(effect[1], effect[2])
        if kind == "set_nx":
            return self.redis.set(effect[1], effect[2], nx=True)
        if kind == "delete":
            return self.redis.delete(effect[1])
        time.sleep(effect[1])  # "sleep"
        return None

    def _send(self, sku: str, items: list[HoldItem]) -> list[HoldOutcome]:
        """One batch: claim the index keys and hold, in one round trip; unclaim the refused."""
        created, replies = self.store.hold_batch_claiming(sku, [it.req for it in items], _claims_of(items))
        outcomes = _outcomes(items, created, replies)
        stale = _unclaim(items, outcomes)
        if stale:
            _delete_many(self.redis, stale)
        return outcomes

    def _hold_item(self, sku: str, item: HoldItem) -> HoldOutcome:
        if self._coalescer is not None:
            return self._coalescer.submit(sku, item)
        return self._send(sku, [item])[0]


class AsyncAtpClient(_ClientBase):
    """Async client over ``redis.asyncio.Redis`` / ``RedisCluster``; same methods as ``AtpClient``,
    coalescing the holds of concurrent tasks on one SKU. Use it from one event loop."""

    def __init__(self, redis: Any, *, prefix: str = "atp", default_ttl_s: int = 600,
                 coalesce: bool = True, max_batch: int = 256, now_ms: Clock = None) -> None:
        super().__init__(prefix, default_ttl_s, max_batch)
        self.redis = redis
        self.store = AsyncStore(redis, prefix, now_ms)
        self._coalescer: AsyncCoalescer[HoldItem, HoldOutcome] | None = (
            AsyncCoalescer(self._send, max_batch) if coalesce else None)

    async def atp(self, sku: str, location: str | None = None) -> dict[str, Any]:
        """See ``AtpClient.atp``."""
        return await self.store.position(sku, location)

    async def atp_many(self, skus: Sequence[str], location: str | None = None) -> dict[str, dict[str, Any]]:
        """See ``AtpClient.atp_many``."""
        unique = list(dict.fromkeys(skus))
        return dict(zip(unique, await self.store.positions(unique, location), strict=True))

    async def hold(self, reservation_id: str, lines: Sequence[LineRequest | tuple[str, int, str | None]],
                   ttl_s: int | None = None, channel: str | None = None,
                   customer_id: str | None = None) -> Result:
        """See ``AtpClient.hold``."""
        reqs = self._requests(reservation_id, lines, ttl_s, channel, customer_id)
        await self.store.ready()
        return await self._drive(self._hold_steps(reservation_id, reqs))

    async def confirm(self, reservation_id: str) -> Result:
        """See ``AtpClient.confirm``."""
        return await self._each(reservation_id, "confirm")

    async def release(self, reservation_id: str) -> Result:
        """See ``AtpClient.release``."""
        return await self._each(reservation_id, "release")

    async def extend(self, reservation_id: str, ttl_s: int) -> Result:
        """See ``AtpClient.extend``."""
        return await self._each(reservation_id, "extend", _ttl_ms(ttl_s))

    async def get_reservation(self, reservation_id: str) -> Result:
        """See ``AtpClient.get_reservation``."""
        return await self._each(reservation_id, "get_line")

    async def aclose(self) -> None:
        """Nothing to stop (the redis client stays the caller's)."""

    # --- I/O

    async def _each(self, rid: str, op: str, *args: int) -> Result:
        await self.store.ready()
        return await self._drive(self._each_steps(rid, op, *args))

    async def _drive(self, steps: Steps[_T]) -> _T:
        try:
            effect = next(steps)
            while True:
                effect = steps.send(await self._do(effect))
        except StopIteration as done:
            return done.value

    async def _do(self, effect: tuple[Any, ...]) -> Any:
        kind = effect[0]
        if kind == "hold":
            return await self._hold_item(effect[1], effect[2])
        if kind == "store":
            return await getattr(self.store, effect[1])(*effect[2:])
        if kind == "get":
            return await self.redis.get(effect[1])
        if kind == "set":
            return await self.redis.set(effect[1], effect[2])
        if kind == "set_nx":
            return await self.redis.set(effect[1], effect[2], nx=True)
        if kind == "delete":
            return await self.redis.delete(effect[1])
        await asyncio.sleep(effect[1])  # "sleep"
        return None

    async def _send(self, sku: str, items: list[HoldItem]) -> list[HoldOutcome]:
        created, replies = await self.store.hold_batch_claiming(sku, [it.req for it in items], _claims_of(items))
        outcomes = _outcomes(items, created, replies)
        stale = _unclaim(items, outcomes)
        if stale:
            await _adelete_many(self.redis, stale)
        return outcomes

    async def _hold_item(self, sku: str, item: HoldItem) -> HoldOutcome:
        if self._coalescer is not None:
            return await self._coalescer.submit(sku, item)
        return (await self._send(sku, [item]))[0]
