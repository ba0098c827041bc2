"""A log that starts again (topic deleted and created again, a broker that lost its data) is
noticed, counted and read as a new generation, never dropped as duplicates by offset
(engine/flow/log_identity.py; README, "When the log is reset")."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from connectors.topics import Topics
from engine import metrics
from engine.flow.runner import run_flow
from engine.settings import Settings
from engine.store.keys import logs_key
from engine.store.store import Store
from tests.conftest import TOPIC_PARTITIONS
from tests.integration.flow.test_flow_runner import FLOW, ROOT, flow_env, output, start, stop
from tests.integration.flowkit import produce

AT = "2026-01-01T00:00:00Z"


@dataclass(frozen=True)
class Msg:
    topic: str
    key: bytes
    value: bytes


def count(topics: Topics, event_id: str, sku: str, on_hand: int) -> Msg:
    return Msg(topics.adjustments, sku.encode(), orjson.dumps({
        "event_id": event_id, "type": "stock.counted", "occurred_at": AT, "sku": sku, "location": "WH1",
        "on_hand": on_hand}))


def recreate(bootstrap: str, topic: str) -> None:
    """Delete ``topic`` and create it again: the same name, a new id, offsets from 0."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.delete_topics([topic])[topic].result(timeout=30)
    deadline = time.monotonic() + 30
    while True:
        try:
            admin.create_topics([NewTopic(topic, TOPIC_PARTITIONS, 1)])[topic].result(timeout=30)
            return
        except Exception:  # the deletion may still be under way
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def resets(topic: str) -> float:
    return metrics.LOG_RESETS.labels(topic)._value.get()


def test_a_new_log_of_a_topic_is_read_as_a_new_generation(
    settings: Settings, topics: Topics, redis: Any, kafka_bootstrap: str
) -> None:
    store = Store(redis, prefix=settings.key_prefix)
    produce(kafka_bootstrap, [count(topics, f"c-{i}", "LR-1", 10 + i) for i in range(5)])
    run_flow(settings, topics, until_end=True, serve_metrics=False, alerting=False)
    assert store.position("LR-1")["on_hand"] == 14
    before = resets(topics.adjustments)

    recreate(kafka_bootstrap, topics.adjustments)
    # the new log's offset 0 is under the old log's watermark (4); and its second message repeats
    # an event the old log applied, which event-id dedupe still catches across the reset
    produce(kafka_bootstrap, [count(topics, "n-1", "LR-1", 3), count(topics, "c-4", "LR-1", 14)])
    run_flow(settings, topics, until_end=True, serve_metrics=False, alerting=False)

    assert store.position("LR-1")["on_hand"] == 3
    assert resets(topics.adjustments) == before + 1
    generations = redis.hgetall(logs_key(settings.key_prefix))
    assert sorted(v for k, v in generations.items() if k.startswith(f"{topics.adjustments}|") and "#" not in k) == [
        "0", "1"]

    # the same log again: no reset, nothing applied twice
    run_flow(settings, topics, until_end=True, serve_metrics=False, alerting=False)
    assert resets(topics.adjustments) == before + 1
    assert store.position("LR-1")["on_hand"] == 3


def test_a_running_flow_stops_loudly_when_its_log_starts_again_and_reads_it_after_a_restart(
    settings: Settings, topics: Topics, redis: Any, kafka_bootstrap: str, tmp_path: Path
) -> None:
    store = Store(redis, prefix=settings.key_prefix)
    produce(kafka_bootstrap, [count(topics, "r-1", "LR-2", 7)])
    env = flow_env(settings, ATP_KEY_PREFIX=settings.key_prefix)
    suffix = ("--topic-suffix", topics.suffix)
    log = tmp_path / "flow.log"
    proc = start(env, log, *suffix)
    try:
        deadline = time.monotonic() + 60
        while store.position("LR-2")["on_hand"] != 7:
            assert time.monotonic() < deadline, f"the flow never applied the first event: {output(log)}"
            time.sleep(0.2)
        recreate(kafka_bootstrap, topics.adjustments)
        # it must not go on as if nothing happened: it stops (the check every 10 s), or on Tansu
        # librdkafka may crash fetching the deleted topic first; either way a supervisor sees it
        code = proc.wait(timeout=60)
    finally:
        stop(proc)
    assert code != 0, output(log)
    if code > 0:
        assert "new topic id" in output(log)
    produce(kafka_bootstrap, [count(topics, "r-2", "LR-2", 2)])
    again = subprocess.run([*FLOW, "--no-metrics", "--until-end", *suffix], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr[-2000:]
    assert store.position("LR-2")["on_hand"] == 2  # the new log, read from its start


@pytest.mark.parametrize("lag", [-3, 0, 5])
def test_the_lag_gauge_keeps_its_sign(lag: int) -> None:
    metrics.set_consumer_lag("lag-sign-topic", 0, lag)
    # the label the gauge files it under ("other" once the suite has used 32 topic names)
    label = metrics._topic("lag-sign-topic")
    assert metrics.CONSUMER_LAG.labels(label, "0")._value.get() == lag
