"""Reservations, ATP and ops through the HTTP API, and what the API publishes to the log."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from connectors.topics import Topics
from engine.api.models import AtpOut
from engine.domain.events import StockAdjusted, StockCounted, parse_event
from engine.reservations.client import AtpClient
from engine.settings import Settings
from engine.store.changelog import read_log
from tests.conftest import TOPIC_PARTITIONS
from tests.integration.api_harness import (
    ADMIN,
    OPERATOR,
    READER,
    RESERVER,
    bearer,
    figures,
    in_process,
    make_app,
    seed,
    sync_store,
)

pytestmark = pytest.mark.anyio


def consume(bootstrap: str, topic: str, want: int, timeout_s: float = 30.0) -> list[dict[str, Any]]:
    """Up to ``want`` JSON messages of ``topic`` (all partitions, from the start)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"api-check-{topic}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(TOPIC_PARTITIONS)])
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < want and time.monotonic() < deadline:
            for msg in consumer.consume(100, timeout=0.5):
                assert msg.error() is None, msg.error()
                got.append({"key": msg.key().decode(), "value": orjson.loads(msg.value()), "raw": msg.value()})
        got.extend(
            {"key": m.key().decode(), "value": orjson.loads(m.value()), "raw": m.value()}
            for m in consumer.consume(100, timeout=1.0)
            if m.error() is None
        )
    finally:
        consumer.close()
    return got


@pytest.fixture
def store(redis: Any, redis_url: str, settings: Settings) -> Any:
    return sync_store(redis_url, settings)


@pytest.mark.kafka_compat  # its events, read back from the broker
async def test_hold_confirm_release_lifecycle_and_its_events(
    store: Any, settings: Settings, topics: Topics, kafka_bootstrap: str
) -> None:
    seed(store, "LIFE-1", 10)
    seed(store, "LIFE-2", 4, "WH1")
    auth = bearer(RESERVER)
    hold = {
        "lines": [{"sku": "LIFE-2", "qty": 2, "location": "WH1"}, {"sku": "LIFE-1", "qty": 3}],
        "ttl_seconds": 120,
        "channel": "web",
        "customer_id": "cust-7",
    }
    async with in_process(make_app(settings, topics)) as api:
        made = await api.post("/v1/reservations", json=hold, headers={"Idempotency-Key": "life-1", **auth})
        assert made.status_code == 201, made.text
        assert made.headers["location"] == "/v1/reservations/life-1"
        assert (await api.get(made.headers["location"], headers=auth)).json()["state"] == "held"
        body = made.json()
        assert body["reservation_id"] == "life-1"
        assert body["state"] == "held"
        assert [line["sku"] for line in body["lines"]] == ["LIFE-1", "LIFE-2"]
        assert body["lines"][1]["location"] == "WH1"
        assert body["lines"][1]["allocations"] == [{"kind": "oh", "ref": "WH1", "location": "WH1", "qty": 2}]
        assert body["promised_ms"] > 0 and body["promised_at"].endswith("Z")
        assert 0 < body["expires_ms"] and body["expires_at"].endswith("Z")
        assert figures(store, "LIFE-1")["held"] == 3

        got = await api.get("/v1/reservations/life-1", headers=auth)
        assert got.status_code == 200 and got.json()["lines"] == body["lines"]

        extended = await api.post("/v1/reservations/life-1/extend", json={"ttl_seconds": 3600}, headers=auth)
        assert extended.status_code == 200
        assert extended.json()["expires_ms"] > body["expires_ms"]

        confirmed = await api.post("/v1/reservations/life-1/confirm", headers=auth)
        assert confirmed.status_code == 200 and confirmed.json()["state"] == "committed"
        again = await api.post("/v1/reservations/life-1/confirm", headers=auth)
        assert again.status_code == 200 and again.json()["state"] == "committed"
        assert figures(store, "LIFE-1")["committed"] == 3

        released = await api.post("/v1/reservations/life-1/release", headers=auth)
        assert released.status_code == 200 and released.json()["state"] == "released"
        twice = await api.post("/v1/reservations/life-1/release", headers=auth)
        assert twice.status_code == 200
        assert figures(store, "LIFE-1") == {"on_hand": 10, "held": 0, "committed": 0, "atp": 10, "in_transit": 0}

        late = await api.post("/v1/reservations/life-1/confirm", headers=auth)
        assert late.status_code == 409
        assert late.json()["error"] == "not_allowed" and late.json()["state"] == "released"
        late_extend = await api.post("/v1/reservations/life-1/extend", json={"ttl_seconds": 60}, headers=auth)
        assert late_extend.status_code == 409

    events = consume(kafka_bootstrap, topics.reservations, want=4)
    ours = [e for e in events if e["value"]["reservation_id"] == "life-1"]
    assert [e["value"]["type"] for e in ours] == [
        "reservation.held",
        "reservation.extended",
        "reservation.confirmed",
        "reservation.released",
    ]
    assert all(e["key"] == "life-1" for e in ours)
    held = ours[0]["value"]
    assert held["event_id"] == "res:life-1:held"
    assert held["channel"] == "web" and held["customer_id"] == "cust-7"
    assert {line["sku"]: line["qty"] for line in held["lines"]} == {"LIFE-1": 3, "LIFE-2": 2}
    assert held["occurred_at"].endswith("Z")


async def test_refusal_is_409_with_what_each_line_could_have_had_and_holds_nothing(
    store: Any, settings: Settings, topics: Topics
) -> None:
    seed(store, "SHORT-1", 5)
    seed(store, "SHORT-2", 1)
    before = (figures(store, "SHORT-1"), figures(store, "SHORT-2"))
    hold = {"lines": [{"sku": "SHORT-1", "qty": 2}, {"sku": "SHORT-2", "qty": 3}]}
    async with in_process(make_app(settings, topics)) as api:
        refused = await api.post("/v1/reservations", json=hold, headers={"Idempotency-Key": "short-1",
                                                                          **bearer(RESERVER)})
        assert refused.status_code == 409, refused.text
        body = refused.json()
        assert body["error"] == "refused" and body["reason"] == "insufficient"
        by_sku = {line["sku"]: line for line in body["lines"]}
        assert by_sku["SHORT-2"]["available"] == 1 and by_sku["SHORT-2"]["reason"] == "insufficient"
        assert by_sku["SHORT-1"]["available"] == 5
        assert (figures(store, "SHORT-1"), figures(store, "SHORT-2")) == before
        missing = await api.get("/v1/reservations/short-1", headers=bearer(RESERVER))
        assert missing.status_code == 404


async def test_atp_of_one_sku_one_location_and_a_batch(store: Any, settings: Settings, topics: Topics) -> None:
    seed(store, "Q-1", 7, "WH1")
    seed(store, "Q-1", 2, "WH2")
    seed(store, "Q-2", 1)
    auth = bearer(ADMIN)
    async with in_process(make_app(settings, topics)) as api:
        one = (await api.get("/v1/atp/Q-1", headers=auth)).json()
        assert one["atp"] == 9 and one["on_hand"] == 9 and one["location"] is None
        assert set(one["locations"]) == {"WH1", "WH2"}
        assert one["promisable_now"] == 9 and one["next_promise_ms"] == 0 and one["next_promise_at"] is None
        wh2 = (await api.get("/v1/atp/Q-1", params={"location": "WH2"}, headers=auth)).json()
        assert wh2["atp"] == 2 and wh2["location"] == "WH2"
        unknown = (await api.get("/v1/atp/NEVER-SEEN", headers=auth)).json()
        assert unknown["atp"] == 0 and unknown["locations"] == {}
        batch = await api.post("/v1/atp/query", json={"skus": ["Q-2", "Q-1", "Q-2", "NONE-9"]}, headers=auth)
        assert batch.status_code == 200
        assert [(p["sku"], p["atp"]) for p in batch.json()["positions"]] == [("Q-2", 1), ("Q-1", 9), ("NONE-9", 0)]
        at_wh1 = await api.post("/v1/atp/query", json={"skus": ["Q-1"], "location": "WH1"}, headers=auth)
        assert at_wh1.json()["positions"][0]["atp"] == 7


async def test_atp_shows_backordered_units_and_the_network_what_can_be_sold(
    store: Any, settings: Settings, topics: Topics
) -> None:
    seed(store, "BO-1", 3, "WH1")
    seed(store, "BO-1", 0, "WH2")
    store.set_policy("BO-1", {"mode": "backorder", "backorder_limit": 4, "safety": 1})
    auth = bearer(ADMIN)
    async with in_process(make_app(settings, topics)) as api:
        sold = await api.post("/v1/reservations", json={"lines": [{"sku": "BO-1", "qty": 5, "location": "WH1"}]},
                              headers={"Idempotency-Key": "bo-sale", **auth})
        assert sold.status_code == 201, sold.text
        assert sold.json()["lines"][0]["atp_after"] == 0
        body = (await api.get("/v1/atp/BO-1", headers=auth)).json()
        AtpOut.model_validate(body)
        assert (body["atp"], body["backordered"], body["oversold"], body["safety"]) == (1, 3, 0, 1)
        assert {loc: (f["atp"], f["safety"], f["backordered"]) for loc, f in body["locations"].items()} == {
            "WH1": (0, 1, 3), "WH2": (0, 0, 0)}
        wh1 = (await api.get("/v1/atp/BO-1", params={"location": "WH1"}, headers=auth)).json()
        assert (wh1["atp"], wh1["backordered"]) == (0, 3)
        more = await api.post("/v1/reservations", json={"lines": [{"sku": "BO-1", "qty": 2}]},
                              headers={"Idempotency-Key": "bo-more", **auth})
        assert more.status_code == 409 and more.json()["lines"][0]["available"] == body["atp"]


async def test_policy_round_trip_changes_atp(store: Any, settings: Settings, topics: Topics) -> None:
    seed(store, "POL-1", 20)
    async with in_process(make_app(settings, topics)) as api:
        default = await api.get("/v1/policies/POL-1", headers=bearer(ADMIN))
        assert default.status_code == 200 and default.json()["mode"] == "strict"
        policy = {"mode": "presell", "cap_pm": 500, "safety": 5, "order_cap": 2, "quotas": {"web": 10},
                  "pack_size": 12, "lead_time_days": 3.5}
        put = await api.put("/v1/policies/POL-1", json=policy, headers=bearer(OPERATOR))
        assert put.status_code == 200, put.text
        assert {k: put.json()[k] for k in policy} == policy
        assert (await api.get("/v1/policies/POL-1", headers=bearer(ADMIN))).json() == put.json()
        assert (await api.get("/v1/atp/POL-1", headers=bearer(ADMIN))).json()["atp"] == 15
        capped = await api.post("/v1/reservations", json={"lines": [{"sku": "POL-1", "qty": 3}]},
                                headers={"Idempotency-Key": "pol-cap", **bearer(ADMIN)})
        assert capped.status_code == 409 and capped.json()["reason"] == "order_cap"


async def test_guard_refusals_name_the_guard_and_what_would_fit(
    store: Any, settings: Settings, topics: Topics
) -> None:
    seed(store, "GRD-1", 100)
    seed(store, "GRD-2", 100)
    store.set_policy("GRD-1", {"order_cap": 50, "customer_limit": 70, "quotas": {"app": 30}})
    auth = bearer(ADMIN)

    async def hold(key: str, lines: list[dict[str, Any]], **extra: Any) -> Any:
        return await api.post("/v1/reservations", json={"lines": lines, **extra},
                              headers={"Idempotency-Key": key, **auth})

    async with in_process(make_app(settings, topics)) as api:
        # two lines of one SKU are held as one: the sum is what the cap refuses
        capped = await hold("grd-cap", [{"sku": "GRD-1", "qty": 30}, {"sku": "GRD-1", "qty": 30},
                                        {"sku": "GRD-2", "qty": 5}])
        assert capped.status_code == 409
        body = capped.json()
        assert (body["reason"], body["sku"]) == ("order_cap", "GRD-1")
        assert body["guard"] == {"name": "order_cap", "limit": 50, "used": None, "room": 50}
        assert [(ln["sku"], ln["requested"], ln["available"], ln["stock"], ln["reason"]) for ln in body["lines"]] == [
            ("GRD-1", 60, 50, 100, "order_cap"), ("GRD-1", 60, 50, 100, "order_cap"), ("GRD-2", 5, 100, 100, None)]
        assert "at most 50 units per reservation" in body["detail"] and "together" in body["detail"]

        assert (await hold("grd-c1", [{"sku": "GRD-1", "qty": 40}], customer_id="c-1")).status_code == 201
        limited = (await hold("grd-c2", [{"sku": "GRD-1", "qty": 40}], customer_id="c-1")).json()
        assert limited["guard"] == {"name": "customer_limit", "limit": 70, "used": 40, "room": 30}
        assert limited["lines"][0]["available"] == 30 and limited["lines"][0]["stock"] == 60
        assert "c-1" in limited["detail"] and "30 would fit" in limited["detail"]

        assert (await hold("grd-a1", [{"sku": "GRD-1", "qty": 25}], channel="app")).status_code == 201
        quota = (await hold("grd-a2", [{"sku": "GRD-1", "qty": 10}], channel="app")).json()
        assert quota["guard"] == {"name": "channel_quota", "limit": 30, "used": 25, "room": 5}
        assert quota["lines"][0]["available"] == 5

        short = (await hold("grd-short", [{"sku": "GRD-2", "qty": 101}])).json()
        assert (short["reason"], short["guard"], short["lines"][0]["available"]) == ("insufficient", None, 100)


async def test_unknown_locations_have_their_own_reason_and_any_is_not_a_location(
    store: Any, settings: Settings, topics: Topics
) -> None:
    seed(store, "LOC-1", 10, location="WH1")
    auth = bearer(ADMIN)
    async with in_process(make_app(settings, topics)) as api:
        unknown = await api.post("/v1/reservations", json={"lines": [{"sku": "LOC-1", "qty": 1, "location": "WH9"}]},
                                 headers={"Idempotency-Key": "loc-unknown", **auth})
        assert unknown.status_code == 409
        body = unknown.json()
        assert (body["reason"], body["lines"][0]["available"]) == ("unknown_location", 0)
        assert "WH9" in body["detail"]
        for spelling in ("any", "ANY"):
            reply = await api.post("/v1/reservations",
                                   json={"lines": [{"sku": "LOC-1", "qty": 1, "location": spelling}]},
                                   headers={"Idempotency-Key": f"loc-{spelling}", **auth})
            assert reply.status_code == 422, reply.text
            assert reply.json()["reasons"][0]["field"] == "body.lines.0.location"
            assert "leave the location out" in reply.json()["detail"]
        anywhere = await api.post("/v1/reservations", json={"lines": [{"sku": "LOC-1", "qty": 1}]},
                                  headers={"Idempotency-Key": "loc-anywhere", **auth})
        assert anywhere.status_code == 201
        assert anywhere.json()["lines"][0]["allocations"][0]["location"] == "WH1"
        at_wh1 = await api.get("/v1/atp/LOC-1", params={"location": "any"}, headers=auth)
        assert at_wh1.status_code == 422


async def test_policy_put_replaces_and_patch_merges(store: Any, settings: Settings, topics: Topics) -> None:
    seed(store, "POL-2", 20)
    auth = bearer(OPERATOR)
    merge = {**auth, "Content-Type": "application/merge-patch+json"}
    async with in_process(make_app(settings, topics)) as api:
        full = {"mode": "presell", "order_cap": 4, "customer_limit": 6, "quotas": {"web": 10, "app": 5}}
        assert (await api.put("/v1/policies/POL-2", json=full, headers=auth)).status_code == 200
        patched = await api.patch("/v1/policies/POL-2", content=b'{"low_stock": 7, "quotas": {"app": null}}',
                                  headers=merge)
        assert patched.status_code == 200, patched.text
        body = patched.json()
        assert (body["low_stock"], body["order_cap"], body["customer_limit"], body["mode"]) == (7, 4, 6, "presell")
        assert body["quotas"] == {"web": 10}
        reset = await api.patch("/v1/policies/POL-2", content=b'{"order_cap": null}', headers=merge)
        assert reset.json()["order_cap"] == 0 and reset.json()["customer_limit"] == 6
        assert (await api.get("/v1/policies/POL-2", headers=auth)).json() == reset.json()
        # PUT is whole: a partial body resets every field it leaves out
        replaced = await api.put("/v1/policies/POL-2", json={"low_stock": 7}, headers=auth)
        assert replaced.json() == {**(await api.get("/v1/policies/NONE-2", headers=auth)).json(), "low_stock": 7}

        wrong_type = await api.patch("/v1/policies/POL-2", content=b'{"low_stock": 1}',
                                     headers={**auth, "Content-Type": "text/plain"})
        assert wrong_type.status_code == 415 and wrong_type.json()["error"] == "unsupported_media_type"
        not_object = await api.patch("/v1/policies/POL-2", content=b"[1]", headers=merge)
        assert not_object.status_code == 400 and not_object.json()["error"] == "bad_request"
        bad_value = await api.patch("/v1/policies/POL-2", content=b'{"cap_pm": 1001}', headers=merge)
        assert bad_value.status_code == 422 and bad_value.json()["reasons"][0]["field"] == "body.cap_pm"
        unknown = await api.patch("/v1/policies/POL-2", content=b'{"capp": 1}', headers=merge)
        assert unknown.status_code == 422
        reader = await api.patch("/v1/policies/POL-2", content=b'{"low_stock": 1}',
                                 headers={**bearer(READER), "Content-Type": "application/merge-patch+json"})
        assert reader.status_code == 403
        assert (await api.get("/v1/policies/POL-2", headers=auth)).json() == replaced.json()


async def test_adjustments_and_counts_are_published_not_applied(
    store: Any, settings: Settings, topics: Topics, kafka_bootstrap: str
) -> None:
    seed(store, "ADJ-1", 10)
    auth = bearer(OPERATOR)
    async with in_process(make_app(settings, topics)) as api:
        adjusted = await api.post(
            "/v1/adjustments",
            json={"sku": "ADJ-1", "location": "WH1", "delta": -2, "reason": "damage", "ref": "RMA-9"},
            headers=auth,
        )
        counted = await api.post(
            "/v1/counts", json={"sku": "ADJ-1", "on_hand": 8, "event_id": "count-ADJ-1-1"}, headers=auth
        )
    assert adjusted.status_code == 202, adjusted.text
    assert counted.status_code == 202, counted.text
    assert adjusted.json()["type"] == "stock.adjusted" and adjusted.json()["topic"] == topics.adjustments
    assert counted.json()["event_id"] == "count-ADJ-1-1"
    assert figures(store, "ADJ-1")["on_hand"] == 10  # the flow applies them, not the API

    messages = consume(kafka_bootstrap, topics.adjustments, want=2)
    parsed = {m["value"]["event_id"]: parse_event(m["raw"], "inventory.adjustments") for m in messages}
    adjustment = parsed[adjusted.json()["event_id"]]
    assert isinstance(adjustment, StockAdjusted)
    assert (adjustment.sku, adjustment.location, adjustment.delta, adjustment.reason, adjustment.ref) == (
        "ADJ-1", "WH1", -2, "damage", "RMA-9")
    count = parsed["count-ADJ-1-1"]
    assert isinstance(count, StockCounted)
    assert (count.sku, count.location, count.on_hand) == ("ADJ-1", "default", 8)
    assert all(m["key"] == "ADJ-1" for m in messages)


async def test_the_app_sweeps_expired_holds_in_the_background(
    store: Any, settings: Settings, topics: Topics
) -> None:
    import anyio

    from engine import metrics
    from engine.api import create_app
    from tests.integration.api_harness import api_settings

    seed(store, "SWEEP-1", 5)
    expired_before = metrics.HOLDS_EXPIRED._value.get()
    app = create_app(api_settings(settings, sweep_interval_s=0.2), topics=topics, sweep=True)
    async with in_process(app) as api:
        made = await api.post("/v1/reservations", json={"lines": [{"sku": "SWEEP-1", "qty": 2}], "ttl_seconds": 1},
                              headers={"Idempotency-Key": "sweep-1", **bearer(RESERVER)})
        assert made.status_code == 201
        with anyio.fail_after(10):
            while metrics.HOLDS_EXPIRED._value.get() < expired_before + 1:
                await anyio.sleep(0.1)
    assert figures(store, "SWEEP-1")["held"] == 0
    assert store.get_line("SWEEP-1", "sweep-1")["line"]["state"] == "expired"


async def test_a_repeated_request_keeps_the_event_a_dead_first_try_did_not(
    store: Any, redis: Any, settings: Settings, topics: Topics
) -> None:
    """The change made, its event never kept (the API died, or lost Redis, in between): the
    client repeats the request, gets the ``duplicate`` answer, and the event is in the log once."""
    seed(store, "GAP-1", 10)
    seed(store, "GAP-2", 10)
    client = AtpClient(store.redis, prefix=settings.key_prefix)
    assert client.hold("gap-1", [("GAP-2", 1, None), ("GAP-1", 2, None)]).status == "ok"  # no event
    auth = bearer(RESERVER)
    hold = {"lines": [{"sku": "GAP-1", "qty": 2}, {"sku": "GAP-2", "qty": 1}], "channel": "web"}

    def events() -> list[tuple[str, str]]:  # the events waiting in the reservation's first SKU's log
        return [(r.args[1], r.args[3]) for r in read_log(store.redis, "GAP-1", settings.key_prefix)
                if r.fn == "publish"]

    async with in_process(make_app(settings.model_copy(update={"relay": False}), topics)) as api:
        for _ in range(2):
            again = await api.post("/v1/reservations", json=hold, headers={"Idempotency-Key": "gap-1", **auth})
            assert again.status_code == 201 and again.headers["idempotent-replayed"] == "true"
        assert events() == [("gap-1", "held")]
        event = orjson.loads(next(r.args[2] for r in read_log(store.redis, "GAP-1", settings.key_prefix)
                                  if r.fn == "publish"))
        assert (event["event_id"], event["state"], event["channel"]) == ("res:gap-1:held", "held", "web")
        assert [(line["sku"], line["qty"]) for line in event["lines"]] == [("GAP-1", 2), ("GAP-2", 1)]

        assert client.confirm("gap-1").status == "ok"  # confirmed, its event lost
        for _ in range(2):
            assert (await api.post("/v1/reservations/gap-1/confirm", headers=auth)).status_code == 200
        assert events() == [("gap-1", "held"), ("gap-1", "confirmed")]

        # a hold repeated once the reservation moved on keeps no late "held" event
        assert client.hold("gap-2", [("GAP-1", 1, None)]).status == "ok"
        assert client.release("gap-2").status == "ok"
        late = await api.post("/v1/reservations", json={"lines": [{"sku": "GAP-1", "qty": 1}]},
                              headers={"Idempotency-Key": "gap-2", **auth})
        assert late.status_code == 201 and late.json()["state"] == "released"
        assert (await api.post("/v1/reservations/gap-2/release", headers=auth)).status_code == 200
        assert events() == [("gap-1", "held"), ("gap-1", "confirmed"), ("gap-2", "released")]


async def test_concurrent_answers_on_one_sku_keep_their_events_in_shared_calls(
    store: Any, settings: Settings, topics: Topics
) -> None:
    """The events of concurrent holds whose first SKU is the same go into the log together (one
    ``publish`` call per batch, as the holds themselves are coalesced): every event once, in
    fewer records than holds."""
    seed(store, "BATCH-1", 100)
    auth = bearer(RESERVER)
    async with in_process(make_app(settings.model_copy(update={"relay": False}), topics)) as api:
        replies = await asyncio.gather(*(
            api.post("/v1/reservations", json={"lines": [{"sku": "BATCH-1", "qty": 1}]},
                     headers={"Idempotency-Key": f"batch-{i}", **auth}) for i in range(60)))
    assert [r.status_code for r in replies] == [201] * 60
    records = [r for r in read_log(store.redis, "BATCH-1", settings.key_prefix) if r.fn == "publish"]
    events = [orjson.loads(event)["event_id"] for r in records for event in r.args[2::3]]
    assert sorted(events) == sorted(f"res:batch-{i}:held" for i in range(60))
    assert len(records) < 60, f"{len(records)} publish calls for 60 concurrent holds"
