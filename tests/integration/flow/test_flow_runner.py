"""``python -m engine.flow`` as its own process: clean stop on SIGTERM, several processes, bad settings."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from bytewax.testing import TestingSink
from confluent_kafka import ConsumerGroupState, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from connectors.embedded import free_port
from connectors.topics import Topics, create_topics
from engine.flow.records import Outcome
from engine.flow.runner import run_flow
from engine.flow.source import PROGRESS_GROUP
from engine.settings import Settings
from tests.chaos.workload import stream
from tests.conftest import TOPIC_PARTITIONS
from tests.integration.flowkit import Produced, produce

pytestmark = pytest.mark.kafka_compat

ROOT = Path(__file__).resolve().parents[3]


def flow_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ATP_")}
    env.update(ATP_CONFIG=os.devnull, ATP_REDIS_URL=settings.redis_url, ATP_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
               ATP_REDIS_CLUSTER=str(settings.redis_cluster).lower(), PYTHONPATH=str(ROOT), **extra)
    return env


FLOW = [sys.executable, "-m", "engine.flow"]
ATP_FLOW = [sys.executable, "-c", "from engine.cli import main; main()", "flow"]  # what `atp flow` runs


def start(env: dict[str, str], log: Path, *args: str, entry: list[str] = FLOW) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:  # a file, not a pipe: a chatty child must never block on a full pipe
        return subprocess.Popen([*entry, "--no-metrics", "--log-level", "WARNING", *args],
                                env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Make sure the process is gone (a failed test must not leave a flow running)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


def output(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


def applied_any(redis: Any) -> bool:
    """True once the flow applied something (any per-SKU key exists)."""
    return any(True for _ in redis.scan_iter(match="atp:{*", count=100))


def rest(settings: Settings, topics: Topics) -> list[Outcome]:
    outcomes: list[tuple[str, Outcome]] = []
    run_flow(settings, topics, until_end=True, outcome_sink=TestingSink(outcomes), serve_metrics=False)
    return [o for _, o in outcomes]


Position = tuple[str, int]  # (topic, partition)


def log_ends(produced: list[Produced]) -> dict[Position, int]:
    """The next offset after the last message produced to each partition."""
    ends: dict[Position, int] = {}
    for p in produced:
        ends[(p.topic, p.partition)] = max(ends.get((p.topic, p.partition), 0), p.offset + 1)
    return ends


def committed_positions(bootstrap: str, topics: Topics) -> dict[Position, int]:
    """What the flow committed to its consumer group for each input partition, as the admin API
    (and so Kafka's lag tools) reads it; partitions without a commit are left out."""
    wanted = [TopicPartition(t, p) for t in topics.inputs for p in range(TOPIC_PARTITIONS)]
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept: a freed client never answers its futures
    futures = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(PROGRESS_GROUP, wanted)])
    found = futures[PROGRESS_GROUP].result(timeout=30).topic_partitions
    return {(tp.topic, tp.partition): tp.offset for tp in found if tp.offset >= 0}


def test_sigterm_drains_and_snapshots_so_a_restart_reapplies_nothing(
    settings: Settings, topics: Topics, redis: Any, kafka_bootstrap: str, tmp_path: Path
) -> None:
    events = stream(4500, seed=3, topics=topics, skus=300)
    produce(kafka_bootstrap, events[:4000])
    settings = settings.model_copy(update={"recovery_dir": str(tmp_path / "rec"), "snapshot_interval_s": 30.0})
    proc = start(flow_env(settings, ATP_RECOVERY_DIR=settings.recovery_dir, ATP_SNAPSHOT_INTERVAL_S="30"),
                 tmp_path / "flow.log", "--topic-suffix", topics.suffix)  # tailing: it never ends by itself
    try:
        deadline = time.monotonic() + 60
        while not applied_any(redis):
            assert time.monotonic() < deadline and proc.poll() is None, output(tmp_path / "flow.log")
            time.sleep(0.1)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    finally:
        stop(proc)
    assert code == 0, output(tmp_path / "flow.log")

    produce(kafka_bootstrap, events[4000:])  # 500 new events
    outcomes = rest(settings, topics)

    # The snapshot interval is 30 s: only the final snapshot of the clean stop can explain a
    # restart that resumes exactly after the last applied message, re-applying none of them.
    assert [o for o in outcomes if o.reply.get("reason") == "offset"] == []
    indexes = {int(o.event_id.rsplit("-", 1)[1]) for o in outcomes}
    assert min(indexes) > 0 and max(indexes) >= 4000


def test_two_processes_with_two_workers_each_apply_every_command_once(
    settings: Settings, topics: Topics, redis: Any, kafka_bootstrap: str, tmp_path: Path
) -> None:
    produced = produce(kafka_bootstrap, stream(3000, seed=5, topics=topics, skus=300))
    env = flow_env(settings, ATP_RECOVERY_DIR=str(tmp_path / "rec"), ATP_WORKERS="2")
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    logs = [tmp_path / f"flow-{i}.log" for i in range(2)]
    # one process started as `python -m engine.flow`, the other as `atp flow`: the same options
    procs = [start(env, logs[i], "--topic-suffix", topics.suffix, "--until-end", "-i", str(i), "-a", addresses,
                   entry=[FLOW, ATP_FLOW][i])
             for i in range(2)]
    try:
        codes = [p.wait(timeout=120) for p in procs]
    finally:
        for p in procs:
            stop(p)
    assert codes == [0, 0], [output(log) for log in logs]
    # Each process committed the read position of the partitions its workers own, to one group:
    # together, the end of every input partition.
    ends = log_ends(produced)
    assert len(ends) == len(topics.inputs) * TOPIC_PARTITIONS
    assert committed_positions(kafka_bootstrap, topics) == ends

    again = rest(settings, topics)  # the log once more, one worker, on top

    assert len(again) > 2500
    assert {o.status for o in again if o.sku} == {"duplicate"}  # nothing was left for this pass to do


def test_unusable_settings_exit_with_code_2_and_say_why(settings: Settings) -> None:
    env = flow_env(settings)
    env["ATP_KAFKA_BOOTSTRAP"] = ""
    done = subprocess.run([sys.executable, "-m", "engine.flow", "--no-metrics"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "ATP_KAFKA_BOOTSTRAP" in done.stderr

    env = flow_env(settings, ATP_WORKERS="0")
    done = subprocess.run([sys.executable, "-m", "engine.flow", "--no-metrics"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "workers" in done.stderr


def test_kafka_lag_tools_see_the_flow_caught_up(
    apache_kafka_bootstrap: str, settings: Settings, topics: Topics, redis: Any
) -> None:
    """What ``kafka-consumer-groups.sh --describe --group atp-flow`` computes — each input partition's
    end (ListOffsets) less the committed offset — is 0 once the flow has read to the end. Apache Kafka
    only: Tansu's ListOffsets does not report a partition's end (engine/flow/source.py)."""
    bootstrap = apache_kafka_bootstrap
    create_topics({"bootstrap.servers": bootstrap}, topics, partitions=TOPIC_PARTITIONS)  # no-op on the suite's broker
    produced = produce(bootstrap, stream(1500, seed=7, topics=topics, skus=200))
    rest(settings.model_copy(update={"kafka_bootstrap": bootstrap}), topics)

    admin = AdminClient({"bootstrap.servers": bootstrap})
    wanted = [TopicPartition(t, p) for t in topics.inputs for p in range(TOPIC_PARTITIONS)]
    latest = admin.list_offsets({tp: OffsetSpec.latest() for tp in wanted}, request_timeout=30)
    ends = {(tp.topic, tp.partition): future.result(timeout=30).offset for tp, future in latest.items()}
    assert ends == log_ends(produced)
    committed = committed_positions(bootstrap, topics)
    assert {pos: ends[pos] - committed.get(pos, 0) for pos in ends} == dict.fromkeys(ends, 0)
    # assign() never joins the group: it is listed, with no members, so lag tools find it
    groups = admin.list_consumer_groups(request_timeout=30).result(timeout=30).valid
    assert {g.group_id: g.state for g in groups}.get(PROGRESS_GROUP) == ConsumerGroupState.EMPTY
