"""R19 (docs/quality.md): Redis lost, then rebuilt from the change log, gives the same state, and
reconcile reports exactly the drift injected — on the real Redis and broker (engine.log.rebuild;
docs/changelog.md "Rebuild", "Reconcile"; README "Redis lost").

The topic is fed the way the relay feeds it: every record waiting in the live logs is produced,
keyed by its SKU, and the logs are deleted (``ship``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Producer

from connectors.topics import Topics
from engine import cli, metrics
from engine.log.rebuild import (
    KeyspaceNotEmpty,
    RebuildError,
    RelayBusy,
    Rotation,
    healthcheck,
    read_changes,
    rebuild,
    reconcile,
    reconcile_key,
    refresh_drift,
)
from engine.log.relay import relay_lock_key
from engine.reservations.client import AtpClient
from engine.settings import Settings
from engine.store.changelog import digest_of, iter_log_skus, read_log, sku_state
from engine.store.invariants import encode_location_buckets, location_buckets
from engine.store.keys import rid_index_key, sku_keys
from engine.store.store import Store
from engine.store.wire import HoldRequest, SupplyCommand

PREFIX = "atp"
T0 = 1_790_000_000_000
SKUS = [f"RB-{i}" for i in range(1, 7)]


def ship(redis: Any, bootstrap: str, topic: str) -> int:
    """What the relay does: produce every waiting record (key = its SKU), then delete the logs."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    shipped = 0
    for sku in sorted(iter_log_skus(redis, PREFIX)):
        start = 0
        while page := read_log(redis, sku, PREFIX, count=200, start=start):
            for record in page:
                producer.produce(topic, key=sku.encode(), value=record.to_json())
            start += len(page)
            shipped += len(page)
        redis.delete(sku_keys(sku, PREFIX).log)
    assert producer.flush(30) == 0
    return shipped


def digests(redis: Any, skus: list[str] = SKUS) -> dict[str, str]:
    return {sku: digest_of(sku_state(redis, sku, PREFIX)) for sku in skus}


def rid_index(redis: Any) -> dict[str, str]:
    return {k: redis.get(k) for k in redis.scan_iter(match=f"{PREFIX}:rid:*", count=1000)}


def workload(redis: Any) -> dict[str, int]:
    """Stock, lots, holds (single and multi-SKU), confirms, releases, an expiry swept, a shipment, a
    purge; returns the clock it ended at."""
    clock = {"now": T0}
    store = Store(redis, PREFIX, now_ms=lambda: clock["now"])
    client = AtpClient(redis, prefix=PREFIX, coalesce=False, now_ms=lambda: clock["now"])
    ok = lambda replies: all(r["status"] == "ok" for r in replies)  # noqa: E731
    assert ok(store.apply([SupplyCommand(s, "count", {"loc": "WH1", "on_hand": 40}, event_id=f"c-{s}",
                                         source="inventory.adjustments:0", offset=i)
                           for i, s in enumerate(SKUS)]))
    assert ok(store.apply([SupplyCommand("RB-1", "count", {"loc": "WH2", "on_hand": 7}),
                           SupplyCommand("RB-2", "inbound_created", {"inbound_id": "PO-1", "loc": "WH1", "qty": 30,
                                                                     "eta_ms": T0 + 86_400_000, "supplier": "SUP-A"}),
                           SupplyCommand("RB-2", "adjust", {"loc": "WH1", "delta": -5})]))
    store.set_policy("RB-3", {"mode": "presell", "cap_pm": 500})
    assert ok(store.apply([SupplyCommand("RB-3", "inbound_created", {"inbound_id": "PO-3", "loc": "WH1", "qty": 20,
                                                                     "eta_ms": T0 + 3_600_000, "supplier": "SUP-B"})]))
    assert client.hold("m-1", [("RB-1", 3, None), ("RB-2", 4, None)], ttl_s=600).status == "ok"
    assert client.hold("m-2", [("RB-2", 2, None), ("RB-3", 50, None)], ttl_s=600).status == "ok"
    assert client.hold("s-1", [("RB-4", 5, "WH1")], ttl_s=600).status == "ok"
    assert client.hold("s-2", [("RB-4", 6, None)], ttl_s=30).status == "ok"  # expires, swept below
    assert client.hold("s-3", [("RB-5", 9, None)], ttl_s=600, customer_id="C-1", channel="web").status == "ok"
    assert client.hold("s-4", [("RB-6", 1, None)], ttl_s=600).status == "ok"
    assert client.hold("big", [("RB-6", 10_000, None)]).status == "refused"  # no line, no index
    assert store.release("RB-6", "s-4")["status"] == "ok"
    clock["now"] += 5_000
    assert store.purge(retention_ms=5_000) == 1  # s-4's line and its index go
    assert client.confirm("m-1").status == "ok"
    assert client.release("m-2").status == "ok"
    assert client.confirm("s-3").status == "ok"
    assert ok(store.apply([SupplyCommand("RB-5", "ship", {"rid": "s-3", "loc": "WH1", "qty": 9}),
                           SupplyCommand("RB-4", "receipt", {"loc": "WH1", "qty": 12}),
                           SupplyCommand("RB-2", "receipt", {"loc": "WH1", "qty": 10, "inbound_id": "PO-1"})]))
    clock["now"] += 60_000
    assert store.sweep() == 1  # s-2's hold
    return clock


@pytest.fixture
def changes(topics: Topics) -> str:
    return topics.changes


@pytest.fixture
def conf(settings: Settings) -> dict[str, Any]:
    return {**settings.kafka_config(), "group.id": "atp-rebuild-test"}


def test_rebuild_after_redis_is_lost_gives_every_sku_back(
    redis: Any, kafka_bootstrap: str, changes: str, conf: dict[str, Any]
) -> None:
    clock = workload(redis)
    shipped = ship(redis, kafka_bootstrap, changes)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(changes, key=b"RB-1", value=b"not a record")  # counted, left out
    assert producer.flush(10) == 0
    before, index = digests(redis), rid_index(redis)
    assert set(index) == {rid_index_key(r, PREFIX) for r in ("m-1", "m-2", "s-1", "s-2", "s-3")}
    assert len(set(before.values())) == len(SKUS)

    redis.flushall()
    seen: list[tuple[int, int]] = []
    holders: set[str | None] = set()

    def progress(done: int, total: int) -> None:
        seen.append((done, total))
        holders.add(redis.get(relay_lock_key(PREFIX)))  # no relay can ship meanwhile

    stats = rebuild(redis, conf, changes, PREFIX, progress=progress)
    print(f"\nrebuild: {stats.records} records, {stats.skus} SKUs in {stats.seconds:.3f} s = "
          f"{stats.records_per_s:,.0f} records/s, {stats.skus_per_s:,.0f} SKUs/s")
    assert (stats.skus, stats.records, stats.applied, stats.skipped) == (len(SKUS), shipped, shipped, 0)
    assert stats.bad == 1 and "not a change record" in stats.bad_examples[0]
    assert stats.gaps == {} and stats.logs_dropped == len(SKUS)
    assert seen and seen[-1] == (shipped + 1, shipped + 1)
    assert len(holders) == 1 and None not in holders
    assert digests(redis) == before
    assert list(iter_log_skus(redis, PREFIX)) == []  # the replayed records are in Kafka already
    assert rid_index(redis) == index and stats.indexes == len(index)
    assert redis.get(relay_lock_key(PREFIX)) is None  # the lock was let go

    # a second rebuild is refused, and with --force it changes nothing
    with pytest.raises(KeyspaceNotEmpty):
        rebuild(redis, conf, changes, PREFIX)
    again = rebuild(redis, conf, changes, PREFIX, force=True)
    assert (again.applied, again.skipped, again.logs_dropped, again.indexes) == (0, shipped, 0, 0)
    assert digests(redis) == before and list(iter_log_skus(redis, PREFIX)) == []

    # the index finds every line again: a multi-SKU reservation is released on both SKUs
    client = AtpClient(redis, prefix=PREFIX, coalesce=False, now_ms=clock["now"])
    released = client.release("m-1")
    assert released.status == "ok" and {ln.sku for ln in released.lines} == {"RB-1", "RB-2"}


def test_holds_that_expired_meanwhile_give_their_units_back(
    redis: Any, kafka_bootstrap: str, changes: str, conf: dict[str, Any]
) -> None:
    store = Store(redis, PREFIX, now_ms=T0)
    store.apply([SupplyCommand("RB-X", "count", {"loc": "WH1", "on_hand": 10})])
    assert store.hold_batch("RB-X", [HoldRequest("h-1", 4, ttl_ms=60_000)])[0]["status"] == "ok"
    assert (store.position("RB-X")["held"], store.position("RB-X")["atp"]) == (4, 6)
    ship(redis, kafka_bootstrap, changes)
    redis.flushall()
    rebuild(redis, conf, changes, PREFIX)
    assert Store(redis, PREFIX, now_ms=T0 + 1_000).position("RB-X")["held"] == 4
    later = Store(redis, PREFIX, now_ms=T0 + 120_000).position("RB-X")
    assert (later["held"], later["atp"], later["on_hand"]) == (0, 10, 10)


def test_rebuild_refuses_while_the_relay_holds_its_lock(
    redis: Any, kafka_bootstrap: str, changes: str, conf: dict[str, Any]
) -> None:
    Store(redis, PREFIX, now_ms=T0).apply([SupplyCommand("RB-L", "count", {"loc": "WH1", "on_hand": 1})])
    ship(redis, kafka_bootstrap, changes)
    redis.flushall()
    redis.set(relay_lock_key(PREFIX), "relay-7", px=30_000)
    with pytest.raises(RelayBusy) as refused:
        rebuild(redis, conf, changes, PREFIX)
    assert "atp:relay:lock" in str(refused.value) and "relay-7" in str(refused.value)
    assert redis.get(relay_lock_key(PREFIX)) == "relay-7" and sku_state(redis, "RB-L", PREFIX) == {}

    # a lock taken from it while it runs stops it before it drops logs or writes the index
    redis.delete(relay_lock_key(PREFIX))
    steal = lambda done, total: redis.set(relay_lock_key(PREFIX), "thief")  # noqa: E731
    with pytest.raises(RebuildError, match="lost the relay lock atp:relay:lock .now held by 'thief'"):
        rebuild(redis, conf, changes, PREFIX, progress=steal)
    assert redis.get(relay_lock_key(PREFIX)) == "thief" and list(iter_log_skus(redis, PREFIX)) == ["RB-L"]
    # run again, it has the records already and cuts them from the log: the relay has nothing to ship
    redis.delete(relay_lock_key(PREFIX))
    store = Store(redis, PREFIX, now_ms=T0)
    assert store.apply([SupplyCommand("RB-L", "adjust", {"loc": "WH1", "delta": 2})])[0]["status"] == "ok"
    again = rebuild(redis, conf, changes, PREFIX, force=True)
    assert (again.applied, again.skipped, again.logs_dropped) == (0, 1, 1)
    assert [r.q for r in read_log(redis, "RB-L", PREFIX)] == [2]  # not shipped yet: it stays


def _corrupt_bucket(redis: Any, sku: str, loc: str, delta: int) -> str:
    """Add ``delta`` to the on-hand bucket of ``loc`` in the state hash's '!L'; returns the old value."""
    key = sku_keys(sku, PREFIX).state
    raw = redis.hget(key, "!L")
    buckets = location_buckets(raw)
    buckets[loc]["oh"] += delta
    redis.hset(key, "!L", encode_location_buckets(raw.split("|")[0], buckets))
    return raw


def test_reconcile_finds_exactly_the_sku_that_was_changed_by_hand(
    redis: Any, kafka_bootstrap: str, changes: str, conf: dict[str, Any]
) -> None:
    clock = workload(redis)
    ship(redis, kafka_bootstrap, changes)
    # changes not shipped yet: reconcile reads them from the live log
    client = AtpClient(redis, prefix=PREFIX, coalesce=False, now_ms=clock["now"])
    assert client.hold("late", [("RB-1", 2, None), ("RB-5", 1, None)]).status == "ok"
    assert sorted(iter_log_skus(redis, PREFIX)) == ["RB-1", "RB-5"]

    healthy = reconcile(redis, conf, changes, PREFIX)
    assert (healthy.checked, healthy.drifted, healthy.unsettled) == (len(SKUS), [], [])
    assert healthy.live_records == 2 and healthy.records > 20
    assert metrics.REGISTRY.get_sample_value("atp_drift_skus") == 0
    assert metrics.REGISTRY.get_sample_value("atp_drift_checked_skus") == len(SKUS)
    assert [k for k in redis.scan_iter(match="rc*", count=1000)] == []  # the scratch keyspace is gone

    old = _corrupt_bucket(redis, "RB-4", "WH1", 3)
    res = sku_keys("RB-1", PREFIX).res
    line = redis.hget(res, "late")
    redis.hdel(res, "late")
    found = reconcile(redis, conf, changes, PREFIX)
    assert [d.sku for d in found.drifted] == ["RB-1", "RB-4"]
    rb1, rb4 = found.drifted
    assert any(d.startswith("res[late]: live None, log ") for d in rb1.diff), rb1.diff
    assert rb4.diff == ["WH1.on_hand: live 55, log 52"] and rb4.units == 3
    assert rb4.live_q == rb4.log_q > 0
    assert metrics.REGISTRY.get_sample_value("atp_drift_skus") == 2
    assert metrics.REGISTRY.get_sample_value("atp_drift_units") == 3
    assert redis.hget(reconcile_key(PREFIX), "drifted") == "2"
    only = reconcile(redis, conf, changes, PREFIX, skus=["RB-4", "RB-6"])
    assert only.checked == 2 and [d.sku for d in only.drifted] == ["RB-4"]
    assert redis.hget(reconcile_key(PREFIX), "checked") == str(len(SKUS))  # a partial check publishes nothing

    # the flow's reporter exports what the last reconcile kept in Redis
    metrics.set_drift(0, 0, 0, 0)
    assert refresh_drift(redis, PREFIX) and metrics.REGISTRY.get_sample_value("atp_drift_skus") == 2

    redis.hset(sku_keys("RB-4", PREFIX).state, "!L", old)
    redis.hset(res, "late", line)
    assert reconcile(redis, conf, changes, PREFIX).drifted == []
    assert [k for k in redis.scan_iter(match="rc*", count=1000)] == []


def test_reconcile_going_on_checks_a_few_skus_a_round_and_tells_drift_within_a_round(
    redis: Any, kafka_bootstrap: str, changes: str, conf: dict[str, Any]
) -> None:
    workload(redis)
    ship(redis, kafka_bootstrap, changes)
    rotation = Rotation(redis, conf, changes, PREFIX, per_round=4)
    first = rotation.round()
    assert first is not None and (first.checked, first.drifted) == (4, [])
    assert rotation.cycles == 0 and redis.hget(reconcile_key(PREFIX), "checked") is None  # nothing told mid-cycle
    assert redis.hget(reconcile_key(PREFIX), "round_ms") is not None  # but the loop is alive
    second = rotation.round()
    assert second is not None and (second.checked, second.drifted) == (len(SKUS) - 4, [])
    assert rotation.cycles == 1 and rotation.last_cycle is not None and rotation.last_cycle.checked == len(SKUS)
    assert redis.hget(reconcile_key(PREFIX), "checked") == str(len(SKUS))
    assert redis.hget(reconcile_key(PREFIX), "drifted") == "0"

    old = _corrupt_bucket(redis, "RB-2", "WH1", 4)  # in the next cycle's first round (RB-1..RB-4)
    found = rotation.round()
    assert found is not None and [d.sku for d in found.drifted] == ["RB-2"] and found.drifted[0].units == 4
    # told at once, before the cycle ends
    assert (redis.hget(reconcile_key(PREFIX), "drifted"), redis.hget(reconcile_key(PREFIX), "units")) == ("1", "4")
    assert metrics.REGISTRY.get_sample_value("atp_drift_skus") == 1
    rotation.round()
    assert rotation.cycles == 2 and [d.sku for d in rotation.last_cycle.drifted] == ["RB-2"]
    redis.hset(sku_keys("RB-2", PREFIX).state, "!L", old)
    rotation.round()
    rotation.round()
    assert rotation.cycles == 3 and rotation.last_cycle.drifted == []
    assert redis.hget(reconcile_key(PREFIX), "drifted") == "0"  # a clean cycle clears it
    assert [k for k in redis.scan_iter(match="rc*", count=1000)] == []  # no scratch SKU is left


def test_reconcile_reads_on_when_records_are_shipped_while_it_runs(
    redis: Any, kafka_bootstrap: str, changes: str, conf: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    import engine.log.rebuild as rebuild_module

    store = Store(redis, PREFIX, now_ms=T0)
    store.apply([SupplyCommand("RB-R", "count", {"loc": "WH1", "on_hand": 10})])
    ship(redis, kafka_bootstrap, changes)
    for i in range(3):
        assert store.hold_batch("RB-R", [HoldRequest(f"r-{i}", 1)])[0]["status"] == "ok"
    reads: list[int] = []
    shipped: list[int] = []
    read_changes = rebuild_module.read_changes

    def relay_meanwhile(*args: Any, **kwargs: Any) -> Any:
        reads.append(len(list(iter_log_skus(redis, PREFIX))))
        yield from read_changes(*args, **kwargs)
        if not shipped:  # the topic was read; the relay ships the 3 waiting records and trims them
            shipped.append(ship(redis, kafka_bootstrap, changes))

    monkeypatch.setattr(rebuild_module, "read_changes", relay_meanwhile)
    report = reconcile(redis, conf, changes, PREFIX)
    assert shipped == [3] and reads == [1, 0]  # a second read, of what came since the first
    assert (report.checked, report.drifted, report.live_records) == (1, [], 0)
    assert report.records == 4  # 1 in the first read, 3 in the second
    assert [k for k in redis.scan_iter(match="rc*", count=1000)] == []


def test_reconcile_under_load_with_the_relay_shipping_finds_no_drift(
    redis: Any, settings: Settings, topics: Topics, changes: str, conf: dict[str, Any]
) -> None:
    import threading

    from engine.log.relay import Relay

    store = Store(redis, PREFIX)  # Redis TIME: a live run
    hot = ["RB-H1", "RB-H2", "RB-H3"]
    store.apply([SupplyCommand(s, "count", {"loc": "WH1", "on_hand": 100_000}) for s in hot])
    stop = threading.Event()

    def checkouts() -> None:
        i = 0
        while not stop.is_set():
            sku = hot[i % len(hot)]
            store.hold_batch(sku, [HoldRequest(f"L-{i}", 1, ttl_ms=1_000)])
            if i % 3 == 0:
                store.release(sku, f"L-{i}")
            i += 1
            time.sleep(0.001)  # a checkout every ms or so: a SKU is sometimes still while read

    relay = Relay(settings, topics, redis=redis, idle_s=0.01, ack_timeout_s=5.0).start()
    load = threading.Thread(target=checkouts, daemon=True)
    load.start()
    try:
        deadline = time.monotonic() + 30
        while relay.shipped < 100:  # the relay is shipping and trimming meanwhile
            assert time.monotonic() < deadline, "the relay shipped nothing"
            time.sleep(0.05)
        reports = [reconcile(redis, conf, changes, PREFIX, skus=hot, publish=False) for _ in range(3)]
    finally:
        stop.set()
        load.join(10)
        relay.stop()
    assert relay.shipped > 0 and sum(r.live_records + r.records for r in reports) > 0
    for sku in hot:  # the topic holds every change of each SKU once
        qs = [r.q for r in read_changes(conf, changes) if r.sku == sku]
        assert qs == list(range(1, len(qs) + 1)), (sku, [q for i, q in enumerate(qs) if q != i + 1][:5])
    # records shipped and trimmed while reconcile read are no drift; at worst a SKU is unsettled
    assert [d.sku for r in reports for d in r.drifted] == [], [d.diff[:4] for r in reports for d in r.drifted]
    assert sum(r.checked - len(r.unsettled) for r in reports) > 0  # and some were judged the same


def test_the_flow_exports_the_last_reconcile_kept_in_redis(redis: Any, settings: Settings) -> None:
    from engine.observability.flow import observe_flow

    redis.hset(reconcile_key(settings.key_prefix), mapping={"checked": 7, "drifted": 2, "units": 5,
                                                            "at_ms": 1_790_000_000_000,
                                                            "round_ms": 1_790_000_060_000})
    metrics.set_drift(0, 0, 0, 0)
    with observe_flow(settings):
        deadline = time.monotonic() + 10
        while metrics.REGISTRY.get_sample_value("atp_drift_skus") != 2:
            assert time.monotonic() < deadline, "the reporter never read the reconcile's result"
            time.sleep(0.05)
        assert metrics.REGISTRY.get_sample_value("atp_drift_units") == 5
        assert metrics.REGISTRY.get_sample_value("atp_drift_checked_skus") == 7
        assert metrics.REGISTRY.get_sample_value("atp_drift_checked_timestamp_seconds") == 1_790_000_000
        assert metrics.REGISTRY.get_sample_value("atp_reconcile_round_timestamp_seconds") == 1_790_000_060
    metrics.set_drift(0, 0, 0, 0)


@pytest.fixture
def cli_env(redis: Any, redis_url: str, kafka_bootstrap: str, settings: Settings,
            monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("ATP_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ATP_CONFIG", os.devnull)
    monkeypatch.setenv("ATP_REDIS_URL", redis_url)
    monkeypatch.setenv("ATP_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("ATP_REDIS_CLUSTER", "true" if settings.redis_cluster else "false")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def test_cli_rebuild_and_reconcile(
    cli_env: None, redis: Any, kafka_bootstrap: str, topics: Topics, capsys: pytest.CaptureFixture[str]
) -> None:
    suffix = ["--topic-suffix", topics.suffix]
    store = Store(redis, PREFIX, now_ms=T0)
    store.apply([SupplyCommand(s, "count", {"loc": "WH1", "on_hand": 5}) for s in ("CL-1", "CL-2")])
    assert store.hold_batch("CL-2", [HoldRequest("cl-h", 2)])[0]["status"] == "ok"
    ship(redis, kafka_bootstrap, topics.changes)

    code, out, err = run(["rebuild", *suffix, "--json"], capsys)
    assert code == cli.EXIT_REFUSED, err
    assert orjson.loads(out)["error"] == "error" and "already holds SKU state" in err
    before = digests(redis, ["CL-1", "CL-2"])
    redis.flushall()
    code, out, err = run(["rebuild", *suffix, "--json"], capsys)
    assert code == 0, err
    body = orjson.loads(out)
    assert (body["topic"], body["skus"], body["records"], body["applied"], body["indexes"]) == (
        topics.changes, 2, 3, 3, 1)
    assert {"skipped", "seconds", "records_per_s", "skus_per_s", "bad", "gaps"} <= set(body)
    assert digests(redis, ["CL-1", "CL-2"]) == before

    code, out, err = run(["reconcile", *suffix, "--json"], capsys)
    assert code == 0, err
    assert orjson.loads(out) | {"seconds": 0} == {
        "checked": 2, "drifted": 0, "units": 0, "skus": [], "unsettled": [], "records": 3, "live_records": 0,
        "bad": 0, "bad_examples": [], "seconds": 0}

    redis.hdel(sku_keys("CL-2", PREFIX).res, "cl-h")
    code, out, err = run(["reconcile", *suffix, "--json"], capsys)
    assert code == 1, err
    body = orjson.loads(out)
    assert body["drifted"] == 1 and [s["sku"] for s in body["skus"]] == ["CL-2"]
    assert any("cl-h" in line for line in body["skus"][0]["diff"])
    code, out, err = run(["reconcile", *suffix, "--sku", "CL-1"], capsys)
    assert code == 0 and "checked 1 SKU(s): no drift" in out, err
    code, out, err = run(["reconcile", *suffix, "--sku", "CL-2"], capsys)
    assert code == 1 and "CL-2" in out and "res[cl-h]: live None" in out, err

    code, out, err = run(["reconcile", "--sku", "not a sku", "--json"], capsys)
    assert code == 2 and orjson.loads(out)["error"] == "bad_argument"
    code, out, err = run(["reconcile", "--topic-suffix", ".missing", "--json"], capsys)
    assert code == 2 and orjson.loads(out)["error"] == "error" and "not usable" in err
    # put the line back, so the store's invariants hold at teardown
    redis.flushall()
    code, out, err = run(["rebuild", *suffix], capsys)
    assert code == 0 and out.startswith(f"rebuilt 2 SKU(s) from {topics.changes}: 3 records, 3 replayed"), err
    assert redis.hexists(sku_keys("CL-2", PREFIX).res, "cl-h")


def test_cli_reconcile_every_reports_each_round_and_stops_on_sigterm(
    redis: Any, redis_url: str, kafka_bootstrap: str, settings: Settings, topics: Topics,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    workload(redis)
    ship(redis, kafka_bootstrap, topics.changes)
    _corrupt_bucket(redis, "RB-5", "WH1", 2)
    env = {"PATH": os.environ.get("PATH", ""), "ATP_CONFIG": os.devnull, "ATP_REDIS_URL": redis_url,
           "ATP_KAFKA_BOOTSTRAP": kafka_bootstrap, "ATP_REDIS_CLUSTER": "true" if settings.redis_cluster else "false"}
    for name in list(os.environ):  # the container healthcheck's settings: the loop's own
        if name.upper().startswith("ATP_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    redis.delete(reconcile_key(PREFIX))
    assert healthcheck(600) == 1  # no round yet
    script = Path(sys.executable).parent / "atp"
    proc = subprocess.Popen([str(script), "reconcile", "--every", "0.2", "--per-round", "3", "--json",
                             "--topic-suffix", topics.suffix], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        rounds = [orjson.loads(proc.stdout.readline()) for _ in range(4)]  # two whole cycles
        assert healthcheck(600) == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert [r["checked"] for r in rounds] == [3, 3, 3, 3]
    assert [[s["sku"] for s in r["skus"]] for r in rounds] == [[], ["RB-5"], [], ["RB-5"]]
    assert proc.returncode == 1, err  # the last whole cycle drifted
    assert "whole cycle(s)" in err
    assert redis.hget(reconcile_key(PREFIX), "drifted") == "1"
    redis.hset(reconcile_key(PREFIX), "round_ms", int(time.time() * 1000) - 601_000)
    assert healthcheck(600) == 1  # the loop stopped ten minutes ago
