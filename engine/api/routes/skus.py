"""A SKU's movements: the journal of the commands applied to it, newest first (role ``read``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request

from engine.api.auth import Role
from engine.api.errors import OrjsonResponse
from engine.api.guard import require
from engine.api.models import ErrorOut, InvalidOut, JournalPageOut
from engine.domain.ids import SKU_PATTERN
from engine.reservations.views import journal_view
from engine.store.wire import JOURNAL_SIZE

router = APIRouter(prefix="/v1/skus", tags=["skus"], dependencies=[Depends(require(Role.READ))])

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "no or unknown token"},
    403: {"model": ErrorOut, "description": "token lacks the read role"},
    422: {"model": InvalidOut, "description": "invalid SKU, limit or before"},
    503: {"model": ErrorOut, "description": "the state store is unavailable; retry"},
}

SkuPath = Annotated[str, Path(pattern=SKU_PATTERN, description="SKU")]


@router.get("/{sku}/journal", response_model=JournalPageOut, responses=_ERRORS, summary="A SKU's movements")
async def get_journal(
    request: Request,
    sku: SkuPath,
    limit: Annotated[int, Query(ge=1, le=JOURNAL_SIZE, description="entries per page")] = 50,
    before: Annotated[int | None, Query(ge=1, description="only entries numbered below this (next_before)")] = None,
) -> OrjsonResponse:
    """The stock events and operator commands applied to the SKU (the last 200), newest first:
    when, which command, its quantity, reason, ref and event id. Page with ``before``."""
    entries = await request.app.state.store.journal(sku, limit, before)
    return OrjsonResponse(journal_view(sku, entries, limit))
