"""The simulator against the real broker: every message arrives, keyed, and parses back as labelled."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from datetime import UTC, datetime

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from connectors.topics import Topics
from engine.dev.simulate import BAD_KINDS, generate, produce
from engine.domain.events import ParseError, parse_event
from engine.settings import Settings

START = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
PARTITIONS = 3  # tests/conftest.py creates the fixture topics with 3 partitions


def _consume_all(bootstrap: str, topics: Topics, expected: int, timeout_s: float = 90.0) -> list:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"sim-check-{topics.suffix}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    # assign() rather than subscribe(): no group join, which is slow on the embedded broker.
    consumer.assign(
        [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics.inputs for p in range(PARTITIONS)]
    )
    got = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=1.0):
                assert msg.error() is None, msg.error()
                got.append(msg)
        # anything beyond `expected` would be a duplicate from the producer: give it a moment to show up
        got.extend(m for m in consumer.consume(1000, timeout=2.0) if m.error() is None)
    finally:
        consumer.close()
    return got


def test_produce_puts_every_message_on_the_broker_and_it_parses_back_as_labelled(
    settings: Settings, topics: Topics, kafka_bootstrap: str
) -> None:
    n, bad_fraction = 3000, 0.1
    report = produce(
        settings, topics, n, seed=11, bad_fraction=bad_fraction, start_time=START, progress=False
    )

    assert report.ok, report.errors
    assert report.messages == report.delivered == n
    assert sum(report.by_topic.values()) == n
    assert report.rate > 0

    received = _consume_all(kafka_bootstrap, topics, n)
    assert len(received) == n  # nothing lost, nothing duplicated by the idempotent producer

    # Exactly the bytes the generator makes for the same arguments.
    expected = Counter(
        (m.topic, m.key, m.value)
        for m in generate(n, seed=11, bad_fraction=bad_fraction, start_time=START, topics=topics)
    )
    assert Counter((m.topic(), m.key(), m.value()) for m in received) == expected

    reasons: Counter[str] = Counter()
    types: Counter[str] = Counter()
    partition_of_key: dict[bytes, set[tuple[str, int]]] = defaultdict(set)
    for msg in received:
        parsed = parse_event(msg.value(), topics.base_of(msg.topic()))
        if isinstance(parsed, ParseError):
            reasons[parsed.reason] += 1
        else:
            types[parsed.type] += 1
            partition_of_key[msg.key()].add((msg.topic(), msg.partition()))

    # The share of bad messages is what the report says, and about what was asked for.
    bad = sum(reasons.values())
    assert bad == sum(report.bad.values())
    assert 0.07 * n <= bad <= 0.13 * n
    want_reasons: Counter[str] = Counter()
    for kind, count in report.bad.items():
        want_reasons[BAD_KINDS[kind]] += count
    assert reasons == want_reasons
    assert dict(types) == report.by_type
    # A realistic mix: every event type shows up.
    assert set(types) == {
        "order.placed",
        "order.cancelled",
        "order.shipped",
        "inbound.created",
        "inbound.updated",
        "inbound.cancelled",
        "receipt.posted",
        "stock.adjusted",
        "stock.counted",
    }
    # Keyed by SKU: one key always lands in one partition of a topic.
    assert all(
        len({p for t, p in places if t == topic}) <= 1
        for places in partition_of_key.values()
        for topic in topics.inputs
    )


def test_an_order_is_placed_before_it_is_shipped_or_cancelled_within_its_partition(
    settings: Settings, topics: Topics, kafka_bootstrap: str
) -> None:
    n = 1500
    report = produce(settings, topics, n, seed=5, start_time=START, progress=False)
    assert report.ok, report.errors

    received = _consume_all(kafka_bootstrap, topics, n)
    assert len(received) == n
    first_seen: dict[str, str] = {}
    follow_ups = 0
    for msg in sorted(
        (m for m in received if m.topic() == topics.orders), key=lambda m: (m.partition(), m.offset())
    ):
        body = orjson.loads(msg.value())
        order_id = body["order_id"]
        if body["type"] == "order.placed":
            assert order_id not in first_seen
            first_seen[order_id] = msg.key()
        else:
            assert order_id in first_seen, f"{body['type']} of {order_id} before its order.placed"
            assert first_seen[order_id] == msg.key()  # the whole order travels under one key
            follow_ups += 1
    assert follow_ups > 0
