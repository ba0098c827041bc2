"""Listing reservations: ``GET /v1/reservations`` behind a real uvicorn, ``atp reservations list``
and ``Store`` / ``AsyncStore.list_reservations``, on the real Redis (and on a real Redis Cluster).

Every listing is paged through with small limits and its union held to the set the data was
built to have, filter by filter; each page's Redis work is held to the listing's bounds
(``engine.store.listing``) by the planner's own count and by the server's command statistics.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import redis as redis_lib
import redis.asyncio as aioredis

from connectors.embedded import EmbeddedRedisCluster
from connectors.topics import Topics
from engine import cli
from engine.api import create_app
from engine.api.auth import token_digest
from engine.reservations.client import AtpClient
from engine.reservations.types import Reservation
from engine.settings import Settings
from engine.store.connect import sync_redis
from engine.store.keys import rid_index_key, rid_index_value
from engine.store.listing import (
    LIST_LIMIT_DEFAULT,
    LIST_LIMIT_MAX,
    READS_MAX,
    SCAN_CALLS_MAX,
    SCAN_COUNT,
)
from engine.store.store import AsyncStore, Store
from engine.store.wire import SupplyCommand
from tests.integration.api_harness import ADMIN, READER, TOKENS, api_settings, bearer, served

SKUS = ("LS-A", "LS-B", "LS-C")
CUSTOMERS = ("cust-1", "cust-2")
STATES = ("held", "committed", "released")
ROLELESS = "roleless-token"  # a configured token with no role at all: 403 on every /v1 call

Expected = dict[str, dict[str, tuple[str, str]]]  # rid -> sku -> (line state, customer)


# --------------------------------------------------------------------------- the data


def _stock(store: Store, skus: tuple[str, ...], units: int = 100_000) -> None:
    replies = store.apply([SupplyCommand(sku, "count", {"loc": "WH1", "on_hand": units}) for sku in skus])
    assert all(r["status"] == "ok" for r in replies), replies


def _held(result: Any) -> None:
    assert isinstance(result, Reservation), result


def build(client: AtpClient, store: Store, redis: Any, prefix: str) -> Expected:
    """~250 reservations over SKUS, CUSTOMERS and STATES, a few of several SKUs (two of them
    partial), two held ones past their expiry, and index keys that must not be listed (a hold
    still placing its lines, a leftover without lines, a malformed value). Returns what a
    listing should show."""
    _stock(store, SKUS)
    expected: Expected = {}
    for i in range(240):
        rid, sku, customer, state = f"ls-{i:03d}", SKUS[i % 3], CUSTOMERS[i % 2], STATES[(i // 6) % 3]
        _held(client.hold(rid, [(sku, 1 + i % 4, "WH1")], ttl_s=3600, customer_id=customer, channel="web"))
        if state == "committed":
            _held(client.confirm(rid))
        elif state == "released":
            _held(client.release(rid))
        expected[rid] = {sku: (state, customer)}
    for j in range(12):
        rid, pair, customer = f"lm-{j:02d}", (SKUS[j % 3], SKUS[(j + 1) % 3]), CUSTOMERS[j % 2]
        _held(client.hold(rid, [(pair[0], 2, None), (pair[1], 3, "WH1")], ttl_s=3600, customer_id=customer))
        states = dict.fromkeys(pair, "held")
        if j % 4 == 1:
            _held(client.confirm(rid))
            states = dict.fromkeys(pair, "committed")
        elif j % 4 == 2:  # one line released by the stream's way, the other still held: partial
            assert store.release(pair[1], rid)["status"] == "ok"
            states[pair[1]] = "released"
        expected[rid] = {sku: (states[sku], customer) for sku in pair}
    for k in range(2):  # held, due, not yet expired by any script: a read shows them expired
        rid = f"lx-{k}"
        _held(client.hold(rid, [("LS-C", 1, "WH1")], ttl_s=1, customer_id="cust-1"))
        expected[rid] = {"LS-C": ("expired", "cust-1")}
    redis.set(rid_index_key("lp-pending", prefix), rid_index_value(["LS-A"], pending=True))
    redis.set(rid_index_key("lp-leftover", prefix), rid_index_value(["LS-B"]))
    redis.set(rid_index_key("lp-broken", prefix), b"not json")
    time.sleep(2.1)  # a 1 s hold ends at the whole second after it: within 2 s
    return expected


def state_of(lines: dict[str, tuple[str, str]]) -> str:
    states = {state for state, _customer in lines.values()}
    return states.pop() if len(states) == 1 else "partial"


def wanted(expected: Expected, sku: str | None = None, customer: str | None = None,
           state: str | None = None) -> set[str]:
    """The ids a listing with these filters must give (with a sku: the ids of its lines)."""
    out = set()
    for rid, lines in expected.items():
        if sku is not None:
            if sku not in lines:
                continue
            lines = {sku: lines[sku]}
        if customer is not None and all(c != customer for _s, c in lines.values()):
            continue
        if state is not None and state_of(lines) != state:
            continue
        out.add(rid)
    return out


FILTERS: list[dict[str, str]] = [
    {},
    {"sku": "LS-A"},
    {"sku": "LS-C"},
    {"customer": "cust-1"},
    {"state": "held"},
    {"state": "committed"},
    {"state": "released"},
    {"state": "expired"},
    {"state": "partial"},
    {"sku": "LS-B", "customer": "cust-2"},
    {"sku": "LS-B", "state": "released"},
    {"customer": "cust-2", "state": "committed"},
    {"sku": "LS-A", "customer": "cust-1", "state": "held"},
    {"customer": "nobody"},
]


@pytest.fixture
def world(redis: Any, settings: Settings) -> tuple[Expected, Store]:
    client = sync_redis(settings)
    store = Store(client, prefix=settings.key_prefix)
    expected = build(AtpClient(client, prefix=settings.key_prefix, coalesce=False), store, client,
                     settings.key_prefix)
    assert len(expected) == 254
    return expected, store


def cursor_data(cursor: str) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    return data


# --------------------------------------------------------------------------- the API


def _app_settings(settings: Settings) -> Settings:
    tokens = {token_digest(t): roles for t, roles in TOKENS.items()}
    return api_settings(settings, api_tokens={**tokens, token_digest(ROLELESS): []})


@pytest.fixture
def api(redis: Any, settings: Settings, topics: Topics) -> Iterator[httpx.Client]:
    app = create_app(_app_settings(settings), topics=topics, sweep=False)
    with served(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        yield http


def page_all(http: httpx.Client, params: dict[str, Any], limit: int) -> tuple[list[str], int]:
    """Every id of a listing through the API, following next_cursor; (ids in order, pages)."""
    ids: list[str] = []
    cursor = None
    for pages in range(1, 10_000):
        query = {**params, "limit": limit, **({"cursor": cursor} if cursor else {})}
        reply = http.get("/v1/reservations", params=query, headers=bearer(READER))
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert set(body) == {"items", "next_cursor"}
        page = [item["reservation_id"] for item in body["items"]]
        assert len(page) <= limit and len(page) == len(set(page)), page
        ids += page
        cursor = body["next_cursor"]
        if cursor is None:
            return ids, pages
    raise AssertionError("the listing never ended")


def test_paging_through_gives_exactly_the_matching_reservations(
    api: httpx.Client, world: tuple[Expected, Store]
) -> None:
    expected, _store = world
    for params in FILTERS:
        want = wanted(expected, **params)
        ids, pages = page_all(api, params, limit=7)
        assert set(ids) == want, (params, sorted(want - set(ids)), sorted(set(ids) - want))
        assert pages >= len(want) // 7, params
    assert wanted(expected, state="partial") and wanted(expected, state="expired")  # the data has both


def test_items_carry_the_reservation_as_a_read_shows_it(api: httpx.Client, world: tuple[Expected, Store]) -> None:
    expected, _store = world
    items = {}
    cursor = None
    while True:
        reply = api.get("/v1/reservations", params={"limit": LIST_LIMIT_MAX, **({"cursor": cursor} if cursor else {})},
                        headers=bearer(READER))
        body = reply.json()
        items.update({item["reservation_id"]: item for item in body["items"]})
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert set(items) == set(expected)
    for rid, lines in expected.items():
        item = items[rid]
        assert item["state"] == state_of(lines), rid
        assert {line["sku"]: (line["state"], line["customer_id"]) for line in item["lines"]} == lines, rid
        assert [line["sku"] for line in item["lines"]] == sorted(lines)
    one = items["ls-005"]  # LS-C, cust-2, held, 2 units at WH1
    line = one["lines"][0]
    assert (line["qty"], line["location"], line["channel"], line["state"]) == (2, "WH1", "web", "held")
    assert line["allocations"] == [{"kind": "oh", "ref": "WH1", "location": "WH1", "qty": 2}]
    assert one["expires_ms"] == line["expires_ms"] > 0 and one["expires_at"] and line["promised_at"]
    due = items["lx-0"]["lines"][0]
    assert (due["state"], due["allocations"], items["lx-0"]["expires_ms"]) == ("expired", [], 0)
    partial = items["lm-02"]
    assert partial["state"] == "partial"
    assert {ln["location"] for ln in partial["lines"]} == {None, "WH1"}
    # what GET /v1/reservations/{rid} says, the listing says
    for rid in ("ls-005", "lm-01", "lm-02", "lx-1"):
        single = api.get(f"/v1/reservations/{rid}", headers=bearer(READER)).json()
        listed = {k: v for k, v in items[rid].items() if k != "lines"}
        assert listed == {k: v for k, v in single.items() if k != "lines"}, rid
        for got, read in zip(items[rid]["lines"], single["lines"], strict=True):
            assert {k: v for k, v in got.items() if k not in ("customer_id", "channel")} == read


def test_with_a_sku_an_item_is_that_skus_line(api: httpx.Client, world: tuple[Expected, Store]) -> None:
    reply = api.get("/v1/reservations", params={"sku": "LS-A", "state": "partial", "limit": 50},
                    headers=bearer(READER))
    assert reply.status_code == 200
    ids, _pages = page_all(api, {"sku": "LS-A", "state": "partial"}, 50)
    assert ids == []  # one line has one state
    ids, _pages = page_all(api, {"sku": "LS-A", "state": "released"}, 50)
    assert "lm-02" in ids  # its LS-A line is released, its LS-C line still held
    body = api.get("/v1/reservations", params={"sku": "LS-C", "limit": LIST_LIMIT_MAX}, headers=bearer(READER)).json()
    while body["next_cursor"] is not None and not any(i["reservation_id"] == "lm-02" for i in body["items"]):
        body = api.get("/v1/reservations", params={"sku": "LS-C", "limit": LIST_LIMIT_MAX,
                                                   "cursor": body["next_cursor"]}, headers=bearer(READER)).json()
    item = next(i for i in body["items"] if i["reservation_id"] == "lm-02")
    assert [ln["sku"] for ln in item["lines"]] == ["LS-C"] and item["state"] == "held"


def test_without_a_limit_a_page_holds_up_to_the_default(api: httpx.Client, world: tuple[Expected, Store]) -> None:
    body = api.get("/v1/reservations", headers=bearer(READER)).json()
    # 254 reservations and their lines are well within one page's reads: the page fills up
    assert len(body["items"]) == LIST_LIMIT_DEFAULT and body["next_cursor"] is not None
    seen = [i["reservation_id"] for i in body["items"]]
    while body["next_cursor"] is not None:
        body = api.get("/v1/reservations", params={"cursor": body["next_cursor"]}, headers=bearer(READER)).json()
        assert len(body["items"]) <= LIST_LIMIT_DEFAULT
        seen += [i["reservation_id"] for i in body["items"]]
    assert set(seen) == set(world[0])


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"cursor": "%%%"}, "query.cursor"),
        ({"cursor": "bm90IGEgY3Vyc29y"}, "query.cursor"),  # base64 of "not a cursor"
        ({"cursor": "x" * 600}, "query.cursor"),
        ({"limit": 0}, "query.limit"),
        ({"limit": LIST_LIMIT_MAX + 1}, "query.limit"),
        ({"limit": "ten"}, "query.limit"),
        ({"state": "lost"}, "query.state"),
        ({"sku": "bad sku"}, "query.sku"),
        ({"sku": ""}, "query.sku"),
        ({"customer": "-no"}, "query.customer"),
    ],
)
def test_bad_input_is_422_with_the_field(api: httpx.Client, params: dict[str, Any], field: str) -> None:
    reply = api.get("/v1/reservations", params=params, headers=bearer(READER))
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"] == "invalid_request"
    assert field in reply.text


def test_a_cursor_of_other_filters_or_forged_is_422(api: httpx.Client, world: tuple[Expected, Store]) -> None:
    first = api.get("/v1/reservations", params={"sku": "LS-A", "limit": 3}, headers=bearer(READER)).json()
    cursor = first["next_cursor"]
    assert cursor is not None
    for params in ({"sku": "LS-B"}, {"sku": "LS-A", "state": "held"}, {}):
        reply = api.get("/v1/reservations", params={**params, "cursor": cursor}, headers=bearer(READER))
        assert reply.status_code == 422, (params, reply.text)
        assert "other filters" in reply.text
    data = cursor_data(cursor)
    for forged in ({**data, "c": -1}, {**data, "p": 7}, {**data, "v": 2}, {**data, "x": 1}, [1, 2]):
        text = base64.urlsafe_b64encode(orjson.dumps(forged)).rstrip(b"=").decode()
        reply = api.get("/v1/reservations", params={"sku": "LS-A", "cursor": text}, headers=bearer(READER))
        assert reply.status_code == 422 and "query.cursor" in reply.text, (forged, reply.text)
    again = api.get("/v1/reservations", params={"sku": "LS-A", "limit": 50, "cursor": cursor}, headers=bearer(READER))
    assert again.status_code == 200  # the limit may change between pages


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), (bearer("not-a-configured-token"), 401), (bearer(ROLELESS), 403)],
)
def test_the_read_role_is_required(api: httpx.Client, headers: dict[str, str], status: int) -> None:
    reply = api.get("/v1/reservations", params={"limit": 5}, headers=headers)
    assert reply.status_code == status
    assert reply.json()["error"] == ("unauthorized" if status == 401 else "forbidden")
    assert api.get("/v1/reservations", params={"limit": 5}, headers=bearer(ADMIN)).status_code == 200


def test_the_openapi_document_describes_the_listing(api: httpx.Client) -> None:
    doc = api.get("/openapi.json").json()
    operation = doc["paths"]["/v1/reservations"]["get"]
    assert operation["operationId"] == "list_reservations"
    assert {p["name"] for p in operation["parameters"]} == {"sku", "customer", "state", "cursor", "limit"}
    assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ReservationPageOut")
    line = doc["components"]["schemas"]["ListedLineOut"]["properties"]
    assert {"customer_id", "channel", "qty", "location", "expires_ms", "promised_ms"} <= set(line)


# --------------------------------------------------------------------------- bounded work


HISTORY = 5000


@pytest.fixture
def history(redis: Any, settings: Settings) -> Store:
    """One SKU with HISTORY ended lines (orders placed, then cancelled)."""
    client = sync_redis(settings)
    store = Store(client, prefix=settings.key_prefix)
    _stock(store, ("LS-HIST",))
    rids = [f"h-{i:05d}" for i in range(HISTORY)]
    placed = store.apply([SupplyCommand("LS-HIST", "order_placed", {"rid": rid, "qty": 1, "customer": "cust-1"})
                          for rid in rids])
    assert all(r["status"] == "ok" for r in placed)
    cancelled = store.apply([SupplyCommand("LS-HIST", "order_cancelled", {"rid": rid}) for rid in rids])
    assert all(r["status"] == "ok" for r in cancelled)
    assert store.position("LS-HIST")["committed"] == 0
    return store


def _hscans(redis: Any) -> int:
    """HSCAN calls the server (every primary of a Cluster) has run."""
    if isinstance(redis, redis_lib.RedisCluster):
        stats = redis.info("commandstats", target_nodes=redis_lib.RedisCluster.PRIMARIES)
        return sum(int(s.get("cmdstat_hscan", {}).get("calls", 0)) for s in stats.values())
    return int(redis.info("commandstats").get("cmdstat_hscan", {}).get("calls", 0))


def test_a_page_over_a_long_history_does_bounded_work(history: Store, redis: Any, settings: Settings,
                                                      topics: Topics) -> None:
    page = history.list_reservations(sku="LS-HIST", customer="nobody")
    assert page.items == []
    assert page.next_cursor is not None
    assert page.calls <= SCAN_CALLS_MAX
    # what the calls returned: at most READS_MAX and one more batch, far from the history
    assert page.scanned <= min(READS_MAX + 2 * SCAN_COUNT, SCAN_CALLS_MAX * 2 * SCAN_COUNT) < HISTORY

    app = create_app(_app_settings(settings), topics=topics, sweep=False)
    with served(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        before = _hscans(redis)
        reply = http.get("/v1/reservations", params={"sku": "LS-HIST", "customer": "nobody"}, headers=bearer(READER))
        assert 1 <= _hscans(redis) - before <= SCAN_CALLS_MAX  # counted by the server itself
        assert reply.status_code == 200 and reply.json()["items"] == [] and reply.json()["next_cursor"]

        ids, pages = page_all(http, {"sku": "LS-HIST", "customer": "nobody"}, LIST_LIMIT_MAX)
        assert ids == [] and pages > 1  # the history takes several bounded pages, then it ends

        ids, pages = page_all(http, {"sku": "LS-HIST", "state": "released"}, LIST_LIMIT_MAX)
        assert set(ids) == {f"h-{i:05d}" for i in range(HISTORY)}


def test_pages_that_end_inside_a_scan_batch_miss_nothing(history: Store) -> None:
    seen: list[str] = []
    cursor = None
    inside = 0
    while True:
        page = history.list_reservations(sku="LS-HIST", state="released", limit=37, cursor=cursor)
        assert len(page.items) <= 37
        seen += [item.reservation_id for item in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
        inside += "a" in cursor_data(cursor)
    assert set(seen) == {f"h-{i:05d}" for i in range(HISTORY)}
    assert inside > 0  # the case the cursor's end position and last id are for


class Churn:
    """Changes to one SKU between the pages of a listing: each ``step`` holds new lines and
    releases an earlier one (it moves from the live lines to the ended ones)."""

    def __init__(self, settings: Settings, sku: str) -> None:
        self.client = AtpClient(sync_redis(settings), prefix=settings.key_prefix, coalesce=False)
        self.sku = sku
        self.made = 0

    def step(self) -> None:
        for _ in range(3):
            _held(self.client.hold(f"churn-{self.made}", [(self.sku, 1, None)], customer_id="cust-9"))
            self.made += 1
        _held(self.client.release(f"churn-{self.made - 2}"))


def listed_while_changing(store: Store, churn: Churn, limit: int, **params: str) -> list[str]:
    seen: list[str] = []
    cursor = None
    while True:
        page = store.list_reservations(limit=limit, cursor=cursor, **params)
        seen += [item.reservation_id for item in page.items]
        cursor = page.next_cursor
        if cursor is None:
            return seen
        churn.step()


def test_what_is_there_throughout_is_listed_while_others_change(history: Store, settings: Settings) -> None:
    churn = Churn(settings, "LS-HIST")
    seen = set(listed_while_changing(history, churn, 37, sku="LS-HIST"))
    everyone = {f"h-{i:05d}" for i in range(HISTORY)}
    assert churn.made > 100
    assert everyone <= seen, sorted(everyone - seen)[:10]


def test_every_reservation_there_throughout_is_listed_while_others_come(
    world: tuple[Expected, Store], settings: Settings
) -> None:
    expected, store = world
    churn = Churn(settings, "LS-B")
    seen = set(listed_while_changing(store, churn, 7))
    assert churn.made > 60
    assert set(expected) <= seen, sorted(set(expected) - seen)


def test_lines_leaving_a_scan_batch_between_pages_hide_none_of_the_others(redis: Any, settings: Settings) -> None:
    # A batch that lost lines since the page before comes back reaching further (SCAN stops
    # once it has COUNT entries): then none of it may be skipped as already listed.
    store = Store(sync_redis(settings), prefix=settings.key_prefix)
    _stock(store, ("LS-LIVE",))
    rids = [f"k-{i:04d}" for i in range(3000)]
    placed = store.apply([SupplyCommand("LS-LIVE", "order_placed", {"rid": rid, "qty": 1}) for rid in rids])
    assert all(r["status"] == "ok" for r in placed)
    leaving = iter(rids[::3])
    stays = set(rids) - set(rids[::3])
    seen: set[str] = set()
    cursor = None
    inside = 0
    while True:
        page = store.list_reservations(sku="LS-LIVE", state="committed", limit=37, cursor=cursor)
        seen |= {item.reservation_id for item in page.items}
        cursor = page.next_cursor
        if cursor is None:
            break
        inside += "a" in cursor_data(cursor)
        gone = [next(leaving, None) for _ in range(12)]
        store.apply([SupplyCommand("LS-LIVE", "order_cancelled", {"rid": rid}) for rid in gone if rid])
    assert inside > 10
    assert stays <= seen, sorted(stays - seen)[:10]


# --------------------------------------------------------------------------- the CLI


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


@pytest.fixture
def cli_settings(redis: Any, redis_url: str, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command's env: only the suite's Redis, no developer ATP_* or atp.toml."""
    for name in list(os.environ):
        if name.upper().startswith("ATP_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ATP_CONFIG", os.devnull)
    monkeypatch.setenv("ATP_REDIS_URL", redis_url)
    monkeypatch.setenv("ATP_REDIS_CLUSTER", "true" if settings.redis_cluster else "false")
    monkeypatch.setenv("ATP_KEY_PREFIX", settings.key_prefix)


@pytest.fixture
def cli_env(cli_settings: None, world: tuple[Expected, Store]) -> Expected:
    return world[0]


def test_cli_list_json_pages_through_one_object_each(cli_env: Expected, capsys: pytest.CaptureFixture[str]) -> None:
    seen: set[str] = set()
    cursor: list[str] = []
    for _ in range(200):
        code, out, err = run(["reservations", "list", "--customer", "cust-2", "--state", "committed",
                              "--limit", "4", "--json", *cursor], capsys)
        assert code == 0, err
        assert out.count("\n") == 1
        body = orjson.loads(out)
        assert set(body) == {"items", "next_cursor"} and len(body["items"]) <= 4
        for item in body["items"]:
            assert {"reservation_id", "state", "promised_ms", "promised_at", "expires_ms", "expires_at",
                    "lines"} == set(item)
            assert item["state"] == "committed"
            assert all(line["customer_id"] == "cust-2" for line in item["lines"])
        seen |= {item["reservation_id"] for item in body["items"]}
        if body["next_cursor"] is None:
            break
        cursor = ["--cursor", body["next_cursor"]]
    assert seen == wanted(cli_env, customer="cust-2", state="committed")

    code, out, _ = run(["reservations", "list", "--sku", "LS-A", "--limit", "2"], capsys)
    assert code == 0 and "more with --cursor" in out


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--cursor", "garbage!"], "bad --cursor"),
        (["--state", "lost"], "bad --state"),
        (["--sku", "bad sku"], "bad --sku"),
        (["--customer", "-x"], "bad --customer"),
        (["--limit", "0"], "--limit"),
        (["--limit", str(LIST_LIMIT_MAX + 1)], "--limit"),
    ],
)
def test_cli_bad_arguments_are_one_line_and_exit_2(cli_settings: None, capsys: pytest.CaptureFixture[str],
                                                   argv: list[str], says: str) -> None:
    code, out, err = run(["reservations", "list", *argv, "--json"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and says in err
    body = orjson.loads(out)
    assert body["error"] == "bad_argument" and says in body["detail"]


# --------------------------------------------------------------------------- Redis Cluster


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    cluster = EmbeddedRedisCluster(primaries=3)
    cluster.start()
    try:
        yield cluster.url
    finally:
        cluster.stop()


def test_on_a_cluster_the_listing_goes_through_every_primary(cluster_url: str) -> None:
    sync = redis_lib.RedisCluster.from_url(cluster_url)
    sync.flushall(target_nodes=redis_lib.RedisCluster.PRIMARIES)
    skus = tuple(f"CL-{n}" for n in range(6))
    store = Store(sync)
    _stock(store, skus)
    client = AtpClient(sync, coalesce=False)
    rids = {f"cl-{i:03d}": skus[i % 6] for i in range(90)}
    for rid, sku in rids.items():
        _held(client.hold(rid, [(sku, 1, None)], customer_id=CUSTOMERS[int(rid[-1]) % 2]))
    _held(client.hold("cl-multi", [(skus[0], 1, None), (skus[3], 1, None)], customer_id="cust-1"))
    everyone = {*rids, "cl-multi"}

    shards: set[int] = set()
    seen: list[str] = []
    cursor = None
    while True:
        page = store.list_reservations(limit=5, cursor=cursor)
        seen += [item.reservation_id for item in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
        shards.add(cursor_data(cursor)["p"])
    assert set(seen) == everyone
    assert len(shards) == 3 and 0 in shards  # every primary, named by its lowest slot

    async def async_listing(params: dict[str, str]) -> set[str]:
        conn = aioredis.RedisCluster.from_url(cluster_url)
        try:
            store = AsyncStore(conn)
            out: set[str] = set()
            cursor = None
            while True:
                page = await store.list_reservations(limit=4, cursor=cursor, **params)
                out |= {item.reservation_id for item in page.items}
                cursor = page.next_cursor
                if cursor is None:
                    return out
        finally:
            await conn.aclose()

    assert asyncio.run(async_listing({})) == everyone
    assert asyncio.run(async_listing({"customer": "cust-1"})) == {
        rid for rid in rids if int(rid[-1]) % 2 == 0} | {"cl-multi"}
    assert asyncio.run(async_listing({"sku": skus[3]})) == {
        rid for rid, sku in rids.items() if sku == skus[3]} | {"cl-multi"}
    found = []
    cursor = None
    while True:
        page = store.list_reservations(customer="cust-1", limit=LIST_LIMIT_MAX, cursor=cursor)
        found += [item for item in page.items if item.reservation_id == "cl-multi"]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert [[line["sku"] for line in item.lines] for item in found] == [[skus[0], skus[3]]]
