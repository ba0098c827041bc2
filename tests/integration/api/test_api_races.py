"""Races on one reservation id through the HTTP API of two real ``atp serve`` processes (R16).

A 201 or 200 is a promise: every line it names must be what Redis holds. These tests send real
concurrent requests over many connections to two API processes on one Redis, mixing same-key
retries with the same and with other lines, lifecycle calls and stream orders for the same ids,
then compare every answer with the stored lines; the store's invariant checker (R12) runs after
each test.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import defaultdict
from typing import Any

import httpx
import pytest

from engine.settings import Settings
from engine.store.keys import decode_rid_index, rid_index_key
from engine.store.store import Store
from engine.store.wire import SupplyCommand
from tests.integration.api_harness import RESERVER, api_processes, bearer, seed

pytestmark = pytest.mark.anyio

CONNECTIONS = 48  # per API process


def _clients(urls: list[str]) -> list[httpx.AsyncClient]:
    # idle connections are dropped before the server's keep-alive timeout (5 s) can close one
    # under a request that is just being sent on it
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS, keepalive_expiry=2.0)
    return [httpx.AsyncClient(base_url=u, headers=bearer(RESERVER), limits=limits, timeout=60.0) for u in urls]


def _hold_body(lines: list[tuple[str, int]]) -> dict[str, Any]:
    return {"lines": [{"sku": s, "qty": q} for s, q in lines], "ttl_seconds": 600}


def _answered(reply: httpx.Response) -> set[tuple[str, int]]:
    return {(ln["sku"], ln["qty"]) for ln in reply.json()["lines"]}


def _stored(store: Store, rid: str, skus: list[str]) -> dict[str, dict[str, Any]]:
    """sku -> the stored line of ``rid`` (only SKUs that have one)."""
    out = {}
    for sku in skus:
        got = store.get_line(sku, rid)
        if got["status"] == "ok":
            out[sku] = got["line"]
    return out


@pytest.fixture
def store(redis: Any, settings: Settings) -> Store:
    return Store(redis, prefix=settings.key_prefix)


async def test_one_key_with_other_lines_at_once_never_answers_201_for_units_not_held(
    store: Store, settings: Settings
) -> None:
    # M = [A:1, B:1] and S = [A:1] under one Idempotency-Key, sent at the same moment to two
    # API processes: at most one may win, and what it answered must be exactly what is held.
    seed(store, "RACE-A", 10_000)
    seed(store, "RACE-B", 10_000)
    keys = [f"race-{i}" for i in range(150)]
    m_lines, s_lines = [("RACE-A", 1), ("RACE-B", 1)], [("RACE-A", 1)]
    with api_processes(settings, 2) as urls:
        clients = _clients(urls)
        try:
            async def pair(i: int, key: str) -> tuple[httpx.Response, httpx.Response]:
                first, second = clients[i % 2], clients[(i + 1) % 2]
                m, s = await asyncio.gather(
                    first.post("/v1/reservations", json=_hold_body(m_lines), headers={"Idempotency-Key": key}),
                    second.post("/v1/reservations", json=_hold_body(s_lines), headers={"Idempotency-Key": key}),
                )
                return m, s

            replies = await asyncio.gather(*(pair(i, k) for i, k in enumerate(keys)))
        finally:
            for c in clients:
                await c.aclose()
    wins = {"M": 0, "S": 0, "none": 0}
    for key, (m, s) in zip(keys, replies, strict=True):
        assert m.status_code in (201, 422) and s.status_code in (201, 422), (m.text, s.text)
        assert not (m.status_code == 201 and s.status_code == 201), (key, m.text, s.text)
        stored = _stored(store, key, ["RACE-A", "RACE-B"])
        held = {(sku, line["qty"]) for sku, line in stored.items() if line["state"] == "held"}
        index = decode_rid_index(store.redis.get(rid_index_key(key, store.prefix)))
        if m.status_code == 201:
            wins["M"] += 1
            assert _answered(m) == held == set(m_lines), (key, m.text, stored)
            assert index == ["RACE-A", "RACE-B"]
        elif s.status_code == 201:
            wins["S"] += 1
            assert _answered(s) == held == set(s_lines), (key, s.text, stored)
            assert index == ["RACE-A"]
        else:
            wins["none"] += 1
            assert stored == {} and index is None, (key, stored, index)
    assert wins["M"] + wins["S"] > 0, wins
    position = store.position("RACE-A")
    assert position["held"] == wins["M"] + wins["S"]
    assert store.position("RACE-B")["held"] == wins["M"]


async def test_confirm_of_a_reservation_with_a_cancelled_line_commits_nothing(
    store: Store, settings: Settings
) -> None:
    seed(store, "CONF-A", 10)
    seed(store, "CONF-B", 10)
    body = {"lines": [{"sku": "CONF-A", "qty": 2}, {"sku": "CONF-B", "qty": 3}], "ttl_seconds": 600}
    with api_processes(settings, 1) as (url,):
        async with _clients([url])[0] as client:
            held = await client.post("/v1/reservations", json=body, headers={"Idempotency-Key": "conf-1"})
            assert held.status_code == 201, held.text
            # the stream cancels line B only (as the flow applies an order.cancelled naming B)
            cancelled = store.apply([SupplyCommand("CONF-B", "order_cancelled", {"rid": "conf-1"}, event_id="c-1")])
            assert cancelled[0]["status"] == "ok"
            for op, body_ in (("confirm", None), ("extend", {"ttl_seconds": 900})):
                refused = await client.post(f"/v1/reservations/conf-1/{op}", json=body_)
                assert refused.status_code == 409, refused.text
                assert (refused.json()["error"], refused.json()["state"]) == ("not_allowed", "released")
            line_a = store.get_line("CONF-A", "conf-1")["line"]
            assert line_a["state"] == "held" and line_a["expires_ms"] == held.json()["expires_ms"]
            assert (store.position("CONF-A")["held"], store.position("CONF-A")["committed"]) == (2, 0)
            released = await client.post("/v1/reservations/conf-1/release")
            assert released.status_code == 200 and released.json()["state"] == "released"
            assert store.position("CONF-A")["held"] == 0


async def test_confirm_when_one_line_has_expired_commits_nothing(store: Store, settings: Settings) -> None:
    seed(store, "EXP-A", 10)
    seed(store, "EXP-B", 10)
    body = {"lines": [{"sku": "EXP-A", "qty": 1}, {"sku": "EXP-B", "qty": 1}], "ttl_seconds": 1}
    with api_processes(settings, 1) as (url,):
        async with _clients([url])[0] as client:
            held = await client.post("/v1/reservations", json=body, headers={"Idempotency-Key": "exp-1"})
            assert held.status_code == 201, held.text
            assert store.extend("EXP-A", "exp-1", 60_000)["status"] == "ok"  # line A lives on
            secs, micros = store.redis.time()  # line B ends at its whole second, on Redis's clock
            await asyncio.sleep((held.json()["expires_ms"] - int(secs) * 1000 - int(micros) // 1000) / 1000 + 0.05)
            refused = await client.post("/v1/reservations/exp-1/confirm")
            assert refused.status_code == 409, refused.text
            assert refused.json()["state"] == "expired"
    assert store.get_line("EXP-A", "exp-1")["line"]["state"] == "held"
    assert store.position("EXP-A")["committed"] == 0


@pytest.mark.parametrize("seed_", [16, 17, 18])
async def test_http_concurrency_property_every_answer_is_what_redis_holds(
    store: Store, settings: Settings, seed_: int
) -> None:
    """R16: random interleavings of hold (same-key retries with the same and with other lines),
    confirm, release, extend and stream orders for the same ids, from many connections to two
    API processes; afterwards every 201 / 200 is what Redis holds."""
    rng = random.Random(seed_)
    skus = ["PROP-A", "PROP-B", "PROP-C"]
    for sku, stock in zip(skus, (60, 400, 400), strict=True):
        seed(store, sku, stock)  # PROP-A runs out, so refusals and rollbacks happen too
    rids = [f"prop-{i}" for i in range(80)]
    # each id has its canonical lines and "other" lines: the canonical set minus or plus a SKU
    # (shared SKUs keep their quantity, so a stream order for the canonical lines always matches)
    canonical: dict[str, list[tuple[str, int]]] = {}
    other: dict[str, list[tuple[str, int]]] = {}
    for rid in rids:
        chosen = rng.sample(skus, rng.choice((1, 2)))
        canonical[rid] = sorted((s, rng.randint(1, 3)) for s in chosen)
        extra = next(s for s in skus if s not in chosen)
        other[rid] = canonical[rid][:1] if len(chosen) == 2 else sorted([*canonical[rid], (extra, 1)])
    ops: list[tuple[str, str]] = []
    for rid in rids:
        ops += [("hold", rid)] * 3 + [("hold_other", rid)] * 2
        ops += [(rng.choice(("confirm", "release", "extend", "get")), rid) for _ in range(3)]
    rng.shuffle(ops)
    # the holds of one id leave together (same-key retries race each other); the other calls on it
    # follow within a few milliseconds
    start = {rid: rng.random() * 0.4 for rid in rids}

    answers: dict[str, list[tuple[str, int, Any]]] = defaultdict(list)
    stop = threading.Event()
    stream_errors: list[BaseException] = []

    def stream() -> None:
        # the flow's part: order.placed / order.cancelled for the same ids, one command per SKU
        n = 0
        srng = random.Random(seed_)
        try:
            while not stop.is_set():
                rid = srng.choice(rids)
                kind = srng.choice(("order_placed", "order_placed", "order_cancelled"))
                commands = []
                for sku, qty in canonical[rid]:
                    n += 1
                    payload = {"rid": rid} if kind == "order_cancelled" else {
                        "rid": rid, "loc": "", "qty": qty, "channel": "web", "customer": ""}
                    commands.append(SupplyCommand(sku, kind, payload, event_id=f"ev-{n}"))
                store.apply(commands)
                time.sleep(0.002)
        except BaseException as exc:  # reported by the test
            stream_errors.append(exc)

    with api_processes(settings, 2) as urls:
        clients = _clients(urls)
        streamer = threading.Thread(target=stream, daemon=True)
        streamer.start()
        try:
            async def run(i: int, op: str, rid: str) -> None:
                client = clients[i % 2]
                await asyncio.sleep(start[rid] + (0 if op.startswith("hold") else rng.random() * 0.03))
                if op in ("hold", "hold_other"):
                    lines = canonical[rid] if op == "hold" else other[rid]
                    r = await client.post("/v1/reservations", json=_hold_body(lines), headers={"Idempotency-Key": rid})
                elif op == "get":
                    r = await client.get(f"/v1/reservations/{rid}")
                elif op == "extend":
                    r = await client.post(f"/v1/reservations/{rid}/extend", json={"ttl_seconds": 900})
                else:
                    r = await client.post(f"/v1/reservations/{rid}/{op}")
                assert r.status_code < 500, r.text
                answers[rid].append((op, r.status_code, r.json()))

            await asyncio.gather(*(run(i, op, rid) for i, (op, rid) in enumerate(ops)))
        finally:
            stop.set()
            streamer.join(30)
            for c in clients:
                await c.aclose()
    assert not stream_errors, stream_errors

    promised = 0
    for rid in rids:
        extended = any(op == "extend" and status == 200 for op, status, _ in answers[rid])
        won = {frozenset((s, q) for s, q, _ in _lines(body))
               for op, status, body in answers[rid] if op.startswith("hold") and status == 201}
        assert len(won) <= 1, (rid, _history(answers[rid]))  # one id, one set of lines
        stored = _stored(store, rid, skus)
        for op, status, body in answers[rid]:
            if status not in (200, 201):
                continue
            promised += 1
            for ln in body["lines"]:
                sku, qty, state = ln["sku"], ln["qty"], ln["state"]
                line = stored.get(sku)
                assert line is not None, f"{rid}: {op} answered {status} for {sku}, which Redis does not hold"
                assert line["qty"] == qty, (rid, op, body, line)
                if op == "confirm":
                    assert state == "committed", (rid, body)
                if state == "held" and line["state"] in ("held", "expired") and not extended:
                    # the very line that was answered (a line rolled back and made again by
                    # another request would carry another expiry)
                    assert line["expires_ms"] == ln["expires_ms"], (rid, op, body, line)
    assert promised > len(rids), answers


def _history(answers: list[tuple[str, int, Any]]) -> list[tuple[str, int, Any]]:
    """An id's answers in the order they came, compact: (call, status, lines or error)."""
    return [(op, status, _lines(body) if "lines" in body and status < 300 else body.get("error"))
            for op, status, body in answers]


def _lines(body: dict[str, Any]) -> list[tuple[str, int, str]]:
    return [(ln["sku"], ln["qty"], ln["state"]) for ln in body["lines"]]
