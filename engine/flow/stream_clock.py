"""The alert step's clock for quiet SKUs: event time as far as the stream has got, not the wall clock.

A lot is late once *time* passes its ETA. For a SKU with events, its own event times say how far
time has got. For a quiet SKU only the rest of the stream can say it: ``StreamClock`` follows the
event times of every outcome the alert step sees in this process, one batch behind (by then every
event of the batch before has reached its SKU, so a receipt that came on time is booked before the
clock calls its lot late). Reading old history — a replay, a backfill, a restart after an outage —
therefore calls a lot late exactly where the log says so, whatever the wall clock reads.

When no outcome has arrived for ``idle_s`` (the stream is caught up and quiet), time is the wall
clock, so a lot still comes due on an idle system.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def wall_clock_ms() -> int:
    """Milliseconds since the epoch, from the system clock."""
    return time.time_ns() // 1_000_000


class StreamClock:
    """Stream time of one process (shared by its workers; thread-safe)."""

    def __init__(self, idle_s: float = 60.0, wall_ms: Callable[[], int] = wall_clock_ms) -> None:
        if idle_s < 0:
            raise ValueError(f"idle_s must be ≥ 0, got {idle_s}")
        self._idle_ms = int(idle_s * 1000)
        self._wall_ms = wall_ms
        self._lock = threading.Lock()
        self._latest = 0
        self._settled = 0
        self._last_input = wall_ms()

    def wall_ms(self) -> int:
        """The wall clock this stream clock falls back to."""
        return self._wall_ms()

    def saw(self, event_ms: int) -> None:
        """A batch of outcomes whose latest event time is ``event_ms`` is on its way to the SKUs."""
        with self._lock:
            self._settled = self._latest
            self._latest = max(self._latest, event_ms)
            self._last_input = self._wall_ms()

    def now_ms(self, *, at_end: bool = False) -> int:
        """Stream time: the latest event time of all but the newest batch (of every batch when
        ``at_end``: the input has ended and everything was delivered), or the wall clock when the
        stream has been idle for ``idle_s``."""
        with self._lock:
            stream = self._latest if at_end else self._settled
            wall = self._wall_ms()
            if wall - self._last_input >= self._idle_ms:
                return max(stream, wall)
            return stream
