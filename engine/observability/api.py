"""What an API process reports beyond its request counters (started from the app's lifespan).

Every ``interval_s`` seconds ``ApiObserver`` refreshes, each step on its own (one failing step
never stops the others or the loop):

* ``atp_dependency_up`` — the probes ``/readyz`` runs (Redis PING, broker metadata), so the
  gauge is fresh without anyone calling ``/readyz``;
* ``atp_watch_atp`` — one batched position read of the watched SKUs (``settings.watch_skus``),
  per location;
* ``atp_expiry_lag_seconds`` — how long past its expiry the most overdue hold still waiting to be
  released is (Redis time; 0 when none is overdue, which is the case while the sweeper and the
  scripts' lazy expiry keep up): the oldest score of every SKU's expiry set;
* ``atp_hold_age_seconds{end="expired"}`` — holds this process granted that are overdue are read
  back (at most ``LOOKUPS_PER_TICK`` per tick) and the expired ones observed (``HoldClock``).

The checkout calls report holds granted, confirmed, released and extended with ``note_hold`` /
``note_lifecycle`` (no-ops where no observer runs, e.g. an app served without its lifespan).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from engine import metrics
from engine.observability.holds import HoldClock
from engine.store.keys import exp_scan_pattern

log = logging.getLogger(__name__)

INTERVAL_S = 2.0
PROBE_TIMEOUT_S = 2.0
LOOKUPS_PER_TICK = 200
MAX_EXPIRY_SETS = 10_000
_PIPELINE_CHUNK = 500
_LOOKUP_CONCURRENCY = 32
_END_OF: dict[str, str] = {"confirm": "confirmed", "release": "released"}


class ApiObserver:
    """The background reporting of one API process over its ``app.state`` (``settings``, ``redis``,
    ``client``, ``publisher``, ``ping_redis``). ``start()`` in the lifespan, ``await stop()`` at its end."""

    def __init__(self, state: Any, interval_s: float = INTERVAL_S) -> None:
        if not interval_s > 0:
            raise ValueError("interval_s must be > 0")
        self.state = state
        settings = state.settings
        self.interval_s = interval_s
        self.prefix: str = settings.key_prefix
        self.watched: list[str] = list(metrics.configure_watch_list(settings.watch_skus))
        self.clock = HoldClock()
        # An overdue hold is read back once the sweeper has had its turn at it.
        self.grace_s = settings.sweep_interval_s + interval_s
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def start(self) -> ApiObserver:
        """Start the loop as a task of the running event loop."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="atp-api-observer")
        return self

    async def stop(self) -> None:
        """End the loop and wait for it.

        A stop flag, not cancellation alone: a cancel that lands while a probe finishes can be
        swallowed inside asyncio's timeout helpers, and the loop would then run for ever.
        """
        if self._task is not None:
            self._stopping.set()
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({self._task}, timeout=10)
            self._task = None

    async def _run(self) -> None:
        while not self._stopping.is_set():
            await self.tick()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._stopping.wait()

    async def tick(self) -> None:
        """One refresh of everything (what the loop does every ``interval_s``)."""
        steps: list[Callable[[], Awaitable[None]]] = [
            self.probe_dependencies, self.refresh_watched_atp, self.measure_expiry_lag, self.observe_expired_holds,
        ]
        for step in steps:
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # observability must never take the API down; try again next tick
                log.warning("observer step %s failed: %r", step.__name__, exc)

    async def probe_dependencies(self) -> None:
        """Set ``atp_dependency_up`` for redis and kafka from the same probes as ``/readyz``."""
        redis_ok, kafka_ok = await asyncio.gather(self._redis_up(), self._kafka_up())
        metrics.set_dependency_up("redis", redis_ok)
        metrics.set_dependency_up("kafka", kafka_ok)

    async def _redis_up(self) -> bool:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                await self.state.ping_redis()
            return True
        except Exception:
            return False

    async def _kafka_up(self) -> bool:
        try:
            return bool(await asyncio.to_thread(self.state.publisher.reachable, PROBE_TIMEOUT_S))
        except Exception:
            return False

    async def refresh_watched_atp(self) -> None:
        """Set ``atp_watch_atp`` of every location of every watched SKU."""
        if not self.watched:
            return
        positions = await self.state.client.atp_many(self.watched)
        for sku, position in positions.items():
            for loc, figures in (position.get("locations") or {}).items():
                metrics.set_watched_atp(sku, loc, int(figures.get("atp", 0)))

    async def measure_expiry_lag(self) -> None:
        """Set ``atp_expiry_lag_seconds``: now minus the earliest expiry among the holds still held.

        It scans the keyspace, so of a deployment's processes only the one that sweeps (the holder
        of ``state.sweeper_lease``) measures; the others report 0, and ``max`` over the processes
        is the deployment's lag. Without a lease (no sweeper here) every process measures."""
        lease = getattr(self.state, "sweeper_lease", None)
        if lease is not None and await lease.holder() != lease.token:
            metrics.set_expiry_lag(0.0)
            return
        redis = self.state.redis
        keys: list[Any] = []
        async for key in redis.scan_iter(match=exp_scan_pattern(self.prefix), count=1000):
            keys.append(key)
            if len(keys) >= MAX_EXPIRY_SETS:
                break
        now_ms = _server_ms(await redis.time())
        oldest: float | None = None
        for i in range(0, len(keys), _PIPELINE_CHUNK):
            pipe = redis.pipeline(transaction=False)
            for key in keys[i:i + _PIPELINE_CHUNK]:
                pipe.zrange(key, 0, 0, withscores=True)
            for first in await pipe.execute():
                if first:
                    score = float(first[0][1])
                    oldest = score if oldest is None else min(oldest, score)
        metrics.set_expiry_lag(max(0.0, now_ms - oldest) / 1000 if oldest is not None else 0.0)

    async def observe_expired_holds(self) -> None:
        """Read back the overdue holds of ``clock``; observe the expired ones' age, recheck the
        still-held ones later, forget the rest (ended elsewhere: no end time known)."""
        rids = self.clock.overdue(self.grace_s, LOOKUPS_PER_TICK)
        for i in range(0, len(rids), _LOOKUP_CONCURRENCY):
            chunk = rids[i:i + _LOOKUP_CONCURRENCY]
            results = await asyncio.gather(
                *(self.state.client.get_reservation(rid) for rid in chunk), return_exceptions=True
            )
            for rid, result in zip(chunk, results, strict=True):
                state = getattr(result, "state", None) if getattr(result, "ok", False) else None
                if state == "expired":
                    self.clock.expired(rid, max(line.expires_ms for line in result.lines))
                elif state in ("held", "partial"):
                    self.clock.recheck(rid, self.grace_s)
                else:
                    self.clock.forget(rid)


def _server_ms(reply: Any) -> int:
    """Redis TIME (``(seconds, microseconds)``; a Redis Cluster answers per node) in ms."""
    if isinstance(reply, dict):
        reply = next(iter(reply.values()))
    seconds, micros = reply
    return int(seconds) * 1000 + int(micros) // 1000


def start_api_observer(state: Any, interval_s: float = INTERVAL_S) -> ApiObserver:
    """Build the observer over ``state`` (the app's ``app.state``), keep it as ``state.observer``
    (where ``note_hold`` / ``note_lifecycle`` find it) and start it."""
    observer = ApiObserver(state, interval_s)
    state.observer = observer
    return observer.start()


def note_hold(state: Any, rid: str, result: Any, ttl_s: int | None) -> None:
    """A hold call returned ``result``: remember when a new hold was granted (``ttl_s`` None = the
    default TTL)."""
    observer = getattr(state, "observer", None)
    if observer is None or getattr(result, "status", None) != "ok" or not getattr(result, "expires_ms", 0):
        return
    observer.clock.granted(rid, result.expires_ms, ttl_s or state.settings.default_hold_ttl_s)


def note_lifecycle(state: Any, op: str, rid: str, result: Any, args: tuple[int, ...]) -> None:
    """A confirm / release / extend (``args`` = the new TTL) returned ``result``: a hold that ended
    now has its age observed, an extended one its new expiry noted."""
    observer = getattr(state, "observer", None)
    if observer is None or getattr(result, "status", None) != "ok":
        return
    end = _END_OF.get(op)
    if end is not None:
        observer.clock.ended(rid, end)
    elif op == "extend" and args:
        observer.clock.extended(rid, args[0])
