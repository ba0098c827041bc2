"""ATP queries: one SKU, or up to 1000 in one call (role ``read``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request

from engine.api import checkout
from engine.api.auth import Role
from engine.api.errors import OrjsonResponse
from engine.api.guard import require
from engine.api.models import AtpOut, AtpQueryIn, AtpQueryOut, ErrorOut, InvalidOut
from engine.domain.ids import SKU_PATTERN, Location
from engine.reservations.views import position_view

router = APIRouter(prefix="/v1/atp", tags=["atp"], dependencies=[Depends(require(Role.READ))])

_ERRORS = {
    401: {"model": ErrorOut, "description": "no or unknown token"},
    403: {"model": ErrorOut, "description": "token lacks the read role"},
    413: {"model": ErrorOut, "description": "body larger than max_body_bytes"},
    422: {"model": InvalidOut, "description": "invalid SKU or location"},
    503: {"model": ErrorOut, "description": "the state store is unavailable; retry"},
}

SkuPath = Annotated[str, Path(pattern=SKU_PATTERN, description="SKU")]
LocationQuery = Annotated[Location | None, Query(description="one location; absent = all locations")]


@router.get("/{sku}", response_model=AtpOut, responses=_ERRORS, summary="ATP of one SKU")
async def get_atp(request: Request, sku: SkuPath, location: LocationQuery = None) -> OrjsonResponse:
    """The SKU's buckets, ATP, units promisable now and the next promise date.

    An unknown SKU is not an error: it has nothing on hand and ATP 0.
    """
    return await checkout.position(request.app.state, sku, location)


@router.post("/query", response_model=AtpQueryOut, responses=_ERRORS, summary="ATP of many SKUs")
async def query_atp(request: Request, body: AtpQueryIn) -> OrjsonResponse:
    """Positions of up to 1000 SKUs (one pipelined round trip), in the order asked."""
    skus = list(dict.fromkeys(body.skus))
    by_sku = await request.app.state.client.atp_many(skus, body.location)
    positions = [by_sku[sku] for sku in skus]
    return OrjsonResponse({"positions": [position_view(p, body.location) for p in positions]})
