"""The pure oracle on hand-computed cases (the Lua scripts are compared against it in R5)."""

from engine.domain.oracle import DAY_MS, HoldRequest, SkuBook
from engine.domain.policy import Policy

NOW = 1_700_000_000_000


def stocked(on_hand: int = 100, **policy: object) -> SkuBook:
    book = SkuBook("SKU-1", policy=Policy(**policy))
    book.apply("count", {"loc": "WH1", "on_hand": on_hand}, NOW)
    return book


def test_hold_takes_on_hand_and_lowers_atp():
    book = stocked(100)
    [reply] = book.hold_batch([HoldRequest("r1", 30, "WH1")], NOW)
    assert reply["status"] == "ok"
    assert reply["line"]["alloc"] == [["oh", "WH1", "WH1", 30]]
    assert reply["line"]["promised_ms"] == NOW
    assert reply["line"]["atp_after"] == 70
    assert book.position(NOW)["held"] == 30


def test_hold_beyond_atp_is_refused_and_changes_nothing():
    book = stocked(10)
    before = book.dump()
    [reply] = book.hold_batch([HoldRequest("r1", 11)], NOW)
    assert reply == {"status": "refused", "rid": "r1", "reason": "insufficient", "available": 10}
    assert book.dump() == before


def test_safety_stock_is_never_promised():
    book = stocked(10, safety=4)
    assert book.capacity("", NOW) == 6
    assert book.position(NOW)["atp"] == 6


def test_safety_holds_back_only_stock_that_is_there():
    book = stocked(10, safety=4)
    book.apply("count", {"loc": "WH2", "on_hand": 0}, NOW)
    book.apply("count", {"loc": "WH3", "on_hand": 3}, NOW)
    pos = book.position(NOW)
    assert {loc: (f["safety"], f["atp"]) for loc, f in pos["locations"].items()} == {
        "WH1": (4, 6), "WH2": (0, 0), "WH3": (3, 0)
    }
    assert (pos["safety"], pos["atp"]) == (7, 6) and book.capacity("", NOW) == 6


def test_backordered_units_do_not_lower_atp_and_the_network_counts_the_room():
    book = stocked(2, mode="backorder", backorder_limit=5)
    [reply] = book.hold_batch([HoldRequest("r1", 4, "WH1")], NOW)
    assert reply["line"]["atp_after"] == 0  # WH1's: its stock sold, the backorders take nothing
    pos = book.position(NOW)
    assert (pos["atp"], pos["backordered"], pos["oversold"]) == (3, 2, 0)
    assert pos["atp"] == book.capacity("", NOW)
    assert book.position(NOW, "WH1")["atp"] == 0  # the room belongs to no location
    [reply] = book.hold_batch([HoldRequest("r2", 1)], NOW)
    assert reply["line"]["atp_after"] == 2  # the SKU's, room included


def test_presell_draws_lots_in_eta_order_with_cap():
    book = stocked(5, mode="presell", cap_pm=500)
    book.apply("inbound_created", {"inbound_id": "late", "loc": "WH1", "qty": 40, "eta_ms": NOW + 9 * DAY_MS, "supplier": "s"}, NOW)
    book.apply("inbound_created", {"inbound_id": "soon", "loc": "WH1", "qty": 20, "eta_ms": NOW + 2 * DAY_MS, "supplier": "s"}, NOW)
    assert book.capacity("", NOW) == 5 + 10 + 20
    [reply] = book.hold_batch([HoldRequest("r1", 20)], NOW)
    assert reply["line"]["alloc"] == [["oh", "WH1", "WH1", 5], ["lot", "soon", "WH1", 10], ["lot", "late", "WH1", 5]]
    assert reply["line"]["promised_ms"] == NOW + 9 * DAY_MS


def test_strict_mode_ignores_inbound():
    book = stocked(5)
    book.apply("inbound_created", {"inbound_id": "l1", "loc": "WH1", "qty": 40, "eta_ms": NOW + DAY_MS, "supplier": "s"}, NOW)
    assert book.capacity("", NOW) == 5
    assert book.position(NOW)["in_transit"] == 40


def test_horizon_and_reliability_limit_promisable_in_transit():
    book = stocked(0, mode="presell", horizon_s=3 * 86_400, use_reliability=True)
    book.apply("inbound_created", {"inbound_id": "in", "loc": "WH1", "qty": 50, "eta_ms": NOW + DAY_MS, "supplier": "s1"}, NOW)
    book.apply("inbound_created", {"inbound_id": "out", "loc": "WH1", "qty": 50, "eta_ms": NOW + 5 * DAY_MS, "supplier": "s1"}, NOW)
    book.apply("reliability", {"supplier": "s1", "rel_pm": 800}, NOW)
    assert book.position(NOW)["promisable_in_transit"] == 40


def test_backorder_sells_beyond_supply_up_to_limit():
    book = stocked(2, mode="backorder", backorder_limit=3, backorder_days=10)
    [ok, refused] = book.hold_batch([HoldRequest("r1", 5), HoldRequest("r2", 1)], NOW)
    assert ok["line"]["alloc"] == [["oh", "WH1", "WH1", 2], ["bo", "", "WH1", 3]]
    assert ok["line"]["promised_ms"] == NOW + 10 * DAY_MS
    assert refused["reason"] == "insufficient"


def test_guards_order_cap_customer_limit_and_channel_quota():
    book = stocked(100, order_cap=5, customer_limit=6, quotas={"tiktok": 4})
    replies = book.hold_batch(
        [
            HoldRequest("a", 6),
            HoldRequest("b", 5, customer="c1"),
            HoldRequest("c", 2, customer="c1"),
            HoldRequest("d", 3, channel="tiktok"),
            HoldRequest("e", 2, channel="tiktok"),
        ],
        NOW,
    )
    assert [r.get("reason", r["status"]) for r in replies] == ["order_cap", "ok", "customer_limit", "ok", "channel_quota"]


def test_idempotent_hold_and_conflict():
    book = stocked(10)
    first = book.hold_batch([HoldRequest("r1", 3)], NOW)[0]
    again = book.hold_batch([HoldRequest("r1", 3)], NOW)[0]
    other = book.hold_batch([HoldRequest("r1", 4)], NOW)[0]
    assert again == {**first, "status": "duplicate"}
    assert other["status"] == "conflict"
    assert book.position(NOW)["held"] == 3


def test_lifecycle_release_twice_and_confirm_after_expiry():
    book = stocked(10)
    book.hold_batch([HoldRequest("r1", 3, ttl_ms=1000), HoldRequest("r2", 2, ttl_ms=1000)], NOW)
    assert book.release("r1", NOW)["status"] == "ok"
    assert book.release("r1", NOW)["status"] == "duplicate"
    assert book.position(NOW)["held"] == 2
    late = book.confirm("r2", NOW + 1000)
    assert late["status"] == "refused" and late["reason"] == "expired"
    assert book.extend("r1", 5000, NOW)["reason"] == "released"
    assert book.position(NOW + 1000)["held"] == 0


def test_short_receipt_puts_newest_reservation_at_risk():
    book = stocked(0, mode="presell")
    book.apply("inbound_created", {"inbound_id": "l1", "loc": "WH1", "qty": 10, "eta_ms": NOW + DAY_MS, "supplier": "s"}, NOW)
    book.hold_batch([HoldRequest("old", 6), HoldRequest("new", 4)], NOW)
    for rid in ("old", "new"):
        book.confirm(rid, NOW)
    reply = book.apply("receipt", {"loc": "WH1", "qty": 7, "inbound_id": "l1"}, NOW + 2 * DAY_MS)
    assert reply["lot"] == {"inbound_id": "l1", "qty": 10, "eta_ms": NOW + DAY_MS, "supplier": "s"}
    assert reply["at_risk"] == [{"rid": "new", "short": 3}]
    assert reply["position"]["oversold"] == 3
    assert reply["position"]["atp"] == -3
    refill = book.apply("adjust", {"loc": "WH1", "delta": 5}, NOW + 3 * DAY_MS)
    assert refill["at_risk"] == []
    assert refill["position"]["atp"] == 2


def test_eta_slip_names_exactly_the_reservations_on_that_lot():
    book = stocked(2, mode="presell")
    book.apply("inbound_created", {"inbound_id": "l1", "loc": "WH1", "qty": 10, "eta_ms": NOW + DAY_MS, "supplier": "s"}, NOW)
    book.hold_batch([HoldRequest("onhand", 2), HoldRequest("a", 3), HoldRequest("b", 3)], NOW)
    reply = book.apply("inbound_updated", {"inbound_id": "l1", "eta_ms": NOW + 4 * DAY_MS}, NOW)
    assert reply["slipped"] == [
        {"rid": "b", "old_ms": NOW + DAY_MS, "new_ms": NOW + 4 * DAY_MS},
        {"rid": "a", "old_ms": NOW + DAY_MS, "new_ms": NOW + 4 * DAY_MS},
    ]


def test_replayed_offset_and_event_id_change_nothing():
    book = stocked(0)
    book.apply("adjust", {"loc": "WH1", "delta": 5}, NOW, event_id="e1", source="t:0", offset=7)
    dup_offset = book.apply("adjust", {"loc": "WH1", "delta": 5}, NOW, event_id="e2", source="t:0", offset=7)
    dup_event = book.apply("adjust", {"loc": "WH1", "delta": 5}, NOW, event_id="e1", source="t:1", offset=0)
    assert dup_offset["reason"] == "offset" and dup_event["reason"] == "event_id"
    assert book.position(NOW)["on_hand"] == 5


def test_order_placed_confirms_hold_or_commits_or_refuses():
    book = stocked(5)
    book.hold_batch([HoldRequest("o1", 2)], NOW)
    assert book.apply("order_placed", {"rid": "o1", "qty": 2, "loc": "", "channel": "web"}, NOW)["line"]["state"] == "committed"
    placed = book.apply("order_placed", {"rid": "o2", "qty": 3, "loc": "", "channel": "web"}, NOW)
    assert placed["line"]["state"] == "committed"
    refused = book.apply("order_placed", {"rid": "o3", "qty": 1, "loc": "", "channel": "web"}, NOW)
    assert refused["status"] == "refused" and refused["available"] == 0


def test_ship_consumes_committed_and_on_hand():
    book = stocked(5)
    book.apply("order_placed", {"rid": "o1", "qty": 3, "loc": "", "channel": "web"}, NOW)
    reply = book.apply("ship", {"rid": "o1", "loc": "WH1", "qty": 3}, NOW)
    assert reply["line"]["state"] == "shipped"
    pos = reply["position"]
    assert (pos["on_hand"], pos["committed"], pos["atp"]) == (2, 0, 2)
