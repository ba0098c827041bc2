"""The store's checkout operations against the real Redis: holds, lifecycle, expiry, a lost library."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import ResponseError

from engine.store import scripts
from engine.store.store import AsyncStore, Store
from engine.store.wire import HoldRequest, SupplyCommand
from tests.conftest import redis_client

T0 = 1_700_000_000_000


def stock(store: Store, sku: str, qty: int, loc: str = "A") -> None:
    store.apply([SupplyCommand(sku, "count", {"loc": loc, "on_hand": qty})])


def test_hold_draws_on_hand_and_reports_atp_after(redis: Any) -> None:
    store = Store(redis, now_ms=T0)
    stock(store, "S1", 10)
    [reply] = store.hold_batch("S1", [HoldRequest("r1", 3, ttl_ms=60_000, channel="web", customer="c1")])
    assert reply["status"] == "ok"
    line = reply["line"]
    assert line["alloc"] == [["oh", "A", "A", 3]]
    assert line["state"] == "held"
    assert line["expires_ms"] == T0 + 60_000
    assert line["promised_ms"] == T0
    assert line["atp_after"] == 7
    assert line["seq"] == 1
    pos = store.position("S1")
    assert (pos["on_hand"], pos["held"], pos["atp"]) == (10, 3, 7)
    dump = store.dump("S1")
    assert dump["customers"] == {"c1": 3} and dump["channels"] == {"web": 3}


def test_a_batch_is_processed_in_order_each_request_all_or_nothing(redis: Any) -> None:
    store = Store(redis, now_ms=T0)
    stock(store, "S1", 10)
    replies = store.hold_batch(
        "S1",
        [HoldRequest("r1", 6), HoldRequest("r2", 6), HoldRequest("r3", 4), HoldRequest("r1", 6),
         HoldRequest("r1", 5)],
    )
    assert [r["status"] for r in replies] == ["ok", "refused", "ok", "duplicate", "conflict"]
    assert replies[1]["reason"] == "insufficient" and replies[1]["available"] == 4
    assert replies[3]["line"] == replies[0]["line"]
    assert store.position("S1")["held"] == 10
    assert store.get_line("S1", "r2") == {"status": "not_found", "rid": "r2"}


def test_lifecycle_confirm_release_extend(redis: Any) -> None:
    store = Store(redis, now_ms=T0)
    stock(store, "S1", 5)
    store.hold_batch("S1", [HoldRequest("r1", 2, ttl_ms=1000)])
    assert store.extend("S1", "r1", 5000)["line"]["expires_ms"] == T0 + 5000
    ok = store.confirm("S1", "r1")
    assert ok["status"] == "ok" and ok["line"]["state"] == "committed" and ok["line"]["expires_ms"] == 0
    assert store.confirm("S1", "r1")["status"] == "duplicate"
    late = store.extend("S1", "r1", 1000)
    assert (late["status"], late["reason"]) == ("refused", "committed")
    pos = store.position("S1")
    assert (pos["held"], pos["committed"], pos["atp"]) == (0, 2, 3)
    rel = store.release("S1", "r1")
    assert rel["status"] == "ok" and rel["line"]["state"] == "released" and rel["line"]["alloc"] == []
    assert store.release("S1", "r1")["status"] == "duplicate"
    assert store.confirm("S1", "r1")["reason"] == "released"
    assert store.position("S1")["atp"] == 5
    assert store.confirm("S1", "nope") == {"status": "not_found", "rid": "nope"}


def test_due_holds_expire_lazily_before_anything_else(redis: Any) -> None:
    store = Store(redis, now_ms=T0)
    stock(store, "S1", 5)
    store.hold_batch("S1", [HoldRequest("r1", 5, ttl_ms=1000)])
    assert store.hold_batch("S1", [HoldRequest("r2", 1)])[0]["status"] == "refused"
    store.now_ms = T0 + 1000
    assert store.hold_batch("S1", [HoldRequest("r2", 1)])[0]["status"] == "ok"
    line = store.get_line("S1", "r1")["line"]
    assert line["state"] == "expired" and line["alloc"] == []
    late = store.confirm("S1", "r1")
    assert (late["status"], late["reason"]) == ("refused", "expired")
    assert store.position("S1")["held"] == 1


def test_rollback_leaves_no_trace_but_the_sequence(redis: Any) -> None:
    store = Store(redis, now_ms=T0)
    stock(store, "S1", 5)
    store.hold_batch("S1", [HoldRequest("r1", 2, customer="c1", channel="web")])
    assert store.rollback("S1", "r1") == {"status": "ok", "rid": "r1"}
    dump = store.dump("S1")
    assert dump["lines"] == {} and dump["customers"] == {} and dump["channels"] == {}
    assert dump["locs"]["A"]["held"] == 0 and dump["seq"] == 1
    assert store.rollback("S1", "r1")["status"] == "not_found"


def test_guards_order_cap_customer_limit_channel_quota(redis: Any) -> None:
    store = Store(redis, now_ms=T0)
    stock(store, "S1", 100)
    store.set_policy("S1", {"order_cap": 5, "customer_limit": 6, "quotas": {"app": 3}})
    r = store.hold_batch(
        "S1",
        [HoldRequest("a", 6), HoldRequest("b", 4, customer="c"), HoldRequest("c", 4, customer="c"),
         HoldRequest("d", 4, channel="app"), HoldRequest("e", 3, channel="app")],
    )
    assert [(x["status"], x.get("reason")) for x in r] == [
        ("refused", "order_cap"), ("ok", None), ("refused", "customer_limit"),
        ("refused", "channel_quota"), ("ok", None)]
    # each guard names its limit and the usage the script saw; the stock is the capacity
    assert [{k: x[k] for k in ("available", "limit", "used") if k in x} for x in r if x["status"] == "refused"] == [
        {"available": 100, "limit": 5},
        {"available": 96, "limit": 6, "used": 4},
        {"available": 96, "limit": 3, "used": 0},
    ]
    assert store.get_policy("S1")["order_cap"] == 5


def _libraries(redis: Any) -> list[str]:
    """The names of the loaded libraries; on a Cluster, those of every primary, which must agree
    (a key's script runs on whichever primary owns its slot)."""
    listing = redis.function_list()
    # a Cluster client answers {node: its reply} from every primary
    replies = list(listing.values()) if isinstance(listing, dict) else [listing]
    # FUNCTION LIST: one flat [field, value, …] list per library
    names = [sorted({dict(zip(lib[::2], lib[1::2], strict=True))["library_name"] for lib in reply})
             for reply in replies]
    assert all(n == names[0] for n in names), f"the primaries hold different libraries: {listing}"
    return names[0]


def test_the_library_loads_itself_again_after_function_flush(redis: Any) -> None:
    store = Store(redis, now_ms=T0)
    stock(store, "S1", 3)
    assert _libraries(redis) == [scripts.load_library().name]
    redis.function_flush()
    assert store.hold_batch("S1", [HoldRequest("r1", 1)])[0]["status"] == "ok"  # one call
    redis.function_flush()
    assert [p["atp"] for p in store.positions(["S1", "S2", "S1"])] == [2, 0, 2]  # a pipeline
    redis.function_flush()
    assert store.apply([SupplyCommand("S1", "adjust", {"loc": "A", "delta": 1})])[0]["position"]["atp"] == 3
    redis.function_flush()
    claimed, replies = scripts.call_after_sets(redis, [("claim-x", b"1")], store._hold_call("S1", [HoldRequest("r2", 1)]))
    assert claimed == [True] and replies[0] in (b"ok", "ok")
    assert _libraries(redis) == [scripts.load_library().name]


def test_engines_of_two_versions_share_a_server_each_calling_its_own_library(redis: Any) -> None:
    store = Store(redis, now_ms=T0)
    stock(store, "S1", 5)
    # another version: the same Lua with one more comment line
    other = scripts.entries(scripts.build_library(lambda name: scripts._read(name) + ("\n-- v2" if name == "lib" else "")))
    assert other["hold"].function != store._scripts["hold"].function
    _script, keys, args = store._hold_call("S1", [HoldRequest("r-new", 2)])
    raw = scripts.call(redis, other["hold"], keys, args)
    assert raw[0] in (b"ok", "ok")
    assert store.hold_batch("S1", [HoldRequest("r-old", 1)])[0]["status"] == "ok"
    assert _libraries(redis) == sorted([scripts.load_library().name, other["hold"].library.name])
    assert store.position("S1")["atp"] == 2


def test_a_server_without_functions_is_named_in_the_error() -> None:
    with pytest.raises(scripts.UnsupportedServer, match="Redis >= 7.0 or Valkey >= 7.2"):
        scripts._missing(ResponseError("unknown command 'FCALL', with args beginning with: 'atp_x_hold'"))
    assert scripts._missing(ResponseError("Function not found"))
    assert not scripts._missing(ResponseError("WRONGTYPE Operation against a key"))


def test_bad_arguments_are_refused_with_a_reason(redis: Any) -> None:
    store = Store(redis)
    with pytest.raises(ValueError):
        store.position("bad sku")
    with pytest.raises(ValueError):
        HoldRequest("r1", 0)
    with pytest.raises(ValueError):
        HoldRequest("r1", True)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        HoldRequest("r 1", 1)
    with pytest.raises(ValueError):
        HoldRequest("r1", 1, loc="x:y")
    with pytest.raises(ValueError):
        store.extend("S1", "r1", 0)
    with pytest.raises(ValueError):
        store.hold_batch("S1", [])
    with pytest.raises(ValueError):
        SupplyCommand("S1", "explode", {})
    with pytest.raises(ValueError):
        SupplyCommand("S1", "count", {"loc": "A", "on_hand": -1})
    with pytest.raises(ValueError):
        store.set_policy("S1", {"mode": "yolo"})
    assert redis.keys("*") == []


def test_positions_without_activity_are_zero_and_one_round_trip(redis: Any) -> None:
    store = Store(redis)
    pos = store.positions(["N1", "N2"])
    assert [p["sku"] for p in pos] == ["N1", "N2"]
    assert all(p["atp"] == 0 and p["locations"] == {} for p in pos)


def test_async_store_gives_the_same_replies(redis: Any, redis_url: str, redis_cluster_mode: bool) -> None:
    sync = Store(redis, now_ms=T0)
    stock(sync, "S1", 4)

    async def go() -> list[Any]:
        client = redis_client(redis_url, redis_cluster_mode, asyncio=True, decode_responses=True)
        store = AsyncStore(client, now_ms=T0)
        try:
            await client.function_flush()  # each async path loads the library again when it is lost
            held = await store.hold_batch("S1", [HoldRequest("r1", 3), HoldRequest("r2", 3)])
            await client.function_flush()
            confirmed = await store.confirm("S1", "r1")
            await client.function_flush()
            pos = await store.positions(["S1"])
            dump = await store.dump("S1")
            return [held, confirmed, pos, dump]
        finally:
            await client.aclose()

    held, confirmed, pos, dump = asyncio.run(go())
    assert [h["status"] for h in held] == ["ok", "refused"]
    assert confirmed["line"]["state"] == "committed"
    assert pos[0]["atp"] == 1
    assert dump == sync.dump("S1")
