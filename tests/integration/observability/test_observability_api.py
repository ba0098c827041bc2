"""An API process reports hold ages, expiry lag, watched ATP and its dependencies (engine.observability.api)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from connectors.topics import Topics
from engine import metrics
from engine.api import create_app
from engine.settings import Settings
from engine.store.connect import sync_redis
from engine.store.lease import AsyncLease
from engine.store.store import Store
from engine.store.wire import HoldRequest
from tests.integration.api_harness import RESERVER, api_settings, bearer, in_process, seed

pytestmark = pytest.mark.anyio


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels or {}) or 0.0


@pytest.fixture
def store(redis: Any, settings: Settings) -> Iterator[Store]:
    store = Store(sync_redis(settings), prefix=settings.key_prefix)  # a cluster client under R14
    yield store
    store.redis.close()


def _app(settings: Settings, topics: Topics) -> Any:
    # No sweeper: a due hold stays held until a script touches its SKU, so lag and expiry are ours to see.
    return create_app(api_settings(settings, sweep_interval_s=0.1, watch_skus=["OBS-1"]), topics=topics, sweep=False)


async def test_confirmed_released_and_expired_holds_have_their_age_observed(
    store: Any, settings: Settings, topics: Topics
) -> None:
    seed(store, "OBS-1", 20)
    auth = bearer(RESERVER)
    before = {end: _sample("atp_hold_age_seconds_count", {"end": end}) for end in metrics.HOLD_ENDS}
    app = _app(settings, topics)
    async with in_process(app) as api:
        observer = app.state.observer
        for rid, ttl in (("obs-c", 60), ("obs-r", 60), ("obs-x", 1)):
            made = await api.post("/v1/reservations", json={"lines": [{"sku": "OBS-1", "qty": 1}], "ttl_seconds": ttl},
                                  headers={"Idempotency-Key": rid, **auth})
            assert made.status_code == 201, made.text
        assert len(observer.clock) == 3
        assert (await api.post("/v1/reservations/obs-c/confirm", headers=auth)).status_code == 200
        assert (await api.post("/v1/reservations/obs-r/release", headers=auth)).status_code == 200
        # A repeated release ends nothing new.
        assert (await api.post("/v1/reservations/obs-r/release", headers=auth)).status_code == 200
        assert _sample("atp_hold_age_seconds_count", {"end": "confirmed"}) == before["confirmed"] + 1
        assert _sample("atp_hold_age_seconds_count", {"end": "released"}) == before["released"] + 1

        # obs-x expires after 1 s; the observer reads it back once the grace (0.1 + 2 s) passed too.
        deadline = asyncio.get_running_loop().time() + 15
        while _sample("atp_hold_age_seconds_count", {"end": "expired"}) == before["expired"]:
            assert asyncio.get_running_loop().time() < deadline, "the expired hold was never observed"
            await asyncio.sleep(0.2)
        assert len(observer.clock) == 0
    # Its age at expiry is its TTL (Redis time), so it lands in the (0.5, 1] s bucket... and not below.
    assert _sample("atp_hold_age_seconds_bucket", {"end": "expired", "le": "1.0"}) >= 1
    assert _sample("atp_hold_age_seconds_sum", {"end": "expired"}) >= 0.9


async def test_expiry_lag_is_how_overdue_the_oldest_held_hold_is(
    store: Any, settings: Settings, topics: Topics
) -> None:
    seed(store, "OBS-2", 5)
    app = _app(settings, topics)
    async with in_process(app):
        observer = app.state.observer
        await observer.measure_expiry_lag()
        assert _sample("atp_expiry_lag_seconds") == 0.0
        # Held behind the API's back (so nothing of the API touches OBS-2 again): it stays due.
        reply = store.hold_batch("OBS-2", [HoldRequest("obs-lag", 1, ttl_ms=200)])
        assert reply[0]["status"] == "ok"
        await asyncio.sleep(2.5)  # due within 1.2 s (a hold ends at a whole second)
        await observer.measure_expiry_lag()
        lag = _sample("atp_expiry_lag_seconds")
        assert 1.0 <= lag < 10
        store.release("OBS-2", "obs-lag")
        await observer.measure_expiry_lag()
        assert _sample("atp_expiry_lag_seconds") == 0.0


async def test_only_the_process_holding_the_sweeper_lease_scans_for_the_expiry_lag(
    store: Any, redis: Any, settings: Settings, topics: Topics
) -> None:
    seed(store, "OBS-3", 5)
    app = _app(settings, topics)
    async with in_process(app):
        observer = app.state.observer
        lease = app.state.sweeper_lease = AsyncLease(app.state.redis, settings.key_prefix, "sweeper", 60_000,
                                                     token="this-process")
        assert store.hold_batch("OBS-3", [HoldRequest("obs-lag3", 1, ttl_ms=200)])[0]["status"] == "ok"
        await asyncio.sleep(2.5)  # due, and nothing touches OBS-3
        redis.set(lease.key, "another-process", px=60_000)
        await observer.measure_expiry_lag()
        assert _sample("atp_expiry_lag_seconds") == 0.0  # a standby: the sweeping process reports it
        redis.delete(lease.key)
        assert await lease.acquire()
        await observer.measure_expiry_lag()
        assert 1.0 <= _sample("atp_expiry_lag_seconds") < 10


async def test_watched_atp_and_dependencies_are_refreshed_by_a_tick(
    store: Any, settings: Settings, topics: Topics
) -> None:
    seed(store, "OBS-1", 7, "WH9")
    app = _app(settings, topics)
    async with in_process(app):
        observer = app.state.observer
        metrics.set_dependency_up("redis", False)
        metrics.set_dependency_up("kafka", False)
        await observer.tick()
        assert _sample("atp_watch_atp", {"sku": "OBS-1", "location": "WH9"}) == 7
        assert _sample("atp_dependency_up", {"dependency": "redis"}) == 1
        assert _sample("atp_dependency_up", {"dependency": "kafka"}) == 1
        assert metrics.is_watched("OBS-1") and not metrics.is_watched("OBS-2")
