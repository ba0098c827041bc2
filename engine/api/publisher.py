"""The API's Kafka producer: reservation events through an in-memory outbox, stock events awaited.

One idempotent producer (``acks=all``, ``enable.idempotence``) per app, served by one thread.

* ``publish`` (reservation events) never blocks the event loop: it appends to a bounded outbox and
  returns. The thread moves the outbox into the producer as fast as librdkafka's queue takes it,
  serves delivery reports, and puts an event whose delivery failed back into the outbox, so a
  broker that is away (stopped, restarted empty, its topic not there yet) delays events but does
  not lose them. Only an outbox past ``max_backlog`` drops events, each counted
  (``atp_publish_dropped_total``) and logged; ``atp_publish_backlog`` shows what is held.
* A fatal producer error (for example the broker forgot the idempotent producer's id) would leave
  the producer dead for good: the thread replaces it with a new one and puts the old one's
  undelivered events back in the outbox (``atp_producer_rebuilds_total``).
* ``publish_and_wait`` is for the ops endpoints, whose 202 promises the event is in the log.

Order: events of one reservation leave in the order they were published while the broker is
there; an event put back after a failed delivery goes out after events published meanwhile
(consumers order a reservation's events by their time and change, docs/semantics.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from connectors.kafka import replace_producer
from engine import metrics

log = logging.getLogger(__name__)

_POLL_S = 0.05
#: Default bound of the outbox (settings ``publish_backlog_max``).
MAX_BACKLOG = 200_000
#: Delivery errors that no retry can fix: the event is dropped (counted) instead of put back.
_PERMANENT = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE, KafkaError.INVALID_MSG,
    KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.INVALID_RECORD,
})
_LOG_EVERY_S = 5.0

Event = tuple[str, bytes, bytes]  # topic, key, value


def _is_fatal(exc: KafkaException) -> bool:
    err = exc.args[0] if exc.args else None
    return isinstance(err, KafkaError) and (err.fatal() or err.code() == KafkaError._FATAL)


class PublishError(RuntimeError):
    """The broker did not take a message in time, or refused it."""


class EventPublisher:
    """Owns one Producer (replaced after a fatal error), the outbox and the thread that serves both."""

    def __init__(self, producer_conf: Mapping[str, Any], max_backlog: int = MAX_BACKLOG) -> None:
        if max_backlog < 1:
            raise ValueError("max_backlog must be at least 1")
        self._conf = dict(producer_conf)
        self._conf["error_cb"] = self._on_error
        self.max_backlog = max_backlog
        self._producer = Producer(self._conf)
        self._outbox: deque[Event] = deque()
        self._stop = threading.Event()
        self._fatal = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._last_drop_log = 0.0
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self.requeued = 0
        self.rebuilds = 0
        self.last_error = ""

    def start(self) -> EventPublisher:
        """Start the serving thread (idempotent; also done by the first publish)."""
        if self._thread is None and not self._stop.is_set():
            self._thread = threading.Thread(target=self._serve, name="atp-api-producer", daemon=True)
            self._thread.start()
        return self

    # --- the serving thread ---------------------------------------------------------------

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                if self._fatal.is_set():
                    self._rebuild()
                self._drain()
                self._producer.poll(_POLL_S)
                metrics.set_publish_backlog(self.backlog())
            except KafkaException as exc:
                if _is_fatal(exc):
                    self.last_error = str(exc.args[0])
                    self._fatal.set()
                else:
                    log.error("event producer: %s", exc)
            except Exception:  # the thread must outlive anything one round raises
                log.exception("event producer round failed; going on")
                time.sleep(_POLL_S)

    def _drain(self) -> None:
        """Move the outbox into the producer until it is empty or librdkafka's queue is full."""
        while self._outbox and not self._fatal.is_set():
            topic, key, value = self._outbox[0]
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=self._on_delivery)
            except BufferError:
                return  # the queue is full: poll serves reports and makes room
            except KafkaException as exc:
                if _is_fatal(exc):
                    self._fatal.set()
                    return
                self._outbox.popleft()
                self._drop("rejected", 1, f"event to {topic} not queued: {exc}")
                continue
            self._outbox.popleft()

    def _rebuild(self) -> None:
        """Replace a producer that hit a fatal error; its undelivered events go back to the outbox."""
        # each purged event reports a failure: put back
        self._producer = replace_producer(self._producer, self._conf)
        self.rebuilds += 1
        self._fatal.clear()
        metrics.count_producer_rebuild()
        log.error("event producer replaced after a fatal error (%s)", self.last_error)

    def _on_error(self, err: KafkaError) -> None:
        self.last_error = str(err)
        if err.fatal():
            self._fatal.set()
            log.error("event producer: fatal error %s", err)

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is None:
            with self._lock:
                self.delivered += 1
            return
        self.last_error = str(err)
        if err.code() in _PERMANENT:
            with self._lock:
                self.failed += 1
            self._drop("rejected", 1, f"event to {msg.topic()} refused by the broker: {err}")
            return
        with self._lock:
            self.requeued += 1
        if len(self._outbox) >= self.max_backlog:
            self._drop("backlog_full", 1, "event dropped: publish backlog full")
            return
        self._outbox.append((msg.topic(), msg.key() or b"", msg.value() or b""))

    def _drop(self, reason: str, n: int, message: str) -> None:
        with self._lock:
            self.dropped += n
        metrics.count_publish_dropped(reason, n)
        now = time.monotonic()
        if now - self._last_drop_log >= _LOG_EVERY_S:  # loud, but not a line per event
            self._last_drop_log = now
            log.error("%s (%d dropped so far)", message, self.dropped)

    # --- callers ----------------------------------------------------------------------------

    def publish(self, topic: str, key: str, value: bytes) -> bool:
        """Hand one event to the outbox without waiting; False (counted, logged) if the outbox is full."""
        self.start()
        if not self._outbox and not self._fatal.is_set():
            # nothing waits before it: straight to librdkafka's queue (produce never blocks; the
            # thread only moves events that came while others waited)
            try:
                self._producer.produce(topic, value=value, key=key.encode(), on_delivery=self._on_delivery)
                return True
            except (BufferError, KafkaException):
                pass  # full or failed: the outbox keeps it, the thread sorts it out
        if len(self._outbox) >= self.max_backlog:
            self._drop("backlog_full", 1, f"event to {topic} dropped: publish backlog full")
            return False
        self._outbox.append((topic, key.encode(), value))
        return True

    async def publish_and_wait(self, topic: str, key: str, value: bytes, timeout_s: float = 10.0) -> None:
        """Send one message and return once the broker acknowledged it; raises ``PublishError``."""
        self.start()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def report(err: KafkaError | None, msg: Any) -> None:
            with self._lock:
                if err is None:
                    self.delivered += 1
                else:
                    self.failed += 1

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

    def backlog(self) -> int:
        """Events accepted and not yet acknowledged: the outbox plus the producer's queue."""
        return len(self._outbox) + len(self._producer)

    def healthy(self) -> tuple[bool, str]:
        """(False, why) while the backlog is past half its bound or a fatal error awaits repair."""
        if self._fatal.is_set():
            return False, f"producer failed: {self.last_error}"
        backlog = self.backlog()
        if backlog * 2 > self.max_backlog:
            return False, f"{backlog} events wait for the broker (limit {self.max_backlog})"
        return True, ""

    def close(self, timeout_s: float = 10.0) -> int:
        """Stop the thread, hand the outbox to the producer and flush; returns how many events
        were still undelivered."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * _POLL_S + 1)
            self._thread = None
        deadline = time.monotonic() + timeout_s
        while self._outbox and time.monotonic() < deadline and not self._fatal.is_set():
            self._drain()
            self._producer.poll(_POLL_S)
        left = self._producer.flush(max(0.0, deadline - time.monotonic())) + len(self._outbox)
        if left:
            log.error("%d events still undelivered at shutdown", left)
        with contextlib.suppress(Exception):  # release librdkafka's threads and sockets now, not at GC
            self._producer.close()
        return int(left)
