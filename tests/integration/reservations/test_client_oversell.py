"""R1 (docs/quality.md) — the oversell race: 1000 concurrent holds on ATP 100 over ≥ 32 connections.

Through the client with coalescing (threads and asyncio; 32 clients, each with its own
connection pool, as 32 checkout servers would be), and through the bare store without coalescing
(one script call per hold on 32 separate connections). Afterwards exactly the stock is held:
ATP = 0 and held = Σ successful qty; the invariant checker runs at teardown (R12).
"""

from __future__ import annotations

import asyncio
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis as redis_lib

from engine.reservations.client import AsyncAtpClient, AtpClient
from engine.reservations.types import Refusal, Reservation
from engine.store.store import Store
from engine.store.wire import HoldRequest, SupplyCommand
from tests.conftest import redis_client

STOCK = 100
CALLS = 1000
CONNECTIONS = 32
SKU = "FLASH-1"


def sync_client(url: str, cluster: bool) -> Any:
    return redis_client(url, cluster, decode_responses=True)


def async_client(url: str, cluster: bool) -> Any:
    return redis_client(url, cluster, asyncio=True, decode_responses=True)


def put_stock(redis: Any, qty: int = STOCK) -> None:
    Store(redis).apply([SupplyCommand(SKU, "count", {"loc": "DC1", "on_hand": qty})])


def connected_clients(redis: Any, cluster: bool) -> int:
    if cluster:
        per_node = redis.info("clients", target_nodes=redis_lib.RedisCluster.PRIMARIES)
        return sum(int(v["connected_clients"]) for v in per_node.values())
    return int(redis.info("clients")["connected_clients"])


def assert_sold_exactly(redis: Any, results: list[Any], qtys: list[int]) -> int:
    won = sum(q for r, q in zip(results, qtys, strict=True) if isinstance(r, Reservation))
    for r, q in zip(results, qtys, strict=True):
        assert isinstance(r, (Reservation, Refusal))
        if isinstance(r, Refusal):
            # never a false refusal: the script saw fewer units than asked
            assert (r.status, r.reason) == ("refused", "insufficient")
            assert r.available[SKU] < q
    pos = Store(redis).position(SKU)
    assert pos["held"] == won
    assert pos["atp"] == STOCK - won
    assert pos["on_hand"] == STOCK
    return won


def run_threads(url: str, cluster: bool, qtys: list[int], clients: list[AtpClient]) -> list[Any]:
    start = threading.Barrier(200)

    def hold(i: int) -> Any:
        if i < 200:
            start.wait()
        return clients[i % CONNECTIONS].hold(f"res-{i}", [(SKU, qtys[i], None)], ttl_s=600)

    with ThreadPoolExecutor(max_workers=200) as pool:
        return list(pool.map(hold, range(CALLS)))


def test_1000_threads_through_coalescing_clients_sell_exactly_the_stock(
    redis: Any, redis_url: str, redis_cluster_mode: bool
) -> None:
    put_stock(redis)
    qtys = [1] * CALLS
    clients = [AtpClient(sync_client(redis_url, redis_cluster_mode)) for _ in range(CONNECTIONS)]
    results = run_threads(redis_url, redis_cluster_mode, qtys, clients)
    assert assert_sold_exactly(redis, results, qtys) == STOCK
    assert sum(isinstance(r, Reservation) for r in results) == STOCK
    assert connected_clients(redis, redis_cluster_mode) >= CONNECTIONS


def test_1000_threads_with_qty_1_to_5_never_sell_more_than_the_stock(
    redis: Any, redis_url: str, redis_cluster_mode: bool
) -> None:
    put_stock(redis)
    rnd = random.Random(7)
    qtys = [rnd.randint(1, 5) for _ in range(CALLS)]
    clients = [AtpClient(sync_client(redis_url, redis_cluster_mode)) for _ in range(CONNECTIONS)]
    results = run_threads(redis_url, redis_cluster_mode, qtys, clients)
    won = assert_sold_exactly(redis, results, qtys)
    # every refusal saw fewer than 5 units, so at most 4 units can be left over
    assert STOCK - 4 <= won <= STOCK


def test_1000_asyncio_tasks_through_coalescing_clients_sell_exactly_the_stock(
    redis: Any, redis_url: str, redis_cluster_mode: bool
) -> None:
    put_stock(redis)
    qtys = [1] * CALLS

    async def go() -> list[Any]:
        conns = [async_client(redis_url, redis_cluster_mode) for _ in range(CONNECTIONS)]
        clients = [AsyncAtpClient(c) for c in conns]
        try:
            return await asyncio.gather(
                *(clients[i % CONNECTIONS].hold(f"res-{i}", [(SKU, 1, None)]) for i in range(CALLS))
            )
        finally:
            for c in conns:
                await c.aclose()

    results = asyncio.run(go())
    assert assert_sold_exactly(redis, results, qtys) == STOCK


def test_1000_asyncio_tasks_with_qty_1_to_5_never_sell_more_than_the_stock(
    redis: Any, redis_url: str, redis_cluster_mode: bool
) -> None:
    put_stock(redis)
    rnd = random.Random(11)
    qtys = [rnd.randint(1, 5) for _ in range(CALLS)]

    async def go() -> list[Any]:
        conns = [async_client(redis_url, redis_cluster_mode) for _ in range(CONNECTIONS)]
        clients = [AsyncAtpClient(c) for c in conns]
        try:
            return await asyncio.gather(
                *(clients[i % CONNECTIONS].hold(f"res-{i}", [(SKU, qtys[i], None)]) for i in range(CALLS))
            )
        finally:
            for c in conns:
                await c.aclose()

    results = asyncio.run(go())
    won = assert_sold_exactly(redis, results, qtys)
    assert STOCK - 4 <= won <= STOCK


def test_1000_uncoalesced_script_calls_on_32_connections_sell_exactly_the_stock(
    redis: Any, redis_url: str, redis_cluster_mode: bool
) -> None:
    put_stock(redis)
    stores = [Store(sync_client(redis_url, redis_cluster_mode)) for _ in range(CONNECTIONS)]

    def worker(k: int) -> list[str]:
        store = stores[k]
        return [store.hold_batch(SKU, [HoldRequest(f"raw-{i}", 1)])[0]["status"]
                for i in range(k, CALLS, CONNECTIONS)]

    with ThreadPoolExecutor(max_workers=CONNECTIONS) as pool:
        statuses = [s for chunk in pool.map(worker, range(CONNECTIONS)) for s in chunk]
    assert statuses.count("ok") == STOCK
    assert statuses.count("refused") == CALLS - STOCK
    pos = Store(redis).position(SKU)
    assert (pos["held"], pos["atp"]) == (STOCK, 0)
    assert connected_clients(redis, redis_cluster_mode) >= CONNECTIONS


def test_coalescing_really_batches_concurrent_holds(redis: Any, redis_url: str, redis_cluster_mode: bool) -> None:
    put_stock(redis)
    client = AtpClient(sync_client(redis_url, redis_cluster_mode))
    sizes: list[int] = []
    real = client.store.hold_batch_claiming

    def counting(sku: str, requests: Any, claims: Any) -> Any:
        sizes.append(len(requests))
        return real(sku, requests, claims)

    client.store.hold_batch_claiming = counting  # type: ignore[method-assign]
    with ThreadPoolExecutor(max_workers=100) as pool:
        results = list(pool.map(lambda i: client.hold(f"b-{i}", [(SKU, 1, None)]), range(300)))
    assert sum(isinstance(r, Reservation) for r in results) == STOCK
    assert sum(sizes) == 300
    assert len(sizes) < 300 and max(sizes) > 1
