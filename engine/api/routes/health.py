"""Liveness, readiness and Prometheus metrics (no token needed: probes and scrapers)."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request, Response

from engine import metrics
from engine.api.errors import OrjsonResponse
from engine.api.models import HealthOut

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

_PROBE_TIMEOUT_S = 2.0

# An empty security requirement says in the OpenAPI document that these need no token.
_PUBLIC = {"security": []}


@router.get("/healthz", response_model=HealthOut, summary="The process is alive", openapi_extra=_PUBLIC)
async def healthz() -> OrjsonResponse:
    """Always 200 while the process serves requests."""
    return OrjsonResponse({"status": "ok", "checks": {}})


async def _redis_up(request: Request) -> bool:
    try:
        await asyncio.wait_for(request.app.state.ping_redis(), _PROBE_TIMEOUT_S)
        return True
    except Exception as exc:  # any failure means "not ready"; the reason goes to the log
        log.warning("readiness: redis probe failed: %r", exc)
        return False


async def _kafka_up(request: Request) -> bool:
    publisher = request.app.state.publisher
    try:
        return bool(await asyncio.to_thread(publisher.reachable, _PROBE_TIMEOUT_S))
    except Exception as exc:
        log.warning("readiness: broker probe failed: %r", exc)
        return False


@router.get(
    "/readyz",
    response_model=HealthOut,
    responses={503: {"model": HealthOut, "description": "a dependency is down, or events pile up"}},
    summary="Redis and the broker are reachable, and reservation events are not piling up",
    openapi_extra=_PUBLIC,
)
async def readyz(request: Request) -> OrjsonResponse:
    """200 when Redis and the broker both answer and the event backlog is under half its bound,
    else 503 naming what is wrong (``checks``; ``reason`` says why events are not flowing)."""
    redis_ok, kafka_ok = await asyncio.gather(_redis_up(request), _kafka_up(request))
    metrics.set_dependency_up("redis", redis_ok)
    metrics.set_dependency_up("kafka", kafka_ok)
    events_ok, why = request.app.state.publisher.healthy()
    ready = redis_ok and kafka_ok and events_ok
    body: dict[str, object] = {"status": "ready" if ready else "unavailable",
                               "checks": {"redis": redis_ok, "kafka": kafka_ok, "events": events_ok}}
    if why:
        body["reason"] = why
    headers = None if ready else {"Retry-After": "1"}
    return OrjsonResponse(body, status_code=200 if ready else 503, headers=headers)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus exposition"}},
    summary="Prometheus metrics",
    name="metrics",
    openapi_extra=_PUBLIC,
)
async def prometheus() -> Response:
    """The engine's metrics registry in the Prometheus text format."""
    return Response(metrics.render_latest(), media_type=metrics.CONTENT_TYPE)
