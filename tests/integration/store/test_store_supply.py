"""Supply commands through apply.lua: presell against lots, rebalance on short / cancelled / late
supply, idempotency by offset watermark and event id, the journal."""

from __future__ import annotations

from typing import Any

import pytest

from engine.store.store import Store
from engine.store.wire import HoldRequest, SupplyCommand

T0 = 1_700_000_000_000
DAY = 86_400_000


def cmd(cmd: str, sku: str = "S", event_id: str = "", offset: int = -1, **payload: Any) -> SupplyCommand:
    source = "inventory.inbound:0" if offset >= 0 else ""
    return SupplyCommand(sku, cmd, payload, event_id=event_id, source=source, offset=offset)


@pytest.fixture
def store(redis: Any) -> Store:
    return Store(redis, now_ms=T0)


def one(store: Store, c: SupplyCommand) -> dict[str, Any]:
    return store.apply([c])[0]


def hold(store: Store, rid: str, qty: int, loc: str = "", **kw: Any) -> dict[str, Any]:
    return store.hold_batch("S", [HoldRequest(rid, qty, loc, **kw)])[0]


def presell_lot(store: Store, qty: int = 100, cap_pm: int = 1000, eta: int = T0 + 5 * DAY) -> None:
    store.set_policy("S", {"mode": "presell", "cap_pm": cap_pm})
    reply = one(store, cmd("inbound_created", inbound_id="L1", loc="A", qty=qty, eta_ms=eta, supplier="sup1"))
    assert reply["status"] == "ok"


def test_presell_draws_on_hand_first_then_the_lot_up_to_its_cap(store: Store) -> None:
    one(store, cmd("count", loc="A", on_hand=10))
    presell_lot(store, qty=100, cap_pm=500)
    pos = store.position("S")
    assert (pos["in_transit"], pos["promisable_in_transit"], pos["atp"]) == (100, 50, 60)
    assert pos["next_promise_ms"] == T0 + 5 * DAY and pos["promisable_now"] == 10
    first = hold(store, "r1", 40)
    assert first["line"]["alloc"] == [["oh", "A", "A", 10], ["lot", "L1", "A", 30]]
    assert first["line"]["promised_ms"] == T0 + 5 * DAY
    assert first["line"]["atp_after"] == 20
    assert hold(store, "r2", 20)["status"] == "ok"
    refused = hold(store, "r3", 1)
    assert (refused["status"], refused["reason"], refused["available"]) == ("refused", "insufficient", 0)
    assert store.position("S")["next_promise_ms"] == 0


def test_strict_mode_never_promises_inbound(store: Store) -> None:
    one(store, cmd("inbound_created", inbound_id="L1", loc="A", qty=100, eta_ms=T0 + DAY, supplier="s"))
    assert hold(store, "r1", 1)["status"] == "refused"
    assert store.position("S")["promisable_in_transit"] == 0


def test_backorder_promises_beyond_supply_up_to_the_limit(store: Store) -> None:
    store.set_policy("S", {"mode": "backorder", "backorder_limit": 5, "backorder_days": 10})
    one(store, cmd("count", loc="A", on_hand=2))
    r = hold(store, "r1", 6)
    assert r["line"]["alloc"] == [["oh", "A", "A", 2], ["bo", "", "A", 4]]
    assert r["line"]["promised_ms"] == T0 + 10 * DAY
    # backordered units are sold, not missing: the SKU can still sell the 1 unit of room left
    assert r["line"]["atp_after"] == 1
    pos = store.position("S")
    assert (pos["atp"], pos["backordered"], pos["oversold"]) == (1, 4, 0)
    assert pos["locations"]["A"]["atp"] == 0
    assert hold(store, "r2", 2)["available"] == 1


def test_a_short_receipt_puts_the_newest_reservations_at_risk(store: Store) -> None:
    presell_lot(store, qty=100)
    hold(store, "r1", 60)
    hold(store, "r2", 30)
    reply = one(store, cmd("receipt", loc="A", qty=50, inbound_id="L1"))
    assert reply["status"] == "ok"
    assert reply["lot"] == {"inbound_id": "L1", "qty": 100, "eta_ms": T0 + 5 * DAY, "supplier": "sup1"}
    assert reply["at_risk"] == [{"rid": "r2", "short": 30}, {"rid": "r1", "short": 10}]
    assert reply["position"]["oversold"] == 40
    assert reply["position"]["in_transit"] == 0
    lines = store.dump("S")["lines"]
    assert lines["r1"]["alloc"] == [["oh", "A", "A", 50], ["short", "", "A", 10]]
    assert lines["r2"]["alloc"] == [["short", "", "A", 30]]
    # more stock arrives: the oldest short line is served first
    again = one(store, cmd("receipt", loc="A", qty=15))
    assert again["at_risk"] == [{"rid": "r2", "short": 25}]
    assert store.dump("S")["lines"]["r1"]["alloc"] == [["oh", "A", "A", 60]]


def test_an_eta_slip_re_dates_the_lines_on_the_lot(store: Store) -> None:
    presell_lot(store, qty=100)
    hold(store, "r1", 10)
    hold(store, "r2", 10)
    late = T0 + 9 * DAY
    reply = one(store, cmd("inbound_updated", inbound_id="L1", eta_ms=late))
    assert reply["slipped"] == [
        {"rid": "r2", "old_ms": T0 + 5 * DAY, "new_ms": late},
        {"rid": "r1", "old_ms": T0 + 5 * DAY, "new_ms": late},
    ]
    assert reply["at_risk"] == []
    assert store.get_line("S", "r1")["line"]["promised_ms"] == late
    earlier = one(store, cmd("inbound_updated", inbound_id="L1", eta_ms=T0 + 2 * DAY))
    assert earlier["slipped"] == []  # an earlier date is not a slip, but it is recorded
    assert store.get_line("S", "r1")["line"]["promised_ms"] == T0 + 2 * DAY
    assert one(store, cmd("inbound_updated", inbound_id="nope", qty=3))["status"] == "not_found"


def test_a_smaller_lot_and_a_cancelled_lot_leave_lines_short(store: Store) -> None:
    presell_lot(store, qty=100)
    hold(store, "r1", 50)
    hold(store, "r2", 30, commit=True)
    smaller = one(store, cmd("inbound_updated", inbound_id="L1", qty=60))
    assert smaller["at_risk"] == [{"rid": "r2", "short": 20}]
    cancelled = one(store, cmd("inbound_cancelled", inbound_id="L1"))
    assert cancelled["at_risk"] == [{"rid": "r2", "short": 30}, {"rid": "r1", "short": 50}]
    pos = cancelled["position"]
    assert (pos["held"], pos["committed"], pos["oversold"], pos["atp"]) == (50, 30, 80, -80)
    # nothing was cancelled silently: the lines are still live
    assert {ln["state"] for ln in store.dump("S")["lines"].values()} == {"held", "committed"}


def test_adjust_clamps_at_zero_and_says_so(store: Store) -> None:
    one(store, cmd("count", loc="A", on_hand=3))
    reply = one(store, cmd("adjust", loc="A", delta=-5))
    assert reply["clamped"] is True and reply["position"]["on_hand"] == 0
    assert "clamped" not in one(store, cmd("adjust", loc="A", delta=2))


def test_ship_takes_committed_units_and_on_hand(store: Store) -> None:
    one(store, cmd("count", loc="A", on_hand=10))
    hold(store, "o1", 4)
    store.confirm("S", "o1")
    part = one(store, cmd("ship", rid="o1", loc="A", qty=3))
    assert part["line"]["state"] == "committed" and part["line"]["alloc"] == [["oh", "A", "A", 1]]
    rest = one(store, cmd("ship", rid="o1", loc="A", qty=1))
    assert rest["line"]["state"] == "shipped" and rest["line"]["alloc"] == []
    pos = rest["position"]
    assert (pos["on_hand"], pos["committed"], pos["atp"]) == (6, 0, 6)


def test_order_placed_confirms_a_hold_or_reserves_as_committed_or_refuses(store: Store) -> None:
    one(store, cmd("count", loc="A", on_hand=5))
    hold(store, "o1", 2, channel="web")
    confirmed = one(store, cmd("order_placed", rid="o1", qty=2, channel="web"))
    assert confirmed["status"] == "ok" and confirmed["line"]["state"] == "committed"
    again = one(store, cmd("order_placed", rid="o1", qty=2))
    assert (again["status"], again["reason"]) == ("duplicate", "committed")
    direct = one(store, cmd("order_placed", rid="o2", qty=3, channel="web"))
    assert direct["line"]["state"] == "committed" and direct["line"]["expires_ms"] == 0
    refused = one(store, cmd("order_placed", rid="o3", qty=1))
    assert (refused["status"], refused["reason"], refused["available"]) == ("refused", "insufficient", 0)
    cancelled = one(store, cmd("order_cancelled", rid="o2"))
    assert cancelled["status"] == "ok" and cancelled["line"]["state"] == "released"
    assert store.dump("S")["channels"] == {"web": 2}


def test_order_placed_over_a_hold_of_other_terms_commits_the_order(store: Store) -> None:
    one(store, cmd("count", loc="A", on_hand=100))
    hold(store, "ORD-1", 1, channel="web", customer="c1")
    placed = one(store, cmd("order_placed", rid="ORD-1", qty=5, channel="web"))
    assert (placed["status"], placed["reason"]) == ("ok", "replaced")
    assert (placed["line"]["qty"], placed["line"]["state"]) == (5, "committed")
    pos = store.position("S")
    assert (pos["held"], pos["committed"], pos["atp"]) == (0, 5, 95)
    # the usage moved with the line: the hold's customer is gone, the order's channel counts 5
    assert store.dump("S")["customers"] == {} and store.dump("S")["channels"] == {"web": 5}
    # the same order again is a duplicate; a committed line of other terms is re-committed
    assert one(store, cmd("order_placed", rid="ORD-1", qty=5))["status"] == "duplicate"
    smaller = one(store, cmd("order_placed", rid="ORD-1", qty=2, loc="A"))
    assert (smaller["status"], smaller["line"]["qty"], smaller["line"]["loc"]) == ("ok", 2, "A")
    assert store.position("S")["atp"] == 98


def test_order_placed_over_a_hold_refused_for_the_difference_leaves_the_hold(store: Store) -> None:
    one(store, cmd("count", loc="A", on_hand=3))
    held = hold(store, "ORD-2", 2, channel="web")
    before = store.dump("S")
    refused = one(store, cmd("order_placed", rid="ORD-2", qty=5, channel="web"))
    # with the hold's 2 units given back, 3 could be committed, not 5
    assert (refused["status"], refused["reason"], refused["available"]) == ("refused", "insufficient", 3)
    assert store.dump("S") == before
    assert store.get_line("S", "ORD-2")["line"] == held["line"]


def test_replayed_offsets_and_repeated_event_ids_change_nothing(store: Store) -> None:
    first = one(store, cmd("receipt", event_id="ev-1", offset=10, loc="A", qty=5))
    assert first["status"] == "ok"
    before = store.dump("S")
    replay = one(store, cmd("receipt", event_id="ev-1", offset=10, loc="A", qty=5))
    assert (replay["status"], replay["reason"]) == ("duplicate", "offset")
    older = one(store, cmd("receipt", event_id="ev-0", offset=3, loc="A", qty=5))
    assert (older["status"], older["reason"]) == ("duplicate", "offset")
    resent = one(store, cmd("receipt", event_id="ev-1", offset=11, loc="A", qty=5))
    assert (resent["status"], resent["reason"]) == ("duplicate", "event_id")
    assert store.dump("S") == before
    assert replay["position"]["on_hand"] == 5
    # the same offset of another partition is new
    other = store.apply([SupplyCommand("S", "receipt", {"loc": "A", "qty": 1}, event_id="ev-9",
                                       source="inventory.receipts:2", offset=10)])[0]
    assert other["status"] == "ok" and other["position"]["on_hand"] == 6
    journal = store.journal("S")
    assert [(j["event_id"], j["cmd"], j["qty"]) for j in journal] == [("ev-9", "receipt", 1), ("ev-1", "receipt", 5)]


def test_the_journal_pages_newest_first_with_each_commands_quantity(store: Store) -> None:
    store.apply([cmd("adjust", event_id=f"a{i}", loc="A", delta=i - 2) for i in range(5) if i != 2])
    store.apply([cmd("count", event_id="c", loc="A", on_hand=7), cmd("reliability", supplier="s1", rel_pm=500)])
    first = store.journal("S", limit=3)
    assert [(j["n"], j["cmd"], j["qty"], j["event_id"]) for j in first] == [
        (6, "reliability", None, ""), (5, "count", 7, "c"), (4, "adjust", 2, "a4")]
    rest = store.journal("S", limit=3, before=first[-1]["n"])
    assert [(j["n"], j["qty"]) for j in rest] == [(3, 1), (2, -1), (1, -2)]
    assert store.journal("S", limit=3, before=1) == []


def test_the_event_id_log_keeps_the_last_1000_ids(store: Store) -> None:
    store.apply([cmd("adjust", event_id=f"e{i}", loc="A", delta=1) for i in range(1001)])
    assert store.position("S")["on_hand"] == 1001
    assert one(store, cmd("adjust", event_id="e1", loc="A", delta=1))["status"] == "duplicate"
    assert one(store, cmd("adjust", event_id="e0", loc="A", delta=1))["status"] == "ok"  # aged out
    assert len(store.journal("S")) == 200


def test_commands_of_many_skus_go_in_one_pipelined_call(store: Store) -> None:
    replies = store.apply([cmd("count", sku=f"K{i}", loc="A", on_hand=i) for i in range(50)])
    assert [r["position"]["on_hand"] for r in replies] == list(range(50))
    assert [p["atp"] for p in store.positions([f"K{i}" for i in range(50)])] == list(range(50))


def test_reliability_scales_what_a_lot_may_promise(store: Store) -> None:
    store.set_policy("S", {"mode": "presell", "use_reliability": True})
    one(store, cmd("inbound_created", inbound_id="L1", loc="A", qty=100, eta_ms=T0 + DAY, supplier="sup1"))
    assert store.position("S")["promisable_in_transit"] == 100
    hold(store, "r1", 90)
    reply = one(store, cmd("reliability", supplier="sup1", rel_pm=800))
    assert reply["position"]["promisable_in_transit"] == 80
    assert reply["at_risk"] == [{"rid": "r1", "short": 10}]
    assert store.dump("S")["reliability"] == {"sup1": 800}


def test_a_policy_change_rebalances(store: Store) -> None:
    one(store, cmd("count", loc="A", on_hand=10))
    hold(store, "r1", 6)
    hold(store, "r2", 4)
    reply = store.set_policy("S", {"safety": 3})
    assert reply["at_risk"] == [{"rid": "r2", "short": 3}]
    assert store.get_policy("S")["safety"] == 3
    assert store.dump("S")["policy"]["safety"] == 3


def _bare_setup(store: Store, sku: str) -> None:
    store.set_policy(sku, {"mode": "presell", "cap_pm": 1000})
    one(store, cmd("count", sku=sku, loc="A", on_hand=2))
    one(store, cmd("inbound_created", sku=sku, inbound_id="L1", loc="A", qty=10, eta_ms=T0 + DAY, supplier="s"))
    store.hold_batch(sku, [HoldRequest(f"r{i}", 2) for i in range(6)])


@pytest.mark.parametrize("job_lines", [0, 1])
def test_a_reply_leaves_out_the_position_only_for_a_caller_that_says_so(store: Store, job_lines: int) -> None:
    store.job_lines = job_lines  # 1: the job runs over several calls ('~continue' keeps the choice)
    for sku in ("F", "B", "P"):
        _bare_setup(store, sku)
    # a lot cancelled under live holds: a job whose reply names the lines at risk
    full = store.apply([cmd("inbound_cancelled", sku="F", inbound_id="L1")])[0]
    bare = store.apply([cmd("inbound_cancelled", sku="B", inbound_id="L1")], positions=False)[0]
    assert "position" in full and "position" not in bare
    assert {k: v for k, v in full.items() if k != "position"} == bare
    assert len(bare["at_risk"]) == 5  # the reply is the same otherwise, lines at risk included
    # the state is the same either way: only the reply differs
    assert {k: v for k, v in store.position("B").items() if k != "sku"} == \
        {k: v for k, v in store.position("F").items() if k != "sku"}
    def lines(sku: str) -> dict[str, Any]:
        return {rid: {k: v for k, v in line.items() if k != "sku"} for rid, line in store.dump(sku)["lines"].items()}

    assert lines("B") == lines("F")
    # a predicate picks the SKUs whose replies carry one; a kept reply always does
    [p, f] = store.apply([cmd("count", sku="P", loc="A", on_hand=9), cmd("count", sku="F", loc="A", on_hand=9)],
                         positions=lambda sku: sku == "P")
    assert p["position"]["sku"] == "P" and "position" not in f
    [kept] = store.apply([cmd("count", sku="B", loc="A", on_hand=3, event_id="k1", offset=0)], keep_replies_s=60,
                         positions=False)
    assert kept["position"]["sku"] == "B"
