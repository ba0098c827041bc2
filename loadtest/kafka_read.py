"""Reading every input partition from offset 0 to its end, as the stream benchmarks' baselines do:
one assign-mode consumer (no group membership), batches of messages until each partition has
reported its end."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

from connectors.topics import Topics


class InputReader:
    """Iterate over batches of data messages; ``first`` is when the first message came."""

    def __init__(self, bootstrap: str, topics: Topics, group: str, timeout_s: float = 300.0) -> None:
        self.bootstrap, self.topics, self.group, self.timeout_s = bootstrap, topics, group, timeout_s
        self.started = 0.0
        self.first: float | None = None

    def batches(self) -> Iterator[list[Any]]:
        from confluent_kafka.admin import AdminClient

        meta = AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=10)
        tps = [TopicPartition(t, p, 0) for t in self.topics.inputs for p in sorted(meta.topics[t].partitions)]
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": self.group,
                             "enable.auto.commit": False, "enable.partition.eof": True, "fetch.wait.max.ms": 100})
        self.started = time.perf_counter()
        consumer.assign(tps)
        ended: set[tuple[str, int]] = set()
        try:
            while len(ended) < len(tps) and time.perf_counter() - self.started < self.timeout_s:
                batch = []
                for msg in consumer.consume(10_000, 0.2):
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            ended.add((msg.topic(), msg.partition()))
                        continue
                    if self.first is None:
                        self.first = time.perf_counter()
                    ended.discard((msg.topic(), msg.partition()))
                    batch.append(msg)
                yield batch
        finally:
            consumer.close()
