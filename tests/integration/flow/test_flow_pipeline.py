"""The dataflow on bytewax's TestingSource / TestingSink, applying to the real Redis."""

from __future__ import annotations

from typing import Any

import bytewax.operators as op
import orjson
import pytest
from bytewax.testing import TestingSink, TestingSource, run_main

from connectors.dlq import DlqRecord
from connectors.topics import Topics
from engine import metrics
from engine.flow.dataflow import FlowStreams, build_flow
from engine.flow.records import Outcome
from engine.flow.runner import topic_bases
from engine.flow.source import RawMessage
from engine.store.keys import sku_keys
from engine.store.reply_stash import STASH_TTL_S
from engine.store.store import Store

T = Topics()
AT = "2026-01-01T00:00:00Z"


class Feed:
    """Builds RawMessages with increasing offsets per topic-partition."""

    def __init__(self) -> None:
        self.offsets: dict[str, int] = {}

    def raw(self, topic: str, value: bytes, key: bytes | None = None, partition: int = 0) -> RawMessage:
        source = f"{topic}:{partition}"
        offset = self.offsets.get(source, 0)
        self.offsets[source] = offset + 1
        return RawMessage(topic, partition, offset, value, key, 1_000 + offset)

    def event(self, topic: str, event_id: str, kind: str, **payload: Any) -> RawMessage:
        body = {"event_id": event_id, "type": kind, "occurred_at": AT, **payload}
        return self.raw(topic, orjson.dumps(body))


def run(redis: Any, items: list[Any], batch_size: int = 100, extras: tuple = (),
        keep_replies_s: int = STASH_TTL_S) -> tuple[list, list]:
    outcomes: list[tuple[str, Outcome]] = []
    dlq: list[DlqRecord] = []
    flow = build_flow(
        "test-flow",
        TestingSource(items, batch_size=batch_size),
        lambda: Store(redis),
        topic_bases(T),
        TestingSink(dlq),
        TestingSink(outcomes),
        extras=extras,
        keep_replies_s=keep_replies_s,
    )
    run_main(flow)
    return outcomes, dlq


def position(redis: Any, sku: str) -> dict[str, Any]:
    return Store(redis).position(sku)


def test_events_are_applied_in_log_order_and_each_command_becomes_an_outcome(redis: Any) -> None:
    f = Feed()
    items = [
        f.event(T.adjustments, "e1", "stock.counted", sku="A", location="WH1", on_hand=10),
        f.event(T.orders, "e2", "order.placed", order_id="o1", channel="web",
                lines=[{"sku": "A", "qty": 3, "location": "WH1"}, {"sku": "B", "qty": 1}]),
        f.event(T.orders, "e3", "order.placed", order_id="o2", channel="web",
                lines=[{"sku": "A", "qty": 2, "location": "WH1"}]),
        f.event(T.orders, "e4", "order.shipped", order_id="o2", lines=[{"sku": "A", "qty": 2, "location": "WH1"}]),
    ]
    outcomes, dlq = run(redis, items)

    assert dlq == []
    got = [(k, o.event_id, o.cmd, o.status) for k, o in outcomes]
    assert got == [
        ("A", "e1", "count", "ok"),
        ("A", "e2", "order_placed", "ok"),
        ("B", "e2", "order_placed", "refused"),  # nothing of B anywhere: an unfulfillable line
        ("A", "e3", "order_placed", "ok"),
        ("A", "e4", "ship", "ok"),
    ]
    placed = outcomes[1][1]
    assert placed.source == f"{T.orders}:0" and placed.offset == 0 and placed.event_type == "order.placed"
    assert placed.reply["position"]["committed"] == 3
    a = position(redis, "A")
    assert (a["on_hand"], a["committed"], a["atp"]) == (8, 3, 5)


def test_without_the_alert_step_only_a_watched_skus_replies_carry_a_position(redis: Any) -> None:
    f = Feed()
    items = [f.event(T.adjustments, f"c{sku}", "stock.counted", sku=sku, location="WH1", on_hand=4) for sku in "AB"]
    metrics.configure_watch_list(["A"])
    try:
        outcomes, dlq = run(redis, items, keep_replies_s=0)
    finally:
        metrics.configure_watch_list([])
    assert dlq == [] and [o.status for _, o in outcomes] == ["ok", "ok"]
    replies = {sku: o.reply for sku, o in outcomes}
    assert replies["A"]["position"]["atp"] == 4 and "position" not in replies["B"]
    assert position(redis, "B")["atp"] == 4  # applied all the same
    # with the alert step (which keeps each reply, and judges its position) every reply has one
    outcomes, _ = run(redis, [f.event(T.adjustments, "cB2", "stock.counted", sku="B", location="WH1", on_hand=6)])
    assert outcomes[0][1].reply["position"]["atp"] == 6


def test_a_bad_message_goes_to_the_dlq_whole_and_the_next_good_event_is_applied(redis: Any) -> None:
    f = Feed()
    bad = b'{"event_id": "x1", "type": "stock.counted", "sku": "A", '
    items = [
        f.raw(T.adjustments, bad, key=b"A"),
        f.event(T.adjustments, "e2", "stock.counted", sku="A", location="WH1", on_hand=7),
    ]
    before = metrics.DLQ.labels("bad_json")._value.get()
    outcomes, dlq = run(redis, items)

    assert len(dlq) == 1
    record = dlq[0]
    assert (record.topic, record.partition, record.offset) == (T.adjustments, 0, 0)
    assert record.reason == "bad_json" and record.original == bad and record.key == b"A"
    assert metrics.DLQ.labels("bad_json")._value.get() == before + 1
    assert [(o.event_id, o.status) for _, o in outcomes] == [("e2", "ok")]
    assert position(redis, "A")["on_hand"] == 7


def test_an_event_on_another_types_topic_is_refused_as_wrong_topic(redis: Any) -> None:
    f = Feed()
    items = [f.event(T.orders, "e1", "stock.counted", sku="A", location="WH1", on_hand=7)]
    outcomes, dlq = run(redis, items)

    assert outcomes == []
    assert [(d.reason, d.event_type, d.event_id) for d in dlq] == [("wrong_topic", "stock.counted", "e1")]
    assert position(redis, "A")["on_hand"] == 0


@pytest.mark.parametrize("batch_size", [1, 100], ids=["cancel-in-a-later-batch", "cancel-in-the-same-batch"])
def test_a_cancel_without_lines_releases_every_sku_of_the_order(redis: Any, batch_size: int) -> None:
    f = Feed()
    items = [
        f.event(T.adjustments, "e1", "stock.counted", sku="A", location="WH1", on_hand=10),
        f.event(T.adjustments, "e2", "stock.counted", sku="B", location="WH1", on_hand=10),
        f.event(T.orders, "e3", "order.placed", order_id="o1", channel="web",
                lines=[{"sku": "A", "qty": 3}, {"sku": "B", "qty": 4}]),
        f.event(T.orders, "e4", "order.cancelled", order_id="o1"),
    ]
    outcomes, dlq = run(redis, items, batch_size=batch_size)

    assert dlq == []
    cancels = sorted((k, o.status) for k, o in outcomes if o.cmd == "order_cancelled")
    assert cancels == [("A", "ok"), ("B", "ok")]
    for sku in ("A", "B"):
        p = position(redis, sku)
        assert (p["committed"], p["atp"]) == (0, 10)
    assert orjson.loads(redis.get("atp:rid:{o1}")) == ["A", "B"]


def test_a_cancel_without_lines_of_an_unknown_order_is_a_not_found_outcome(redis: Any) -> None:
    f = Feed()
    outcomes, dlq = run(redis, [f.event(T.orders, "e1", "order.cancelled", order_id="nope")])

    assert dlq == []
    assert [(k, o.status, o.reply.get("reason")) for k, o in outcomes] == [("", "not_found", "unknown_reservation")]


def test_messages_read_again_are_duplicates_and_change_nothing(redis: Any) -> None:
    f = Feed()
    items = [
        f.event(T.adjustments, "e1", "stock.counted", sku="A", location="WH1", on_hand=10),
        f.event(T.orders, "e2", "order.placed", order_id="o1", channel="web", lines=[{"sku": "A", "qty": 3}]),
        f.event(T.adjustments, "e3", "stock.adjusted", sku="A", location="WH1", delta=-2, reason="damage"),
    ]
    run(redis, items)
    first = position(redis, "A")
    outcomes, _ = run(redis, items)  # the same offsets again: a replay

    assert [(o.status, o.reply.get("reason")) for _, o in outcomes] == [("duplicate", "offset")] * 3
    assert position(redis, "A") == first


def test_a_command_the_store_rejects_goes_to_the_dlq_and_the_rest_of_the_batch_is_applied(redis: Any) -> None:
    broken = sku_keys("BROKEN").all
    for key in broken:  # every script call on BROKEN now fails (WRONGTYPE, or a JSON error)
        redis.set(key, "not a hash")
    f = Feed()
    items = [
        f.event(T.adjustments, "e1", "stock.counted", sku="A", location="WH1", on_hand=10),
        f.event(T.adjustments, "e2", "stock.counted", sku="BROKEN", location="WH1", on_hand=10),
        f.event(T.adjustments, "e3", "stock.counted", sku="C", location="WH1", on_hand=5),
    ]
    outcomes, dlq = run(redis, items)
    redis.delete(*broken)  # leave a keyspace the invariant check can read

    assert [(d.reason, d.event_id, d.offset) for d in dlq] == [("apply_failed", "e2", 1)]
    assert dlq[0].original == items[1].value
    # The failed pipeline had applied A and C already; isolating BROKEN finds them applied.
    assert [k for k, _ in outcomes] == ["A", "C"]
    assert all(o.status in ("ok", "duplicate") for _, o in outcomes)
    assert (position(redis, "A")["on_hand"], position(redis, "C")["on_hand"]) == (10, 5)


def test_extra_steps_receive_the_outcome_stream_keyed_by_sku(redis: Any) -> None:
    seen: list[tuple[str, str]] = []

    def attach(streams: FlowStreams) -> None:
        counted = op.map("to_pair", streams.outcomes, lambda kv: (kv[0], kv[1].cmd))
        op.output("extra_out", counted, TestingSink(seen))

    f = Feed()
    items = [
        f.event(T.adjustments, "e1", "stock.counted", sku="A", location="WH1", on_hand=1),
        f.event(T.inbound, "e2", "inbound.created", inbound_id="L1", sku="B", location="WH1", qty=5,
                eta="2026-02-01T00:00:00Z", supplier_id="S1"),
    ]
    run(redis, items, extras=(attach,))

    assert seen == [("A", "count"), ("B", "inbound_created")]
