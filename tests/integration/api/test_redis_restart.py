"""The API across a Redis restart: 503 only while Redis is down.

A real redis-server child (its own, standalone, with an AOF so the seeded stock survives) behind
the app in this event loop. The pool is warmed with concurrent calls so it keeps many
connections; once Redis is killed and started again on the same port, those connections are
stale. The first burst after Redis answers PING again must not see a single 503: a call that
draws a stale connection reconnects and is sent again (``engine.store.connect``). While Redis
is down, every call is a quick 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import redis as redis_lib

from connectors.embedded import EmbeddedRedis, free_port
from connectors.topics import Topics
from engine.api import create_app
from engine.api.app import AtpApi
from engine.settings import Settings
from engine.store.store import Store
from tests.integration.api_harness import ADMIN, api_settings, bearer, seed

pytestmark = pytest.mark.anyio

SKUS = [f"RST-{i}" for i in range(10)]
WARM_CALLS = 96
BURST_CALLS = 100
HOLDS_PER_BURST = 20
JSON = {**bearer(ADMIN), "Content-Type": "application/json"}


@pytest.fixture
def own_redis(tmp_path: Any) -> Iterator[EmbeddedRedis]:
    """A standalone redis-server on a fixed port, persisting every write (AOF, fsync always), so
    it can be killed and started again with the same data."""
    server = EmbeddedRedis(port=free_port(), data_dir=tmp_path / "data", appendonly=True, appendfsync="always")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _app(settings: Settings, topics: Topics, url: str) -> AtpApi:
    # Standalone whatever mode the suite runs in: the server is this module's own.
    app = create_app(api_settings(settings, redis_url=url, redis_cluster=False), topics=topics, sweep=False)
    assert isinstance(app, AtpApi)
    return app


def _client(app: AtpApi) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://atp.test", timeout=30)


async def _atp(api: httpx.AsyncClient, i: int) -> httpx.Response:
    return await api.get(f"/v1/atp/{SKUS[i % len(SKUS)]}", headers=bearer(ADMIN))


async def _hold(api: httpx.AsyncClient, rid: str, i: int) -> httpx.Response:
    body = {"lines": [{"sku": SKUS[i % len(SKUS)], "qty": 1}], "ttl_seconds": 600}
    return await api.post("/v1/reservations", headers={**JSON, "Idempotency-Key": rid}, content=orjson.dumps(body))


async def _burst(api: httpx.AsyncClient, tag: str) -> list[httpx.Response]:
    """BURST_CALLS concurrent calls: ATP reads on every SKU, and holds (new reservation ids)."""
    calls = [
        _hold(api, f"rst-{tag}-{i}", i) if i < HOLDS_PER_BURST else _atp(api, i)
        for i in range(BURST_CALLS)
    ]
    return list(await asyncio.gather(*calls))


def _connected(server: EmbeddedRedis) -> int:
    """How many clients the server has (the app's pooled connections, and this probe)."""
    with server.client() as probe:
        return len(probe.client_list())


def _wait_for_ping(server: EmbeddedRedis) -> None:
    client = redis_lib.Redis(host="127.0.0.1", port=server.port, socket_connect_timeout=1)
    deadline = time.monotonic() + 30
    while True:
        try:
            if client.ping():
                return
        except redis_lib.RedisError:
            pass
        assert time.monotonic() < deadline, "Redis did not answer PING after the restart"
        time.sleep(0.02)


def _statuses(replies: list[httpx.Response]) -> dict[int, int]:
    counts: dict[int, int] = {}
    for reply in replies:
        counts[reply.status_code] = counts.get(reply.status_code, 0) + 1
    return counts


async def _warm(api: httpx.AsyncClient, server: EmbeddedRedis) -> int:
    """Concurrent calls until the pool keeps many connections; returns how many it keeps."""
    replies = await asyncio.gather(*(_atp(api, i) for i in range(WARM_CALLS)))
    assert all(r.status_code == 200 for r in replies), _statuses(list(replies))
    assert (await _hold(api, "rst-warm", 0)).status_code == 201
    # Enough pooled connections that the burst after the restart draws many stale ones.
    pooled = _connected(server)
    assert pooled >= 16, pooled
    return pooled


async def test_no_503_once_redis_is_back_after_a_restart(
    own_redis: EmbeddedRedis, settings: Settings, topics: Topics
) -> None:
    store = Store(own_redis.client(), prefix=settings.key_prefix)
    for sku in SKUS:
        seed(store, sku, 1000)
    app = _app(settings, topics, own_redis.url)
    async with app.router.lifespan_context(app), _client(app) as api:
        stale = await _warm(api, own_redis)

        # Restarted while the event loop is blocked: the app cannot see the old sockets close
        # before it reuses them, as when Redis's container or host goes away and the closes
        # never reach the client (the sockets then fail on first use). When the loop runs
        # through a restart, the pool mostly sees the closes first and reconnects as it hands
        # the connection out; a socket that still fails on use is this case, only rarer.
        own_redis.restart(kill=True)
        _wait_for_ping(own_redis)

        replies = await _burst(api, "after")
        counts = _statuses(replies)
        failed = [r.text for r in replies if r.status_code >= 500][:3]
        assert all(r.status_code < 500 for r in replies), (counts, f"{stale} connections pooled", failed)
        assert counts.get(201, 0) == HOLDS_PER_BURST, counts  # the AOF kept the stock
        # And again, from the connections the burst left in the pool.
        again = await _burst(api, "again")
        assert all(r.status_code < 500 for r in again), _statuses(again)


async def test_redis_down_is_a_quick_503_then_calls_succeed_again(
    own_redis: EmbeddedRedis, settings: Settings, topics: Topics
) -> None:
    store = Store(own_redis.client(), prefix=settings.key_prefix)
    for sku in SKUS:
        seed(store, sku, 1000)
    app = _app(settings, topics, own_redis.url)
    async with app.router.lifespan_context(app), _client(app) as api:
        await _warm(api, own_redis)

        own_redis.kill()
        calls = [
            ("hold (hot path)", lambda: _hold(api, "rst-down", 1)),
            ("ATP (hot path)", lambda: _atp(api, 1)),
            ("read a reservation (hot path)", lambda: api.get("/v1/reservations/rst-warm", headers=bearer(ADMIN))),
            ("ATP of many (FastAPI route)", lambda: api.post(
                "/v1/atp/query", headers=JSON, content=orjson.dumps({"skus": SKUS[:3]}))),
        ]
        for _ in range(3):
            for name, call in calls:
                started = time.monotonic()
                reply = await call()
                took = time.monotonic() - started
                assert reply.status_code == 503, (name, reply.status_code, reply.text)
                assert reply.json()["error"] == "unavailable", name
                assert reply.headers["Retry-After"] == "1", name
                assert took < 2.0, (name, took)

        own_redis.start()
        _wait_for_ping(own_redis)
        replies = await _burst(api, "back")
        assert all(r.status_code < 500 for r in replies), _statuses(replies)
        # The warm-up hold survived the crash (AOF), and reads of it work again.
        assert (await api.get("/v1/reservations/rst-warm", headers=bearer(ADMIN))).status_code == 200
