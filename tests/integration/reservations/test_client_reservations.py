"""The checkout client: multi-line reservations (R2), idempotency (R3), lifecycle races (R4)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from engine.reservations.client import AsyncAtpClient, AtpClient
from engine.reservations.types import LineRequest, Refusal, Reservation
from engine.store.keys import rid_index_key
from engine.store.store import Store
from engine.store.wire import HoldRequest, SupplyCommand
from tests.conftest import redis_client

T0 = 1_700_000_000_000


class Clock:
    """A settable clock for the scripts (ms)."""

    def __init__(self, now: int = T0) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def stock(redis: Any, **skus: int) -> None:
    Store(redis).apply([SupplyCommand(sku, "count", {"loc": "DC1", "on_hand": q}) for sku, q in skus.items()])


def state(redis: Any, *skus: str) -> dict[str, Any]:
    """Every SKU's dump without the line counter (a rolled-back saga line uses a number)."""
    store = Store(redis)
    return {sku: {k: v for k, v in store.dump(sku).items() if k != "seq"} for sku in skus}


# --------------------------------------------------------------------------- R2


def test_lines_of_one_sku_are_summed_and_refused_whole(redis: Any) -> None:
    stock(redis, A=100)
    before = state(redis, "A")
    client = AtpClient(redis)
    result = client.hold("r1", [("A", 60, None), ("A", 60, None)])
    assert isinstance(result, Refusal)
    assert (result.status, result.reason, result.sku, result.available) == ("refused", "insufficient", "A", {"A": 100})
    assert state(redis, "A") == before
    assert Store(redis).dump("A")["seq"] == 0
    assert redis.get(rid_index_key("r1")) is None


def test_a_two_sku_reservation_with_one_short_line_is_refused_whole(redis: Any) -> None:
    stock(redis, A=10, B=3)
    before = state(redis, "A", "B")
    client = AtpClient(redis)
    result = client.hold("r1", [LineRequest("B", 5), LineRequest("A", 4)], channel="web", customer_id="c1")
    assert isinstance(result, Refusal)
    assert (result.status, result.reason, result.sku) == ("refused", "insufficient", "B")
    assert result.available == {"A": 10, "B": 3}
    assert state(redis, "A", "B") == before
    assert redis.get(rid_index_key("r1")) is None
    assert isinstance(client.get_reservation("r1"), Refusal)
    # nothing is left behind: the same id may be used again once there is stock
    stock(redis, B=5)
    ok = client.hold("r1", [LineRequest("B", 5), LineRequest("A", 4)])
    assert isinstance(ok, Reservation) and ok.status == "ok"
    assert [ln.sku for ln in ok.lines] == ["A", "B"]
    assert ok.atp_after == {"A": 6, "B": 0}


def test_a_multi_sku_reservation_is_confirmed_released_and_found_as_a_whole(redis: Any) -> None:
    stock(redis, A=10, B=10)
    client = AtpClient(redis)
    held = client.hold("r1", [("A", 2, "DC1"), ("B", 3, None)], ttl_s=60)
    assert isinstance(held, Reservation) and held.state == "held"
    assert held.lines[0].location == "DC1" and held.lines[1].location is None
    assert held.expires_ms > 0 and held.promised_ms > 0
    confirmed = client.confirm("r1")
    assert isinstance(confirmed, Reservation) and confirmed.state == "committed" and confirmed.expires_ms == 0
    got = client.get_reservation("r1")
    assert isinstance(got, Reservation) and got.lines == confirmed.lines
    released = client.release("r1")
    assert isinstance(released, Reservation) and released.status == "ok" and released.state == "released"
    assert client.atp_many(["A", "B"]) == {s: Store(redis).position(s) for s in ("A", "B")}
    assert [p["atp"] for p in client.atp_many(["A", "B"]).values()] == [10, 10]


def test_bad_requests_raise_value_errors_and_change_nothing(redis: Any) -> None:
    client = AtpClient(redis)
    for bad in (
        lambda: client.hold("r 1", [("A", 1, None)]),
        lambda: client.hold("r1", []),
        lambda: client.hold("r1", [("A", 0, None)]),
        lambda: client.hold("r1", [("A", 1.5, None)]),
        lambda: client.hold("r1", [("bad sku", 1, None)]),
        lambda: client.hold("r1", [("A", 1, "DC1"), ("A", 1, "DC2")]),
        lambda: client.hold("r1", [("A", 1, "DC1"), ("A", 1, None)]),
        lambda: client.hold("r1", [("A", 1, None)], ttl_s=0),
        lambda: client.hold("r1", [("A", 1, None)], channel="a:b"),
        lambda: client.hold("r1", [("A", 1, None)] * 101),
        lambda: client.extend("r1", -5),
        lambda: client.confirm(""),
        lambda: client.atp("x y"),
    ):
        with pytest.raises(ValueError):
            bad()
    assert redis.keys("*") == []


# --------------------------------------------------------------------------- R3


def test_the_same_id_sent_50_times_concurrently_makes_one_reservation(redis: Any) -> None:
    stock(redis, A=100)
    client = AtpClient(redis)
    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(lambda _: client.hold("dup-1", [("A", 7, None)], customer_id="c1"), range(50)))
    assert all(isinstance(r, Reservation) for r in results)
    assert sorted(r.status for r in results).count("ok") == 1
    assert all(r.lines == results[0].lines and r.reservation_id == "dup-1" for r in results)
    dump = Store(redis).dump("A")
    assert list(dump["lines"]) == ["dup-1"] and dump["customers"] == {"c1": 7}
    assert Store(redis).position("A")["held"] == 7

    before = state(redis, "A")
    other = client.hold("dup-1", [("A", 8, None)])
    assert isinstance(other, Refusal) and other.status == "conflict"
    assert other.lines == results[0].lines
    elsewhere = client.hold("dup-1", [("A", 7, None), ("B", 1, None)])
    assert isinstance(elsewhere, Refusal) and elsewhere.status == "conflict"
    assert state(redis, "A", "B") == {**before, "B": state(redis, "B")["B"]}
    assert Store(redis).dump("B")["lines"] == {}


def test_the_same_multi_sku_id_sent_50_times_concurrently_makes_one_reservation(
    redis: Any, redis_url: str, redis_cluster_mode: bool
) -> None:
    stock(redis, A=100, B=100)

    async def go() -> list[Any]:
        conn = redis_client(redis_url, redis_cluster_mode, asyncio=True, decode_responses=True)
        client = AsyncAtpClient(conn)
        try:
            return await asyncio.gather(
                *(client.hold("dup-2", [("A", 2, None), ("B", 3, None)]) for _ in range(50))
            )
        finally:
            await conn.aclose()

    results = asyncio.run(go())
    assert all(isinstance(r, Reservation) for r in results)
    assert all(r.lines == results[0].lines for r in results)
    positions = Store(redis).positions(["A", "B"])
    assert [p["held"] for p in positions] == [2, 3]


# --------------------------------------------------------------------------- R4


def test_release_twice_returns_units_once(redis: Any) -> None:
    stock(redis, A=10)
    client = AtpClient(redis)
    client.hold("r1", [("A", 4, None)])
    first, second = client.release("r1"), client.release("r1")
    assert isinstance(first, Reservation) and first.status == "ok"
    assert isinstance(second, Reservation) and second.status == "duplicate" and second.state == "released"
    pos = client.atp("A")
    assert (pos["held"], pos["atp"]) == (0, 10)


def test_confirm_after_expiry_is_refused_and_units_are_back(redis: Any) -> None:
    stock(redis, A=10)
    clock = Clock()
    client = AtpClient(redis, now_ms=clock)
    client.hold("r1", [("A", 4, None)], ttl_s=30)
    clock.now += 30_000
    late = client.confirm("r1")
    assert isinstance(late, Refusal) and (late.status, late.reason) == ("refused", "expired")
    assert late.lines[0].state == "expired"
    assert client.atp("A")["atp"] == 10
    assert isinstance(client.release("r1"), Reservation)  # duplicate: nothing comes back twice
    assert client.atp("A")["atp"] == 10


def test_extend_after_release_is_refused(redis: Any) -> None:
    stock(redis, A=10)
    clock = Clock()
    client = AtpClient(redis, now_ms=clock)
    client.hold("r1", [("A", 4, None)], ttl_s=30)
    clock.now += 10_000
    extended = client.extend("r1", 60)
    assert isinstance(extended, Reservation) and extended.expires_ms == clock.now + 60_000
    client.release("r1")
    late = client.extend("r1", 60)
    assert isinstance(late, Refusal) and (late.status, late.reason) == ("refused", "released")
    assert isinstance(client.extend("nobody", 60), Refusal)
    assert client.extend("nobody", 60).status == "not_found"


def test_concurrent_release_confirm_and_expiry_races_never_return_units_twice(
    redis: Any, redis_url: str, redis_cluster_mode: bool
) -> None:
    stock(redis, A=1000)
    clients = [
        AtpClient(redis_client(redis_url, redis_cluster_mode, decode_responses=True))
        for _ in range(8)
    ]
    n = 200
    for i in range(n):
        clients[0].hold(f"x{i}", [("A", 3, None)], ttl_s=1 if i % 4 == 0 else 60)

    def race(i: int) -> list[str]:
        c = clients[i % len(clients)]
        ops = [c.release, c.confirm, c.release] if i % 2 else [c.confirm, c.release, c.release]
        return [op(f"x{i}").status for op in ops]

    with ThreadPoolExecutor(max_workers=32) as pool:
        outcomes = list(pool.map(race, [i for i in range(n) for _ in range(3)]))
    assert all(set(o) <= {"ok", "duplicate", "refused"} for o in outcomes)
    store = Store(redis)
    lines = store.dump("A")["lines"]
    assert all(line["state"] in ("released", "expired") for line in lines.values())
    pos = store.position("A")
    assert (pos["held"], pos["committed"], pos["atp"]) == (0, 0, 1000)


class _StreamActsFirst(Store):
    """A store on which the stream changes line ``sku`` of a reservation just before this client's
    call on that line reaches Redis: the window between a multi-SKU call's check and its act."""

    def __init__(self, redis: Any, sku: str, before: str, now_ms: Clock) -> None:
        super().__init__(redis, now_ms=now_ms)
        self._sku, self._before = sku, before

    def _first(self, sku: str, rid: str) -> None:
        if sku == self._sku:
            if self._before == "cancel":
                assert Store.release(self, sku, rid)["status"] == "ok"
            else:  # the order is confirmed and shipped by the stream
                Store.confirm(self, sku, rid)
                ship = SupplyCommand(sku, "ship", {"rid": rid, "loc": "DC1", "qty": 2}, event_id=f"ship-{rid}")
                assert self.apply([ship])[0]["line"]["state"] == "shipped"

    def confirm(self, sku: str, rid: str) -> dict[str, Any]:
        self._first(sku, rid)
        return super().confirm(sku, rid)

    def extend(self, sku: str, rid: str, ttl_ms: int) -> dict[str, Any]:
        self._first(sku, rid)
        return super().extend(sku, rid, ttl_ms)

    def release(self, sku: str, rid: str) -> dict[str, Any]:
        self._first(sku, rid)
        return super().release(sku, rid)


@pytest.mark.parametrize("op", ["confirm", "extend"])
def test_a_line_cancelled_between_check_and_act_reverts_the_others(redis: Any, op: str) -> None:
    stock(redis, A=10, Z=10)
    clock = Clock()
    client = AtpClient(redis, now_ms=clock)
    held = client.hold("mix-1", [("A", 2, None), ("Z", 2, None)], ttl_s=60)
    assert isinstance(held, Reservation)
    client.store = _StreamActsFirst(redis, "Z", "cancel", clock)  # Z sorts after A: A acts first
    clock.now += 1_000
    result = client.extend("mix-1", 120) if op == "extend" else client.confirm("mix-1")
    assert isinstance(result, Refusal) and (result.reason, result.sku) == ("released", "Z")
    assert result.changed is None
    line_a = Store(redis, now_ms=clock.now).get_line("A", "mix-1")["line"]
    assert (line_a["state"], line_a["expires_ms"]) == ("held", held.expires_ms)
    assert {ln.sku: ln.state for ln in result.lines} == {"A": "held", "Z": "released"}
    assert Store(redis, now_ms=clock.now).position("A")["committed"] == 0


def test_a_release_racing_a_shipment_keeps_what_it_released_and_says_so(redis: Any) -> None:
    stock(redis, A=10, Z=10)
    clock = Clock()
    client = AtpClient(redis, now_ms=clock)
    assert isinstance(client.hold("mix-2", [("A", 1, None), ("Z", 2, None)]), Reservation)
    client.store = _StreamActsFirst(redis, "Z", "ship", clock)
    result = client.release("mix-2")
    assert isinstance(result, Refusal) and result.reason == "shipped"
    assert result.changed is not None and [ln.sku for ln in result.changed.lines] == ["A"]
    assert result.changed.lines[0].state == "released"


def test_a_multi_sku_lifecycle_call_on_a_forbidden_line_changes_nothing(redis: Any) -> None:
    stock(redis, A=10, Z=10)
    client = AtpClient(redis, now_ms=Clock())
    assert isinstance(client.hold("mix-3", [("A", 1, None), ("Z", 1, None)]), Reservation)
    Store(redis, now_ms=T0).release("Z", "mix-3")
    before = state(redis, "A", "Z")
    for call in (lambda: client.confirm("mix-3"), lambda: client.extend("mix-3", 30)):
        result = call()
        assert isinstance(result, Refusal) and result.reason == "released"
    assert state(redis, "A", "Z") == before


class _SagaCleansUpMeanwhile(AtpClient):
    """A client whose first hold is answered just before a refused hold of other lines under the
    same id rolls back its line and removes its index (the real Redis calls, in that window)."""

    def __init__(self, redis: Any, clock: Clock) -> None:
        super().__init__(redis, now_ms=clock, coalesce=False)
        self.cleaned = False

    def _send(self, sku: str, items: list[Any]) -> list[Any]:
        out = super()._send(sku, items)
        if not self.cleaned:
            self.cleaned = True
            assert Store(self.redis, now_ms=T0).rollback(sku, "mixed-1")["status"] == "ok"
            self.redis.delete(rid_index_key("mixed-1"))
        return out


def test_a_single_hold_never_adopts_a_line_that_a_refused_saga_rolls_back(redis: Any) -> None:
    stock(redis, B=10, C=10)
    # a hold of [B:2, C:3] under "mixed-1" is under way: its pending index and its line of B
    redis.set(rid_index_key("mixed-1"), b'~["B","C"]')
    Store(redis, now_ms=T0).hold_batch("B", [HoldRequest("mixed-1", 2)])
    client = _SagaCleansUpMeanwhile(redis, Clock())
    result = client.hold("mixed-1", [("B", 2, None)])
    # the line it first found is gone with the saga; the answer is a line of its own
    assert isinstance(result, Reservation) and result.status == "ok"
    line = Store(redis, now_ms=T0).get_line("B", "mixed-1")
    assert line["status"] == "ok" and line["line"]["qty"] == 2 and line["line"]["state"] == "held"
    assert redis.get(rid_index_key("mixed-1")) == '["B"]'
