"""Bounded work at scale (R17): a long history is worked off in many short calls, each leaving a
whole state (the invariant checker passes after every call) and naming each line once."""

from __future__ import annotations

from typing import Any

import orjson

from engine.domain.oracle import HoldRequest as OracleHold
from engine.domain.oracle import SkuBook
from engine.domain.policy import Policy
from engine.store import scripts
from engine.store.invariants import check_invariants
from engine.store.keys import sku_keys
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


# ---------------------------------------------------------------------------- supply at scale

DAY = 86_400_000
SCALE = 20_000


class _Twin:
    """The store and the oracle fed the same commands; every reply must be the same."""

    def __init__(self, redis: Any, sku: str) -> None:
        self.sku, self.redis = sku, redis
        self.store = Store(redis, now_ms=T0)
        self.book = SkuBook(sku)
        self.offset = 0

    def supply(self, cmd: str, payload: dict[str, Any]) -> dict[str, Any]:
        self.offset += 1
        [lua] = self.store.apply([SupplyCommand(self.sku, cmd, payload, source="t:0", offset=self.offset)])
        oracle = self.book.apply(cmd, payload, T0, source="t:0", offset=self.offset)
        assert lua == oracle
        assert check_invariants(self.redis) == []
        return lua

    def holds(self, prefix: str, n: int, loc: str = "") -> None:
        for start in range(0, n, 1000):
            ids = [f"{prefix}{i}" for i in range(start, min(n, start + 1000))]
            lua = self.store.hold_batch(self.sku, [HoldRequest(r, 1, loc, 600_000) for r in ids])
            oracle = self.book.hold_batch([OracleHold(r, 1, loc, 600_000) for r in ids], T0)
            assert lua == oracle
            assert {r["status"] for r in lua} == {"ok"}


def _big_lot_sku(redis: Any, sku: str) -> _Twin:
    """A presell SKU with 5k lines on on-hand at A and SCALE lines on lot L1 (plus lot L2 empty)."""
    twin = _Twin(redis, sku)
    twin.supply("policy", {"policy": Policy(mode="presell").to_wire()})
    twin.supply("count", {"loc": "A", "on_hand": 5_000})
    twin.holds("oh-", 5_000)
    twin.supply("inbound_created", {"inbound_id": "L1", "loc": "A", "qty": SCALE, "eta_ms": T0 + 5 * DAY, "supplier": "s1"})
    twin.supply("inbound_created", {"inbound_id": "L2", "loc": "A", "qty": 10, "eta_ms": T0 + 9 * DAY, "supplier": "s1"})
    twin.holds("lot-", SCALE)
    return twin


def test_an_eta_slip_of_a_lot_with_20k_allocations_names_each_of_its_lines_once(redis: Any) -> None:
    twin = _big_lot_sku(redis, "SLIP")
    reply = twin.supply("inbound_updated", {"inbound_id": "L1", "eta_ms": T0 + 8 * DAY, "qty": 0})
    named = [s["rid"] for s in reply["slipped"]]
    assert len(named) == len(set(named)) == SCALE  # only the lot's lines, each once
    assert named[0] == f"lot-{SCALE - 1}" and named[-1] == "lot-0"  # newest first


def test_a_short_receipt_of_a_lot_with_20k_allocations_moves_them_and_sheds_the_newest(redis: Any) -> None:
    twin = _big_lot_sku(redis, "RCPT")
    reply = twin.supply("receipt", {"loc": "A", "qty": SCALE - 3_000, "inbound_id": "L1"})
    # the 3k newest lose their unit; the 10 oldest of them get one from L2 again
    assert [a["rid"] for a in reply["at_risk"]] == [f"lot-{i}" for i in range(SCALE - 1, SCALE - 2_991, -1)]
    lines = twin.store.dump("RCPT")["lines"]
    assert lines["lot-0"]["alloc"] == [["oh", "A", "A", 1]]
    assert lines[f"lot-{SCALE - 3_000}"]["alloc"] == [["lot", "L2", "A", 1]]


def test_a_cancelled_lot_and_a_count_that_sheds_leave_every_line_accounted_for(redis: Any) -> None:
    twin = _big_lot_sku(redis, "CNCL")
    reply = twin.supply("inbound_cancelled", {"inbound_id": "L1"})
    assert len(reply["at_risk"]) == SCALE - 10  # L2's 10 units refill the 10 oldest
    reply = twin.supply("count", {"loc": "A", "on_hand": 1_000})  # sheds 4k on-hand units
    assert len({a["rid"] for a in reply["at_risk"]}) == SCALE - 10 + 4_000
    reply = twin.supply("receipt", {"loc": "A", "qty": 30_000, "inbound_id": ""})  # refills all
    assert reply["at_risk"] == []


def test_a_store_written_without_the_pool_index_gets_it_built_on_first_use(redis: Any) -> None:
    twin = _big_lot_sku(redis, "OLD")
    redis.delete(sku_keys("OLD").pool)
    assert check_invariants(redis) != []  # the checker sees the index is missing
    twin.supply("count", {"loc": "A", "on_hand": 4_990})
    assert check_invariants(redis) == []
