"""The flow process's self-reporting: watch list, drift at 0, Redis and broker probes (engine.observability)."""

from __future__ import annotations

import threading
import time

import redis as redis_lib
from confluent_kafka.admin import AdminClient

from connectors.embedded import free_port
from engine import metrics
from engine.observability.flow import observe_flow
from engine.observability.probes import DependencyProbe
from engine.settings import Settings


def _up(dependency: str) -> float | None:
    return metrics.REGISTRY.get_sample_value("atp_dependency_up", {"dependency": dependency})


def test_probes_see_the_running_redis_and_broker(settings: Settings) -> None:
    probe = DependencyProbe(settings)
    client = redis_lib.Redis.from_url(settings.redis_url)
    admin = AdminClient(settings.kafka_config())
    try:
        assert probe.probe_once(client, admin) == (True, True)
    finally:
        client.close()
    assert _up("redis") == 1 and _up("kafka") == 1


def test_probes_report_unreachable_dependencies_as_down() -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    settings = Settings(redis_url=f"redis://{nowhere}/0", kafka_bootstrap=nowhere)
    probe = DependencyProbe(settings)
    client = redis_lib.Redis.from_url(settings.redis_url, socket_connect_timeout=1)
    admin = AdminClient(settings.kafka_config())
    started = time.monotonic()
    assert probe.probe_once(client, admin) == (False, False)
    assert time.monotonic() - started < 10
    assert _up("redis") == 0 and _up("kafka") == 0


def test_observe_flow_sets_the_watch_list_drift_and_keeps_dependencies_fresh(settings: Settings) -> None:
    metrics.set_drift(3, 17)
    metrics.set_dependency_up("redis", False)
    metrics.set_dependency_up("kafka", False)
    watching = settings.model_copy(update={"watch_skus": ["FLOW-W1", "FLOW-W2"]})
    with observe_flow(watching):
        assert metrics.is_watched("FLOW-W1") and metrics.is_watched("FLOW-W2") and not metrics.is_watched("X")
        assert metrics.REGISTRY.get_sample_value("atp_drift_skus") == 0
        assert metrics.REGISTRY.get_sample_value("atp_drift_units") == 0
        deadline = time.monotonic() + 10
        while not (_up("redis") == 1 and _up("kafka") == 1):
            assert time.monotonic() < deadline, "the dependency probe never reported"
            time.sleep(0.05)
    metrics.configure_watch_list([])


def test_observe_flow_without_probes_starts_no_thread(settings: Settings) -> None:
    with observe_flow(settings, probes=False):
        assert not any(t.name == "atp-dependency-probe" for t in threading.enumerate())
