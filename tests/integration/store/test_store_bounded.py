"""Bounded work at scale (R17): a long history is worked off in many short calls, each leaving a
whole state (the invariant checker passes after every call) and naming each line once."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import orjson

from engine.domain.oracle import HoldRequest as OracleHold
from engine.domain.oracle import SkuBook
from engine.domain.policy import Policy
from engine.store import scripts
from engine.store.invariants import check_invariants
from engine.store.keys import sku_keys
from engine.store.store import PURGE_LINES_PER_CALL, AsyncStore, Store
from engine.store.wire import HoldRequest, SupplyCommand
from tests.conftest import redis_client

T0 = 1_700_000_000_000
KEEP_MS = 60_000
# lines one call buries, and the hot path's share, as lib.lua says
_BURY = re.search(r"EXPIRE_LINES, HOLD_BURY = \d+, (\d+), (\d+)", scripts.load_library().source)
EXPIRE_LINES, HOLD_BURY = int(_BURY[1]), int(_BURY[2])
FOLD_MAX = int(re.search(r"FOLD_MAX = (\d+)", scripts.load_library().source)[1])


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
    assert store.sweep() == 20_000 - EXPIRE_LINES  # buried: the position call took the first few
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


def _sweep_call_once(store: Store, redis: Any, sku: str) -> list[Any]:
    """One call of the sweep script, as the store sends it."""
    return redis.execute_command(*scripts.fcall(*store._sweep_call(sku)))


def test_a_wave_of_20k_holds_coming_due_is_given_back_at_once_and_buried_in_bounded_calls(redis: Any) -> None:
    store = Store(redis, now_ms=T0)
    _ended_lines(store, "WAVE", 20_000)  # 20k holds of one unit on stock 20k, all due at T0 + 1 s
    store.now_ms = T0 + 2_000
    call = store._hold_call("WAVE", [HoldRequest("after-the-wave", 5_000, "", 60_000)])
    # the first call after the wave holds at once: the due units came back with their bucket
    reply = redis.execute_command(*scripts.fcall(*call))
    status = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
    assert status == "ok"
    assert _held_as_stored(store, redis, "WAVE") == 5_000
    assert check_invariants(redis) == []  # the wave's lines are due, not buried yet: still whole
    buried, calls = HOLD_BURY, 0
    while True:
        out = _sweep_call_once(store, redis, "WAVE")
        buried += int(out[0])
        calls += 1
        assert int(out[0]) <= EXPIRE_LINES
        if calls % 25 == 1:  # the whole check reads all 20k lines: every 25th call
            assert check_invariants(redis) == []
        if not int(out[1]):
            break
    assert buried == 20_000  # each line once
    assert calls >= 20_000 // EXPIRE_LINES
    assert check_invariants(redis) == []
    position = store.position("WAVE")
    assert (position["held"], position["atp"]) == (5_000, 15_000)
    expired = [ln for ln in store.dump("WAVE")["lines"].values() if ln["state"] == "expired"]
    assert len(expired) == 20_000
    keys = sku_keys("WAVE")
    assert redis.zcard(keys.exp) == 1 and redis.zcard(keys.duet) == 1  # the new hold's


def test_a_hold_after_a_wave_is_one_call_and_the_sweeper_buries_the_rest(redis: Any) -> None:
    store = Store(redis, now_ms=T0)
    _ended_lines(store, "WAVE2", 3_000)
    store.now_ms = T0 + 2_000
    [reply] = store.hold_batch("WAVE2", [HoldRequest("next", 3_000, "", 60_000)])
    assert reply["status"] == "ok" and reply["line"]["alloc"] == [["oh", "A", "A", 3_000]]
    assert store.sweep() == 3_000 - HOLD_BURY
    assert store.sweep() == 0


def test_a_guard_counts_the_usage_of_due_lines_as_returned_before_they_are_buried(redis: Any) -> None:
    store = Store(redis, now_ms=T0)
    store.apply([SupplyCommand("LIM", "policy", {"policy": Policy(customer_limit=1).to_wire()}),
                 SupplyCommand("LIM", "count", {"loc": "A", "on_hand": 500})])
    others = [HoldRequest(f"o{i}", 1, "", 1_000, customer=f"x{i}") for i in range(200)]
    assert {r["status"] for r in store.hold_batch("LIM", others)} == {"ok"}
    # its expiry entry sorts after the others': the next call's few burials do not reach it
    [first] = store.hold_batch("LIM", [HoldRequest("z-mine", 1, "", 1_000, customer="me", channel="web")])
    assert first["status"] == "ok"
    [refused] = store.hold_batch("LIM", [HoldRequest("again", 1, "", 60_000, customer="me")])
    assert refused["status"] == "refused" and refused["reason"] == "customer_limit"
    store.now_ms = T0 + 1_000  # all 201 due; one call buries only a few of them
    [again] = store.hold_batch("LIM", [HoldRequest("again2", 1, "", 60_000, customer="me")])
    assert again["status"] == "ok"
    assert store.dump("LIM")["customers"]["me"] == 1
    assert redis.hget(sku_keys("LIM").cust, "me") == "2"  # the due line is not buried yet
    assert check_invariants(redis) == []
    store.sweep()
    assert redis.hget(sku_keys("LIM").cust, "me") == "1"
    assert check_invariants(redis) == []


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
        self.calls = 0  # script calls of the last supply(per_call=...)

    def supply(self, cmd: str, payload: dict[str, Any], per_call: int = 0) -> dict[str, Any]:
        """Apply through the store, or with ``per_call`` lines per call one call at a time with
        the invariants checked after each (``_chunked``); the reply must be the oracle's."""
        if per_call:
            self.store.job_lines = per_call
            lua, self.calls = _chunked(self, cmd, payload)
            self.store.job_lines = 0
        else:
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


def _big_lot_sku(redis: Any, sku: str, n: int = SCALE) -> _Twin:
    """A presell SKU with 5k lines on on-hand at A and ``n`` lines on lot L1 (plus lot L2 empty)."""
    twin = _Twin(redis, sku)
    twin.supply("policy", {"policy": Policy(mode="presell").to_wire()})
    twin.supply("count", {"loc": "A", "on_hand": 5_000})
    twin.holds("oh-", 5_000)
    twin.supply("inbound_created", {"inbound_id": "L1", "loc": "A", "qty": n, "eta_ms": T0 + 5 * DAY, "supplier": "s1"})
    twin.supply("inbound_created", {"inbound_id": "L2", "loc": "A", "qty": 10, "eta_ms": T0 + 9 * DAY, "supplier": "s1"})
    twin.holds("lot-", n)
    return twin


def test_an_eta_slip_of_a_lot_with_20k_allocations_names_each_of_its_lines_once(redis: Any) -> None:
    twin = _big_lot_sku(redis, "SLIP")
    reply = twin.supply("inbound_updated", {"inbound_id": "L1", "eta_ms": T0 + 8 * DAY, "qty": 0}, per_call=2_000)
    assert twin.calls > 2 * SCALE // 2_000  # noting the dates, then re-dating them
    named = [s["rid"] for s in reply["slipped"]]
    assert len(named) == len(set(named)) == SCALE  # only the lot's lines, each once
    assert named[0] == f"lot-{SCALE - 1}" and named[-1] == "lot-0"  # newest first


def test_a_short_receipt_of_a_lot_with_20k_allocations_moves_them_and_sheds_the_newest(redis: Any) -> None:
    twin = _big_lot_sku(redis, "RCPT")
    reply = twin.supply("receipt", {"loc": "A", "qty": SCALE - 3_000, "inbound_id": "L1"}, per_call=2_000)
    assert twin.calls > SCALE // 2_000  # the move alone takes that many calls
    # the 3k newest lose their unit; the 10 oldest of them get one from L2 again
    assert [a["rid"] for a in reply["at_risk"]] == [f"lot-{i}" for i in range(SCALE - 1, SCALE - 2_991, -1)]
    lines = twin.store.dump("RCPT")["lines"]
    assert lines["lot-0"]["alloc"] == [["oh", "A", "A", 1]]
    assert lines[f"lot-{SCALE - 3_000}"]["alloc"] == [["lot", "L2", "A", 1]]


def test_a_cancelled_lot_and_a_count_that_sheds_leave_every_line_accounted_for(redis: Any) -> None:
    twin = _big_lot_sku(redis, "CNCL")
    reply = twin.supply("inbound_cancelled", {"inbound_id": "L1"}, per_call=2_000)
    assert len(reply["at_risk"]) == SCALE - 10  # L2's 10 units refill the 10 oldest
    reply = twin.supply("count", {"loc": "A", "on_hand": 1_000}, per_call=500)  # sheds 4k on-hand units
    # the reply names the lines this command put at risk, newest first
    assert [a["rid"] for a in reply["at_risk"]] == [f"oh-{i}" for i in range(4_999, 999, -1)]
    reply = twin.supply("receipt", {"loc": "A", "qty": 30_000, "inbound_id": ""})  # refills all
    assert reply["at_risk"] == []


def test_a_store_written_without_the_pool_index_gets_it_built_on_first_use(redis: Any) -> None:
    twin = _big_lot_sku(redis, "OLD")
    redis.delete(sku_keys("OLD").pool)
    assert check_invariants(redis) != []  # the checker sees the index is missing
    twin.supply("count", {"loc": "A", "on_hand": 4_990})
    assert check_invariants(redis) == []


# ---------------------------------------------------------------------------- jobs, call by call

def _chunked(twin: _Twin, cmd: str, payload: dict[str, Any], between: Any = None) -> tuple[dict[str, Any], int]:
    """Apply one command through apply.lua call by call (as the store does), checking the
    invariants after every call and running ``between()`` (other clients' work) between calls.
    Returns the whole reply (the parts' lists gathered) and the number of calls."""
    twin.offset += 1
    command = SupplyCommand(twin.sku, cmd, payload, source="t:0", offset=twin.offset)
    [(script, keys, args)] = twin.store._apply_calls([command])
    scripts.load(twin.redis, script.library)
    lists: dict[str, list[Any]] = {"at_risk": [], "slipped": []}
    calls = 0
    while True:
        raw = twin.redis.execute_command(*scripts.fcall(script, keys, args))
        calls += 1
        assert check_invariants(twin.redis) == []
        raw = raw.encode() if isinstance(raw, str) else raw
        if not raw.startswith(scripts.PART):
            break
        token, _, part = raw[5:].partition(b"|")
        for name, items in orjson.loads(b"{" + part + b"}").items():
            lists[name] += items
        args = [*args[:2], "~continue", *args[3:6], token.decode(), *args[7:]]
        if between is not None:
            between()
    reply = orjson.loads(raw)
    for name, earlier in lists.items():
        reply[name] = earlier + reply[name]
    return reply, calls


def test_holds_between_the_calls_of_a_cancel_job_never_take_the_closing_lot(redis: Any) -> None:
    twin = _big_lot_sku(redis, "CLOSE", 2_000)
    twin.store.job_lines = 50
    twin.supply("count", {"loc": "A", "on_hand": 5_000})
    made: list[str] = []

    def shopper() -> None:  # another checkout on the same SKU between two calls of the job
        rid = f"mid-{len(made)}"
        [out] = twin.store.hold_batch("CLOSE", [HoldRequest(rid, 1, "", 600_000)])
        if out["status"] == "ok":
            made.append(rid)
            assert all(a[0] != "lot" or a[1] != "L1" for a in out["line"]["alloc"])

    reply, calls = _chunked(twin, "inbound_cancelled", {"inbound_id": "L1"}, between=shopper)
    assert calls > 10
    assert "L1" not in twin.store.dump("CLOSE")["lots"]
    # L2's 10 units went to the shoppers first or to the oldest short lines, never to both
    lines = twin.store.dump("CLOSE")["lines"]
    on_l2 = sum(a[3] for ln in lines.values() for a in ln["alloc"] if a[1] == "L2")
    assert on_l2 == 10
    assert len(reply["at_risk"]) == len({a["rid"] for a in reply["at_risk"]})


def test_a_command_behind_a_job_waits_and_the_store_finishes_the_job_first(redis: Any) -> None:
    twin = _big_lot_sku(redis, "BUSY", 2_000)
    twin.store.job_lines = 10
    slip = SupplyCommand("BUSY", "inbound_updated", {"inbound_id": "L1", "eta_ms": T0 + 7 * DAY, "qty": 0},
                         source="t:0", offset=100)
    adjust = SupplyCommand("BUSY", "adjust", {"loc": "A", "delta": 7}, source="t:0", offset=101)
    first, second = twin.store.apply([slip, adjust])  # one pipeline: the adjust meets the job
    assert len(first["slipped"]) == 2_000 and second["status"] == "ok"
    assert second["position"]["on_hand"] == 5_007
    assert twin.store.journal("BUSY", limit=2)[0]["cmd"] == "adjust"
    assert check_invariants(redis) == []


def test_stream_commands_of_one_batch_apply_in_order_when_the_first_meets_a_wave_of_due_holds(redis: Any) -> None:
    store = Store(redis, now_ms=T0)
    store.apply([SupplyCommand("ORD", "count", {"loc": "A", "on_hand": 100})])
    # holds due in more distinct seconds than one call gives back: the first call stops
    spread = [HoldRequest(f"h{i}", 1, "", (i + 1) * 1_000) for i in range(FOLD_MAX + 6)]
    assert {r["status"] for r in store.hold_batch("ORD", spread)} == {"ok"}
    store.now_ms = T0 + 3_600_000
    first = SupplyCommand("ORD", "adjust", {"loc": "A", "delta": 5}, source="t:3", offset=1)
    second = SupplyCommand("ORD", "count", {"loc": "A", "on_hand": 50}, source="t:3", offset=2)
    replies = store.apply([first, second])  # one pipeline: the second runs while the first waits
    assert [r["status"] for r in replies] == ["ok", "ok"]
    assert replies[1]["position"]["on_hand"] == 50  # the count came last
    assert replies[1]["position"]["held"] == 0
    assert [j["cmd"] for j in store.journal("ORD", limit=2)] == ["count", "adjust"]
    assert check_invariants(redis) == []


def test_the_async_store_gathers_a_job_the_same_way(redis: Any, redis_url: str, redis_cluster_mode: bool) -> None:
    twin = _big_lot_sku(redis, "ASYNC", 300)
    payload = {"inbound_id": "L1", "eta_ms": T0 + 6 * DAY, "qty": 0}
    oracle = twin.book.apply("inbound_updated", payload, T0, source="t:0", offset=50)

    async def go() -> list[dict[str, Any]]:
        client = redis_client(redis_url, redis_cluster_mode, asyncio=True)
        try:
            store = AsyncStore(client, now_ms=T0)
            store.job_lines = 7
            return await store.apply([SupplyCommand("ASYNC", "inbound_updated", payload, source="t:0", offset=50)])
        finally:
            await client.aclose()

    [reply] = asyncio.run(go())
    assert reply == oracle and len(reply["slipped"]) == 300
