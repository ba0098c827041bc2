"""The change log (docs/changelog.md): a record for each call that changed a SKU and none for a
call that did not; records that match the published schema; trimming; replay's order rules."""

from __future__ import annotations

from typing import Any

import pytest

from engine.domain.outputs import ChangeRecordValue
from engine.log.relay import reservation_messages
from engine.store.changelog import (
    LogGap,
    Record,
    Replayer,
    iter_changed_skus,
    read_log,
    read_log_raw,
    sku_state,
    trim_log,
)
from engine.store.keys import changed_key, event_marks_key, sku_keys
from engine.store.store import Store
from engine.store.wire import EVENT_MARK_TTL_MS, HoldRequest, SupplyCommand

T0 = 1_700_000_000_000


def _fns(redis: Any, sku: str) -> list[tuple[int, str]]:
    return [(r.q, r.fn) for r in read_log(redis, sku, "atp", count=1000)]


def test_a_call_leaves_a_record_only_when_it_changed_the_sku(redis: Any) -> None:
    store = Store(redis, now_ms=T0)
    store.apply([SupplyCommand("S", "count", {"loc": "A", "on_hand": 5}, event_id="c1")])
    assert _fns(redis, "S") == [(1, "apply")]
    assert store.apply([SupplyCommand("S", "count", {"loc": "A", "on_hand": 5}, event_id="c1")])[0]["status"] == "duplicate"
    assert store.hold_batch("S", [HoldRequest("big", 9)])[0]["status"] == "refused"
    store.position("S")
    assert _fns(redis, "S") == [(1, "apply")]  # a duplicate, a refusal and a read changed nothing
    assert store.hold_batch("S", [HoldRequest("r1", 2, ttl_ms=1_000)])[0]["status"] == "ok"
    store.confirm("S", "r1")
    assert store.hold_batch("S", [HoldRequest("r2", 1, ttl_ms=1_000)])[0]["status"] == "ok"
    store.now_ms = T0 + 1_000
    store.position("S")  # gives the due hold back: a change
    assert _fns(redis, "S") == [(1, "apply"), (2, "hold"), (3, "reservation"), (4, "hold"), (5, "position")]
    assert redis.hget(sku_keys("S").state, "!Q") == "5"
    # the call that buried r2 says so (its effect, for reservation.expired)
    records = read_log(redis, "S", "atp")
    assert [r.expired for r in records[:4]] == [()] * 4
    assert records[4].expired == ({"rid": "r2", "qty": 1, "location": "", "expires_ms": T0 + 1_000, "channel": "",
                                   "customer_id": "", "promised_ms": T0, "atp_after": 2},)


def test_every_record_is_the_published_change_record(redis: Any) -> None:
    store = Store(redis)  # Redis TIME: the record carries the time the call ran at
    store.apply([SupplyCommand("S", "count", {"loc": "A", "on_hand": 5}, event_id="e:1", source="inventory.adjustments:0",
                               offset=3, reason="cycle | count", ref="R%1")], keep_replies_s=60)
    store.hold_batch("S", [HoldRequest("r1", 2, customer="c1", channel="web"),
                           HoldRequest("r2", 1, ttl_ms=1)])
    store.revert("S", "r1", 1)  # a time long past: r1 expires at once
    raw = read_log_raw(redis, "S", "atp")
    assert len(raw) == 3
    for value in raw:
        ChangeRecordValue.model_validate_json(value)  # the schema in schemas/change-record.schema.json
        record = Record.from_json(value)
        assert Record.from_json(record.to_json()) == record
    first = Record.from_json(raw[0])
    assert first.now_ms > T0 and first.stash == ("rp:{S}:inventory.adjustments:0:3",)
    assert first.args[:2] == ("count", "e:1")
    assert Record.from_json(raw[2]).expired[0]["rid"] == "r1"


def test_trim_removes_the_shipped_head_and_the_empty_log(redis: Any) -> None:
    store = Store(redis, now_ms=T0)
    for i in range(5):
        store.apply([SupplyCommand("S", "adjust", {"loc": "A", "delta": 1}, event_id=f"a{i}")])
    assert trim_log(redis, "S", "atp", 3) == 3
    assert [r.q for r in read_log(redis, "S", "atp")] == [4, 5]
    assert trim_log(redis, "S", "atp", 3) == 0  # shipped twice: nothing more goes
    assert trim_log(redis, "S", "atp", 5) == 2
    assert redis.exists(sku_keys("S").log) == 0


def test_the_changed_sets_name_exactly_the_skus_with_waiting_records(redis: Any) -> None:
    store = Store(redis, now_ms=T0)
    skus = [f"K{i}" for i in range(30)]
    store.apply([SupplyCommand(s, "count", {"loc": "A", "on_hand": 3}) for s in skus])
    store.apply([SupplyCommand(s, "adjust", {"loc": "A", "delta": 1}) for s in skus[:10]])
    assert sorted(iter_changed_skus(redis, "atp")) == sorted(skus)
    for sku in skus[:20]:
        trim_log(redis, sku, "atp", 2)
    assert sorted(iter_changed_skus(redis, "atp")) == sorted(skus[20:])
    store.apply([SupplyCommand("K0", "adjust", {"loc": "A", "delta": 1})])  # a first waiting record again
    assert sorted(iter_changed_skus(redis, "atp")) == sorted(["K0", *skus[20:]])
    redis.delete(sku_keys("K21").log)  # a log gone some other way: the trim of nothing takes it out
    assert trim_log(redis, "K21", "atp", 0) == 0
    assert "K21" not in set(iter_changed_skus(redis, "atp"))
    cluster = store._cluster
    assert redis.sismember(changed_key("K22", "atp", cluster), "K22")


def test_a_replay_skips_what_it_has_and_stops_at_a_gap(redis: Any) -> None:
    store = Store(redis, now_ms=T0)
    for i in range(4):
        store.apply([SupplyCommand("S", "adjust", {"loc": "A", "delta": 1}, event_id=f"a{i}")])
    records = read_log(redis, "S", "atp")
    replay = Replayer(redis, "rb")
    replay.apply(records[:2])
    replay.apply(records)  # the first two again: skipped
    assert (replay.applied, replay.skipped) == (4, 2)
    assert sku_state(redis, "S", "rb") == sku_state(redis, "S", "atp")
    with pytest.raises(LogGap, match="records 1..1 are missing"):
        Replayer(redis, "rc").apply(records[1:])


def test_publish_keeps_an_event_in_the_log_and_changes_nothing_else(redis: Any) -> None:
    store = Store(redis, now_ms=T0)
    store.apply([SupplyCommand("P", "count", {"loc": "A", "on_hand": 5})])
    before = sku_state(redis, "P", "atp")
    event = b'{"event_id":"res:r-1:held","note":"a \\"quoted\\" / slashed value"}'
    assert store.publish("P", "r-1", event, "held") is True
    after = sku_state(redis, "P", "atp")
    assert after["state"].pop("!Q") == "2" and before["state"].pop("!Q") == "1"
    assert after == before  # the change number moved; nothing else did
    record = read_log(redis, "P", "atp")[1]
    assert (record.q, record.fn, record.now_ms, record.args) == (
        2, "publish", T0, (str(EVENT_MARK_TTL_MS), "r-1", event.decode(), "held"))
    ChangeRecordValue.model_validate_json(read_log_raw(redis, "P", "atp")[1])
    assert record.stash == ()  # the marks' key is no reply stash
    for rid, bad, change in (("r 1", event, "held"), ("r-1", b"[1]", "held"),
                             ("r-1", b"{" + b" " * (256 * 1024), "held"),
                             ("r-1", event, "expired"), ("r-1", event, "extended:x")):
        with pytest.raises(ValueError):
            store.publish("P", rid, bad, change)
    assert len(read_log(redis, "P", "atp")) == 2  # a refused call wrote nothing


def test_each_changes_event_is_kept_once(redis: Any) -> None:
    """A repeated request publishes again (it cannot know whether its first try did): the log
    gets each change's event once, an extension's once per new expiry, while the marks last."""
    store = Store(redis)  # the server's time: marks written at T0 would be gone at once
    kept = [store.publish("M", "r-1", b'{"n":1}', change) for change in (
        "held", "held", "extended:5000", "extended:5000", "extended:9000", "confirmed", "held", "confirmed")]
    assert kept == [True, False, True, False, True, True, False, False]
    assert [r.args[3] for r in read_log(redis, "M", "atp")] == ["held", "extended:5000", "extended:9000", "confirmed"]
    assert store.publish("M", "r-2", b'{"n":2}', "held") is True  # another reservation's own marks
    marks = event_marks_key("M", "r-1", "atp")
    assert redis.get(marks) == " held extended:9000 confirmed"  # of extensions only the last
    assert EVENT_MARK_TTL_MS - 60_000 < redis.pttl(marks) <= EVENT_MARK_TTL_MS
    Replayer(redis, "rb").apply(read_log(redis, "M", "atp"))  # a rebuild keeps them too
    assert redis.get(event_marks_key("M", "r-1", "rb")) == redis.get(marks)
    assert Store(redis, prefix="rb").publish("M", "r-1", b'{"n":1}', "confirmed") is False
    # a record replayed from the past writes marks that are gone when the live ones would be
    Store(redis, now_ms=T0).publish("M", "r-3", b'{"n":3}', "held")
    assert redis.exists(event_marks_key("M", "r-3", "atp")) == 0


def test_publish_many_keeps_a_batch_in_one_record_of_the_events_kept(redis: Any) -> None:
    """The API sends the events waiting for one SKU in one call: the record holds only the events
    kept now (a repeat within the batch, or of an event kept before, is not), and the relay
    produces exactly those."""
    store = Store(redis)
    assert store.publish("B", "r-0", b'{"n":0}', "held") is True
    batch = [("r-1", b'{"n":1}', "held"), ("r-0", b'{"n":0}', "held"), ("r-2", b'{"n":2}', "held"),
             ("r-1", b'{"n":1}', "held"), ("r-1", b'{"n":3}', "confirmed")]
    assert store.publish_many("B", batch) == [True, False, True, False, True]
    record = read_log(redis, "B", "atp")[-1]
    assert record.args == (str(EVENT_MARK_TTL_MS), "r-1", '{"n":1}', "held", "r-2", '{"n":2}', "held",
                           "r-1", '{"n":3}', "confirmed")
    assert reservation_messages("B", read_log_raw(redis, "B", "atp")[-1], "publish") == [
        ("r-1", b'{"n":1}'), ("r-2", b'{"n":2}'), ("r-1", b'{"n":3}')]
    assert store.publish_many("B", batch[:2]) == [False, False]
    assert len(read_log(redis, "B", "atp")) == 2  # nothing kept: no record
    Replayer(redis, "rb").apply(read_log(redis, "B", "atp"))  # a rebuild keeps every batch's marks
    assert redis.get(event_marks_key("B", "r-1", "rb")) == " held confirmed"
    # a record kept before marks existed ([rid, event]) replays as it was written
    old = Record(sku="B", q=3, fn="publish", now_ms=T0, args=("r-9", '{"n":9}'))
    Replayer(redis, "atp").apply([old])
    assert read_log(redis, "B", "atp")[-1].args == ("r-9", '{"n":9}')
    assert reservation_messages("B", read_log_raw(redis, "B", "atp")[-1], "publish") == [("r-9", b'{"n":9}')]
