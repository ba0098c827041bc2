"""The age of the holds one API process granted, so their end can be observed (``atp_hold_age_seconds``).

The store keeps no creation time on a line, so the process that granted a hold remembers when:

* a confirm or release through this process ends it: its age is observed at once, by the
  process's own monotonic clock;
* a hold nobody here confirmed or released is *overdue* once its expiry passed (plus a grace for
  the sweeper); the caller then reads its state and reports an expired one with
  ``expired_age_s`` — the line's final expiry (Redis time, so extensions made anywhere count)
  minus the instant it was granted (also Redis time: the hold reply's expiry minus its TTL).

Holds ended elsewhere (another API process, an ``order.placed`` event confirming it in the flow)
have no known end time and are not observed. The clock is bounded (``limit`` holds, the oldest
forgotten first), so under a long sale it is a sample, which is what a histogram needs. Not
thread-safe: one event loop owns it.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine import metrics

DEFAULT_LIMIT = 50_000


@dataclass
class _Hold:
    granted: float  # monotonic seconds
    granted_ms: int  # Redis time, ms
    due: float  # monotonic seconds at which it expires, as far as this process knows


class HoldClock:
    """Remembers when this process granted each hold (up to ``limit``) and observes how they ended."""

    def __init__(self, limit: int = DEFAULT_LIMIT, clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self._limit = limit
        self._clock = clock
        self._holds: dict[str, _Hold] = {}
        self._due: list[tuple[float, str]] = []

    def __len__(self) -> int:
        return len(self._holds)

    def granted(self, rid: str, expires_ms: int, ttl_s: int) -> None:
        """Hold ``rid`` was granted now for ``ttl_s`` seconds; ``expires_ms`` is its expiry in Redis time."""
        now = self._clock()
        if rid not in self._holds and len(self._holds) >= self._limit:
            del self._holds[next(iter(self._holds))]  # the oldest: dicts keep insertion order
        hold = _Hold(now, expires_ms - ttl_s * 1000, now + ttl_s)
        self._holds[rid] = hold
        self._push(hold.due, rid)

    def extended(self, rid: str, ttl_s: int) -> None:
        """Hold ``rid`` now expires ``ttl_s`` seconds from now."""
        hold = self._holds.get(rid)
        if hold is not None:
            hold.due = self._clock() + ttl_s
            self._push(hold.due, rid)

    def ended(self, rid: str, end: str) -> float | None:
        """Hold ``rid`` ended now (``confirmed`` / ``released``): observe and return its age, if known."""
        hold = self._holds.pop(rid, None)
        if hold is None:
            return None
        age = self._clock() - hold.granted
        metrics.observe_hold_age(age, end)
        return age

    def overdue(self, grace_s: float, limit: int) -> list[str]:
        """Up to ``limit`` holds whose expiry passed more than ``grace_s`` ago, oldest first; they stay
        remembered until ``expired`` or ``forget``."""
        now = self._clock()
        out: list[str] = []
        while self._due and len(out) < limit and self._due[0][0] + grace_s <= now:
            due, rid = heapq.heappop(self._due)
            hold = self._holds.get(rid)
            if hold is not None and hold.due == due:  # else: ended, forgotten or extended since
                out.append(rid)
        return out

    def recheck(self, rid: str, after_s: float) -> None:
        """Look at ``rid`` again ``after_s`` seconds from now (it was still held)."""
        hold = self._holds.get(rid)
        if hold is not None:
            hold.due = self._clock() + after_s
            self._push(hold.due, rid)

    def expired(self, rid: str, final_expires_ms: int) -> float | None:
        """Hold ``rid`` was found expired, its last expiry being ``final_expires_ms`` (Redis time):
        observe and return its age at expiry."""
        hold = self._holds.pop(rid, None)
        if hold is None:
            return None
        age = max(0.0, (final_expires_ms - hold.granted_ms) / 1000)
        metrics.observe_hold_age(age, "expired")
        return age

    def forget(self, rid: str) -> None:
        """Stop tracking ``rid`` (it ended in a way whose time is unknown here)."""
        self._holds.pop(rid, None)

    def _push(self, due: float, rid: str) -> None:
        heapq.heappush(self._due, (due, rid))
        if len(self._due) > 2 * len(self._holds) + 1024:  # drop entries of ended or moved holds
            self._due = [(h.due, r) for r, h in self._holds.items()]
            heapq.heapify(self._due)
