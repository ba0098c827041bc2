"""KafkaInput against the real broker: the deterministic merge, resuming from a snapshot, stopping."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, run_main

from connectors.topics import Topics
from engine.flow.runner import MERGE_RANK
from engine.flow.source import ALL_GROUP, KafkaInput, RawMessage, group_name
from tests.integration.flowkit import produce

pytestmark = pytest.mark.kafka_compat  # also run on Apache Kafka (README, tests)


@dataclass(frozen=True)
class Msg:
    topic: str
    key: bytes
    value: bytes
    timestamp_ms: int
    partition: int = 0


def ranked(topics: Topics) -> list[str]:
    return [topics.name(base) for base in MERGE_RANK]


def interleaved(topics: Topics, n: int) -> list[Msg]:
    """n messages spread over the four input topics, timestamps shuffled against production order."""
    names = ranked(topics)
    out = []
    for i in range(n):
        topic = names[(i * 7) % 4]
        ts = 1_000_000 + (i * 37) % 50  # many ties, and later messages with earlier timestamps
        out.append(Msg(topic, b"k%d" % i, b"v%d" % i, ts))
    return out


def produce_to_partition_zero(bootstrap: str, msgs: list[Msg]) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    for m in msgs:
        p.produce(m.topic, value=m.value, key=m.key, partition=m.partition, timestamp=m.timestamp_ms)
    assert p.flush(30) == 0


def expected_order(topics: Topics, msgs: list[Msg]) -> list[bytes]:
    """A k-way merge of the per-partition logs (production order): always the head with the least
    (timestamp, topic rank, offset)."""
    rank = {t: r for r, t in enumerate(ranked(topics))}
    logs: dict[tuple[str, int], list[Msg]] = {}
    for m in msgs:
        logs.setdefault((m.topic, m.partition), []).append(m)
    pos = dict.fromkeys(logs, 0)
    out = []
    while any(pos[s] < len(logs[s]) for s in logs):
        live = [s for s in logs if pos[s] < len(logs[s])]
        best = min(live, key=lambda s: (logs[s][pos[s]].timestamp_ms, rank[s[0]], pos[s]))
        out.append(logs[best][pos[best]].value)
        pos[best] += 1
    return out


def read_all(kafka_bootstrap: str, topics: Topics, single_group: bool) -> list[RawMessage]:
    out: list[RawMessage] = []
    flow = Dataflow("read")
    src = KafkaInput({"bootstrap.servers": kafka_bootstrap}, ranked(topics), batch_size=16, until_end=True,
                     single_group=single_group)
    op.output("out", op.input("in", flow, src), TestingSink(out))
    run_main(flow)
    return out


@pytest.mark.parametrize("single_group", [True, False], ids=["one-group", "group-per-partition"])
def test_a_group_emits_its_partitions_merged_by_timestamp_then_topic_rank(
    kafka_bootstrap: str, topics: Topics, single_group: bool
) -> None:
    msgs = interleaved(topics, 400)
    produce_to_partition_zero(kafka_bootstrap, msgs)

    got = read_all(kafka_bootstrap, topics, single_group)

    assert [m.value for m in got] == expected_order(topics, msgs)
    assert [m.value for m in got] != [m.value for m in msgs]  # the merge did reorder
    first = got[0]
    assert first.partition == 0 and first.source == f"{first.topic}:0" and first.timestamp_ms == 1_000_000


def test_the_source_lists_one_partition_per_partition_index_or_one_for_all(kafka_bootstrap: str, topics: Topics) -> None:
    conf = {"bootstrap.servers": kafka_bootstrap}
    assert KafkaInput(conf, topics.inputs).list_parts() == [group_name(i) for i in range(3)]
    assert KafkaInput(conf, topics.inputs, single_group=True).list_parts() == [ALL_GROUP]


def test_resuming_from_a_snapshot_continues_exactly_the_same_sequence(kafka_bootstrap: str, topics: Topics) -> None:
    msgs = interleaved(topics, 300)
    for i, m in enumerate(msgs):  # spread over the three partitions as well
        msgs[i] = Msg(m.topic, m.key, m.value, m.timestamp_ms, partition=i % 3)
    produce_to_partition_zero(kafka_bootstrap, msgs)
    full = [m.value for m in read_all(kafka_bootstrap, topics, single_group=True)]
    src = KafkaInput({"bootstrap.servers": kafka_bootstrap}, ranked(topics), batch_size=7, until_end=True,
                     single_group=True)

    first = src.build_part("in", ALL_GROUP, None)
    head: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(head) < 120:
        assert time.monotonic() < deadline
        head.extend(m.value for m in first.next_batch())
    state = first.snapshot()
    first.close()
    second = src.build_part("in", ALL_GROUP, state)
    tail: list[bytes] = []
    while True:
        assert time.monotonic() < deadline
        try:
            tail.extend(m.value for m in second.next_batch())
        except StopIteration:
            break
    second.close()

    assert len(full) == 300
    assert head + tail == full


def test_setting_the_stop_event_ends_a_tailing_source(kafka_bootstrap: str, topics: Topics) -> None:
    produce(kafka_bootstrap, [Msg(topics.orders, b"k", b"v", 0)])
    stop = threading.Event()
    out: list[RawMessage] = []
    flow = Dataflow("tail")
    src = KafkaInput({"bootstrap.servers": kafka_bootstrap}, topics.inputs, stop_event=stop, single_group=True)
    op.output("out", op.input("in", flow, src), TestingSink(out))
    runner = threading.Thread(target=run_main, args=(flow,), daemon=True)
    runner.start()
    deadline = time.monotonic() + 30
    while not out and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runner.is_alive(), "a tailing source must not end by itself"
    stop.set()
    runner.join(timeout=15)

    assert not runner.is_alive()
    assert [m.value for m in out] == [b"v"]


def test_the_read_position_is_committed_to_the_progress_group_for_lag_tools(kafka_bootstrap: str, topics: Topics) -> None:
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import AdminClient

    from engine.flow.source import PROGRESS_GROUP

    msgs = interleaved(topics, 40)
    produce_to_partition_zero(kafka_bootstrap, msgs)
    read = read_all(kafka_bootstrap, topics, single_group=False)
    assert len(read) == 40
    per_topic = {t: sum(1 for m in msgs if m.topic == t) for t in ranked(topics)}
    wanted = [TopicPartition(t, 0) for t in ranked(topics)]
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    futures = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(PROGRESS_GROUP, wanted)])
    committed = futures[PROGRESS_GROUP].result(timeout=30)
    # the next offset to read of each partition: its end, once everything was read
    assert {tp.topic: tp.offset for tp in committed.topic_partitions} == per_topic
