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

from connectors.topics import Topics
from loadtest.kafka_read import InputReader


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
                timeout_s: float = 300.0, timeline: list[tuple[float, int]] | None = None) -> dict[str, Any]:
    """Apply every input event to ``<prefix>-naive:{sku}`` hashes; events/s from the first message.

    ``timeline``, when given, receives ``(seconds since the reader started, events applied)``
    after each batch (the history mode compares the rate at the start and the end)."""
    reader = InputReader(bootstrap, topics, "stream-bench-naive", timeout_s)
    count, writes = 0, 0
    for batch in reader.batches():
        pipe = client.pipeline(transaction=False)
        queued = 0
        for msg in batch:
            count += 1
            for sku, bucket, delta in effects(orjson.loads(msg.value())):
                pipe.hincrby(f"{prefix}-naive:{{{sku}}}", bucket, delta)
                queued += 1
        if queued:
            pipe.execute()
            writes += queued
        if timeline is not None:
            timeline.append((time.perf_counter() - reader.started, count))
    started, first = reader.started, reader.first
    done = time.perf_counter()
    streaming = done - (first or started)
    return {
        "events": count, "complete": count == expected, "redis_writes": writes,
        "seconds": round(done - started, 3), "events_per_s": round(count / (done - started), 1),
        "streaming_events_per_s": round(count / streaming, 1) if streaming > 0 else None,
    }  # fmt: skip
