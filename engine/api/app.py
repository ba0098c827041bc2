"""The FastAPI application factory.

``create_app(settings)`` builds everything from the settings; tests and the demo may hand
in their own Redis client, store, checkout client, publisher or topic names. Resources the
app built itself are closed at shutdown (the producer is flushed first); resources handed
in stay the caller's.

While the app runs, a background task sweeps expired holds every
``settings.sweep_interval_s`` (the scripts also expire holds lazily whenever they touch a
SKU; the sweeper covers SKUs nobody touches), and a background thread relays the change log to
``topics.changes`` (``engine.log.relay``; ``settings.relay``). Every worker runs both; of each,
the one holding the keyspace's lease (``engine.store.lease``) works, the others stand by.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from connectors.kafka import producer_config
from connectors.topics import Topics
from engine import metrics
from engine.api.auth import TokenTable
from engine.api.checkout import EventKeeper
from engine.api.docs import install_docs
from engine.api.errors import document_problems, install_error_handlers
from engine.api.hot_path import HotPath
from engine.api.limits import BodySizeLimit
from engine.api.models import ErrorOut
from engine.api.observe import RequestMetrics
from engine.api.publisher import EventPublisher
from engine.api.routes import atp, health, ops, reservations, skus
from engine.log.relay import Relay
from engine.observability.api import start_api_observer
from engine.reservations.client import AsyncAtpClient
from engine.settings import Settings
from engine.store.connect import async_redis
from engine.store.lease import AsyncLease
from engine.store.store import AsyncStore
from engine.store.sweeper import lease_ttl_ms, sweep_forever

log = logging.getLogger(__name__)

API_VERSION = "1"

_DESCRIPTION = """\
Available-to-promise and reservations for checkouts, plus operations endpoints.

Every `/v1` call needs `Authorization: Bearer <token>`; settings map the token's sha256 to
its roles: `read` (ATP, reservations, policies), `reserve` (hold / confirm / release /
extend; implies `read`), `operate` (policies, adjustments, counts; implies `read`).
Errors are RFC 9457 problems (`application/problem+json`): `type`, `title`, `status`,
`detail`, and `error`, a stable code to branch on, with the code's own members.
"""

_TAGS = [
    {"name": "atp", "description": "Available-to-promise of one SKU or many (role `read`)."},
    {
        "name": "reservations",
        "description": "Hold stock for a checkout, then confirm, release or extend the hold "
        "(role `reserve`; reading one, or listing them a page at a time, needs `read`).",
    },
    {
        "name": "ops",
        "description": "Selling policies per SKU, and stock adjustments and counts published to the "
        "event log (role `operate`; reading a policy needs `read`).",
    },
    {"name": "skus", "description": "What was applied to a SKU: its journal of movements (role `read`)."},
    {"name": "health", "description": "Liveness, readiness and Prometheus metrics; no token needed."},
]

# Relative: the document names whatever host and port served it, behind any proxy.
_SERVERS = [{"url": "/", "description": "the server that serves this document"}]

# What the HTTP layer (engine.api.edge) answers before any route runs, so every operation can get it.
_EDGE_REFUSALS: dict[int | str, dict[str, Any]] = {
    414: {"model": ErrorOut, "description": "request line longer than max_header_bytes"},
    431: {"model": ErrorOut, "description": "request headers over max_header_bytes or max_headers"},
}


def _operation_id(route: APIRoute) -> str:
    """The route's name (its function's name unless the decorator sets ``name``): ``get_atp``
    rather than FastAPI's ``get_atp_v1_atp__sku__get``. The OpenAPI lint
    (tests/integration/api/test_openapi_lint.py) holds them unique."""
    return route.name


class AtpApi(FastAPI):
    """The FastAPI app; ``hot_path`` is the checkout hot path (``engine.api.hot_path``) around
    its router, when it has one."""

    hot_path: HotPath | None = None

    def openapi(self) -> dict[str, Any]:
        """FastAPI's document, with every error reply under ``application/problem+json``."""
        if self.openapi_schema is None:
            document_problems(super().openapi())
        return self.openapi_schema  # type: ignore[return-value]  # set by FastAPI.openapi


def create_app(
    settings: Settings,
    *,
    redis: Any = None,
    store: AsyncStore | None = None,
    client: AsyncAtpClient | None = None,
    publisher: EventPublisher | None = None,
    topics: Topics | None = None,
    sweep: bool = True,
    hot_path: bool = True,
    relay: bool | None = None,
) -> AtpApi:
    """The HTTP API over ``settings``' Redis and broker.

    ``redis`` is a ``redis.asyncio`` client (built from ``settings.redis_url`` when absent);
    ``store`` / ``client`` default to ones over it; ``publisher`` defaults to an idempotent
    producer on ``settings.kafka_bootstrap``; ``topics`` to the production names.
    ``sweep=False`` leaves expired holds to the scripts' lazy expiry and other sweepers.
    ``hot_path=False`` serves every request through FastAPI — the reference the hot path
    (``engine.api.hot_path``) must agree with. ``relay`` (default ``settings.relay``) runs the
    change log relay while the app runs (it needs ``settings.redis_url``: a sync client of its own).
    """
    owned: list[str] = []
    if redis is None:
        redis = async_redis(settings)
        owned.append("redis")
    if store is None:
        store = AsyncStore(redis, prefix=settings.key_prefix)
    if client is None:
        client = AsyncAtpClient(redis, prefix=settings.key_prefix, default_ttl_s=settings.default_hold_ttl_s)
        owned.append("client")
    if publisher is None:
        if not settings.kafka_bootstrap:
            raise ValueError("no broker configured: set ATP_KAFKA_BOOTSTRAP")
        publisher = EventPublisher(producer_config(settings))
        owned.append("publisher")
    changelog_relay: Relay | None = None
    if settings.relay if relay is None else relay:
        if settings.redis_url:
            changelog_relay = Relay(settings, topics or Topics())
        else:
            log.warning("no ATP_REDIS_URL: the change log relay does not run in this app")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        publisher.start()
        if changelog_relay is not None:
            changelog_relay.start()
        observer = start_api_observer(app.state)
        sweeper = (
            asyncio.create_task(
                sweep_forever(store, settings.sweep_interval_s, on_expired=metrics.record_holds_expired,
                              retention_s=settings.reservation_retention_s, lease=app.state.sweeper_lease),
                name="atp-hold-sweeper",
            )
            if sweep
            else None
        )
        try:
            yield
        finally:
            await observer.stop()
            if sweeper is not None:
                sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper
            if changelog_relay is not None:
                await asyncio.to_thread(changelog_relay.stop)
            if "publisher" in owned:
                await asyncio.to_thread(publisher.close)
            if "client" in owned:
                closer = getattr(client, "aclose", None)
                if closer is not None:
                    await closer()
            if "redis" in owned:
                await redis.aclose()

    app = AtpApi(
        title="atp-engine",
        version=API_VERSION,
        description=_DESCRIPTION,
        openapi_tags=_TAGS,
        servers=_SERVERS,
        generate_unique_id_function=_operation_id,
        docs_url=None,  # engine.api.docs serves the docs pages without a CDN
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.redis = redis
    app.state.store = store
    app.state.client = client
    app.state.events = EventKeeper(store)
    app.state.publisher = publisher
    app.state.relay = changelog_relay
    app.state.topics = topics or Topics()
    app.state.tokens = TokenTable.from_settings(settings.api_tokens)
    app.state.ping_redis = redis.ping
    # Of a deployment's API processes, the holder of this lease sweeps and measures the expiry lag.
    app.state.sweeper_lease = (
        AsyncLease(redis, settings.key_prefix, "sweeper", lease_ttl_ms(settings.sweep_interval_s)) if sweep else None
    )
    if not settings.api_tokens:
        log.warning("no API tokens configured (ATP_API_TOKENS): every /v1 call will be refused with 401")

    install_error_handlers(app)
    routers = (atp.router, reservations.router, ops.router, skus.router, health.router)
    for router in routers:
        app.include_router(router, responses=_EDGE_REFUSALS)
    install_docs(app)
    # Outermost first: count every request, including the ones the size limit refuses.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics)
    if hot_path:
        # Around the router, inside Starlette's chain: errors, size limit and metrics stay the app's.
        app.hot_path = HotPath(app.router.middleware_stack, app.state, [r for rt in routers for r in rt.routes])
        app.router.middleware_stack = app.hot_path
    return app
