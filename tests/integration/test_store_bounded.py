"""Bounded work at scale (R17): a long history is worked off in many short calls, each leaving a
whole state (the invariant checker passes after every call) and naming each line once."""

from __future__ import annotations

from typing import Any

import orjson

from engine.store import scripts
from engine.store.invariants import check_invariants
from engine.store.store import PURGE_LINES_PER_CALL, Store
from engine.store.wire import HoldRequest, SupplyCommand

T0 = 1_700_000_000_000
KEEP_MS = 60_000
EXPIRE_LINES = 32  # lines one call expires (engine/store/lua/lib.lua EXPIRE_LINES)


def _ended_lines(store: Store, sku: str, n: int) -> None:
    """``n`` holds of one unit on ``sku`` that expire at T0 + 1 s (ended once a call sees it)."""
    store.apply([SupplyCommand(sku, "count", {"loc": "A", "on_hand": n})])
    for start in range(0, n, 1000):
        batch = [HoldRequest(f"{sku}-{i}", 1, "", 1_000) for i in range(start, min(n, start + 1000))]
        assert {r["status"] for r in store.hold_batch(sku, batch)} == {"ok"}


def _held_as_stored(store: Store, redis: Any, sku: str) -> int:
    """``held`` as the SKU's state says now, read without expiring anything (the checker's read)."""
    script = scripts.load_scripts()["position"]
    keys = store._position_call(sku, None)[1]
    return int(orjson.loads(scripts.call(redis, script, keys, [sku, 0, "", 1]))["held"])


def test_a_purge_of_20k_ended_lines_is_many_bounded_calls_each_leaving_a_whole_state(redis: Any) -> None:
    store = Store(redis, now_ms=T0)
    _ended_lines(store, "LONG", 20_000)
    store.now_ms = T0 + 2_000
    assert store.position("LONG")["held"] == 0  # every hold has expired
    store.now_ms = T0 + 2_000 + KEEP_MS
    named: list[str] = []
    calls = 0
    while True:
        reply = scripts.call(redis, *store._sweep_call("LONG", KEEP_MS))
        calls += 1
        rids = [r.decode() if isinstance(r, bytes) else r for r in reply[2:]]
        assert len(rids) <= PURGE_LINES_PER_CALL
        named += rids
        assert check_invariants(redis) == []
        if not int(reply[1]):
            break
    assert calls == -(-20_000 // PURGE_LINES_PER_CALL)  # ceil: the last call finds none left
    assert len(named) == len(set(named)) == 20_000
    assert store.dump("LONG")["lines"] == {}


def test_purge_loops_until_every_sku_is_done(redis: Any) -> None:
    store = Store(redis, now_ms=T0)
    _ended_lines(store, "P1", 2_500)
    _ended_lines(store, "P2", 10)
    store.now_ms = T0 + 2_000
    assert store.sweep() == 2_510
    store.now_ms = T0 + 2_000 + KEEP_MS
    assert store.purge(KEEP_MS) == 2_510
    assert store.dump("P1")["lines"] == {} and store.dump("P2")["lines"] == {}
    assert store.purge(KEEP_MS) == 0


def test_a_wave_of_20k_holds_coming_due_is_expired_in_bounded_calls_before_the_next_hold(redis: Any) -> None:
    store = Store(redis, now_ms=T0)
    _ended_lines(store, "WAVE", 20_000)  # 20k holds of one unit on stock 20k, all due at T0 + 1 s
    store.now_ms = T0 + 2_000
    call = store._hold_call("WAVE", [HoldRequest("after-the-wave", 5_000, "", 60_000)])
    chunks = 0
    while True:
        # the hold script, sent as the store sends it, one call at a time
        reply = redis.evalsha(call[0].sha, len(call[1]), *call[1], *call[2])
        if reply not in (scripts.MORE, scripts.MORE.decode()):
            break
        chunks += 1
        assert _held_as_stored(store, redis, "WAVE") == 20_000 - chunks * EXPIRE_LINES  # one chunk each
        if chunks % 25 == 1:  # the whole check reads all 20k lines: every 25th call
            assert check_invariants(redis) == []
    assert chunks == 20_000 // EXPIRE_LINES - 1  # the call that expires the last chunk goes on to hold
    assert check_invariants(redis) == []
    status = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
    assert status == "ok"  # the due holds' units were promisable again: nothing refused
    position = store.position("WAVE")
    assert (position["held"], position["atp"]) == (5_000, 15_000)
    expired = [ln for ln in store.dump("WAVE")["lines"].values() if ln["state"] == "expired"]
    assert len(expired) == 20_000


def test_the_store_hides_the_chunks_a_hold_after_a_wave_is_one_call_for_its_caller(redis: Any) -> None:
    store = Store(redis, now_ms=T0)
    _ended_lines(store, "WAVE2", 3_000)
    store.now_ms = T0 + 2_000
    [reply] = store.hold_batch("WAVE2", [HoldRequest("next", 3_000, "", 60_000)])
    assert reply["status"] == "ok" and reply["line"]["alloc"] == [["oh", "A", "A", 3_000]]
    assert store.sweep() == 0
