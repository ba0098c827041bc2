"""Reservations: hold (with an ``Idempotency-Key``), read, list, confirm, release, extend.

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

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request

from engine.api import checkout
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
    ReservationPageOut,
)
from engine.domain.ids import LONG_ID_PATTERN, SKU_PATTERN
from engine.reservations.views import reservation_page_view
from engine.store.listing import CURSOR_MAX_CHARS, LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX, BadCursor
from engine.store.wire import RESERVATION_STATES

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

REPLAYED_HEADER = checkout.REPLAYED_HEADER

_AUTH: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "no or unknown token"},
    403: {"model": ErrorOut, "description": "token lacks the role"},
    503: {"model": ErrorOut, "description": "the state store is unavailable; retry"},
}
_BAD_RID = {422: {"model": InvalidOut, "description": "invalid reservation id or body"}}
_NOT_FOUND = {404: {"model": ErrorOut, "description": "no such reservation"}}
_TOO_LARGE = {413: {"model": ErrorOut, "description": "body larger than max_body_bytes"}}
_NOT_ALLOWED = {409: {"model": NotAllowedOut, "description": "not possible in the reservation's state"}}


@router.post(
    "",
    status_code=201,
    response_model=ReservationOut,
    responses={
        **_AUTH,
        **_TOO_LARGE,
        400: {"model": ErrorOut, "description": "no Idempotency-Key header"},
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
    return await checkout.hold(request.app.state, idempotency_key, body)


# The listing's path has no segment after the prefix, so it never meets "/{rid}"; it comes
# first all the same, so that no reading of the routes in order could take it for a rid.
@router.get(
    "",
    response_model=ReservationPageOut,
    responses={**_AUTH, 422: {"model": InvalidOut, "description": "invalid filter, limit or cursor"}},
    dependencies=[Depends(require(Role.READ))],
    summary="List reservations, a page at a time",
    name="list_reservations",
)
async def list_reservations(
    request: Request,
    sku: Annotated[str | None, Query(pattern=SKU_PATTERN, description="only this SKU's lines")] = None,
    customer: Annotated[
        str | None, Query(pattern=LONG_ID_PATTERN, description="only reservations of this customer")
    ] = None,
    state: Annotated[
        Literal[RESERVATION_STATES] | None,  # type: ignore[valid-type]
        Query(description="only reservations in this state (with `sku`: lines in this state)"),
    ] = None,
    cursor: Annotated[
        str | None,
        Query(min_length=1, max_length=CURSOR_MAX_CHARS, description="`next_cursor` of the page before"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=LIST_LIMIT_MAX, description="most items in the page")] = LIST_LIMIT_DEFAULT,
) -> OrjsonResponse:
    """Reservations matching every filter given, at most ``limit`` a page; follow
    ``next_cursor`` (with the same filters) until it is null.

    Without ``sku`` an item is a whole reservation; with it, the reservation's line of that
    SKU. Each page does bounded work, so a page may hold fewer items than ``limit``, even none,
    before the listing is complete. A listing is weakly consistent, like Redis SCAN: a
    reservation that exists throughout is listed at least once, one may be listed twice (on two
    pages), one created or removed meanwhile may or may not be; items come in no particular
    order. A held reservation past its expiry is listed as expired."""
    try:
        page = await request.app.state.store.list_reservations(
            sku=sku, customer=customer, state=state, cursor=cursor, limit=limit
        )
    except BadCursor as exc:
        raise ApiError(
            422, "invalid_request", f"query.cursor: {exc}",
            reasons=[{"field": "query.cursor", "reason": "invalid_cursor", "message": str(exc)}],
        ) from exc
    return OrjsonResponse(reservation_page_view(page))


@router.get(
    "/{rid}",
    response_model=ReservationOut,
    responses={**_AUTH, **_BAD_RID, **_NOT_FOUND},
    dependencies=[Depends(require(Role.READ))],
    summary="A reservation",
)
async def get_reservation(request: Request, rid: RidPath) -> OrjsonResponse:
    """The reservation's state, lines, allocations and promised dates."""
    return await checkout.read_reservation(request.app.state, rid)


_LIFECYCLE_RESPONSES = {**_AUTH, **_BAD_RID, **_NOT_FOUND, **_NOT_ALLOWED, **_TOO_LARGE}


@router.post(
    "/{rid}/confirm",
    response_model=ReservationOut,
    responses=_LIFECYCLE_RESPONSES,
    dependencies=[Depends(require(Role.RESERVE))],
    summary="Confirm a hold (held → committed)",
    name="confirm_reservation",
)
async def confirm(request: Request, rid: RidPath) -> OrjsonResponse:
    """Held → committed (no expiry). Confirming again is 200 with the same state; a
    released or expired reservation is 409 ``not_allowed``."""
    return await checkout.lifecycle(request.app.state, "confirm", rid)


@router.post(
    "/{rid}/release",
    response_model=ReservationOut,
    responses=_LIFECYCLE_RESPONSES,
    dependencies=[Depends(require(Role.RESERVE))],
    summary="Release a reservation",
    name="release_reservation",
)
async def release(request: Request, rid: RidPath) -> OrjsonResponse:
    """Held or committed → released; units come back exactly once (a repeat is 200, nothing
    returns twice). A shipped reservation is 409 ``not_allowed``."""
    return await checkout.lifecycle(request.app.state, "release", rid)


@router.post(
    "/{rid}/extend",
    response_model=ReservationOut,
    responses=_LIFECYCLE_RESPONSES,
    dependencies=[Depends(require(Role.RESERVE))],
    summary="Keep a hold alive longer",
    name="extend_reservation",
)
async def extend(request: Request, rid: RidPath, body: ExtendIn) -> OrjsonResponse:
    """A held reservation now expires ``ttl_seconds`` from now; any other state is 409."""
    return await checkout.lifecycle(request.app.state, "extend", rid, body.ttl_seconds)
