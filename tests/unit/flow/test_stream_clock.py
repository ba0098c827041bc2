"""The alert step's stream clock: event time one batch behind, the wall clock when idle."""

import pytest

from engine.flow.stream_clock import StreamClock


class Wall:
    def __init__(self) -> None:
        self.ms = 1_000_000

    def __call__(self) -> int:
        return self.ms


def test_stream_time_is_the_latest_event_time_of_all_but_the_newest_batch() -> None:
    wall = Wall()
    clock = StreamClock(idle_s=60, wall_ms=wall)
    assert clock.now_ms() == 0
    clock.saw(500)
    assert (clock.now_ms(), clock.now_ms(at_end=True)) == (0, 500)
    clock.saw(300)  # an older batch never moves time back
    assert (clock.now_ms(), clock.now_ms(at_end=True)) == (500, 500)


def test_after_idle_s_without_input_stream_time_is_the_wall_clock_unless_events_are_ahead() -> None:
    wall = Wall()
    clock = StreamClock(idle_s=60, wall_ms=wall)
    clock.saw(10)
    clock.saw(20)
    wall.ms += 59_999
    assert clock.now_ms() == 10
    wall.ms += 1
    assert clock.now_ms() == wall.ms
    future = wall.ms + 10 * 86_400_000  # events ahead of the wall clock (a test, a skewed producer)
    clock.saw(future)
    clock.saw(future)
    wall.ms += 60_000
    assert clock.now_ms() == future


def test_a_negative_idle_time_is_refused() -> None:
    with pytest.raises(ValueError):
        StreamClock(idle_s=-1)
