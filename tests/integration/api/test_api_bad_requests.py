"""R9 (docs/quality.md), hand-written half: bad requests get a 4xx with a machine-readable reason, never a 5xx,
and change nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from connectors.topics import Topics
from engine.settings import Settings
from tests.integration.api_harness import ADMIN, bearer, figures, in_process, make_app, seed, sync_store

pytestmark = pytest.mark.anyio

SKU = "BAD-1"
AUTH = bearer(ADMIN)
JSON = {"Content-Type": "application/json"}
KEY = {"Idempotency-Key": "bad-req-1"}
OK_HOLD = {"lines": [{"sku": SKU, "qty": 1}]}

# (name, method, path, extra headers, JSON body or raw bytes, status, error code, a field named in reasons)
CASES: list[tuple[str, str, str, dict[str, str], Any, int, str, str | None]] = [
    ("malformed json", "POST", "/v1/reservations", KEY, b"{lines: [", 422, "invalid_request", "body"),
    ("json array body", "POST", "/v1/reservations", KEY, b"[]", 422, "invalid_request", "body"),
    ("empty body", "POST", "/v1/reservations", KEY, b"", 422, "invalid_request", "body"),
    ("no lines", "POST", "/v1/reservations", KEY, {"lines": []}, 422, "invalid_request", "body.lines"),
    ("qty zero", "POST", "/v1/reservations", KEY, {"lines": [{"sku": SKU, "qty": 0}]}, 422, "invalid_request",
     "body.lines.0.qty"),
    ("qty negative", "POST", "/v1/reservations", KEY, {"lines": [{"sku": SKU, "qty": -5}]}, 422,
     "invalid_request", "body.lines.0.qty"),
    ("qty huge", "POST", "/v1/reservations", KEY, {"lines": [{"sku": SKU, "qty": 10**30}]}, 422,
     "invalid_request", "body.lines.0.qty"),
    ("qty as string", "POST", "/v1/reservations", KEY, {"lines": [{"sku": SKU, "qty": "1"}]}, 422,
     "invalid_request", "body.lines.0.qty"),
    ("qty as float", "POST", "/v1/reservations", KEY, {"lines": [{"sku": SKU, "qty": 1.5}]}, 422,
     "invalid_request", "body.lines.0.qty"),
    ("sku with bad characters", "POST", "/v1/reservations", KEY, {"lines": [{"sku": "a b{c}", "qty": 1}]}, 422,
     "invalid_request", "body.lines.0.sku"),
    ("sku as number", "POST", "/v1/reservations", KEY, {"lines": [{"sku": 12, "qty": 1}]}, 422,
     "invalid_request", "body.lines.0.sku"),
    ("unknown field", "POST", "/v1/reservations", KEY, {**OK_HOLD, "discount": 5}, 422, "invalid_request",
     "body.discount"),
    ("ttl zero", "POST", "/v1/reservations", KEY, {**OK_HOLD, "ttl_seconds": 0}, 422, "invalid_request",
     "body.ttl_seconds"),
    ("bad channel", "POST", "/v1/reservations", KEY, {**OK_HOLD, "channel": "web shop"}, 422,
     "invalid_request", "body.channel"),
    ("too many lines", "POST", "/v1/reservations", KEY, {"lines": [{"sku": SKU, "qty": 1}] * 101}, 422,
     "invalid_request", "body.lines"),
    ("missing idempotency key", "POST", "/v1/reservations", {}, OK_HOLD, 400, "missing_idempotency_key", None),
    ("bad idempotency key", "POST", "/v1/reservations", {"Idempotency-Key": "has space"}, OK_HOLD, 422,
     "invalid_request", "header.Idempotency-Key"),
    ("one sku at two locations", "POST", "/v1/reservations", KEY,
     {"lines": [{"sku": SKU, "qty": 1, "location": "A"}, {"sku": SKU, "qty": 1, "location": "B"}]}, 422,
     "invalid_request", None),
    ("bad sku in path", "GET", "/v1/atp/bad%20sku", {}, None, 422, "invalid_request", "path.sku"),
    ("bad location query", "GET", f"/v1/atp/{SKU}?location=a%2Fb", {}, None, 422, "invalid_request",
     "query.location"),
    ("query without skus", "POST", "/v1/atp/query", {}, {"skus": []}, 422, "invalid_request", "body.skus"),
    ("query of 1001 skus", "POST", "/v1/atp/query", {}, {"skus": [f"S{i}" for i in range(1001)]}, 422,
     "invalid_request", "body.skus"),
    ("bad reservation id in path", "GET", "/v1/reservations/%24%24", {}, None, 422, "invalid_request",
     "path.rid"),
    ("unknown reservation", "GET", "/v1/reservations/nope-1", {}, None, 404, "not_found", None),
    ("confirm unknown reservation", "POST", "/v1/reservations/nope-1/confirm", {}, None, 404, "not_found", None),
    ("extend without body", "POST", "/v1/reservations/nope-1/extend", {}, None, 422, "invalid_request", "body"),
    ("extend with ttl too long", "POST", "/v1/reservations/nope-1/extend", {}, {"ttl_seconds": 86_401}, 422,
     "invalid_request", "body.ttl_seconds"),
    ("policy with unknown mode", "PUT", f"/v1/policies/{SKU}", {}, {"mode": "yolo"}, 422, "invalid_request",
     "body.mode"),
    ("policy cap over 1000", "PUT", f"/v1/policies/{SKU}", {}, {"cap_pm": 1001}, 422, "invalid_request",
     "body.cap_pm"),
    ("policy negative safety", "PUT", f"/v1/policies/{SKU}", {}, {"safety": -1}, 422, "invalid_request",
     "body.safety"),
    ("adjustment delta zero", "POST", "/v1/adjustments", {}, {"sku": SKU, "delta": 0, "reason": "x"}, 422,
     "invalid_request", "body.delta"),
    ("adjustment without reason", "POST", "/v1/adjustments", {}, {"sku": SKU, "delta": 1}, 422,
     "invalid_request", "body.reason"),
    ("count negative", "POST", "/v1/counts", {}, {"sku": SKU, "on_hand": -1}, 422, "invalid_request",
     "body.on_hand"),
    ("unknown route", "GET", "/v1/nothing-here", {}, None, 404, "not_found", None),
    ("wrong method", "DELETE", f"/v1/atp/{SKU}", {}, None, 405, "method_not_allowed", None),
]


@pytest.fixture
def store(redis: Any, redis_url: str, settings: Settings) -> Any:
    store = sync_store(redis_url, settings)
    seed(store, SKU, 5)
    return store


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "code", "field"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
async def test_bad_request_gets_4xx_with_a_reason_and_changes_nothing(
    store: Any,
    settings: Settings,
    topics: Topics,
    method: str,
    path: str,
    headers: dict[str, str],
    body: Any,
    status: int,
    code: str,
    field: str | None,
) -> None:
    before = figures(store, SKU)
    kwargs: dict[str, Any] = {"headers": {**AUTH, **headers}}
    if isinstance(body, bytes):
        kwargs["content"] = body
        kwargs["headers"].update(JSON)
    elif body is not None:
        kwargs["json"] = body
    async with in_process(make_app(settings, topics)) as api:
        reply = await api.request(method, path, **kwargs)
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/problem+json"
    data = reply.json()
    assert data["error"] == code
    # RFC 9457: the type names the code, the status repeats the HTTP one
    assert (data["type"], data["status"]) == (f"urn:atp-engine:problem:{code}", status) and data["title"]
    assert isinstance(data["detail"], str) and data["detail"]
    if field is not None:
        assert field in [r["field"] for r in data["reasons"]] or any(
            r["field"].startswith(field) for r in data["reasons"]
        ), data["reasons"]
        assert all(r["reason"] and r["message"] for r in data["reasons"])
    assert figures(store, SKU) == before


async def test_body_over_the_size_limit_is_413(store: Any, settings: Settings, topics: Topics) -> None:
    from engine.api import create_app
    from tests.integration.api_harness import api_settings

    app = create_app(api_settings(settings, max_body_bytes=2048), topics=topics, sweep=False)
    big = {"lines": [{"sku": SKU, "qty": 1}], "customer_id": "c" * 100, "pad": "x" * 4000}
    async with in_process(app) as api:
        declared = await api.post("/v1/reservations", json=big, headers={**AUTH, **KEY})
        async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams in
            for _ in range(4):
                yield b"x" * 1024

        streamed = await api.post("/v1/reservations", content=chunks(), headers={**AUTH, **KEY, **JSON})
    for reply in (declared, streamed):
        assert reply.status_code == 413, reply.text
        assert reply.json()["error"] == "payload_too_large"
    assert figures(store, SKU)["held"] == 0


async def test_redis_down_is_503_with_retry_after(settings: Settings, topics: Topics) -> None:
    from connectors.embedded import free_port
    from engine.api import create_app
    from tests.integration.api_harness import api_settings

    dead = api_settings(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    async with in_process(create_app(dead, topics=topics, sweep=False)) as api:
        atp = await api.get(f"/v1/atp/{SKU}", headers=AUTH)
        hold = await api.post("/v1/reservations", json=OK_HOLD, headers={**AUTH, **KEY})
        ready = await api.get("/readyz")
    for reply in (atp, hold):
        assert reply.status_code == 503, reply.text
        assert reply.json()["error"] == "unavailable"
        assert reply.json()["retry_after"] >= 1
        assert int(reply.headers["retry-after"]) >= 1
    assert ready.status_code == 503
    assert ready.json()["checks"]["redis"] is False
