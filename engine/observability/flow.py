"""What the flow process reports about itself beside the apply step's counters (one ``with`` in ``run_flow``).

The apply step sets ``atp_watch_atp`` from the positions in its replies, which go stale when a
watched SKU sees no events (in a flash sale its holds go through the API, not the stream); the
``FlowReporter`` thread therefore also reads the watched positions every ``interval_s`` seconds,
and probes Redis and the broker for ``atp_dependency_up``, so an idle flow still reports both.
It also exports the last reconcile's result (``atp reconcile`` keeps it in Redis) as the drift
gauges.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

from engine import metrics
from engine.observability.probes import probe_dependencies
from engine.settings import Settings

log = logging.getLogger(__name__)

INTERVAL_S = 5.0


def refresh_watched_atp(store: Any, skus: list[str]) -> None:
    """Set ``atp_watch_atp`` of every location of ``skus`` from one batched read of ``store``."""
    if not skus:
        return
    for sku, position in zip(skus, store.positions(skus), strict=True):
        for loc, figures in (position.get("locations") or {}).items():
            metrics.set_watched_atp(sku, loc, int(figures.get("atp", 0)))


class FlowReporter:
    """A daemon thread that, every ``interval_s`` seconds (the first time at once), probes Redis and
    the broker of ``settings`` and refreshes the watched SKUs' ATP, through clients of its own.
    ``start()`` / ``stop()``, or a context manager."""

    def __init__(self, settings: Settings, interval_s: float = INTERVAL_S) -> None:
        if not interval_s > 0:
            raise ValueError("interval_s must be > 0")
        self.settings = settings
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        from confluent_kafka.admin import AdminClient

        from connectors.kafka import admin_config
        from engine.log.rebuild import refresh_drift
        from engine.store.connect import sync_redis
        from engine.store.store import Store

        redis_client = sync_redis(self.settings)
        admin = AdminClient(admin_config(self.settings))
        store = Store(redis_client, prefix=self.settings.key_prefix)
        watched = list(self.settings.watch_skus)
        try:
            while True:
                redis_ok, _ = probe_dependencies(redis_client, admin)
                if redis_ok:
                    try:
                        refresh_watched_atp(store, watched)
                    except Exception as exc:  # observability never stops the flow; next tick retries
                        log.warning("cannot read the watched SKUs' positions: %r", exc)
                    try:
                        refresh_drift(redis_client, self.settings.key_prefix)
                    except Exception as exc:
                        log.warning("cannot read the last reconcile's result: %r", exc)
                if self._stop.wait(self.interval_s):
                    return
        finally:
            redis_client.close()

    def start(self) -> FlowReporter:
        """Start the thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="atp-flow-reporter", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> FlowReporter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def observe_flow(settings: Settings, probes: bool = True) -> Iterator[None]:
    """Around a running flow: the watch list from ``settings.watch_skus``, drift at 0, and — with
    ``probes`` — a ``FlowReporter`` until the flow stops."""
    metrics.configure_watch_list(settings.watch_skus)
    # Drift is measured by ``atp reconcile``, another process: the reporter exports the result it
    # keeps in Redis. Until it has read one the gauges say 0 ("no drift found"), so the Supply
    # dashboard's drift panels and the AtpDrift rule have a value rather than nothing.
    metrics.set_drift(0, 0, 0, 0)
    if not probes:
        yield
        return
    with FlowReporter(settings):
        yield
