"""The background hold sweeper: expires due holds of SKUs nobody touches.

Every script expires the due holds of its SKU lazily; the sweeper covers the rest by calling
``Store.sweep`` every ``interval_s`` seconds. A failed sweep (Redis away) is logged and retried at
the next tick — nothing is lost, the holds stay due.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from engine.store.store import AsyncStore, Store

log = logging.getLogger(__name__)

OnExpired = Callable[[int], None]


class Sweeper:
    """A daemon thread calling ``store.sweep()`` every ``interval_s`` seconds.

    ``on_expired(n)`` (e.g. a metrics counter) is called after each sweep with the number of
    holds it expired. ``start()`` / ``stop()``; also a context manager.
    """

    def __init__(self, store: Store, interval_s: float = 1.0, on_expired: OnExpired | None = None,
                 max_skus: int = 10_000) -> None:
        if not interval_s > 0:
            raise ValueError("interval_s must be > 0")
        self.store = store
        self.interval_s = interval_s
        self.on_expired = on_expired
        self.max_skus = max_skus
        self.expired_total = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        """One sweep now; returns the number of holds expired (0 when Redis failed)."""
        try:
            n = self.store.sweep(self.max_skus)
        except Exception as exc:  # Redis away: the next tick tries again
            log.warning("hold sweep failed: %r", exc)
            return 0
        self.expired_total += n
        if self.on_expired is not None:
            self.on_expired(n)
        return n

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.run_once()

    def start(self) -> Sweeper:
        """Start the thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="atp-hold-sweeper", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> Sweeper:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def sweep_forever(store: AsyncStore, interval_s: float = 1.0, on_expired: OnExpired | None = None,
                        max_skus: int = 10_000) -> None:
    """Sweep every ``interval_s`` seconds until cancelled (run it as a task)."""
    if not interval_s > 0:
        raise ValueError("interval_s must be > 0")
    while True:
        await asyncio.sleep(interval_s)
        try:
            n = await store.sweep(max_skus)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("hold sweep failed: %r", exc)
            continue
        if on_expired is not None:
            on_expired(n)
