"""Operations: per-SKU policy (read / operate) and stock events into the log (operate).

Adjustments and counts are *published* to the adjustments topic, not written to Redis:
the log stays the source of truth and the flow applies them like any other event. The
202 reply means the broker acknowledged the event; applying it follows within the flow's
latency. An ``event_id`` supplied by the caller makes a retried call a duplicate that the
flow skips.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Request
from pydantic import ValidationError

from engine.api.auth import Role
from engine.api.errors import (
    ApiError,
    BackendUnavailable,
    OrjsonResponse,
    invalid_request,
    validation_reasons,
)
from engine.api.guard import require
from engine.api.models import AcceptedOut, AdjustmentIn, CountIn, ErrorOut, InvalidOut
from engine.api.publisher import PublishError
from engine.domain.events import EventBase, StockAdjusted, StockCounted, event_to_json, format_time
from engine.domain.ids import SKU_PATTERN
from engine.domain.policy import Policy, merge_patch

router = APIRouter(prefix="/v1", tags=["ops"])

SkuPath = Annotated[str, Path(pattern=SKU_PATTERN, description="SKU")]

_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "no or unknown token"},
    403: {"model": ErrorOut, "description": "token lacks the role"},
    413: {"model": ErrorOut, "description": "body larger than max_body_bytes"},
    422: {"model": InvalidOut, "description": "invalid input"},
    503: {"model": ErrorOut, "description": "a backend is unavailable; retry"},
}

_PUBLISH_TIMEOUT_S = 10.0


def _stored_policy(raw: dict[str, Any]) -> Policy:
    """The stored policy as the full model (fields the store does not keep take defaults)."""
    known = set(Policy.model_fields)
    return Policy.model_validate({k: v for k, v in raw.items() if k in known})


@router.get(
    "/policies/{sku}",
    response_model=Policy,
    responses=_AUTH_ERRORS,
    dependencies=[Depends(require(Role.READ))],
    summary="A SKU's selling policy",
)
async def get_policy(request: Request, sku: SkuPath) -> OrjsonResponse:
    """The SKU's policy; defaults when none was set."""
    raw = await request.app.state.store.get_policy(sku)
    return OrjsonResponse(_stored_policy(raw).to_wire())


@router.put(
    "/policies/{sku}",
    response_model=Policy,
    responses=_AUTH_ERRORS,
    dependencies=[Depends(require(Role.OPERATE))],
    summary="Replace a SKU's selling policy",
)
async def put_policy(request: Request, sku: SkuPath, body: Policy) -> OrjsonResponse:
    """Replace the whole policy: a field left out takes its default, whatever it was before
    (use PATCH to change some fields). Reservations are re-balanced against the new policy at
    once; see docs/semantics.md for the fields."""
    return await _store_policy(request, sku, body)


async def _store_policy(request: Request, sku: str, policy: Policy) -> OrjsonResponse:
    store = request.app.state.store
    try:
        await store.set_policy(sku, policy.to_wire())
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc), reasons=[]) from exc
    raw = await store.get_policy(sku)
    return OrjsonResponse(_stored_policy(raw).to_wire())


_MERGE_PATCH_TYPES = frozenset({"application/merge-patch+json", "application/json"})


@router.patch(
    "/policies/{sku}",
    response_model=Policy,
    responses={
        **_AUTH_ERRORS,
        400: {"model": ErrorOut, "description": "the body is not a JSON object"},
        415: {"model": ErrorOut, "description": "not application/merge-patch+json"},
    },
    dependencies=[Depends(require(Role.OPERATE))],
    summary="Change some fields of a SKU's selling policy",
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "an RFC 7396 merge patch: fields given replace, null resets a field "
            "to its default, a quota set to null is removed",
            "content": {"application/merge-patch+json": {"schema": {"$ref": "#/components/schemas/Policy"}}},
        }
    },
)
async def patch_policy(request: Request, sku: SkuPath) -> OrjsonResponse:
    """Merge the body into the current policy (RFC 7396): fields left out keep their values,
    ``null`` resets a field to its default. Read, merge and write are separate steps, so of
    two PATCHes racing on one SKU the later write wins whole."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in _MERGE_PATCH_TYPES:
        raise ApiError(415, "unsupported_media_type", "send the patch as application/merge-patch+json")
    try:
        patch = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "bad_request", f"the body is not JSON: {exc}") from exc
    if not isinstance(patch, dict):
        raise ApiError(400, "bad_request", "a policy merge patch is a JSON object")
    current = _stored_policy(await request.app.state.store.get_policy(sku)).to_wire()
    try:
        policy = Policy.model_validate(merge_patch(current, patch))
    except ValidationError as exc:
        reasons = validation_reasons(exc.errors(include_url=False))
        for reason in reasons:
            reason["field"] = f"body.{reason['field']}" if reason["field"] else "body"
        return invalid_request(reasons)
    return await _store_policy(request, sku, policy)


async def _publish(request: Request, event: EventBase) -> OrjsonResponse:
    topic = request.app.state.topics.adjustments
    sku = event.sku  # type: ignore[attr-defined]  # both stock events carry one
    try:
        await request.app.state.publisher.publish_and_wait(
            topic, sku, event_to_json(event), timeout_s=_PUBLISH_TIMEOUT_S
        )
    except PublishError as exc:
        raise BackendUnavailable(f"the event log did not take the event: {exc}") from exc
    return OrjsonResponse({"event_id": event.event_id, "type": event.type, "topic": topic}, status_code=202)


def _event_id(given: str | None, kind: str) -> str:
    return given or f"api:{kind}:{uuid.uuid4().hex}"


def _build(model: type[EventBase], data: dict[str, Any]) -> EventBase:
    try:
        return model.model_validate(data)
    except ValidationError as exc:  # the request model is stricter; this is a guard, not a path
        raise ApiError(422, "invalid_request", str(exc.errors()[0]["msg"]), reasons=[]) from exc


@router.post(
    "/adjustments",
    status_code=202,
    response_model=AcceptedOut,
    responses=_AUTH_ERRORS,
    dependencies=[Depends(require(Role.OPERATE))],
    summary="Publish a stock adjustment",
)
async def post_adjustment(request: Request, body: AdjustmentIn) -> OrjsonResponse:
    """Publish ``stock.adjusted`` (on_hand ± delta at the location); 202 with the event id."""
    event = _build(
        StockAdjusted,
        {
            "event_id": _event_id(body.event_id, "adj"),
            "type": "stock.adjusted",
            "occurred_at": format_time(datetime.now(UTC)),
            "sku": body.sku,
            "location": body.location,
            "delta": body.delta,
            "reason": body.reason,
            "ref": body.ref,
        },
    )
    return await _publish(request, event)


@router.post(
    "/counts",
    status_code=202,
    response_model=AcceptedOut,
    responses=_AUTH_ERRORS,
    dependencies=[Depends(require(Role.OPERATE))],
    summary="Publish a physical count",
)
async def post_count(request: Request, body: CountIn) -> OrjsonResponse:
    """Publish ``stock.counted`` (on_hand = the counted value at the location); 202 with the event id."""
    event = _build(
        StockCounted,
        {
            "event_id": _event_id(body.event_id, "cnt"),
            "type": "stock.counted",
            "occurred_at": format_time(datetime.now(UTC)),
            "sku": body.sku,
            "location": body.location,
            "on_hand": body.on_hand,
            "reason": body.reason,
            "ref": body.ref,
        },
    )
    return await _publish(request, event)
