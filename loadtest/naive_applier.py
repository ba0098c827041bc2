"""P3's peer: the stream applier a team would write in a day, run on the same events in the same run.

One confluent-kafka consumer assigned every input partition from offset 0 (no group), orjson, and
per consumed batch one pipelined round trip of ``HINCRBY`` per event line into a hash per SKU —
no dedupe, no ordering across partitions, no policy, no reservations, no alerts, no DLQ. What the
flow does beyond this is the price of its guarantees; the ratio flow / naive says what it costs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition

from connectors.topics import Topics


def effects(event: dict[str, Any]) -> Iterator[tuple[str, str, int]]:
    """(sku, bucket, delta) of one event, the naive way (pure)."""
    kind = event.get("type")
    if kind == "order.placed":
        for line in event.get("lines") or ():
            yield line["sku"], "committed", int(line["qty"])
    elif kind == "order.cancelled":
        for line in event.get("lines") or ():
            yield line["sku"], "committed", -int(line.get("qty") or 0)
    elif kind == "order.shipped":
        for line in event.get("lines") or ():
            yield line["sku"], "on_hand", -int(line["qty"])
            yield line["sku"], "committed", -int(line["qty"])
    elif kind == "receipt.posted":
        yield event["sku"], "on_hand", int(event["qty"])
    elif kind == "stock.adjusted":
        yield event["sku"], "on_hand", int(event["delta"])
    elif kind == "stock.counted":
        yield event["sku"], "counted", int(event["on_hand"])
    elif kind == "inbound.created":
        yield event["sku"], "in_transit", int(event["qty"])


def naive_apply(bootstrap: str, topics: Topics, expected: int, client: Any, prefix: str,
                timeout_s: float = 300.0) -> dict[str, Any]:
    """Apply every input event to ``<prefix>-naive:{sku}`` hashes; events/s from the first message."""
    from confluent_kafka.admin import AdminClient

    meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    tps = [TopicPartition(t, p, 0) for t in topics.inputs for p in sorted(meta.topics[t].partitions)]
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "stream-bench-naive",
                         "enable.auto.commit": False, "enable.partition.eof": True, "fetch.wait.max.ms": 100})
    started = time.perf_counter()
    consumer.assign(tps)
    count, writes, ended, first = 0, 0, set(), None
    try:
        while len(ended) < len(tps) and time.perf_counter() - started < timeout_s:
            pipe = client.pipeline(transaction=False)
            queued = 0
            for msg in consumer.consume(10_000, 0.2):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        ended.add((msg.topic(), msg.partition()))
                    continue
                if first is None:
                    first = time.perf_counter()
                ended.discard((msg.topic(), msg.partition()))
                count += 1
                for sku, bucket, delta in effects(orjson.loads(msg.value())):
                    pipe.hincrby(f"{prefix}-naive:{{{sku}}}", bucket, delta)
                    queued += 1
            if queued:
                pipe.execute()
                writes += queued
    finally:
        consumer.close()
    done = time.perf_counter()
    streaming = done - (first or started)
    return {
        "events": count, "complete": count == expected, "redis_writes": writes,
        "seconds": round(done - started, 3), "events_per_s": round(count / (done - started), 1),
        "streaming_events_per_s": round(count / streaming, 1) if streaming > 0 else None,
    }  # fmt: skip
