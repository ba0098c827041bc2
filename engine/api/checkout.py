"""The checkout calls over the app's state, as plain functions: hold, confirm / release / extend,
read a reservation, the ATP of one SKU.

The FastAPI routes and the hot path (``engine.api.hot_path``) both call these with inputs
already validated, so a request gets the same reply whichever of the two serves it. Each
returns the reply or raises ``ApiError``; Redis and connection errors propagate to the
caller's error mapping (``engine.api.errors``).

``state`` is the app's ``app.state``: ``client`` (an ``AsyncAtpClient``) and ``events`` (an
``EventKeeper``), through which a change's reservation event goes into the change log before the
answer (``_publish``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from engine import metrics
from engine.api.errors import ApiError, OrjsonResponse
from engine.api.models import ReservationIn
from engine.observability.api import note_hold, note_lifecycle
from engine.reservations.coalesce import AsyncCoalescer
from engine.reservations.events import publish_args, published_change
from engine.reservations.types import LineRequest, Refusal, Reservation, Result
from engine.reservations.views import position_view, refusal_view, reservation_body, reservation_view
from engine.store.store import AsyncStore

REPLAYED_HEADER = "Idempotent-Replayed"

Op = Literal["confirm", "release", "extend"]

_REPLAYED = {REPLAYED_HEADER: "true"}


#: ``publish`` calls one app makes at once. The async Redis Cluster client fails a call
#: (MaxConnectionsError) rather than wait once a node's 100 connections are in use: a burst of
#: answers waits here instead.
PUBLISH_CONCURRENCY = 32
#: Events one ``publish`` call keeps at most: the call's script time grows with its events.
PUBLISH_BATCH = 64


class EventKeeper:
    """Keeps the reservation events of the app's answers in the change log
    (``AsyncStore.publish_many``): the events waiting for one SKU go in one call (up to
    ``PUBLISH_BATCH``), as holds are coalesced, and at most ``PUBLISH_CONCURRENCY`` calls are in
    flight."""

    def __init__(self, store: AsyncStore, concurrency: int = PUBLISH_CONCURRENCY) -> None:
        self._store = store
        self._gate = asyncio.Semaphore(concurrency)
        self._batches: AsyncCoalescer[tuple[str, bytes, str], bool] = AsyncCoalescer(self._send, PUBLISH_BATCH)

    async def keep(self, sku: str, rid: str, event: bytes, change: str) -> bool:
        """Once Redis has it: whether the event was kept now (False: kept before)."""
        return await self._batches.submit(sku, (rid, event, change))

    async def _send(self, sku: str, events: list[tuple[str, bytes, str]]) -> list[bool]:
        async with self._gate:
            return await self._store.publish_many(sku, events)


async def _publish(state: Any, op: str, result: Result, **extra: Any) -> None:
    # in the change log before the answer: the relay ships it (engine.reservations.events)
    change = published_change(op, result)
    if change is None:
        return
    change_of, reservation, skus = change
    await state.events.keep(*publish_args(change_of, reservation, skus=skus, **extra))


def _record(op: str, result: Result, started: float) -> None:
    metrics.record_reservation(op, result.status, time.perf_counter() - started)


async def hold(state: Any, rid: str, body: ReservationIn) -> OrjsonResponse:
    """Hold every line of ``body`` under reservation id ``rid``, or none.

    201 with the reservation (``Idempotent-Replayed: true`` on a repeat); raises ``ApiError``
    409 ``refused`` or 422 ``idempotency_conflict`` / ``invalid_request``.
    """
    client = state.client
    lines = [LineRequest(line.sku, line.qty, line.location) for line in body.lines]
    started = time.perf_counter()
    try:
        result = await client.hold(
            rid, lines, ttl_s=body.ttl_seconds, channel=body.channel, customer_id=body.customer_id
        )
    except ValueError as exc:  # e.g. lines of one SKU at two locations
        metrics.record_reservation("hold", "error")
        raise ApiError(
            422, "invalid_request", str(exc), reasons=[{"field": "body.lines", "reason": "invalid", "message": str(exc)}]
        ) from exc
    _record("hold", result, started)
    note_hold(state, rid, result, body.ttl_seconds)
    if isinstance(result, Reservation):
        headers = {"Location": f"/v1/reservations/{rid}"}  # rid matched the id pattern: safe here
        if result.status == "duplicate":
            headers.update(_REPLAYED)
        await _publish(state, "hold", result, channel=body.channel, customer_id=body.customer_id)
        return OrjsonResponse(reservation_view(result), status_code=201, headers=headers)
    if result.status == "conflict":
        raise ApiError(
            422,
            "idempotency_conflict",
            "this Idempotency-Key was already used with different lines",
            reservation_id=rid,
            reasons=[{"field": "header.Idempotency-Key", "reason": "idempotency_conflict",
                      "message": "key already used with different lines"}],
        )
    raise await _refused(state, rid, body, result)


async def _refused(state: Any, rid: str, body: ReservationIn, refusal: Refusal) -> ApiError:
    lines = [(line.sku, line.qty, line.location) for line in body.lines]
    missing = [sku for sku, _q, _l in lines if sku not in refusal.available]
    # the client names what it saw; the rest from the current position
    atp = {sku: int(p.get("atp", 0)) for sku, p in (await state.client.atp_many(
        list(dict.fromkeys(missing)))).items()} if missing else {}
    view = refusal_view(refusal, lines, atp, customer=body.customer_id, channel=body.channel)
    return ApiError(409, view.pop("error"), view.pop("detail"), **view)


def _op_result(rid: str, result: Result) -> OrjsonResponse:
    if isinstance(result, Reservation):
        return OrjsonResponse(reservation_view(result))
    if result.status == "not_found":
        raise ApiError(404, "not_found", f"no reservation {rid!r}", reservation_id=rid)
    current = None
    if result.lines:
        current = reservation_body(rid, result.reason, result.lines)
    raise ApiError(
        409,
        "not_allowed",
        f"the reservation is {result.reason}",
        reservation_id=rid,
        state=result.reason,
        reservation=current,
    )


async def lifecycle(state: Any, op: Op, rid: str, *args: int) -> OrjsonResponse:
    """Confirm, release or extend (``args`` = the new TTL in seconds) reservation ``rid``.

    200 with the reservation; raises ``ApiError`` 404 ``not_found`` or 409 ``not_allowed``.
    """
    started = time.perf_counter()
    result = await getattr(state.client, op)(rid, *args)
    _record(op, result, started)
    note_lifecycle(state, op, rid, result, args)
    await _publish(state, op, result)
    return _op_result(rid, result)


async def read_reservation(state: Any, rid: str) -> OrjsonResponse:
    """200 with reservation ``rid``; raises ``ApiError`` 404 / 409 like ``lifecycle``."""
    return _op_result(rid, await state.client.get_reservation(rid))


async def position(state: Any, sku: str, location: str | None) -> OrjsonResponse:
    """200 with the SKU's position (at ``location``, or over all locations when None)."""
    return OrjsonResponse(position_view(await state.client.atp(sku, location), location))
