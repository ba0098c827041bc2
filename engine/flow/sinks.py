"""The flow's Kafka outputs: an idempotent producer per worker, flushed before each batch returns.

A bytewax snapshot is taken only after the sinks returned from ``write_batch``, and every batch is
flushed (each message acknowledged by all in-sync replicas) before ``write_batch`` returns; a
message that could not be delivered raises, which stops the flow before the snapshot that would
skip it. So outputs are at least once: after a crash the tail since the last snapshot is written
again, with the same keys, values and ids (``enable.idempotence`` only removes the producer's own
retry duplicates, not a replay's).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import KafkaError, Message, Producer

from connectors.dlq import DlqRecord, Headers
from connectors.kafka import producer_conf

X = TypeVar("X")

KafkaMessage = tuple[bytes | None, bytes, Headers]
"""``(key, value, headers)``."""

_FLUSH_TIMEOUT_S = 60.0


class DeliveryError(RuntimeError):
    """An output message was not acknowledged by the broker."""


class _ProducerPartition(StatelessSinkPartition[X], Generic[X]):
    def __init__(self, conf: dict[str, Any], topic: str, encode: Callable[[X], KafkaMessage]) -> None:
        self._producer = Producer(conf)
        self._topic = topic
        self._encode = encode
        self._errors: list[str] = []

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._errors.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    def write_batch(self, items: list[X]) -> None:
        for item in items:
            key, value, headers = self._encode(item)
            while True:
                try:
                    self._producer.produce(
                        self._topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery
                    )
                    break
                except BufferError:  # local queue full: let deliveries drain, then retry
                    self._producer.poll(0.1)
            self._producer.poll(0)
        remaining = self._producer.flush(_FLUSH_TIMEOUT_S)
        if remaining:
            raise DeliveryError(f"{remaining} messages to {self._topic} not delivered in {_FLUSH_TIMEOUT_S:.0f}s")
        if self._errors:
            errors, self._errors = self._errors, []
            raise DeliveryError(f"{len(errors)} messages not delivered, first: {errors[0]}")

    def close(self) -> None:
        self._producer.flush(_FLUSH_TIMEOUT_S)


class KafkaOutput(DynamicSink[X], Generic[X]):
    """Writes items to ``topic``; ``encode`` turns an item into ``(key, value, headers)``.

    ``conf`` is the librdkafka connection config; idempotence and ``acks=all`` are added.
    """

    def __init__(self, conf: Mapping[str, Any], topic: str, encode: Callable[[X], KafkaMessage]) -> None:
        self._conf = producer_conf(conf)
        self._topic = topic
        self._encode = encode

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _ProducerPartition[X]:
        return _ProducerPartition(dict(self._conf), self._topic, self._encode)


def _encode_dlq(record: DlqRecord) -> KafkaMessage:
    return record.to_message()


def dlq_sink(conf: Mapping[str, Any], topic: str) -> KafkaOutput[DlqRecord]:
    """The DLQ output: ``DlqRecord`` items as ``connectors.dlq`` wire messages on ``topic``."""
    return KafkaOutput(conf, topic, _encode_dlq)
