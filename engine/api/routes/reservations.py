"""Reservations: hold (with an ``Idempotency-Key``), read, confirm, release, extend.

Holds go through the client's async path, which coalesces concurrent holds on one SKU into
one script call. Every change is published to the reservations topic after the reply is
decided, without waiting for the broker.

Idempotency: the key is the reservation id. Repeating a hold with the same key and the
same lines returns the **same answer** — status 201 and the reservation as it is now — with
the header ``Idempotent-Replayed: true``; the same key with different lines (SKU, qty or
location) is a 422 ``idempotency_conflict`` and changes nothing. ``ttl_seconds`` of a
repeat is ignored (use ``/extend``). A refused hold stores nothing, so a retry with the
same key is evaluated afresh.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Request

from engine import metrics
from engine.api.auth import Role
from engine.api.errors import ApiError, OrjsonResponse
from engine.api.guard import require
from engine.api.models import (
    ErrorOut,
    ExtendIn,
    InvalidOut,
    NotAllowedOut,
    RefusedOut,
    ReservationIn,
    ReservationOut,
)
from engine.api.reservation_events import Change, encode, reservation_event
from engine.api.views import reservation_body, reservation_view
from engine.client import LineRequest, Refusal, Reservation, Result
from engine.domain.ids import LONG_ID_PATTERN

router = APIRouter(prefix="/v1/reservations", tags=["reservations"])

RidPath = Annotated[str, Path(pattern=LONG_ID_PATTERN, description="reservation id")]
IdempotencyKey = Annotated[
    str,
    Header(
        alias="Idempotency-Key",
        pattern=LONG_ID_PATTERN,
        description="the reservation id; repeat it to retry safely",
    ),
]

REPLAYED_HEADER = "Idempotent-Replayed"

_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "no or unknown token"},
    403: {"model": ErrorOut, "description": "token lacks the role"},
    503: {"model": ErrorOut, "description": "the state store is unavailable; retry"},
}
_BAD_RID = {422: {"model": InvalidOut, "description": "invalid reservation id or body"}}
_NOT_FOUND = {404: {"model": ErrorOut, "description": "no such reservation"}}
_TOO_LARGE = {413: {"model": ErrorOut, "description": "body larger than max_body_bytes"}}
_NOT_ALLOWED = {409: {"model": NotAllowedOut, "description": "not possible in the reservation's state"}}


def _publish(request: Request, change: Change, reservation: Reservation, **extra: str | None) -> None:
    state = request.app.state
    event = reservation_event(change, reservation, **extra)
    state.publisher.publish(state.topics.reservations, reservation.reservation_id, encode(event))


def _record(op: str, result: Result, started: float) -> None:
    metrics.record_reservation(op, result.status, time.perf_counter() - started)


@router.post(
    "",
    status_code=201,
    response_model=ReservationOut,
    responses={
        **_AUTH,
        **_TOO_LARGE,
        409: {"model": RefusedOut, "description": "refused whole: not enough ATP, or a flash-sale guard"},
        422: {"model": InvalidOut, "description": "invalid body or key; or the key was used with other lines"},
    },
    dependencies=[Depends(require(Role.RESERVE))],
    summary="Hold stock for a checkout",
)
async def create_reservation(
    request: Request, body: ReservationIn, idempotency_key: IdempotencyKey
) -> OrjsonResponse:
    """Hold every line or none. 201 with the state, allocations and promised dates;
    409 ``refused`` with what each line could have had; 422 for bad input or a key reused
    with different lines."""
    client = request.app.state.client
    lines = [LineRequest(line.sku, line.qty, line.location) for line in body.lines]
    started = time.perf_counter()
    try:
        result = await client.hold(
            idempotency_key, lines, ttl_s=body.ttl_seconds, channel=body.channel, customer_id=body.customer_id
        )
    except ValueError as exc:  # e.g. lines of one SKU at two locations
        metrics.record_reservation("hold", "error")
        raise ApiError(
            422, "invalid_request", str(exc), reasons=[{"field": "body.lines", "reason": "invalid", "message": str(exc)}]
        ) from exc
    _record("hold", result, started)
    if isinstance(result, Reservation):
        headers = {REPLAYED_HEADER: "true"} if result.status == "duplicate" else None
        if result.status == "ok":
            _publish(request, "held", result, channel=body.channel, customer_id=body.customer_id)
        return OrjsonResponse(reservation_view(result), status_code=201, headers=headers)
    if result.status == "conflict":
        raise ApiError(
            422,
            "idempotency_conflict",
            "this Idempotency-Key was already used with different lines",
            reservation_id=idempotency_key,
            reasons=[{"field": "header.Idempotency-Key", "reason": "idempotency_conflict",
                      "message": "key already used with different lines"}],
        )
    raise await _refused(request, idempotency_key, body, result)


async def _refused(request: Request, rid: str, body: ReservationIn, refusal: Refusal) -> ApiError:
    available = dict(refusal.available)
    missing = [line.sku for line in body.lines if line.sku not in available]
    if missing:  # the client names what it saw; fill in the rest from the current position
        positions = await request.app.state.client.atp_many(list(dict.fromkeys(missing)))
        for sku, position in positions.items():
            available[sku] = max(0, int(position.get("atp", 0)))
    return ApiError(
        409,
        "refused",
        f"not enough to promise: {refusal.reason}" + (f" on {refusal.sku}" if refusal.sku else ""),
        reservation_id=rid,
        reason=refusal.reason,
        lines=[
            {
                "sku": line.sku,
                "qty": line.qty,
                "location": line.location,
                "available": int(available.get(line.sku, 0)),
                "reason": refusal.reason if refusal.sku in (None, line.sku) else None,
            }
            for line in body.lines
        ],
    )


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


@router.get(
    "/{rid}",
    response_model=ReservationOut,
    responses={**_AUTH, **_BAD_RID, **_NOT_FOUND},
    dependencies=[Depends(require(Role.READ))],
    summary="A reservation",
)
async def get_reservation(request: Request, rid: RidPath) -> OrjsonResponse:
    """The reservation's state, lines, allocations and promised dates."""
    return _op_result(rid, await request.app.state.client.get_reservation(rid))


async def _lifecycle(request: Request, op: str, change: Change, rid: str, *args: int) -> OrjsonResponse:
    client = request.app.state.client
    started = time.perf_counter()
    result = await getattr(client, op)(rid, *args)
    _record(op, result, started)
    if isinstance(result, Reservation) and result.status == "ok":
        _publish(request, change, result)
    return _op_result(rid, result)


_LIFECYCLE_RESPONSES = {**_AUTH, **_BAD_RID, **_NOT_FOUND, **_NOT_ALLOWED, **_TOO_LARGE}


@router.post(
    "/{rid}/confirm",
    response_model=ReservationOut,
    responses=_LIFECYCLE_RESPONSES,
    dependencies=[Depends(require(Role.RESERVE))],
    summary="Confirm a hold (held → committed)",
)
async def confirm(request: Request, rid: RidPath) -> OrjsonResponse:
    """Held → committed (no expiry). Confirming again is 200 with the same state; a
    released or expired reservation is 409 ``not_allowed``."""
    return await _lifecycle(request, "confirm", "confirmed", rid)


@router.post(
    "/{rid}/release",
    response_model=ReservationOut,
    responses=_LIFECYCLE_RESPONSES,
    dependencies=[Depends(require(Role.RESERVE))],
    summary="Release a reservation",
)
async def release(request: Request, rid: RidPath) -> OrjsonResponse:
    """Held or committed → released; units come back exactly once (a repeat is 200, nothing
    returns twice). A shipped reservation is 409 ``not_allowed``."""
    return await _lifecycle(request, "release", "released", rid)


@router.post(
    "/{rid}/extend",
    response_model=ReservationOut,
    responses=_LIFECYCLE_RESPONSES,
    dependencies=[Depends(require(Role.RESERVE))],
    summary="Keep a hold alive longer",
)
async def extend(request: Request, rid: RidPath, body: ExtendIn) -> OrjsonResponse:
    """A held reservation now expires ``ttl_seconds`` from now; any other state is 409."""
    return await _lifecycle(request, "extend", "extended", rid, body.ttl_seconds)
