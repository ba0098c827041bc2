"""The flow process's self-reporting: watch list, drift at 0, Redis and broker probes, watched ATP
(engine.observability.flow and .probes)."""

from __future__ import annotations

import threading
import time
from typing import Any

import redis as redis_lib
from confluent_kafka.admin import AdminClient

from connectors.embedded import free_port
from engine import metrics
from engine.observability.flow import observe_flow
from engine.observability.probes import probe_dependencies
from engine.settings import Settings
from engine.store.connect import sync_redis
from engine.store.store import Store
from engine.store.wire import HoldRequest, SupplyCommand


def _up(dependency: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("atp_dependency_up", {"dependency": dependency})


def _watched(sku: str, location: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("atp_watch_atp", {"sku": sku, "location": location})


def _wait(condition: Any, what: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_probes_see_the_running_redis_and_broker(settings: Settings) -> None:
    client = sync_redis(settings)
    admin = AdminClient(settings.kafka_config())
    try:
        assert probe_dependencies(client, admin) == (True, True)
    finally:
        client.close()
    assert _up("redis") == 1 and _up("kafka") == 1


def test_probes_report_unreachable_dependencies_as_down() -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    client = redis_lib.Redis.from_url(f"redis://{nowhere}/0", socket_connect_timeout=1)
    admin = AdminClient({"bootstrap.servers": nowhere})
    started = time.monotonic()
    assert probe_dependencies(client, admin) == (False, False)
    assert time.monotonic() - started < 10
    assert _up("redis") == 0 and _up("kafka") == 0


def test_observe_flow_sets_the_watch_list_drift_dependencies_and_watched_atp(
    settings: Settings, redis: Any
) -> None:
    store = Store(sync_redis(settings), prefix=settings.key_prefix)
    assert store.apply([SupplyCommand("FLOW-W1", "count", {"loc": "WH2", "on_hand": 9})])[0]["status"] == "ok"
    metrics.set_drift(3, 17)
    metrics.set_dependency_up("redis", False)
    metrics.set_dependency_up("kafka", False)
    watching = settings.model_copy(update={"watch_skus": ["FLOW-W1", "FLOW-W2"]})
    with observe_flow(watching):
        assert metrics.is_watched("FLOW-W1") and metrics.is_watched("FLOW-W2") and not metrics.is_watched("X")
        assert metrics.REGISTRY.get_sample_value("atp_drift_skus") == 0
        assert metrics.REGISTRY.get_sample_value("atp_drift_units") == 0
        _wait(lambda: _up("redis") == 1 and _up("kafka") == 1, "the dependency probe never reported")
        _wait(lambda: _watched("FLOW-W1", "WH2") == 9, "the watched ATP was never read")
        # A hold no event of the flow saw: the reporter's next read (every 5 s) shows it.
        assert store.hold_batch("FLOW-W1", [HoldRequest("flow-w-hold", 4)])[0]["status"] == "ok"
        _wait(lambda: _watched("FLOW-W1", "WH2") == 5, "the watched ATP went stale")
        assert _watched("FLOW-W2", "default") is None  # a SKU with no position has no series
    assert not any(t.name == "atp-flow-reporter" for t in threading.enumerate())
    metrics.configure_watch_list([])
    store.redis.close()


def test_observe_flow_without_probes_starts_no_thread(settings: Settings) -> None:
    with observe_flow(settings, probes=False):
        assert not any(t.name == "atp-flow-reporter" for t in threading.enumerate())
