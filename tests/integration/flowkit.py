"""Support for the flow tests: producing with known offsets, reading a topic back, state digests.

Not a conftest: the flow, replay, DLQ and chaos tests import what they need from here.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

# Line and journal fields that hold a reading of the clock (Redis TIME), not a result of the log.
CLOCK_FIELDS = frozenset({"promised_ms", "expires_ms", "at"})
# Sorted sets scored by a clock reading: hold expiries, and when a line reached its final state.
CLOCK_SCORED = (":exp", ":dead")


@dataclass(frozen=True)
class Msg:
    """A message to ``produce``, with its event time."""

    topic: str
    key: bytes
    value: bytes
    timestamp_ms: int


@dataclass(frozen=True)
class Produced:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes


def produce(bootstrap: str, messages: Iterable[Any], timeout_s: float = 120.0) -> list[Produced]:
    """Send ``messages`` (objects with topic, key, value and optionally timestamp_ms) in order with an
    idempotent producer; returns where each one landed, in send order."""
    producer = Producer(
        {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all", "linger.ms": 5}
    )
    landed: list[Produced | None] = []
    errors: list[str] = []

    def on_delivery(index: int) -> Any:
        def done(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                landed[index] = Produced(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value())

        return done

    for i, m in enumerate(messages):
        landed.append(None)
        kwargs: dict[str, Any] = {"key": m.key, "value": m.value, "on_delivery": on_delivery(i)}
        if getattr(m, "timestamp_ms", 0):
            kwargs["timestamp"] = m.timestamp_ms
        while True:
            try:
                producer.produce(m.topic, **kwargs)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 1000 == 0:
            producer.poll(0)
    left = producer.flush(timeout_s)
    assert left == 0 and not errors, f"produce failed: {left} unacknowledged, errors {errors[:3]}"
    assert all(p is not None for p in landed)
    return landed  # type: ignore[return-value]


@dataclass(frozen=True)
class Read:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def read_topic(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list[Read]:
    """Every message of ``topic`` (all partitions, from offset 0 to each partition's end)."""
    meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
    parts = sorted(meta.topics[topic].partitions)
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "flowkit-reader", "enable.partition.eof": True,
         "enable.auto.commit": False, "fetch.wait.max.ms": 50}
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    out: list[Read] = []
    ended: set[int] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while len(ended) < len(parts):
            assert time.monotonic() < deadline, f"{topic}: no end reported for partitions {set(parts) - ended}"
            for msg in consumer.consume(1000, 0.2):
                err = msg.error()
                if err is not None:
                    assert err.code() == KafkaError._PARTITION_EOF, str(err)
                    ended.add(msg.partition())
                    continue
                ended.discard(msg.partition())
                out.append(Read(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(),
                                list(msg.headers() or [])))
    finally:
        consumer.close()
    return out


def _canon(value: bytes) -> Any:
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return value.decode("utf-8", "replace")


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: (None if k in CLOCK_FIELDS else _mask(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    return value


def _outbox(key: str) -> bool:
    """A change log or a changed set (docs/changelog.md): records of the calls, waiting for the
    relay, not inventory state; runs that batch the same events differently leave other ones (and
    another change number, ``!Q``, which ``engine_state`` leaves out with them)."""
    return key.endswith(":log") or ":changed" in key


def engine_state(client: Any, prefix: str = "atp", mask_clock: bool = False, logs: bool = False) -> dict[str, Any]:
    """Every key under ``prefix:`` with its type and content, JSON values parsed (so the key order
    inside a JSON object does not matter); the change logs only with ``logs``. ``mask_clock``
    blanks fields that read the clock, and the scores of sorted sets scored by it, for comparing
    runs made at different times."""
    state: dict[str, Any] = {}
    for raw_key in sorted(client.scan_iter(match=f"{prefix}:*", count=1000)):
        key = raw_key.decode() if isinstance(raw_key, bytes) else raw_key
        if not logs and _outbox(key):
            continue
        kind = client.type(raw_key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        if kind == "string":
            content: Any = _canon(_b(client.get(raw_key)))
        elif kind == "hash":
            content = {_s(k): _canon(_b(v)) for k, v in client.hgetall(raw_key).items()}
            if not logs and key.endswith(":state"):
                content.pop("!Q", None)  # how many calls wrote records: the log's count, like the log
        elif kind == "list":
            content = [_canon(_b(v)) for v in client.lrange(raw_key, 0, -1)]
        elif kind == "zset":
            content = [[_s(m), s] for m, s in client.zrange(raw_key, 0, -1, withscores=True)]
        elif kind == "set":
            content = sorted(_s(m) for m in client.smembers(raw_key))
        else:
            content = repr(kind)
        state[key] = [kind, content]
    return mask_clock_fields(state) if mask_clock else state


def mask_clock_fields(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with the clock readings blanked: ``CLOCK_FIELDS`` in JSON values, ``CLOCK_SCORED``
    scores."""
    out: dict[str, Any] = {}
    for key, (kind, content) in state.items():
        content = mask_clock_readings(key, content)  # inside the store's compact forms
        if kind == "zset":
            if key.endswith(CLOCK_SCORED):
                content = [[m, None] for m, _ in content]
        else:
            content = _mask(content)
        out[key] = [kind, content]
    return out


def digest(state: dict[str, Any]) -> str:
    """SHA-256 of a state from ``engine_state``."""
    return hashlib.sha256(orjson.dumps(state, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _b(v: Any) -> bytes:
    return v if isinstance(v, bytes) else str(v).encode()


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def state_diff(a: dict[str, Any], b: dict[str, Any], limit: int = 5) -> list[str]:
    """A few human-readable differences between two ``engine_state`` results."""
    out: list[str] = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            out.append(f"{key}: {str(a.get(key))[:300]} != {str(b.get(key))[:300]}")
            if len(out) >= limit:
                break
    return out


_LINE_CLOCK_FIELDS = (3, 7)  # expires_ms, promised_ms of a stored line


def mask_clock_readings(key: str, content: Any) -> Any:
    """``content`` of a raw engine key (as read by a state digest: hash -> dict, zset -> list of
    [member, score]) with the clock readings the stored forms carry blanked, for comparing runs
    made at different times: the expiry and promised date of stored lines (``…:res``,
    ``…:ended``), the time of journal entries (``j<k>`` fields of ``…:state``), and the scores of
    the time-scored zsets (``…:exp``, ``…:dead``), whose members are then sorted (their order
    followed the clock)."""
    if key.endswith((":res", ":ended")) and isinstance(content, dict):
        out = {}
        for rid, raw in content.items():
            parts = str(raw).split("|")
            if len(parts) == 10:
                for i in _LINE_CLOCK_FIELDS:
                    parts[i] = "?"
            out[rid] = "|".join(parts)
        return out
    if key.endswith(":state") and isinstance(content, dict):
        return {f: ("?" + str(v)[str(v).find("|"):] if f.startswith("j") else v) for f, v in content.items()}
    if key.endswith((":exp", ":dead")) and isinstance(content, list):
        return sorted([m, None] for m, _score in content)
    return content
