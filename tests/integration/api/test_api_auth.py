"""R10 (docs/quality.md): no token / wrong token / a token without the role → 401 / 401 / 403, nothing changed."""

from __future__ import annotations

from typing import Any

import pytest

from connectors.topics import Topics
from engine.settings import Settings
from tests.integration.api_harness import (
    ADMIN,
    OPERATOR,
    READER,
    RESERVER,
    bearer,
    figures,
    in_process,
    make_app,
    seed,
    sync_store,
)

pytestmark = pytest.mark.anyio

SKU = "AUTH-1"
HOLD = {"lines": [{"sku": SKU, "qty": 2}]}


@pytest.fixture
def store(redis: Any, redis_url: str, settings: Settings) -> Any:
    store = sync_store(redis_url, settings)
    seed(store, SKU, 10)
    return store


@pytest.mark.parametrize(
    ("headers", "status", "detail"),
    [
        ({}, 401, "missing bearer token"),
        (bearer("not-a-configured-token"), 401, "unknown bearer token"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, 401, "missing bearer token"),
        (bearer(READER), 403, "reserve"),
        (bearer(OPERATOR), 403, "reserve"),
    ],
)
async def test_hold_without_the_reserve_role_is_refused_and_changes_nothing(
    store: Any, settings: Settings, topics: Topics, headers: dict[str, str], status: int, detail: str
) -> None:
    before = figures(store, SKU)
    async with in_process(make_app(settings, topics)) as api:
        reply = await api.post("/v1/reservations", json=HOLD, headers={"Idempotency-Key": "R10-a", **headers})
    assert reply.status_code == status
    body = reply.json()
    assert body["error"] == ("unauthorized" if status == 401 else "forbidden")
    assert detail in body["detail"]
    if status == 401:
        assert reply.headers["www-authenticate"] == "Bearer"
    assert figures(store, SKU) == before
    assert store.get_line(SKU, "R10-a")["status"] == "not_found"


async def test_lifecycle_calls_need_reserve_and_change_nothing_without_it(
    store: Any, settings: Settings, topics: Topics
) -> None:
    async with in_process(make_app(settings, topics)) as api:
        made = await api.post("/v1/reservations", json=HOLD, headers={"Idempotency-Key": "R10-b", **bearer(RESERVER)})
        assert made.status_code == 201, made.text
        before = figures(store, SKU)
        for op in ("confirm", "release"):
            for headers, status in (({}, 401), (bearer("wrong"), 401), (bearer(READER), 403)):
                reply = await api.post(f"/v1/reservations/R10-b/{op}", headers=headers)
                assert reply.status_code == status, (op, reply.text)
        reply = await api.post("/v1/reservations/R10-b/extend", json={"ttl_seconds": 60}, headers=bearer(READER))
        assert reply.status_code == 403
        assert figures(store, SKU) == before
        assert (await api.get("/v1/reservations/R10-b", headers=bearer(READER))).json()["state"] == "held"


async def test_read_role_reads_and_operate_role_is_needed_for_ops(store: Any, settings: Settings, topics: Topics) -> None:
    async with in_process(make_app(settings, topics)) as api:
        for token in (READER, RESERVER, OPERATOR, ADMIN):
            reply = await api.get(f"/v1/atp/{SKU}", headers=bearer(token))
            assert reply.status_code == 200, token
            assert reply.json()["atp"] == 10
        assert (await api.get(f"/v1/atp/{SKU}")).status_code == 401
        policy = {"mode": "strict", "safety": 3}
        for token in (READER, RESERVER):
            assert (await api.put(f"/v1/policies/{SKU}", json=policy, headers=bearer(token))).status_code == 403
            adjustment = {"sku": SKU, "delta": -1, "reason": "damage"}
            assert (await api.post("/v1/adjustments", json=adjustment, headers=bearer(token))).status_code == 403
        assert figures(store, SKU)["atp"] == 10
        reply = await api.put(f"/v1/policies/{SKU}", json=policy, headers=bearer(OPERATOR))
        assert reply.status_code == 200, reply.text
        assert figures(store, SKU)["atp"] == 7


async def test_probes_and_metrics_need_no_token(settings: Settings, topics: Topics, redis: Any) -> None:
    async with in_process(make_app(settings, topics)) as api:
        assert (await api.get("/healthz")).status_code == 200
        ready = await api.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"redis": True, "kafka": True, "events": True, "changelog": True}
        metrics = await api.get("/metrics")
        assert metrics.status_code == 200
        assert 'atp_dependency_up{dependency="redis"} 1.0' in metrics.text
