"""The per-SKU alert logic of the flow, driven directly (no dataflow, no I/O): fresh outcomes, replays
with and without a memo or a stashed reply, what gets memoised, lateness ticks, snapshots."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from engine.flow.alert_monitor import (
    Emitted,
    LotChange,
    MonitorConfig,
    PolicyKnobs,
    Seen,
    SkuLogic,
)
from engine.flow.records import Outcome
from engine.flow.stream_clock import StreamClock
from engine.settings import Settings

DAY = 86_400_000
T0 = 1_893_456_000_000
SRC = "inventory.adjustments:0"
KNOBS = PolicyKnobs(low_stock=10)


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def position(atp: int, on_hand: int | None = None, short: int = 0) -> dict[str, Any]:
    oh = atp if on_hand is None else on_hand
    loc = {"on_hand": oh, "safety": 0, "held": 0, "committed": oh - atp, "in_transit": 0,
           "promisable_in_transit": 0, "atp": atp, "oh_alloc": 0, "bo_alloc": 0, "short": short}
    return {"sku": "A", "atp": atp, "oversold": short, "locations": {"WH1": loc}}


def outcome(offset: int, cmd: str, payload: dict[str, Any], reply: dict[str, Any], t: int = T0,
            source: str = SRC) -> Outcome:
    return Outcome(sku="A", event_id=f"e{offset}", event_type="x", cmd=cmd, payload=payload, source=source,
                   offset=offset, occurred_ms=t, reply={"at_risk": [], "slipped": [], **reply})


def count(offset: int, on_hand: int, status: str = "ok", t: int = T0) -> Outcome:
    reply = {"status": status, "position": position(on_hand)}
    if status == "duplicate":
        reply["reason"] = "offset"
    return outcome(offset, "count", {"loc": "WH1", "on_hand": on_hand}, reply, t)


RESOLVE_AFTER_MS = int(Settings.model_construct().alert_resolve_after_s * 1000)


def logic(clock: Clock | None = None, state: bytes | None = None, stream: StreamClock | None = None) -> SkuLogic:
    stream = stream or StreamClock(idle_s=3600, wall_ms=clock or Clock(T0))
    cfg = MonitorConfig(Settings.model_construct(), stream, tick_interval_s=10)
    return SkuLogic.builder(cfg)(state)


def feed(lg: SkuLogic, *seen: Seen) -> list[Emitted]:
    out, discard = lg.on_batch(list(seen))
    assert discard is False  # a SKU's rule state is never dropped
    return list(out)


def kinds(emitted: list[Emitted]) -> list[tuple[str, str]]:
    return [(a.kind, a.status) for e in emitted for a in e.alerts]


def test_a_fresh_transition_is_published_and_memoised_and_a_quiet_outcome_is_neither() -> None:
    lg = logic()
    first = feed(lg, Seen(count(0, 50), KNOBS))  # the SKU's policy is news: kept for a replay
    quiet = feed(lg, Seen(count(1, 40), KNOBS))
    low = feed(lg, Seen(count(2, 5), KNOBS))

    assert [e.alerts for e in first] == [()] and first[0].memo is not None
    # Only its stashed reply is to go: nothing to publish, nothing to memoise.
    assert quiet == [Emitted(stash_of=quiet[0].stash_of)] and quiet[0].stash_of is not None
    assert quiet[0].stash_of.offset == 1
    assert kinds(low) == [("low_stock", "firing")]
    assert low[0].memo is not None and low[0].memo_of is not None and low[0].memo_of.offset == 2
    assert low[0].memo.knobs == KNOBS and low[0].memo.observation.position is not None


def test_a_missed_replay_with_its_memo_gives_the_first_pass_again_from_the_restored_state() -> None:
    first = logic()
    feed(first, Seen(count(0, 50), KNOBS))
    snapshot = first.snapshot()
    fired = feed(first, Seen(count(1, 5), KNOBS))
    memo = fired[0].memo

    restored = logic(state=snapshot)
    # Redis is ahead: the store answers "duplicate" with today's position (ATP 50 again).
    replayed = feed(restored, Seen(count(1, 50, status="duplicate"), KNOBS, memo))

    assert [a.to_json() for a in replayed[0].alerts] == [a.to_json() for a in fired[0].alerts]
    assert replayed[0].memo is None  # a replay writes no memo
    feed(restored, Seen(count(2, 50, t=T0 + 1), KNOBS))  # clear from here on
    later = feed(restored, Seen(count(3, 50, t=T0 + 1 + RESOLVE_AFTER_MS), KNOBS))  # clear long enough
    assert [(a.kind, a.status, a.alert_id) for a in later[0].alerts] == [
        ("low_stock", "resolved", fired[0].alerts[0].alert_id)
    ]


def test_a_missed_replay_without_a_memo_judges_no_position_and_a_known_duplicate_is_news() -> None:
    lg = logic()
    feed(lg, Seen(count(5, 50), KNOBS))
    missed = feed(lg, Seen(count(6, 5, status="duplicate"), KNOBS))  # beyond offset 5: never observed
    known = feed(lg, Seen(count(4, 5, status="duplicate"), KNOBS))  # at or below 5: its position is news

    assert missed == []
    assert kinds(known) == [("low_stock", "firing")]
    assert known[0].stash_of is None  # the store kept no reply of a duplicate by offset


def test_a_missed_replay_with_a_stashed_reply_is_the_first_pass_the_crash_cut_short() -> None:
    first = logic()
    feed(first, Seen(count(0, 50), KNOBS))
    snapshot = first.snapshot()
    fired = feed(first, Seen(count(1, 5), KNOBS))
    stashed = count(1, 5).reply  # what the store kept when it applied offset 1

    # Killed before the memo was stored: the replay has the stash and no memo.
    restored = logic(state=snapshot)
    replayed = feed(restored, Seen(count(1, 50, status="duplicate"), KNOBS, stashed=stashed))

    assert [a.to_json() for a in replayed[0].alerts] == [a.to_json() for a in fired[0].alerts]
    assert replayed[0].memo == fired[0].memo  # memoised now, as the first pass would have
    assert replayed[0].memo_of is not None and replayed[0].memo_of.reply == stashed
    assert replayed[0].stash_of is not None and replayed[0].stash_of.offset == 1


def test_a_memo_wins_over_a_stash_and_a_known_duplicate_ignores_both() -> None:
    first = logic()
    feed(first, Seen(count(0, 50), KNOBS))
    snapshot = first.snapshot()
    fired = feed(first, Seen(count(1, 5), KNOBS))
    bogus = count(1, 30).reply  # never what the store kept: only the memo may be read

    restored = logic(state=snapshot)
    replayed = feed(restored, Seen(count(1, 50, status="duplicate"), KNOBS, fired[0].memo, bogus))
    known = feed(restored, Seen(count(1, 5, status="duplicate"), KNOBS, stashed=bogus))

    assert kinds(replayed) == [("low_stock", "firing")] and replayed[0].stash_of is None
    assert replayed[0].memo is None
    # Judged as news from its own reply (ATP 5 is still low: nothing new), never from the stash.
    assert kinds(known) == [] and known[0].stash_of is None
    assert known[0].memo is not None and known[0].memo.observation.status == "duplicate"


def test_replies_the_command_alone_cannot_rebuild_are_memoised() -> None:
    lg = logic()
    refused = outcome(0, "order_placed", {"rid": "o1", "qty": 3, "loc": "", "channel": "web"},
                      {"status": "refused", "reason": "insufficient", "available": 0, "position": position(0)},
                      source="inventory.orders:0")
    placed_elsewhere = outcome(
        1, "order_placed", {"rid": "o2", "qty": 1, "loc": "", "channel": "web"},
        {"status": "ok", "position": position(20, on_hand=21),
         "line": {"alloc": [["oh", "WH1", "WH1", 1]]}}, source="inventory.orders:0")
    out = feed(lg, Seen(refused, KNOBS), Seen(placed_elsewhere, KNOBS))

    assert [e.memo_of.event_id for e in out if e.memo_of] == ["e0", "e1"]
    assert out[1].memo is not None and out[1].memo.observation.location == "WH1"


def test_lots_opened_and_closed_are_told_to_the_supplier_step() -> None:
    lg = logic()
    created = outcome(0, "inbound_created",
                      {"inbound_id": "L1", "loc": "WH1", "qty": 10, "eta_ms": T0 + DAY, "supplier": "S1"},
                      {"status": "ok", "position": position(0)}, source="inventory.inbound:0")
    received = outcome(0, "receipt", {"loc": "WH1", "qty": 4, "inbound_id": "L1"},
                       {"status": "ok", "position": position(4),
                        "lot": {"inbound_id": "L1", "qty": 10, "eta_ms": T0 + DAY, "supplier": "S1"}},
                       t=T0 + DAY, source="inventory.receipts:0")
    out = feed(lg, Seen(created, KNOBS), Seen(received, KNOBS))

    messages = [m for e in out for m in e.supplier]
    assert messages[:2] == [LotChange("S1", "A", "L1", True), LotChange("S1", "A", "L1", False)]
    receipt = messages[2]
    assert (receipt.supplier, receipt.expected_qty, receipt.received_qty, receipt.received_ms) == (
        "S1", 10, 4, T0 + DAY
    )


def test_a_policy_that_starts_using_reliability_re_announces_the_open_lots_and_is_memoised() -> None:
    lg = logic()
    created = outcome(0, "inbound_created",
                      {"inbound_id": "L1", "loc": "WH1", "qty": 10, "eta_ms": T0 + DAY, "supplier": "S1"},
                      {"status": "ok", "position": position(100)}, source="inventory.inbound:0")
    feed(lg, Seen(created, KNOBS))
    out = feed(lg, Seen(count(1, 100), PolicyKnobs(low_stock=10, use_reliability=True)))

    assert [m for e in out for m in e.supplier] == [LotChange("S1", "A", "L1", True, True)]
    assert out[0].memo is not None and out[0].memo.knobs.use_reliability is True


def lot_logic(clock: Clock, stream: StreamClock | None = None) -> SkuLogic:
    lg = logic(clock, stream=stream)
    created = outcome(0, "inbound_created",
                      {"inbound_id": "L1", "loc": "WH1", "qty": 10, "eta_ms": T0 + DAY, "supplier": "S1"},
                      {"status": "ok", "position": position(100)}, source="inventory.inbound:0")
    feed(lg, Seen(created, KNOBS))
    return lg


def late(emitted: list[Emitted]) -> list[tuple[str, str, int, str]]:
    return [(a.status, a.subject, a.occurred_ms, a.event_id) for e in emitted for a in e.alerts
            if a.kind == "inbound_late"]


def test_a_quiet_sku_wakes_and_calls_its_lot_late_once_the_stream_time_has_passed_the_eta() -> None:
    clock = Clock(T0)
    stream = StreamClock(idle_s=3600, wall_ms=clock)
    lg = lot_logic(clock, stream)
    wake = lg.notify_at()
    assert wake is not None  # live (stream time ≈ wall clock): no sooner than the due instant
    assert abs((wake - (datetime.now(UTC) + timedelta(milliseconds=DAY + 1))).total_seconds()) < 5

    clock.ms = T0 + 30 * DAY  # the wall clock says a month later, but the stream is still at T0
    stream.saw(T0)
    early, discard = lg.on_notify()
    assert list(early) == [] and discard is False
    assert lg.notify_at() is not None  # old history: look again every tick interval

    stream.saw(T0 + 2 * DAY)  # other SKUs' events of day 2 ...
    stream.saw(T0 + 2 * DAY + 1)  # ... are delivered once the next batch comes in
    out, _ = lg.on_notify()
    assert late(list(out)) == [("firing", "L1", T0 + DAY + 1, "")]  # at the due instant, of no event
    assert lg.notify_at() is None  # nothing left to wait for


def test_an_idle_stream_follows_the_wall_clock() -> None:
    clock = Clock(T0)
    stream = StreamClock(idle_s=60, wall_ms=clock)
    lg = lot_logic(clock, stream)
    clock.ms = T0 + DAY
    stream.saw(T0)  # a batch of old events arrives when the wall clock is at the due instant
    clock.ms += 30_000
    assert late(list(lg.on_notify()[0])) == []  # input 30 s ago: the stream time is its event time
    clock.ms += 30_000
    assert late(list(lg.on_notify()[0])) == [("firing", "L1", T0 + DAY + 1, "")]


def test_an_event_past_the_due_instant_fires_the_same_message_a_tick_would_then_its_own() -> None:
    lg = lot_logic(Clock(T0))
    receipt = outcome(0, "receipt", {"loc": "WH1", "qty": 10, "inbound_id": "L1"},
                      {"status": "ok", "position": position(110),
                       "lot": {"inbound_id": "L1", "qty": 10, "eta_ms": T0 + DAY, "supplier": "S1"}},
                      t=T0 + 3 * DAY, source="inventory.receipts:0")
    out = feed(lg, Seen(receipt, KNOBS))

    assert late(out) == [("firing", "L1", T0 + DAY + 1, ""), ("resolved", "L1", T0 + 3 * DAY, "e0")]


def test_the_end_of_a_bounded_run_applies_the_stream_time_of_all_its_input() -> None:
    clock = Clock(T0)
    stream = StreamClock(idle_s=3600, wall_ms=clock)
    lg = lot_logic(clock, stream)
    stream.saw(T0 + 2 * DAY)  # the last batch: not settled while the input goes on

    assert late(list(lg.on_notify()[0])) == []
    assert late(list(lg.on_eof()[0])) == [("firing", "L1", T0 + DAY + 1, "")]


def test_a_snapshot_restores_the_whole_state() -> None:
    lg = lot_logic(Clock(T0))
    feed(lg, Seen(count(3, 5), KNOBS))
    restored = logic(state=lg.snapshot())

    assert restored.state == lg.state
    assert restored.state is not None and restored.state.offsets == {"inventory.inbound:0": 0, SRC: 3}
    assert restored.state.knobs == KNOBS
