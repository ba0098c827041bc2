"""R1 (docs/quality.md) and R3 through HTTP, against a real uvicorn server on a free port.

R1: 1000 concurrent holds of qty 1 on ATP 100 from many HTTP connections → exactly 100
succeed (201), the rest are refused (409); afterwards ATP = 0 and held = 100.
R3: the same Idempotency-Key sent 50 times concurrently → one reservation and identical
answers; then the same key with different lines → 422 ``idempotency_conflict``, nothing changed.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from connectors.topics import Topics
from engine.settings import Settings
from tests.integration.api_harness import RESERVER, bearer, figures, make_app, seed, served, sync_store

pytestmark = pytest.mark.anyio

CONNECTIONS = 64


def _http(base_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        headers=bearer(RESERVER),
        # idle connections are dropped before uvicorn's 5 s keep-alive timeout could close one
        # under a request about to be sent on it (a ReadError on a loaded machine)
        limits=httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS, keepalive_expiry=2.0),
        timeout=60.0,
    )


async def test_r1_thousand_concurrent_http_holds_on_atp_100_exactly_100_succeed(
    redis: Any, redis_url: str, settings: Settings, topics: Topics
) -> None:
    sku = "HOT-HTTP-1"
    store = sync_store(redis_url, settings)
    seed(store, sku, 100)
    with served(make_app(settings, topics)) as base_url:
        # Several clients, each with its own pool, so requests arrive over many connections at once.
        clients = [_http(base_url) for _ in range(4)]
        try:
            started = time.perf_counter()
            replies = await asyncio.gather(
                *(
                    clients[i % len(clients)].post(
                        "/v1/reservations",
                        json={"lines": [{"sku": sku, "qty": 1}], "ttl_seconds": 600},
                        headers={"Idempotency-Key": f"r1-{i}"},
                    )
                    for i in range(1000)
                )
            )
            elapsed = time.perf_counter() - started
        finally:
            await asyncio.gather(*(c.aclose() for c in clients))
    statuses = Counter(r.status_code for r in replies)
    assert statuses == {201: 100, 409: 900}, statuses
    for reply in replies:
        body = reply.json()
        if reply.status_code == 409:
            assert body["error"] == "refused"
            assert body["lines"][0]["available"] == 0
        else:
            assert body["state"] == "held"
            assert body["lines"][0]["allocations"] == [
                {"kind": "oh", "ref": "default", "location": "default", "qty": 1}
            ]
    after = figures(store, sku)
    assert after["atp"] == 0
    assert after["held"] == 100
    print(f"R1 over HTTP: 1000 holds in {elapsed:.2f} s ({1000 / elapsed:.0f} req/s)")


async def test_r1_variant_holds_of_1_to_5_units_never_promise_more_than_100(
    redis: Any, redis_url: str, settings: Settings, topics: Topics
) -> None:
    sku = "HOT-HTTP-2"
    store = sync_store(redis_url, settings)
    seed(store, sku, 100)
    rng = random.Random(5)
    qtys = [rng.randint(1, 5) for _ in range(400)]
    with served(make_app(settings, topics)) as base_url:
        async with _http(base_url) as client:
            replies = await asyncio.gather(
                *(
                    client.post("/v1/reservations", json={"lines": [{"sku": sku, "qty": q}]},
                                headers={"Idempotency-Key": f"r1v-{i}"})
                    for i, q in enumerate(qtys)
                )
            )
    assert {r.status_code for r in replies} <= {201, 409}
    won = sum(q for q, r in zip(qtys, replies, strict=True) if r.status_code == 201)
    assert 95 < won <= 100  # small holds keep fitting until fewer than 5 units are left
    after = figures(store, sku)
    assert after["held"] == won and after["atp"] == 100 - won


async def test_r3_same_key_fifty_times_concurrently_is_one_reservation_with_identical_answers(
    redis: Any, redis_url: str, settings: Settings, topics: Topics
) -> None:
    sku = "IDEM-HTTP-1"
    store = sync_store(redis_url, settings)
    seed(store, sku, 10)
    body = {"lines": [{"sku": sku, "qty": 3}], "ttl_seconds": 600, "channel": "web"}
    key = {"Idempotency-Key": "r3-same-key"}
    with served(make_app(settings, topics)) as base_url:
        async with _http(base_url) as client:
            replies = await asyncio.gather(
                *(client.post("/v1/reservations", json=body, headers=key) for _ in range(50))
            )
            assert {r.status_code for r in replies} == {201}
            answers = {r.content for r in replies}
            assert len(answers) == 1, answers
            replayed = Counter(r.headers.get("idempotent-replayed") for r in replies)
            assert replayed == {"true": 49, None: 1}
            assert figures(store, sku)["held"] == 3

            before = figures(store, sku)
            for different in (
                {"lines": [{"sku": sku, "qty": 4}]},
                {"lines": [{"sku": sku, "qty": 3, "location": "WH9"}]},
                {"lines": [{"sku": sku, "qty": 3}, {"sku": "OTHER-1", "qty": 1}]},
            ):
                conflict = await client.post("/v1/reservations", json=different, headers=key)
                assert conflict.status_code == 422, conflict.text
                assert conflict.json()["error"] == "idempotency_conflict"
            assert figures(store, sku) == before
            current = await client.get("/v1/reservations/r3-same-key")
            assert current.status_code == 200
            assert current.json()["lines"][0]["qty"] == 3
