"""The background sweeper: expires due holds of SKUs nobody touches, and purges ended lines.

Every script expires the due holds of its SKU lazily; the sweeper covers the rest by calling
``Store.sweep`` every ``interval_s`` seconds. Every ``purge_every_s`` seconds it also calls
``Store.purge``: lines released, expired or shipped longer than the retention ago are deleted
(with their reservation index), so the store does not grow forever. A failed pass (Redis away) is
logged and retried at the next tick — nothing is lost, the holds stay due.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

from engine.store.lease import AsyncLease
from engine.store.store import AsyncStore, Store
from engine.store.wire import RETENTION_S

log = logging.getLogger(__name__)

OnCount = Callable[[int], None]
OnExpired = OnCount
PURGE_EVERY_S = 60.0


def lease_ttl_ms(interval_s: float) -> int:
    """The time to live of the sweeper's lease for ticks ``interval_s`` apart: a holder that
    misses about three ticks in a row (stalled, or gone) loses it to another process."""
    return max(5_000, int(interval_s * 3_000))


def _retention_ms(retention_s: int) -> int:
    if isinstance(retention_s, bool) or not isinstance(retention_s, int) or retention_s < 1:
        raise ValueError(f"retention_s must be a positive integer, got {retention_s!r}")
    return retention_s * 1000


class Sweeper:
    """A daemon thread calling ``store.sweep()`` every ``interval_s`` seconds, and
    ``store.purge()`` every ``purge_every_s`` seconds (the first tick purges too).

    ``on_expired(n)`` (e.g. a metrics counter) is called after each sweep with the number of
    holds it expired, ``on_purged(n)`` after each purge with the number of lines deleted.
    ``retention_s``: how long ended lines are kept (the API passes ``ATP_RESERVATION_RETENTION_S``). ``start()`` / ``stop()``; also a context manager.
    """

    def __init__(self, store: Store, interval_s: float = 1.0, on_expired: OnExpired | None = None,
                 max_skus: int = 10_000, retention_s: int = RETENTION_S,
                 purge_every_s: float = PURGE_EVERY_S, on_purged: OnCount | None = None) -> None:
        if not interval_s > 0 or not purge_every_s > 0:
            raise ValueError("interval_s and purge_every_s must be > 0")
        self.store = store
        self.interval_s = interval_s
        self.on_expired = on_expired
        self.on_purged = on_purged
        self.max_skus = max_skus
        self.retention_ms = _retention_ms(retention_s)
        self.purge_every_s = purge_every_s
        self.expired_total = 0
        self.purged_total = 0
        self._next_purge = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        """One sweep now (and a purge when one is due); returns the number of holds expired
        (0 when Redis failed)."""
        try:
            n = self.store.sweep(self.max_skus)
        except Exception as exc:  # Redis away: the next tick tries again
            log.warning("hold sweep failed: %r", exc)
            return 0
        self.expired_total += n
        if self.on_expired is not None:
            self.on_expired(n)
        if time.monotonic() >= self._next_purge:
            self.purge_now()
        return n

    def purge_now(self) -> int:
        """Purge the lines that ended before the retention now; returns how many (0 on failure)."""
        try:
            n = self.store.purge(self.retention_ms, self.max_skus)
        except Exception as exc:
            log.warning("purge of ended reservation lines failed: %r", exc)
            return 0
        self._next_purge = time.monotonic() + self.purge_every_s
        self.purged_total += n
        if self.on_purged is not None:
            self.on_purged(n)
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
                        max_skus: int = 10_000, retention_s: int = RETENTION_S,
                        purge_every_s: float = PURGE_EVERY_S, on_purged: OnCount | None = None,
                        lease: AsyncLease | None = None) -> None:
    """Sweep every ``interval_s`` seconds and purge every ``purge_every_s`` seconds until
    cancelled (run it as a task); ended lines are kept ``retention_s`` seconds.

    With a ``lease`` (duty ``sweeper``), a tick sweeps only while this process holds it, so of
    the processes of a deployment one sweeps and the others stand by, each ready to take over
    once the holder's lease runs out; the lease is given up when the task is cancelled."""
    if not interval_s > 0 or not purge_every_s > 0:
        raise ValueError("interval_s and purge_every_s must be > 0")
    retention_ms = _retention_ms(retention_s)
    next_purge = 0.0
    try:
        while True:
            await asyncio.sleep(interval_s)
            if lease is not None and not await _holding(lease):
                next_purge = 0.0  # a new holder purges at once, as the first tick does
                continue
            next_purge = await _tick(store, max_skus, retention_ms, purge_every_s, next_purge, on_expired,
                                     on_purged)
    finally:
        if lease is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(lease.release())


async def _holding(lease: AsyncLease) -> bool:
    try:
        return await lease.acquire()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # Redis away: nobody sweeps until it is back
        log.warning("sweeper lease %s: %r", lease.key, exc)
        return False


async def _tick(store: AsyncStore, max_skus: int, retention_ms: int, purge_every_s: float, next_purge: float,
                on_expired: OnExpired | None, on_purged: OnCount | None) -> float:
    """One sweep, and a purge when ``next_purge`` (monotonic) has come; the next purge's time.
    A failure (Redis away) is logged and left to the next tick: the holds stay due."""
    try:
        n = await store.sweep(max_skus)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning("hold sweep failed: %r", exc)
        return next_purge
    if on_expired is not None:
        on_expired(n)
    if time.monotonic() < next_purge:
        return next_purge
    try:
        purged = await store.purge(retention_ms, max_skus)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning("purge of ended reservation lines failed: %r", exc)
        return next_purge
    if on_purged is not None:
        on_purged(purged)
    return time.monotonic() + purge_every_s
