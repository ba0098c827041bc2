"""R8 (docs/quality.md): every kind of bad message → one DLQ record on the real broker; the stream goes on."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from connectors.dlq import decode_dlq_value, header
from connectors.topics import Topics
from engine import metrics
from engine.flow.runner import run_flow
from engine.settings import Settings
from engine.store.store import Store
from tests.integration.flowkit import produce, read_topic

pytestmark = pytest.mark.kafka_compat  # also run on Apache Kafka (README, tests)

AT = "2026-01-01T00:00:00Z"


@dataclass(frozen=True)
class Msg:
    topic: str
    key: bytes | None
    value: bytes


def counted(event_id: str, sku: str, on_hand: int, **extra: Any) -> bytes:
    return orjson.dumps({"event_id": event_id, "type": "stock.counted", "occurred_at": AT, "sku": sku,
                         "location": "WH1", "on_hand": on_hand, **extra})


def bad_messages(topics: Topics) -> dict[str, tuple[Msg, str]]:
    """kind → (message, the reason its DLQ record must carry)."""
    adj, orders = topics.adjustments, topics.orders
    placed = {"event_id": "b-neg", "type": "order.placed", "occurred_at": AT, "order_id": "o1", "channel": "web"}
    return {
        "bad_json": (Msg(adj, b"S1", b'{"event_id": "b-json", "type": "stock.counted",'), "bad_json"),
        "unknown_type": (Msg(adj, b"S1", orjson.dumps(
            {"event_id": "b-type", "type": "stock.teleported", "occurred_at": AT, "sku": "S1"})), "unknown_type"),
        "missing_field": (Msg(adj, b"S1", orjson.dumps(
            {"event_id": "b-miss", "type": "stock.counted", "occurred_at": AT, "sku": "S1"})), "missing_field"),
        "wrong_type": (Msg(adj, b"S1", counted("b-wrong", "S1", "12")), "wrong_type"),  # type: ignore[arg-type]
        "negative_qty": (Msg(orders, b"S1", orjson.dumps(
            {**placed, "lines": [{"sku": "S1", "qty": -4}]})), "out_of_range"),
        "huge_qty": (Msg(orders, b"S1", orjson.dumps(
            {**placed, "event_id": "b-huge", "lines": [{"sku": "S1", "qty": 10**15}]})), "out_of_range"),
        "bad_sku": (Msg(adj, b"S1", counted("b-sku", "S1;DROP *", 3)), "bad_id"),
        "oversize": (Msg(adj, b"S1", counted("b-big", "S1", 3, reason="x" * 70_000)), "too_large"),
    }


def test_each_bad_message_becomes_one_dlq_record_and_the_next_good_event_is_applied(
    settings: Settings, topics: Topics, redis: Any, kafka_bootstrap: str
) -> None:
    bad = bad_messages(topics)
    stream: list[Msg] = []
    for i, (kind, (msg, _)) in enumerate(bad.items()):
        stream.append(msg)
        stream.append(Msg(topics.adjustments, b"G%d" % i, counted(f"good-{kind}", f"G{i}", 10 + i)))
    reasons = Counter(reason for _, reason in bad.values())
    before = {r: metrics.DLQ.labels(r)._value.get() for r in reasons}
    landed = produce(kafka_bootstrap, stream)

    run_flow(settings, topics, until_end=True, serve_metrics=False)

    records = read_topic(kafka_bootstrap, topics.dlq)
    assert len(records) == len(bad)
    by_offset = {(r.topic, r.partition, r.offset): r for r in (decode_dlq_value(m.value) for m in records)}
    for (kind, (msg, reason)), where in zip(bad.items(), landed[0::2], strict=True):
        record = by_offset[(where.topic, where.partition, where.offset)]
        assert record.reason == reason, kind
        assert record.original == msg.value, kind  # byte for byte, even the 70 kB one
        assert record.key == msg.key
        assert record.detail, kind
    for m in records:  # the headers say the same without decoding the value
        record = decode_dlq_value(m.value)
        assert header(m.headers, "dlq.reason") == record.reason
        assert header(m.headers, "dlq.id") == f"{record.topic}:{record.partition}:{record.offset}"
    assert {r: metrics.DLQ.labels(r)._value.get() - before[r] for r in reasons} == dict(reasons)
    store = Store(redis)
    assert [store.position(f"G{i}")["on_hand"] for i in range(len(bad))] == [10 + i for i in range(len(bad))]
    assert store.position("S1")["on_hand"] == 0  # nothing of a bad message was applied


def test_an_event_id_reused_with_other_content_is_dead_lettered_once_and_not_applied(
    settings: Settings, topics: Topics, redis: Any, kafka_bootstrap: str
) -> None:
    orders = topics.orders
    order = {"event_id": "ord-1", "type": "order.placed", "occurred_at": AT, "order_id": "o-1", "channel": "web",
             "lines": [{"sku": "R1", "qty": 2}, {"sku": "R2", "qty": 1}]}
    stream = [
        Msg(topics.adjustments, b"R1", counted("c-1", "R1", 10)),
        Msg(topics.adjustments, b"R2", counted("c-2", "R2", 10)),
        Msg(orders, b"R1", orjson.dumps(order)),
        Msg(orders, b"R1", orjson.dumps(order)),  # a redelivery: a duplicate, nothing to say
        # the same id with other lines: both SKUs' commands are refused, one DLQ record for the message
        Msg(orders, b"R1", orjson.dumps({**order, "lines": [{"sku": "R1", "qty": 5}, {"sku": "R2", "qty": 5}]})),
        Msg(topics.adjustments, b"R1", counted("c-1", "R1", 99)),  # a count's id reused with another figure
    ]
    landed = produce(kafka_bootstrap, stream)

    run_flow(settings, topics, until_end=True, serve_metrics=False)

    records = [decode_dlq_value(m.value) for m in read_topic(kafka_bootstrap, topics.dlq)]
    assert sorted((r.offset, r.reason) for r in records) == sorted(
        (where.offset, "event_id_reused") for where in (landed[4], landed[5]))
    assert {r.event_id for r in records} == {"ord-1", "c-1"}
    assert all(r.original in (stream[4].value, stream[5].value) for r in records)
    store = Store(redis)
    # only the first of each id was applied
    assert (store.position("R1")["committed"], store.position("R2")["committed"]) == (2, 1)
    assert store.position("R1")["on_hand"] == 10
