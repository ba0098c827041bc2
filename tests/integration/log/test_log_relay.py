"""The change log relay (engine/log/relay.py) against the real Redis and a real broker: every
record of every SKU reaches ``inventory.changes`` once, in order, and leaves Redis; a relay killed
between the broker's acknowledgement and the trim ships nothing twice; a broker that is away
loses nothing and the backlog shows what waits; of two relays on one keyspace one ships."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from connectors.embedded import EmbeddedBroker, EmbeddedKafka
from connectors.topics import Topics, create_topics
from engine import cli, metrics
from engine.api import create_app
from engine.log.relay import Relay, relay_lock_key, relay_state_key
from engine.settings import Settings
from engine.store.changelog import Record, change_number, iter_log_skus, read_log
from engine.store.keys import sku_keys
from engine.store.store import Store
from engine.store.wire import HoldRequest, SupplyCommand
from tests.conftest import APACHE_KAFKA
from tests.integration.api_harness import api_settings, in_process
from tests.integration.flowkit import read_topic

pytestmark = pytest.mark.kafka_compat  # also run on Apache Kafka (README, tests)

PREFIX = "atp"
# short timeouts: a broker that is away costs a round seconds, not minutes
FAST = {"socket.timeout.ms": 1000, "reconnect.backoff.max.ms": 300, "retry.backoff.max.ms": 200}

Broker = EmbeddedBroker | EmbeddedKafka


def make_changes(store: Store, skus: list[str], holds: Callable[[int], int], tag: str) -> None:
    """Stock for each SKU (one call), then ``holds(i)`` holds of one unit, a call each."""
    store.apply([SupplyCommand(sku, "adjust", {"loc": "WH1", "delta": 1000}, event_id=f"{tag}-{sku}",
                               reason="stock", ref=tag) for sku in skus])
    for i, sku in enumerate(skus):
        for h in range(holds(i)):
            assert store.hold_batch(sku, [HoldRequest(f"{tag}-{sku}-{h}", 1)])[0]["status"] == "ok"


def logged(redis: Any, skus: list[str]) -> dict[str, list[Record]]:
    """The records each SKU's log stream holds now."""
    return {sku: read_log(redis, sku, PREFIX, count=100_000) for sku in skus}


def on_topic(bootstrap: str, topic: str) -> dict[str, list[Record]]:
    """The records on the topic per SKU, in offset order; each decodes and is keyed by its SKU."""
    out: dict[str, list[Record]] = defaultdict(list)
    for msg in sorted(read_topic(bootstrap, topic), key=lambda m: (m.partition, m.offset)):
        assert msg.value is not None
        record = Record.from_json(msg.value)
        assert msg.key == record.sku.encode(), (msg.key, record)
        out[record.sku].append(record)
    return dict(out)


def numbers(records: dict[str, list[Record]]) -> dict[str, list[int]]:
    return {sku: [r.q for r in recs] for sku, recs in records.items()}


def assert_each_once(got: dict[str, list[int]], last: dict[str, int], first: int = 1) -> None:
    """Per SKU the topic holds the change numbers ``first``..``last[sku]``, each once, in order."""
    want = {sku: list(range(first, n + 1)) for sku, n in last.items()}
    wrong = {sku: got.get(sku) for sku in set(got) | set(want) if got.get(sku) != want.get(sku)}
    assert not wrong, f"{len(wrong)} SKUs wrong on the topic, e.g. {sorted(wrong.items())[:3]}"


def streams_left(redis: Any) -> list[str]:
    return sorted(iter_log_skus(redis, PREFIX))


def backlog_gauge() -> float:
    return metrics.REGISTRY.get_sample_value("atp_changelog_backlog") or 0.0


def counter(name: str) -> float:
    return metrics.REGISTRY.get_sample_value(name) or 0.0


def drain(relay: Relay, redis: Any, timeout_s: float = 60.0) -> None:
    """Rounds until no log stream is left and a pass has ended after that."""
    deadline = time.monotonic() + timeout_s
    while True:
        relay.run_once()
        if not streams_left(redis) and relay.pass_done:
            return
        assert time.monotonic() < deadline, f"not drained: {streams_left(redis)[:5]}…, {relay.last_error}"


def full_pass(relay: Relay, timeout_s: float = 30.0) -> int:
    """Rounds until one pass over the keyspace ends (a broker's passing error retried); returns
    the records shipped."""
    deadline, shipped = time.monotonic() + timeout_s, 0
    while True:
        errors = relay.errors
        shipped += relay.run_once()
        if relay.pass_done and relay.errors == errors:
            return shipped
        assert time.monotonic() < deadline, relay.last_error


def relay_of(settings: Settings, topics: Topics, redis: Any, **kwargs: Any) -> Relay:
    kwargs = {"idle_s": 0.05, "ack_timeout_s": 5.0, **kwargs}
    return Relay(settings, topics, redis=redis, producer_overrides=FAST, **kwargs)


def test_the_records_of_many_skus_reach_the_topic_once_in_order_and_leave_redis(
    settings: Settings, topics: Topics, redis: Any, kafka_bootstrap: str
) -> None:
    store = Store(redis)
    skus = [f"REL-{i:03d}" for i in range(40)]
    make_changes(store, skus, lambda i: i % 13, "a")  # 1 to 13 records a SKU
    expected = logged(redis, skus)
    assert {sku: len(recs) for sku, recs in expected.items()} == {
        sku: change_number(redis, sku, PREFIX) for sku in skus}
    total = sum(len(r) for r in expected.values())
    shipped_before = counter("atp_changelog_shipped_total")
    # small batches and rounds: SKUs with more records than a batch are visited again, a pass
    # takes several rounds
    relay = relay_of(settings, topics, redis, batch=4, max_skus=16)
    try:
        drain(relay, redis)
        got = on_topic(kafka_bootstrap, topics.changes)
        assert_each_once(numbers(got), {sku: len(expected[sku]) for sku in skus})
        assert got == expected  # the records themselves, not only their numbers
        assert streams_left(redis) == []
        assert not any(redis.exists(sku_keys(sku, PREFIX).log) for sku in skus)
        assert relay.shipped == total
        assert counter("atp_changelog_shipped_total") - shipped_before == total
        assert relay.backlog == 0 and backlog_gauge() == 0
        # the offsets saved are the ends of the partitions the records went to
        per_partition: dict[int, int] = defaultdict(int)
        for msg in read_topic(kafka_bootstrap, topics.changes):
            per_partition[msg.partition] = max(per_partition[msg.partition], msg.offset + 1)
        saved = redis.hgetall(relay_state_key(PREFIX))
        assert saved["topic"] == topics.changes
        assert {int(p): int(o) for p, o in saved.items() if p.isdigit() and int(o)} == dict(per_partition)
        # the change numbers stay in the state hash: the next change of a SKU is the next number
        make_changes(store, skus[:1], lambda i: 2, "b")
        drain(relay, redis)
        assert numbers(on_topic(kafka_bootstrap, topics.changes))[skus[0]] == list(range(1, len(expected[skus[0]]) + 4))
    finally:
        relay.close()
    assert redis.get(relay_lock_key(PREFIX)) is None  # released on close


class KilledBeforeTrim(Relay):
    """A relay that dies once the broker acknowledged a round: no trim, no saved offsets, the lock
    left to expire."""

    killed = False

    def _settle(self, trims: list[tuple[str, str]], ends: dict[int, int]) -> None:
        if self.killed:
            return
        super()._settle(trims, ends)


@pytest.mark.parametrize("first_round_settled", [False, True], ids=["first-round", "later-round"])
def test_a_relay_killed_between_the_acknowledgement_and_the_trim_ships_nothing_twice(
    settings: Settings, topics: Topics, redis: Any, kafka_bootstrap: str, first_round_settled: bool
) -> None:
    store = Store(redis)
    skus = [f"KIL-{i:02d}" for i in range(12)]
    make_changes(store, skus, lambda i: 3 + i % 4, "a")
    dead = KilledBeforeTrim(settings, topics, redis=redis, producer_overrides=FAST, idle_s=0.05, ack_timeout_s=5.0)
    relay = relay_of(settings, topics, redis)
    try:
        if first_round_settled:  # one good round first: offsets saved past it
            assert full_pass(dead) > 0
            assert streams_left(redis) == []
            make_changes(store, skus, lambda i: 2, "b")
        dead.killed = True
        assert full_pass(dead) > 0
        # on the topic, and still in Redis: what a new relay must not ship again
        assert len(streams_left(redis)) == len(skus)
        assert sum(len(v) for v in numbers(on_topic(kafka_bootstrap, topics.changes)).values()) > 0
        redis.delete(relay_lock_key(PREFIX))  # its lock expires
        make_changes(store, skus[:3], lambda i: 2, "c")  # and the keyspace goes on changing
        drain(relay, redis)
        assert relay.shipped == 3 * 3  # only what the dead relay had not shipped
    finally:
        relay.close()
        dead.close()
    assert_each_once(numbers(on_topic(kafka_bootstrap, topics.changes)),
                     {sku: change_number(redis, sku, PREFIX) for sku in skus})
    assert streams_left(redis) == []


@pytest.fixture
def broker(broker_kind: str) -> Iterator[Broker]:
    own: Broker = EmbeddedKafka() if broker_kind == APACHE_KAFKA else EmbeddedBroker()
    with own:  # its own: this test stops it
        yield own


def test_with_the_broker_away_records_wait_in_redis_counted_and_go_once_it_is_back(
    settings: Settings, redis: Any, broker: Broker
) -> None:
    topics = Topics(suffix=".outage")
    create_topics({"bootstrap.servers": broker.bootstrap}, topics, partitions=3)
    on_broker = settings.model_copy(update={"kafka_bootstrap": broker.bootstrap})
    store = Store(redis)
    skus = [f"OUT-{i:02d}" for i in range(10)]
    relay = relay_of(on_broker, topics, redis, ack_timeout_s=2.0)
    try:
        make_changes(store, skus, lambda i: 2, "a")
        drain(relay, redis)
        before = {sku: change_number(redis, sku, PREFIX) for sku in skus}
        errors_before = counter("atp_changelog_relay_errors_total")

        broker.kill()
        make_changes(store, skus, lambda i: 1 + i % 3, "b")  # Redis takes changes as ever
        waiting = logged(redis, skus)
        n_waiting = sum(len(r) for r in waiting.values())
        assert n_waiting == sum(change_number(redis, sku, PREFIX) - before[sku] for sku in skus)
        deadline = time.monotonic() + 30
        while not (relay.pass_done and relay.backlog == n_waiting and relay.errors >= 2):
            assert time.monotonic() < deadline, (relay.backlog, n_waiting, relay.last_error)
            relay.run_once()
        assert backlog_gauge() == n_waiting
        assert int(redis.hget(relay_state_key(PREFIX), "backlog")) == n_waiting  # what /readyz reads
        assert counter("atp_changelog_relay_errors_total") > errors_before
        assert logged(redis, skus) == waiting  # nothing trimmed, nothing lost

        broker.restart()
        if isinstance(broker, EmbeddedBroker):  # Tansu came back empty: the topics are made again
            create_topics({"bootstrap.servers": broker.bootstrap}, topics, partitions=3)
        drain(relay, redis, timeout_s=90)
        assert relay.backlog == 0 and backlog_gauge() == 0
    finally:
        relay.close()
    got = on_topic(broker.bootstrap, topics.changes)
    if isinstance(broker, EmbeddedKafka):  # Kafka came back with its log: all of it, once
        assert_each_once(numbers(got), {sku: change_number(redis, sku, PREFIX) for sku in skus})
        assert {sku: got[sku][before[sku]:] for sku in skus} == waiting
    else:  # what Tansu lost went before the outage; everything since went once, in order
        assert got == waiting
        assert relay.rebuilds >= 1  # the broker forgot the idempotent producer: a new one


def test_of_two_relays_on_one_keyspace_only_one_ships_until_it_stops(
    settings: Settings, topics: Topics, redis: Any, kafka_bootstrap: str
) -> None:
    store = Store(redis)
    skus = [f"TWO-{i:02d}" for i in range(15)]
    make_changes(store, skus, lambda i: 1 + i % 5, "a")
    first, second = relay_of(settings, topics, redis, batch=3), relay_of(settings, topics, redis, batch=3)
    try:
        deadline = time.monotonic() + 60
        while streams_left(redis) or not (first.pass_done or second.pass_done):
            assert time.monotonic() < deadline
            first.run_once()
            second.run_once()
        assert first.active and not second.active
        assert first.shipped > 0 and second.shipped == 0
        assert redis.get(relay_lock_key(PREFIX)) == first.lock.token
        first.close()  # stops: the lock is free, the other takes over
        make_changes(store, skus[:4], lambda i: 2, "b")
        drain(second, redis)
        assert second.active and second.shipped == 4 * 3
    finally:
        first.close()
        second.close()
    assert_each_once(numbers(on_topic(kafka_bootstrap, topics.changes)),
                     {sku: change_number(redis, sku, PREFIX) for sku in skus})


def test_atp_relay_once_prints_what_shipped_and_what_waits(
    settings: Settings, topics: Topics, redis: Any, redis_url: str, kafka_bootstrap: str,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    store = Store(redis)
    make_changes(store, ["CLI-R1", "CLI-R2"], lambda i: 2, "a")
    for name in list(os.environ):
        if name.upper().startswith("ATP_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ATP_CONFIG", os.devnull)
    monkeypatch.setenv("ATP_REDIS_URL", redis_url)
    monkeypatch.setenv("ATP_REDIS_CLUSTER", "true" if settings.redis_cluster else "false")
    monkeypatch.setenv("ATP_KAFKA_BOOTSTRAP", kafka_bootstrap)
    argv = ["relay", "--once", "--json", "--topic-suffix", topics.suffix]
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    out, err = capsys.readouterr()
    assert exited.value.code == 0, err
    assert orjson.loads(out) == {"shipped": 6, "backlog": 0}
    assert streams_left(redis) == []
    assert numbers(on_topic(kafka_bootstrap, topics.changes)) == {"CLI-R1": [1, 2, 3], "CLI-R2": [1, 2, 3]}

    monkeypatch.delenv("ATP_KAFKA_BOOTSTRAP")
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    out, err = capsys.readouterr()
    assert exited.value.code == 1
    assert "ATP_KAFKA_BOOTSTRAP" in err and orjson.loads(out)["error"] == "error"


@pytest.mark.anyio
async def test_the_api_relays_and_readyz_says_when_change_records_pile_up(
    settings: Settings, redis: Any, kafka_bootstrap: str
) -> None:
    topics = Topics(suffix=f".ready{os.getpid()}{int(time.time() * 1000) % 10**8}")  # not made yet
    store = Store(redis)
    make_changes(store, ["RDY-1", "RDY-2"], lambda i: 2, "a")  # 6 records: past the limit of 5
    app = create_app(api_settings(settings, changelog_backlog_max=5), topics=topics, sweep=False)
    assert app.state.relay is not None  # on by default (ATP_RELAY)
    async with in_process(app) as api:
        deadline = time.monotonic() + 30
        while (ready := await api.get("/readyz")).status_code == 200:
            assert time.monotonic() < deadline, "the relay never counted what waits"
            await asyncio.sleep(0.1)
        assert ready.status_code == 503
        assert ready.json()["checks"]["changelog"] is False
        assert "6 change records wait for the relay (limit 5)" in ready.json()["reason"]
        assert streams_left(redis) == ["RDY-1", "RDY-2"]  # nowhere to ship them: they stay

        create_topics({"bootstrap.servers": kafka_bootstrap}, topics, partitions=3)
        while (ready := await api.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline + 30, ready.text
            await asyncio.sleep(0.1)
        assert ready.json()["checks"] == {"redis": True, "kafka": True, "events": True, "changelog": True}
    assert streams_left(redis) == []
    assert_each_once(numbers(on_topic(kafka_bootstrap, topics.changes)), {"RDY-1": 3, "RDY-2": 3})
    assert redis.get(relay_lock_key(PREFIX)) is None  # the app's relay let its lock go at shutdown


def test_atp_relay_ships_until_sigterm_then_lets_its_lock_go(
    settings: Settings, topics: Topics, redis: Any, redis_url: str, kafka_bootstrap: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ATP_")}
    env.update(ATP_CONFIG=os.devnull, ATP_REDIS_URL=redis_url, ATP_KAFKA_BOOTSTRAP=kafka_bootstrap,
               ATP_REDIS_CLUSTER="true" if settings.redis_cluster else "false")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from engine.cli import main; main()", "relay", "--topic-suffix", topics.suffix,
         "--log-level", "WARNING"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        make_changes(Store(redis), ["SIG-1", "SIG-2"], lambda i: 1 + i, "a")
        deadline = time.monotonic() + 30
        while streams_left(redis) or redis.get(relay_lock_key(PREFIX)) is None:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate(timeout=5)[1][-2000:]
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "relay stopped: 5 change record(s) shipped" in err
    assert redis.get(relay_lock_key(PREFIX)) is None
    assert_each_once(numbers(on_topic(kafka_bootstrap, topics.changes)), {"SIG-1": 2, "SIG-2": 3})


def test_lines_a_call_expired_reach_the_reservations_topic_as_reservation_expired(
    settings: Settings, topics: Topics, redis: Any, kafka_bootstrap: str
) -> None:
    t0 = 1_800_000_000_000
    store = Store(redis, now_ms=t0)
    store.apply([SupplyCommand("EXP-1", "count", {"loc": "WH1", "on_hand": 9})])
    assert store.hold_batch("EXP-1", [HoldRequest("gone-1", 2, ttl_ms=1_000, channel="web"),
                                      HoldRequest("gone-2", 1, ttl_ms=1_000),
                                      HoldRequest("kept", 3, ttl_ms=60_000)])[1]["status"] == "ok"
    store.now_ms = t0 + 1_000
    assert store.position("EXP-1")["held"] == 3  # this call expired two lines
    with relay_of(settings, topics, redis) as relay:
        drain(relay, redis)
    events = [orjson.loads(m.value) for m in read_topic(kafka_bootstrap, topics.reservations)]
    assert sorted((e["event_id"], e["type"], e["lines"][0]["qty"], e["channel"]) for e in events) == [
        ("res:gone-1:expired:EXP-1", "reservation.expired", 2, "web"),
        ("res:gone-2:expired:EXP-1", "reservation.expired", 1, None),
    ]
    assert {m.key for m in read_topic(kafka_bootstrap, topics.reservations)} == {b"gone-1", b"gone-2"}
    assert relay.events_sent == 2


def test_a_record_goes_only_after_its_reservation_event_went(
    settings: Settings, redis: Any, kafka_bootstrap: str
) -> None:
    """A ``publish`` record (a reservation event the API or the CLI kept in the log) whose event
    cannot be delivered — ``inventory.reservations`` is missing and the relay never makes it —
    stays in Redis with every record after it, and nothing of them reaches ``inventory.changes``;
    once the topic exists the event and the records go, once each. So a record on the topic never
    lacks its event, though a recovering relay never ships such a record again."""
    topics = Topics(suffix=f".ev{os.getpid()}{time.monotonic_ns() % 10**6}")
    admin = {"bootstrap.servers": kafka_bootstrap}
    create_topics(admin, [topics.changes], partitions=3)
    store = Store(redis)
    store.apply([SupplyCommand("PUB-1", "count", {"loc": "WH1", "on_hand": 5})])
    event = orjson.dumps({"event_id": "res:p-1:held", "type": "reservation.held", "reservation_id": "p-1"})
    store.publish("PUB-1", "p-1", event, "held")
    store.apply([SupplyCommand("PUB-1", "count", {"loc": "WH1", "on_hand": 6})])
    assert [r.fn for r in read_log(redis, "PUB-1", PREFIX)] == ["apply", "publish", "apply"]
    with relay_of(settings, topics, redis, ack_timeout_s=2.0) as relay:
        relay.run_once()
        relay.run_once()
        # the record before the event went; the event's record and the one after it wait
        assert numbers(logged(redis, ["PUB-1"])) == {"PUB-1": [2, 3]}
        assert numbers(on_topic(kafka_bootstrap, topics.changes)) == {"PUB-1": [1]}
        assert relay.events_sent == 0 and "reservation events not acknowledged" in relay.last_error
        create_topics(admin, [topics.reservations], partitions=3)
        drain(relay, redis)
    assert numbers(on_topic(kafka_bootstrap, topics.changes)) == {"PUB-1": [1, 2, 3]}
    got = read_topic(kafka_bootstrap, topics.reservations)
    assert [(m.key, m.value) for m in got] == [(b"p-1", event)]
    assert relay.events_sent == 1
