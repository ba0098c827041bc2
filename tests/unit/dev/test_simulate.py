"""The stream generator: deterministic, realistic in mix, and its bad messages are the bad kinds it claims."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import orjson
import pytest

from connectors.topics import Topics
from engine.dev.simulate import BAD_KINDS, Simulator, generate
from engine.domain.events import EVENT_TYPES, TOPIC_OF_TYPE, EventBase, ParseError, parse_event

START = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


def test_the_same_seed_gives_the_same_bytes_and_another_seed_does_not() -> None:
    one = list(generate(500, seed=1, bad_fraction=0.1, start_time=START))
    again = list(generate(500, seed=1, bad_fraction=0.1, start_time=START))
    other = list(generate(500, seed=2, bad_fraction=0.1, start_time=START))
    assert one == again
    assert one != other
    assert len(one) == 500


def test_every_good_message_parses_on_its_topic_keyed_by_a_sku_it_names() -> None:
    topics = Topics(prefix="demo.")
    types: Counter[str] = Counter()
    ids: set[str] = set()
    last_ms = 0
    for message in generate(4000, seed=3, start_time=START, topics=topics):
        event = parse_event(message.value, topics.base_of(message.topic))
        assert isinstance(event, EventBase), event
        assert message.topic == topics.name(TOPIC_OF_TYPE[event.type])
        assert event.event_id not in ids
        ids.add(event.event_id)
        assert event.occurred_ms >= last_ms  # event time never goes backwards
        last_ms = event.occurred_ms
        assert message.key is not None
        if not event.type.startswith("order."):
            assert message.key == event.sku.encode()  # type: ignore[attr-defined]
        types[event.type] += 1
    assert set(types) == set(EVENT_TYPES)
    assert types["order.placed"] > types["order.shipped"] > types["order.cancelled"]
    assert last_ms > START.timestamp() * 1000


def test_bad_messages_come_at_the_asked_rate_and_each_gives_its_reason() -> None:
    sim = Simulator(5000, seed=8, bad_fraction=0.2, start_time=START)
    kinds: Counter[str] = Counter()
    for item in sim.labeled():
        parsed = parse_event(item.message.value, Topics().base_of(item.message.topic))
        if item.bad is None:
            assert isinstance(parsed, EventBase), parsed
            continue
        kinds[item.bad] += 1
        assert isinstance(parsed, ParseError), (item.bad, item.message)
        assert parsed.reason == BAD_KINDS[item.bad], (item.bad, parsed)
    assert set(kinds) == set(BAD_KINDS)
    assert 900 <= sum(kinds.values()) <= 1100


def test_duplicates_are_exact_resends_of_earlier_good_messages() -> None:
    items = list(Simulator(2000, seed=4, duplicate_fraction=0.05, start_time=START).labeled())
    dups = [i for i in items if i.duplicate]
    assert 50 <= len(dups) <= 150
    firsts = {i.message for i in items if not i.duplicate}
    assert all(d.message in firsts for d in dups)


def test_a_supplier_late_or_short_shows_in_the_receipts() -> None:
    lots: dict[str, dict] = {}
    late = short = receipts = 0
    for message in generate(20_000, seed=6, start_time=START):
        body = orjson.loads(message.value)
        if body["type"] in ("inbound.created", "inbound.updated"):
            lot = lots.setdefault(body["inbound_id"], {})
            lot.update({k: body[k] for k in ("eta", "qty") if k in body})
        elif body["type"] == "receipt.posted" and "inbound_id" in body:
            lot = lots[body["inbound_id"]]
            receipts += 1
            late += body["occurred_at"] > lot["eta"]
            short += body["qty"] < lot["qty"]
    assert receipts > 200
    assert 0 < late < receipts and 0 < short < receipts


def test_names_are_validated_before_anything_is_generated() -> None:
    with pytest.raises(ValueError, match="sku may hold only"):
        Simulator(10, skus=["ok", "not ok"])
    with pytest.raises(ValueError, match="bad_fraction"):
        Simulator(10, bad_fraction=1.5)
    with pytest.raises(ValueError, match="time zone"):
        Simulator(10, start_time=datetime(2025, 1, 1))
    with pytest.raises(ValueError, match="non-empty"):
        Simulator(10, locations=[])


def test_given_names_are_used() -> None:
    skus, locations = ["X-1", "X-2"], ["north"]
    for message in generate(
        300, seed=1, skus=skus, locations=locations, channels=["pos"], suppliers=["acme"]
    ):
        body = orjson.loads(message.value)
        for line in body.get("lines", []):
            assert line["sku"] in skus
            assert line.get("location", "north") == "north"
        assert body.get("sku", "X-1") in skus
        assert body.get("location", "north") == "north"
        assert body.get("channel", "pos") == "pos"
        assert body.get("supplier_id", "acme") == "acme"
