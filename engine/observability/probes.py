"""Is Redis up, is the broker up: probes that keep ``atp_dependency_up`` fresh in a process.

``DependencyProbe`` is a daemon thread (the flow has no event loop of its own) that pings Redis
and asks the broker for metadata every ``interval_s`` seconds, through clients of its own, so a
process that stopped reaching a dependency shows 0 within one interval even while it is idle.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from engine import metrics
from engine.settings import Settings

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0


def redis_up(client: Any) -> bool:
    """True when ``client`` (a sync redis client) answers PING."""
    try:
        return bool(client.ping())
    except Exception as exc:  # any failure means "down"; the reason goes to the log
        log.debug("dependency probe: redis: %r", exc)
        return False


def kafka_up(admin: Any, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """True when the broker answers a metadata request of ``admin`` (a confluent-kafka AdminClient)."""
    try:
        admin.list_topics(timeout=timeout_s)
        return True
    except Exception as exc:
        log.debug("dependency probe: kafka: %r", exc)
        return False


class DependencyProbe:
    """Probes Redis and the broker of ``settings`` every ``interval_s`` seconds (the first at once)
    and sets ``atp_dependency_up``; ``start()`` / ``stop()``, or a context manager."""

    def __init__(self, settings: Settings, interval_s: float = 5.0) -> None:
        if not interval_s > 0:
            raise ValueError("interval_s must be > 0")
        self.settings = settings
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def probe_once(self, redis_client: Any, admin: Any) -> tuple[bool, bool]:
        """One probe of both; returns (redis up, kafka up)."""
        up = (redis_up(redis_client), kafka_up(admin))
        metrics.set_dependency_up("redis", up[0])
        metrics.set_dependency_up("kafka", up[1])
        return up

    def _run(self) -> None:
        from confluent_kafka.admin import AdminClient

        from connectors.kafka import admin_config
        from engine.api.redis_conn import sync_redis

        redis_client = sync_redis(self.settings)
        admin = AdminClient(admin_config(self.settings))
        try:
            while True:
                self.probe_once(redis_client, admin)
                if self._stop.wait(self.interval_s):
                    return
        finally:
            redis_client.close()

    def start(self) -> DependencyProbe:
        """Start the thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="atp-dependency-probe", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> DependencyProbe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
