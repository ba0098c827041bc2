"""HoldClock: the age of a hold at its end, overdue holds, and the bound on what it remembers."""

from __future__ import annotations

import pytest

from engine import metrics
from engine.observability.holds import HoldClock


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _count(end: str) -> float:
    return metrics.REGISTRY.get_sample_value("atp_hold_age_seconds_count", {"end": end}) or 0.0


def _sum(end: str) -> float:
    return metrics.REGISTRY.get_sample_value("atp_hold_age_seconds_sum", {"end": end}) or 0.0


def test_a_confirmed_hold_is_observed_with_its_age_once() -> None:
    clock = FakeClock()
    holds = HoldClock(clock=clock)
    holds.granted("r1", expires_ms=60_000, ttl_s=60)
    clock.now += 12.5
    before_n, before_sum = _count("confirmed"), _sum("confirmed")
    assert holds.ended("r1", "confirmed") == 12.5
    assert _count("confirmed") == before_n + 1 and _sum("confirmed") == pytest.approx(before_sum + 12.5)
    assert holds.ended("r1", "confirmed") is None  # unknown now: nothing observed twice
    assert _count("confirmed") == before_n + 1


def test_overdue_lists_holds_past_expiry_and_grace_oldest_first() -> None:
    clock = FakeClock()
    holds = HoldClock(clock=clock)
    holds.granted("late", expires_ms=10_000, ttl_s=10)
    holds.granted("early", expires_ms=5_000, ttl_s=5)
    holds.granted("ended", expires_ms=1_000, ttl_s=1)
    holds.ended("ended", "released")
    clock.now += 6
    assert holds.overdue(grace_s=2, limit=10) == []
    clock.now += 1
    assert holds.overdue(grace_s=2, limit=10) == ["early"]
    clock.now += 10
    assert holds.overdue(grace_s=2, limit=10) == ["late"]
    assert len(holds) == 2  # remembered until expired / forget


def test_an_extended_hold_is_overdue_at_its_new_expiry_only() -> None:
    clock = FakeClock()
    holds = HoldClock(clock=clock)
    holds.granted("r", expires_ms=5_000, ttl_s=5)
    clock.now += 4
    holds.extended("r", 30)
    clock.now += 10
    assert holds.overdue(grace_s=1, limit=10) == []
    clock.now += 30
    assert holds.overdue(grace_s=1, limit=10) == ["r"]


def test_an_expired_hold_ages_from_its_grant_to_its_last_expiry_in_redis_time() -> None:
    holds = HoldClock(clock=FakeClock())
    # Granted at Redis time 100 s for 20 s; extended elsewhere to expire at 145 s.
    holds.granted("r", expires_ms=120_000, ttl_s=20)
    before_n, before_sum = _count("expired"), _sum("expired")
    assert holds.expired("r", final_expires_ms=145_000) == 45.0
    assert _count("expired") == before_n + 1 and _sum("expired") == pytest.approx(before_sum + 45)
    assert len(holds) == 0


def test_recheck_and_forget() -> None:
    clock = FakeClock()
    holds = HoldClock(clock=clock)
    holds.granted("a", expires_ms=1_000, ttl_s=1)
    holds.granted("b", expires_ms=1_000, ttl_s=1)
    clock.now += 5
    assert holds.overdue(grace_s=0, limit=10) == ["a", "b"]
    holds.recheck("a", 3)
    holds.forget("b")
    assert holds.overdue(grace_s=0, limit=10) == []
    clock.now += 3
    assert holds.overdue(grace_s=0, limit=10) == ["a"]
    assert len(holds) == 1


def test_the_oldest_hold_is_forgotten_beyond_the_limit_and_overdue_respects_its_limit() -> None:
    clock = FakeClock()
    holds = HoldClock(limit=3, clock=clock)
    for i in range(5):
        holds.granted(f"r{i}", expires_ms=1_000, ttl_s=1)
    assert len(holds) == 3
    assert holds.ended("r0", "released") is None and holds.ended("r1", "released") is None
    clock.now += 2
    assert holds.overdue(grace_s=0, limit=2) == ["r2", "r3"]
    assert holds.overdue(grace_s=0, limit=2) == ["r4"]


def test_stale_due_entries_do_not_grow_without_bound() -> None:
    holds = HoldClock(limit=10, clock=FakeClock())
    for i in range(5000):
        holds.granted(f"r{i}", expires_ms=1_000, ttl_s=1)
        holds.ended(f"r{i}", "confirmed")
    assert len(holds._due) <= 2 * len(holds) + 1025


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="limit"):
        HoldClock(limit=0)
