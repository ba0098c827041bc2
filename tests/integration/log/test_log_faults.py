"""R18 (docs/quality.md): the change log under faults, with real processes.

Real ``atp serve`` processes (``api_process_handles``) over the suite's Redis and a broker each
test owns and stops (``EmbeddedBroker`` = Tansu, or ``EmbeddedKafka`` under
``ATP_TEST_BROKER=kafka``), real concurrent HTTP holds over many connections, and the topic
``inventory.changes`` (this test's suffix) read to its end afterwards:

* the API SIGKILLed with the broker up, its relay caught between the broker's acknowledgement and
  the trim (brought about on purpose: broker SIGSTOPped, Redis writes paused, broker SIGCONTed):
  a fresh API's relay ships what the dead one left, nothing twice;
* the broker away for ``OUTAGE_S`` while the load goes on, the API SIGKILLed during the outage,
  the broker back, a fresh API: holds are answered quickly all along (nothing waits for Kafka), and
  every change record reaches the topic once, in order, with no gap;
* the broker restarted without its data (Tansu always; Apache Kafka with its log dirs wiped): the
  API keeps serving, ``/readyz`` says exactly how many change records wait while the topic is
  missing, and everything is delivered once an operator creates the topics again;
* the same with the relay alone, in this process: it must not make the missing topic itself (a
  topic the broker makes has the broker's defaults, not ``inventory.changes``' partitions and
  unlimited retention) and must ship once the operator made it.

What is checked per SKU: the change numbers ``q`` on the topic are exactly ``first..n`` with no
duplicate and no gap (each message keyed by its SKU), ``n`` is the SKU's ``!Q`` in Redis, the
records are byte for byte those Redis held, every reservation the API acknowledged (201) is in the
``args`` of a ``hold`` record of its SKU and has its ``reservation.held`` event on
``inventory.reservations`` (the API keeps each event in the change log before it answers), and the
Redis logs are empty at the end.

Tansu keeps nothing across a restart (memory storage; its 0.6 build has no file or SQLite
engine), so what the relay shipped before an outage is gone from the topic. On Tansu the outage
test therefore checks exactly-once from the first record still waiting in Redis when the broker
came back (those records are snapshotted then, byte for byte; every record made after the broker
went down must be among them) and, of the acknowledged reservations, those sent after the broker
went down (their records cannot have been shipped before). On Apache Kafka (``ATP_TEST_BROKER=kafka``), which restarts with its log, the whole run
is checked: ``first`` = 1 and every acknowledged reservation.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import httpx
import orjson
import pytest
from confluent_kafka.admin import AdminClient
from redis.cluster import RedisCluster

from connectors.embedded import EmbeddedBroker, EmbeddedKafka, EmbeddedRedis
from connectors.topics import Topics, create_topics
from engine.log.relay import Relay, relay_state_key
from engine.settings import Settings
from engine.store.changelog import Record, iter_log_skus, read_log_raw
from engine.store.keys import sku_keys
from engine.store.store import Store
from engine.store.wire import HoldRequest
from tests.conftest import APACHE_KAFKA
from tests.integration.api_harness import (
    RESERVER,
    api_process_handles,
    bearer,
    seed,
    sync_store,
)
from tests.integration.flowkit import read_topic

pytestmark = pytest.mark.kafka_compat  # also run on Apache Kafka (README, tests)

#: How long the broker stays away in the outage test (docs/quality.md R18: about 30 s).
OUTAGE_S = 30.0
#: Concurrent HTTP connections of the load (one request in flight on each).
CONNECTIONS = 32
#: A hold answered slower than this while the broker is away counts as waiting for Kafka: the
#: relay's and the publisher's broker timeouts are 10 s and more, while a hold here takes tens of
#: ms, up to about 2 s at the worst moments of this loaded 2-core machine (measured before the
#: outage as much as during it).
SLOW_S = 5.0
#: The longest silence between two 201s the load may see while the API is up and the broker away
#: (measured: 0.1 s).
MAX_GAP_S = 3.0
#: Stock of each SKU: the load never runs out (every hold must be a 201).
STOCK = 10_000_000

Broker = EmbeddedBroker | EmbeddedKafka


@pytest.fixture
def broker(broker_kind: str) -> Iterator[Broker]:
    """A broker of the suite's kind that only this test uses: it stops and restarts it."""
    own: Broker = EmbeddedKafka() if broker_kind == APACHE_KAFKA else EmbeddedBroker()
    with own:
        yield own


@pytest.fixture(scope="module")
def redis_cluster_mode() -> bool:
    """These tests are about the broker: they run on a standalone Redis of their own, in the
    suite's Redis Cluster pass too (the relay on a cluster: test_log_relay.py)."""
    return False


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with EmbeddedRedis() as server:
        yield server.url


@pytest.fixture
def settings(redis_url: str, redis_cluster_mode: bool, broker: Broker) -> Settings:
    """The suite's settings on this test's own broker (so no suite broker is started for these
    tests: on Apache Kafka that is a JVM less on a small machine)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.upper().startswith("ATP_"):
                mp.delenv(name)
        mp.setenv("ATP_CONFIG", os.devnull)  # not a regular file, so no TOML is read
        return Settings(redis_url=redis_url, kafka_bootstrap=broker.bootstrap, redis_cluster=redis_cluster_mode,
                        topic_partitions=3)


# --------------------------------------------------------------------------- the load


@dataclass(frozen=True)
class Reply:
    rid: str
    sku: str
    sent: float          # time.monotonic() when the request was sent
    took: float          # seconds until the answer (or the failure)
    status: int | None   # None: no answer (the API is down, the connection was reset)


class HoldLoad:
    """Concurrent holds of one unit over ``connections`` connections, in a thread with its own
    event loop: each request a new reservation (Idempotency-Key = reservation id), SKUs in turn;
    one that got no answer (or a 5xx) is sent again until answered. ``url`` may change (or be
    None: wait) while it runs; every attempt is in ``replies``."""

    def __init__(self, skus: list[str], tag: str, connections: int = CONNECTIONS) -> None:
        self.skus = skus
        self.tag = tag
        self.connections = connections
        self.url: str | None = None
        self.replies: list[Reply] = []  # appended from the load's thread (list.append is atomic)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failure: BaseException | None = None

    def start(self, url: str) -> HoldLoad:
        self.url = url
        self._thread = threading.Thread(target=self._run, name="hold-load", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
            assert not self._thread.is_alive(), "the load did not stop"
        if self.failure is not None:
            raise self.failure

    def acked(self) -> list[Reply]:
        return [r for r in list(self.replies) if r.status == 201]

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced by stop()
            self.failure = exc

    async def _main(self) -> None:
        clients: dict[str, httpx.AsyncClient] = {}
        limits = httpx.Limits(max_connections=self.connections, max_keepalive_connections=self.connections,
                              keepalive_expiry=2.0)

        def client_of(url: str) -> httpx.AsyncClient:
            if url not in clients:
                clients[url] = httpx.AsyncClient(base_url=url, headers=bearer(RESERVER), limits=limits,
                                                 timeout=30.0)
            return clients[url]

        async def worker(w: int) -> None:
            i = 0
            while not self._stop.is_set():
                url = self.url
                if url is None:
                    await asyncio.sleep(0.05)
                    continue
                sku = self.skus[(w + i) % len(self.skus)]
                rid = f"{self.tag}-{w}-{i}"
                sent = time.monotonic()
                try:
                    reply = await client_of(url).post(
                        "/v1/reservations", json={"lines": [{"sku": sku, "qty": 1}], "ttl_seconds": 3600},
                        headers={"Idempotency-Key": rid})
                    status: int | None = reply.status_code
                except httpx.HTTPError:
                    status = None
                self.replies.append(Reply(rid, sku, sent, time.monotonic() - sent, status))
                if status is None or status >= 500:
                    # unanswered: the same request again, as a checkout would; its hold may be
                    # made and its event not (the API killed in between), and the repeat is
                    # answered as a duplicate that must get that event out
                    await asyncio.sleep(0.2)  # the API is down: do not spin
                    continue
                i += 1

        try:
            await asyncio.gather(*(worker(w) for w in range(self.connections)))
        finally:
            await asyncio.gather(*(c.aclose() for c in clients.values()))


# --------------------------------------------------------------------------- reading the outcome


def until(done: Callable[[], bool], timeout_s: float, what: Callable[[], str] | str) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(what() if callable(what) else what)
        time.sleep(0.1)


def waiting(redis: Any, prefix: str) -> list[str]:
    """The SKUs whose Redis log holds records (the relay has not shipped them all)."""
    return sorted(iter_log_skus(redis, prefix))


def change_numbers(redis: Any, skus: list[str], prefix: str) -> dict[str, int]:
    """Each SKU's ``!Q`` (its last change number)."""
    return {sku: int(redis.hget(sku_keys(sku, prefix).state, "!Q") or 0) for sku in skus}


def log_snapshot(redis: Any, skus: list[str], prefix: str) -> dict[str, list[bytes]]:
    """Every record waiting in each SKU's Redis log, as the script wrote it (the Kafka value)."""
    return {sku: read_log_raw(redis, sku, prefix, count=10_000_000) for sku in skus}


def first_waiting(snapshot: dict[str, list[bytes]], last: dict[str, int]) -> dict[str, int]:
    """Per SKU the change number of the oldest record waiting (``!Q`` + 1 when none waits)."""
    return {sku: Record.from_json(raw[0]).q if raw else last[sku] + 1 for sku, raw in snapshot.items()}


def topic_records(bootstrap: str, topic: str) -> dict[str, list[tuple[Record, bytes]]]:
    """The records on the topic per SKU in offset order, with their raw values; every message is a
    record keyed by its SKU."""
    out: dict[str, list[tuple[Record, bytes]]] = defaultdict(list)
    for msg in sorted(read_topic(bootstrap, topic, timeout_s=60), key=lambda m: (m.partition, m.offset)):
        assert msg.value is not None, msg
        record = Record.from_json(msg.value)
        assert msg.key == record.sku.encode(), (msg.key, record)
        out[record.sku].append((record, msg.value))
    return dict(out)


def assert_exactly_once(got: dict[str, list[tuple[Record, bytes]]], first: dict[str, int],
                        last: dict[str, int]) -> None:
    """Per SKU the topic holds the change numbers ``first[sku]..last[sku]``, each once, in order,
    and nothing of any other SKU."""
    assert set(got) <= set(last), f"records of SKUs never changed: {sorted(set(got) - set(last))}"
    wrong = {}
    for sku, n in last.items():
        qs = [r.q for r, _ in got.get(sku, [])]
        if qs != list(range(first[sku], n + 1)):
            dups = sorted({q for q in qs if qs.count(q) > 1})[:5]
            gaps = sorted(set(range(first[sku], n + 1)) - set(qs))[:5]
            wrong[sku] = (f"{len(qs)} records, want {first[sku]}..{n}; first {qs[:3]} last {qs[-3:]}; "
                          f"duplicates {dups}; missing {gaps}")
    assert not wrong, f"change numbers on the topic are wrong: {wrong}"


def assert_as_redis_held(got: dict[str, list[tuple[Record, bytes]]], snapshot: dict[str, list[bytes]]) -> None:
    """The records that waited in Redis (``snapshot``) are on the topic byte for byte, in order."""
    for sku, raws in snapshot.items():
        if not raws:
            continue
        first = Record.from_json(raws[0]).q
        shipped = [raw for record, raw in got.get(sku, []) if first <= record.q < first + len(raws)]
        assert shipped == raws, f"{sku}: the records waiting in Redis are not what reached the topic"


def assert_holds_logged(got: dict[str, list[tuple[Record, bytes]]], acked: list[Reply]) -> None:
    """Every acknowledged reservation is in the arguments (rid, terms, rid, terms, …) of a
    ``hold`` record of its SKU."""
    held: dict[str, set[str]] = defaultdict(set)
    for sku, records in got.items():
        for record, _ in records:
            if record.fn == "hold":
                held[sku].update(record.args[0::2])
    missing = [r.rid for r in acked if r.rid not in held[r.sku]]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged holds have no hold record: {missing[:5]}"


def assert_held_events(bootstrap: str, topic: str, acked: list[Reply]) -> int:
    """Every acknowledged reservation's ``reservation.held`` event is on the reservations topic,
    keyed by its id; returns how many messages repeat an event id (a repeat goes only with a
    record that went again after a delivery the relay could not be sure of)."""
    seen: Counter[str] = Counter()
    for msg in read_topic(bootstrap, topic, timeout_s=60):
        assert msg.value is not None, msg
        event = orjson.loads(msg.value)
        assert msg.key == event["reservation_id"].encode(), (msg.key, event)
        seen[event["event_id"]] += 1
    missing = [r.rid for r in acked if not seen[f"res:{r.rid}:held"]]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged holds have no held event: {missing[:5]}"
    return sum(n - 1 for n in seen.values())


def assert_logs_empty(redis: Any, skus: list[str], prefix: str) -> None:
    assert waiting(redis, prefix) == []
    assert {sku: redis.llen(sku_keys(sku, prefix).log) for sku in skus} == dict.fromkeys(skus, 0)


def readyz(url: str) -> httpx.Response:
    return httpx.get(f"{url}/readyz", timeout=10.0)


class Stage(NamedTuple):
    """What a test runs on: its SKUs (stocked for the whole load), its own topics (made, 3
    partitions) and the ``atp serve`` arguments that name them."""

    skus: list[str]
    topics: Topics
    args: list[str]


def staged(broker: Broker, redis_url: str, settings: Settings, tag: str, n: int) -> Stage:
    """``n`` SKUs ``<TAG>-0``…, stocked with ``STOCK``, and fresh topics suffixed with ``tag``."""
    topics = Topics(suffix=f".{tag}{uuid.uuid4().hex[:8]}")
    create_topics({"bootstrap.servers": broker.bootstrap}, topics, partitions=3)
    skus = [f"{tag.upper()}-{i}" for i in range(n)]
    store = sync_store(redis_url, settings)
    for sku in skus:
        seed(store, sku, STOCK)
    return Stage(skus, topics, ["--topic-suffix", topics.suffix])


def signal_broker(broker: Broker, sig: int) -> None:
    """SIGSTOP / SIGCONT the broker (its process leads its own group)."""
    assert broker.pid is not None
    os.killpg(broker.pid, sig)


def pause_writes(redis: Any, ms: int) -> None:
    """Redis takes no writes (scripts included) for ``ms`` or until ``unpause``; reads go on."""
    if isinstance(redis, RedisCluster):
        redis.execute_command("CLIENT PAUSE", ms, "WRITE", target_nodes=RedisCluster.ALL_NODES)
    else:
        redis.execute_command("CLIENT PAUSE", ms, "WRITE")


def unpause(redis: Any) -> None:
    if isinstance(redis, RedisCluster):
        redis.execute_command("CLIENT UNPAUSE", target_nodes=RedisCluster.ALL_NODES)
    else:
        redis.execute_command("CLIENT UNPAUSE")


def shipped_and_waiting(redis: Any, bootstrap: str, topic: str, skus: list[str], prefix: str) -> dict[str, int]:
    """Per SKU, how many records wait in Redis that are on the topic already (acknowledged by the
    broker, not trimmed yet)."""
    tops = {sku: max(r.q for r, _ in recs) for sku, recs in topic_records(bootstrap, topic).items()}
    out = {}
    for sku in skus:
        both = [raw for raw in read_log_raw(redis, sku, prefix, count=10_000_000)
                if Record.from_json(raw).q <= tops.get(sku, 0)]
        if both:
            out[sku] = len(both)
    return out


def relay_shipped(redis: Any, prefix: str) -> int:
    """Messages the relay acknowledged, by its saved partition offsets."""
    return sum(int(v) for k, v in redis.hgetall(relay_state_key(prefix)).items() if k.isdigit())


def report(what: str, started: float, load: HoldLoad | None = None) -> None:
    n = len(load.acked()) if load is not None else 0
    print(f"{what}: {time.monotonic() - started:.1f} s" + (f", {n} holds acknowledged" if load else ""))


# --------------------------------------------------------------------------- the tests


def test_an_api_sigkilled_mid_load_leaves_nothing_unshipped_and_nothing_twice(
    settings: Settings, redis: Any, redis_url: str, broker: Broker
) -> None:
    """The broker stays up; the API is SIGKILLed under load with its relay between the broker's
    acknowledgement and the trim: the broker is stopped (SIGSTOP) so that the relay's next round
    waits for it, Redis is made to take no writes, the broker goes on (SIGCONT) and acknowledges,
    the relay's trim waits, and once records are seen both on the topic and in Redis the API is
    SIGKILLed. A fresh API's relay reads the topic's tail back, trims what is there and ships the
    rest: the whole run is on the topic once, on either broker."""
    started = time.monotonic()
    prefix = settings.key_prefix
    skus, topics, args = staged(broker, redis_url, settings, "crash", 4)
    load = HoldLoad(skus, "crash")
    try:
        with api_process_handles(settings, 1, args) as (first,):
            load.start(first.url)
            until(lambda: relay_shipped(redis, prefix) >= 200 and len(load.acked()) >= 500, 60,
                  lambda: f"the first API's relay shipped {relay_shipped(redis, prefix)} records")
            both: dict[str, int] = {}
            attempts = 0
            while not both and attempts < 5:
                attempts += 1
                # the broker stops answering: the relay's next round produces and waits for it
                signal_broker(broker, signal.SIGSTOP)
                try:
                    time.sleep(0.5)
                    pause_writes(redis, 10_000)  # Redis takes no trim now (reads go on)
                finally:
                    signal_broker(broker, signal.SIGCONT)  # the broker acknowledges
                try:
                    time.sleep(0.3)
                    both = shipped_and_waiting(redis, broker.bootstrap, topics.changes, skus, prefix)
                    if both:
                        first.kill()  # acknowledged, not trimmed: the crash the relay must survive
                finally:
                    unpause(redis)
            assert both, "the relay was never caught between the acknowledgement and the trim"
            killed_at = time.monotonic()
        load.url = None
        with api_process_handles(settings, 1, args) as (second,):
            load.url = second.url
            until(lambda: sum(r.sent > killed_at for r in load.acked()) >= 500, 60, "the fresh API serves")
            load.stop()
            until(lambda: not waiting(redis, prefix), 60,
                  lambda: f"not drained: {waiting(redis, prefix)}\n{second.log_text()[-3000:]}")
    finally:
        load.stop()
    last = change_numbers(redis, skus, prefix)
    got = topic_records(broker.bootstrap, topics.changes)
    assert_exactly_once(got, dict.fromkeys(skus, 1), last)
    acked = load.acked()
    assert_holds_logged(got, acked)
    repeats = assert_held_events(broker.bootstrap, topics.reservations, acked)
    assert repeats == 0, f"{repeats} reservation events went twice with the broker up"
    assert_logs_empty(redis, skus, prefix)
    assert change_numbers(redis, skus, prefix) == last  # nothing changed while the topic was read
    report(f"crash test: {sum(last.values())} records, {sum(both.values())} of them acknowledged and "
           f"untrimmed at the kill ({both}, attempt {attempts})", started, load)


def test_broker_away_and_api_sigkilled_mid_load_every_record_reaches_the_topic_once(
    settings: Settings, redis: Any, redis_url: str, broker: Broker
) -> None:
    """R18: the broker away for ``OUTAGE_S`` under load, the API SIGKILLed half way through, the
    broker back (Tansu empty: the topics made again), a fresh API: holds were answered quickly
    while the broker was away, and every change record is on the topic once (see the module for
    what Tansu's lost log leaves to check)."""
    started = time.monotonic()
    prefix = settings.key_prefix
    skus, topics, args = staged(broker, redis_url, settings, "r18", 4)
    load = HoldLoad(skus, "r18")
    snapshot: dict[str, list[bytes]] = {}
    try:
        with api_process_handles(settings, 1, args) as (first,):
            load.start(first.url)
            # the relay ships under load before the outage
            until(lambda: relay_shipped(redis, prefix) >= 200 and len(load.acked()) >= 300, 60,
                  lambda: f"the relay shipped {relay_shipped(redis, prefix)} records before the outage")
            broker.kill()
            down_at = time.monotonic()
            at_down = change_numbers(redis, skus, prefix)  # records past these were made with no broker
            report("broker down", started, load)
            # the API keeps answering while the broker is away; SIGKILLed half way through
            time.sleep(OUTAGE_S / 2 - 3)
            ready = readyz(first.url)
            assert ready.status_code == 503 and ready.json()["checks"]["kafka"] is False, ready.text
            time.sleep(3)
            first.kill()
            killed_at = time.monotonic()
            report("API SIGKILLed", started, load)
        load.url = None
        during = [r for r in load.replies if down_at + 0.5 <= r.sent and r.sent + r.took < killed_at]
        assert all(r.status == 201 for r in during), [r for r in during if r.status != 201][:5]
        served_s = killed_at - down_at - 0.5
        rate = len(during) / served_s
        before = [r for r in load.acked() if r.sent < down_at]
        slow = sorted((r.took for r in during), reverse=True)
        answers = sorted(r.sent + r.took for r in during)
        gaps = [b - a for a, b in zip([down_at + 0.5, *answers], [*answers, killed_at], strict=True)]
        print(f"broker away, API up for {served_s:.1f} s: {len(during)} holds ({rate:.0f}/s; "
              f"{len(before)} before the outage), slowest {slow[:3]}, longest silence {max(gaps):.2f} s")
        assert rate >= 20, f"only {len(during)} holds answered in {served_s:.1f} s with the broker away"
        assert slow[0] < SLOW_S, f"holds waited while the broker was away: {slow[:5]}"
        assert max(gaps) < MAX_GAP_S, f"no 201 for {max(gaps):.2f} s while the broker was away"

        time.sleep(max(0.0, down_at + OUTAGE_S - time.monotonic()))
        # nothing ships now (no relay, no broker): what waits in Redis is what must reach the topic
        snapshot = log_snapshot(redis, skus, prefix)
        at_restart = change_numbers(redis, skus, prefix)
        first_q = first_waiting(snapshot, at_restart)
        assert sum(map(len, snapshot.values())) > 0
        assert all(first_q[s] + len(snapshot[s]) - 1 == at_restart[s] for s in skus)  # a log has no gap
        # what was made after the broker went down cannot have been shipped: it all still waits
        assert all(first_q[s] <= at_down[s] + 1 for s in skus), (first_q, at_down)
        broker.restart()
        if isinstance(broker, EmbeddedBroker):  # Tansu came back empty: the operator makes the topics
            create_topics({"bootstrap.servers": broker.bootstrap}, topics, partitions=3)
        report("broker back", started, load)
        with api_process_handles(settings, 1, args) as (second,):
            restarted_at = time.monotonic()
            load.url = second.url
            until(lambda: sum(r.sent > restarted_at for r in load.acked()) >= 300, 60, "the fresh API serves")
            load.stop()
            report("load stopped", started, load)
            until(lambda: not waiting(redis, prefix), 90,
                  lambda: f"not drained: {waiting(redis, prefix)}\n{second.log_text()[-3000:]}")
            ready = readyz(second.url)
            assert ready.status_code == 200, ready.text
    finally:
        load.stop()
    report("drained", started, load)
    last = change_numbers(redis, skus, prefix)
    got = topic_records(broker.bootstrap, topics.changes)
    acked = load.acked()
    if isinstance(broker, EmbeddedKafka):  # came back with its log: the whole run, once
        assert_exactly_once(got, dict.fromkeys(skus, 1), last)
        assert_holds_logged(got, acked)
        repeats = assert_held_events(broker.bootstrap, topics.reservations, acked)
    else:  # came back empty: what waited in Redis then, and everything since, once
        assert_exactly_once(got, first_q, last)
        assert_holds_logged(got, [r for r in acked if r.sent >= down_at])
        repeats = assert_held_events(broker.bootstrap, topics.reservations, [r for r in acked if r.sent >= down_at])
    print(f"reservation events repeated: {repeats}")
    assert_as_redis_held(got, snapshot)
    assert_logs_empty(redis, skus, prefix)
    assert change_numbers(redis, skus, prefix) == last
    report(f"outage test: {sum(last.values())} records, {sum(len(v) for v in got.values())} on the topic",
           started, load)


BACKLOG_MAX = 20


def _holds(url: str, skus: list[str], tag: str, count: int, concurrency: int = 16) -> list[httpx.Response]:
    """``count`` holds of one unit, ``concurrency`` at a time, SKUs in turn."""
    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, headers=bearer(RESERVER), limits=limits, timeout=30) as client:
            return await asyncio.gather(*(
                client.post("/v1/reservations", json={"lines": [{"sku": skus[i % len(skus)], "qty": 1}]},
                            headers={"Idempotency-Key": f"{tag}-{i}"})
                for i in range(count)))
    return asyncio.run(run())


def test_a_broker_restarted_empty_the_api_serves_readyz_counts_what_waits_and_all_goes_once_topics_exist(
    settings: Settings, redis: Any, redis_url: str, broker: Broker
) -> None:
    """The broker restarted without its data (no topics) under a running API whose
    ``ATP_CHANGELOG_BACKLOG_MAX`` is small: holds go on being answered quickly, ``/readyz`` is 503
    with the change log's check false and the exact number of records waiting in Redis, and once
    the operator makes the topics everything that waited is shipped once and ``/readyz`` is 200."""
    started = time.monotonic()
    prefix = settings.key_prefix
    skus, topics, args = staged(broker, redis_url, settings, "empty", 3)
    env = {"ATP_CHANGELOG_BACKLOG_MAX": str(BACKLOG_MAX)}
    with api_process_handles(settings, 1, args, **env) as (api,):
        until(lambda: not waiting(redis, prefix) and readyz(api.url).status_code == 200, 60,
              lambda: f"not ready: {readyz(api.url).text}")
        assert {r.status_code for r in _holds(api.url, skus, "before", 60)} == {201}
        until(lambda: not waiting(redis, prefix), 30, "the holds before the restart are shipped")
        assert readyz(api.url).status_code == 200

        shipped_q = change_numbers(redis, skus, prefix)  # nothing waits: all of it is shipped
        broker.kill()
        if isinstance(broker, EmbeddedKafka):
            shutil.rmtree(broker.data_dir)  # Kafka without its data: as empty as Tansu comes back
        broker.restart()
        report("broker restarted empty", started)

        def truth() -> tuple[int, str]:
            n = sum(redis.llen(sku_keys(sku, prefix).log) for sku in skus)
            return n, f"{n} change records wait for the relay (limit {BACKLOG_MAX})"

        # the API keeps serving, quickly, with the topics gone; what it changes waits in Redis
        acked: list[str] = []
        for burst in range(2):
            t0 = time.monotonic()
            replies = _holds(api.url, skus, f"gone{burst}", 150)
            took = time.monotonic() - t0
            assert {r.status_code for r in replies} == {201}, {r.status_code for r in replies}
            assert took < 15, f"150 holds took {took:.1f} s with the topics gone"
            acked += [f"gone{burst}-{i}" for i in range(150)]
            n, why = truth()
            assert n > BACKLOG_MAX
            # /readyz tells the truth: not ready, the change log's check false, and exactly how
            # many records wait (no load now: the count is stable)
            until(lambda why=why: readyz(api.url).json().get("reason", "").endswith(why), 45,
                  lambda why=why: f"want {why!r}, /readyz says {readyz(api.url).text}")
            ready = readyz(api.url)
            assert ready.status_code == 503 and ready.headers["retry-after"] == "1"
            checks = ready.json()["checks"]
            assert checks["changelog"] is False and checks["redis"] is True and checks["kafka"] is True, checks
            print(f"burst {burst}: 150 holds in {took:.2f} s, /readyz {ready.json()}")
        assert truth()[0] == sum(change_numbers(redis, skus, prefix).values()) - sum(shipped_q.values())
        snapshot = log_snapshot(redis, skus, prefix)
        assert all(Record.from_json(snapshot[s][0]).q == shipped_q[s] + 1 for s in skus)  # none shipped

        create_topics({"bootstrap.servers": broker.bootstrap}, topics, partitions=3)  # the operator
        report("topics made again", started)
        until(lambda: not waiting(redis, prefix) and readyz(api.url).status_code == 200, 60,
              lambda: f"still not ready: {readyz(api.url).text}\n{api.log_text()[-3000:]}")
        ready = readyz(api.url)
        assert ready.json() == {"status": "ready",
                                "checks": {"redis": True, "kafka": True, "events": True, "changelog": True}}
        assert_logs_empty(redis, skus, prefix)
        report("drained, ready", started)
        # and it goes on shipping
        assert {r.status_code for r in _holds(api.url, skus, "after", 30)} == {201}
        acked += [f"after-{i}" for i in range(30)]
        until(lambda: not waiting(redis, prefix), 30, "the holds after are shipped")
    last = change_numbers(redis, skus, prefix)
    got = topic_records(broker.bootstrap, topics.changes)
    assert_exactly_once(got, {s: q + 1 for s, q in shipped_q.items()}, last)
    assert_as_redis_held(got, snapshot)
    sku_of = {f"{tag}-{i}": skus[i % len(skus)] for tag, n in (("gone0", 150), ("gone1", 150), ("after", 30))
              for i in range(n)}
    assert_holds_logged(got, [Reply(rid, sku_of[rid], 0.0, 0.0, 201) for rid in acked])
    assert_logs_empty(redis, skus, prefix)
    report(f"empty-restart test: {sum(last.values()) - sum(shipped_q.values())} records after the restart",
           started)


def test_a_relay_whose_broker_came_back_empty_leaves_the_topic_to_the_operator_and_ships_once_it_is_made(
    settings: Settings, redis: Any, redis_url: str, broker: Broker
) -> None:
    """The relay alone (in this process) across a broker that came back without its data: while
    the topic is missing it ships nothing and counts what waits; it does not make the topic itself
    (that would be with the broker's defaults: another partition count, and Kafka's 7-day
    retention where ``inventory.changes`` must keep everything); once the operator makes the
    topics it ships everything that waited, once."""
    prefix = settings.key_prefix
    skus, topics, _args = staged(broker, redis_url, settings, "gone", 3)
    store = Store(redis, prefix=prefix)
    fast = {"socket.timeout.ms": 1000, "reconnect.backoff.max.ms": 300, "retry.backoff.max.ms": 200}
    relay = Relay(settings, topics, redis=redis, producer_overrides=fast, idle_s=0.05,
                  ack_timeout_s=2.0)

    def holds(tag: str) -> None:
        for sku in skus:
            for i in range(3):
                assert store.hold_batch(sku, [HoldRequest(f"{tag}-{sku}-{i}", 1)])[0]["status"] == "ok"

    def rounds(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and waiting(redis, prefix):
            relay.run_once()

    def partitions() -> int | None:
        meta = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10)
        found = meta.topics.get(topics.changes)
        return None if found is None or found.error is not None else len(found.partitions)

    try:
        holds("a")
        rounds(30)
        assert not waiting(redis, prefix), relay.last_error
        broker.kill()
        if isinstance(broker, EmbeddedKafka):
            shutil.rmtree(broker.data_dir)  # Kafka without its data
        broker.restart()
        shipped_q = change_numbers(redis, skus, prefix)
        holds("b")
        snapshot = log_snapshot(redis, skus, prefix)
        rounds(6)  # the broker is back, the topic is not
        made_by_relay = partitions()
        waited = sum(map(len, snapshot.values()))
        counted = relay.backlog
        create_topics({"bootstrap.servers": broker.bootstrap}, topics, partitions=3)  # the operator
        rounds(30)
        left = waiting(redis, prefix)
        problems = []
        if made_by_relay is not None:
            problems.append(f"{topics.changes} was made by the relay with the broker's defaults "
                            f"({made_by_relay} partitions) before the operator made it")
        if left:
            problems.append(f"30 s after the topics were made nothing more is shipped: {left} still wait "
                            f"({relay.rebuilds} producer rebuilds, last error {relay.last_error})")
        if not made_by_relay and counted != waited:
            problems.append(f"the relay counted {counted} records waiting, {waited} do")
        assert not problems, "; ".join(problems)
    finally:
        relay.close()
    assert partitions() == 3
    last = change_numbers(redis, skus, prefix)
    got = topic_records(broker.bootstrap, topics.changes)
    assert_exactly_once(got, {s: q + 1 for s, q in shipped_q.items()}, last)
    assert_as_redis_held(got, snapshot)
    assert_logs_empty(redis, skus, prefix)
