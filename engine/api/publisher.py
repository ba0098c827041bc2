"""The API's Kafka producer: fire-and-forget for reservation events, awaited for stock events.

One idempotent producer (``acks=all``, ``enable.idempotence``) per app. ``produce`` only
queues the message in librdkafka's buffer, so a request never waits for a broker round
trip; a background thread serves delivery reports (``poll``), and ``close`` flushes what
is still queued. ``publish_and_wait`` is for the ops endpoints, whose 202 promises the
event is in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

log = logging.getLogger(__name__)

_POLL_S = 0.1
_BUFFER_RETRIES = 50


class PublishError(RuntimeError):
    """The broker did not take a message in time, or refused it."""


class EventPublisher:
    """Owns one Producer and the thread that polls it."""

    def __init__(self, producer_conf: Mapping[str, Any]) -> None:
        self._producer = Producer(dict(producer_conf))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    def start(self) -> EventPublisher:
        """Start the delivery-report thread (idempotent; also done by the first publish)."""
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._poll_loop, name="atp-api-producer", daemon=True)
            self._thread.start()
        return self

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(_POLL_S)

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        with self._lock:
            if err is None:
                self.delivered += 1
            else:
                self.failed += 1
        if err is not None:
            log.error("event to %s not delivered: %s", msg.topic(), err)

    def publish(self, topic: str, key: str, value: bytes) -> bool:
        """Queue one message without waiting for the broker; False if it could not be queued.

        A full local queue is given a short while to drain (the poll thread keeps serving
        reports meanwhile) before the message is counted as dropped and logged.
        """
        self.start()
        for _ in range(_BUFFER_RETRIES):
            try:
                self._producer.produce(topic, value=value, key=key.encode(), on_delivery=self._on_delivery)
                return True
            except BufferError:
                time.sleep(0.01)
            except KafkaException as exc:
                log.error("event to %s not queued: %s", topic, exc)
                break
        with self._lock:
            self.dropped += 1
        log.error("event to %s dropped: local producer queue full", topic)
        return False

    async def publish_and_wait(self, topic: str, key: str, value: bytes, timeout_s: float = 10.0) -> None:
        """Send one message and return once the broker acknowledged it; raises ``PublishError``."""
        self.start()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def report(err: KafkaError | None, msg: Any) -> None:
            self._on_delivery(err, msg)

            def settle() -> None:
                if done.done():
                    return
                if err is None:
                    done.set_result(None)
                else:
                    done.set_exception(PublishError(str(err)))

            loop.call_soon_threadsafe(settle)

        try:
            self._producer.produce(topic, value=value, key=key.encode(), on_delivery=report)
        except (BufferError, KafkaException) as exc:
            raise PublishError(f"not queued: {exc}") from exc
        try:
            await asyncio.wait_for(done, timeout_s)
        except TimeoutError as exc:
            raise PublishError(f"no acknowledgement from the broker within {timeout_s:g} s") from exc

    def reachable(self, timeout_s: float = 2.0) -> bool:
        """True when the broker answers a metadata request (blocking; run it off the event loop)."""
        try:
            self._producer.list_topics(timeout=timeout_s)
            return True
        except KafkaException:
            return False

    def pending(self) -> int:
        """Messages queued or in flight."""
        return len(self._producer)

    def close(self, timeout_s: float = 10.0) -> int:
        """Stop polling and flush; returns how many messages were still undelivered."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * _POLL_S + 1)
            self._thread = None
        left = self._producer.flush(timeout_s)
        if left:
            log.error("%d events still undelivered at shutdown", left)
        with contextlib.suppress(Exception):  # release librdkafka's threads and sockets now, not at GC
            self._producer.close()
        return int(left)
