"""The API's Kafka producer, for the stock events of the ops endpoints, each awaited.

``POST /v1/adjustments`` and ``/v1/counts`` answer 202 only once the broker acknowledged their
event (``publish_and_wait``), so the producer is idempotent (``acks=all``,
``enable.idempotence``) and every send is awaited: a broker that is away turns into a
``PublishError`` within the caller's timeout, never into a request that hangs. Reservation events
do not pass through here: they go through the change log and its relay (docs/changelog.md).

One producer per app, served by one thread that polls it (the delivery reports settle the
awaiting requests) and replaces it after a fatal error (for example a broker restarted without
its data forgets the idempotent producer's id), which would otherwise leave it dead for good
(``atp_producer_rebuilds_total``). What was in flight on the replaced producer fails its request.
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

from connectors.kafka import replace_producer
from engine import metrics

log = logging.getLogger(__name__)

_POLL_S = 0.05


def _is_fatal(exc: KafkaException) -> bool:
    err = exc.args[0] if exc.args else None
    return isinstance(err, KafkaError) and (err.fatal() or err.code() == KafkaError._FATAL)


class PublishError(RuntimeError):
    """The broker did not take a message in time, or refused it."""


class EventPublisher:
    """Owns one Producer (replaced after a fatal error) and the thread that serves it."""

    def __init__(self, producer_conf: Mapping[str, Any]) -> None:
        self._conf = dict(producer_conf)
        self._conf["error_cb"] = self._on_error
        self._producer = Producer(self._conf)
        self._stop = threading.Event()
        self._fatal = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.delivered = 0
        self.failed = 0
        self.rebuilds = 0
        self.last_error = ""

    def start(self) -> EventPublisher:
        """Start the serving thread (idempotent; also done by the first ``publish_and_wait``)."""
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
                self._producer.poll(_POLL_S)
            except KafkaException as exc:
                if _is_fatal(exc):
                    self.last_error = str(exc.args[0])
                    self._fatal.set()
                else:
                    log.error("event producer: %s", exc)
            except Exception:  # the thread must outlive anything one round raises
                log.exception("event producer round failed; going on")
                time.sleep(_POLL_S)

    def _rebuild(self) -> None:
        """Replace a producer that hit a fatal error; its purged messages fail their requests."""
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

    # --- callers ----------------------------------------------------------------------------

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
        except RuntimeError as exc:  # closed by the serving thread's replacement in between
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

    def healthy(self) -> tuple[bool, str]:
        """(False, why) while a fatal producer error awaits the serving thread's repair."""
        if self._fatal.is_set():
            return False, f"producer failed: {self.last_error}"
        return True, ""

    def close(self, timeout_s: float = 10.0) -> int:
        """Stop the thread, flush the producer and close it; returns how many messages were still
        undelivered."""
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
