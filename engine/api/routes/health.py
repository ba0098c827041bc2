"""Liveness, readiness and Prometheus metrics (no token needed: probes and scrapers)."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request, Response

from engine import metrics
from engine.api.errors import OrjsonResponse
from engine.api.models import HealthOut
from engine.log.relay import changelog_health, relay_state_key

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


async def _changelog_ok(request: Request) -> tuple[bool, str]:
    """Whether the change records waiting for the relay (as the relay holding the lock measured
    them last, ``engine.log.relay``) are within ``changelog_backlog_max``; Redis away: the redis
    check says so, this one does not guess."""
    settings = request.app.state.settings
    try:
        raw = await asyncio.wait_for(
            request.app.state.redis.hget(relay_state_key(settings.key_prefix), "backlog"), _PROBE_TIMEOUT_S)
        backlog = None if raw is None else int(raw)
    except Exception as exc:
        log.debug("readiness: change log backlog unread: %r", exc)
        return True, ""
    return changelog_health(backlog, settings.changelog_backlog_max)


@router.get(
    "/readyz",
    response_model=HealthOut,
    responses={503: {"model": HealthOut,
                     "description": "a dependency is down, the event producer failed, or change records "
                                    "pile up"}},
    summary="Redis and the broker are reachable, the event producer works, change records are not piling up",
    openapi_extra=_PUBLIC,
)
async def readyz(request: Request) -> OrjsonResponse:
    """200 when Redis and the broker both answer, the API's event producer is not awaiting its
    replacement after a fatal error (``events``) and the change records waiting for the relay are
    within ``changelog_backlog_max``, else 503 naming what is wrong (``checks``; ``reason`` says
    why events or change records are not flowing)."""
    redis_ok, kafka_ok, (changelog_ok, log_why) = await asyncio.gather(
        _redis_up(request), _kafka_up(request), _changelog_ok(request))
    metrics.set_dependency_up("redis", redis_ok)
    metrics.set_dependency_up("kafka", kafka_ok)
    events_ok, why = request.app.state.publisher.healthy()
    ready = redis_ok and kafka_ok and events_ok and changelog_ok
    body: dict[str, object] = {"status": "ready" if ready else "unavailable",
                               "checks": {"redis": redis_ok, "kafka": kafka_ok, "events": events_ok,
                                          "changelog": changelog_ok}}
    reason = "; ".join(r for r in (why, log_why) if r)
    if reason:
        body["reason"] = reason
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
