"""The hot path (``engine.api.hot_path``) answers exactly as the FastAPI app does.

Two apps over the same Redis — one with the hot path, one without (the reference) — get the
same requests on twin SKUs and reservation ids (``…-zhq`` / ``…-zrq``, same length). Every
reply must match in status, headers and body (times masked: the two calls are not the same
instant), and so must the metrics labels they record. The requests the hot path should serve
must not reach the router; all others must, replayed body included, but for those the app's
middleware in front of both answers itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from connectors.topics import Topics
from engine import metrics
from engine.api import create_app
from engine.api.app import AtpApi
from engine.settings import Settings
from tests.integration.api_harness import (
    ADMIN,
    OPERATOR,
    READER,
    RESERVER,
    api_settings,
    bearer,
    figures,
    seed,
    sync_store,
)

pytestmark = pytest.mark.anyio

MAX_BODY = 4096
TAGS = ("zhq", "zrq")  # same length, found nowhere else in a reply
_TIME_FIELD = re.compile(rb'"(\w+_(?:ms|at))":(\d+|"[^"]*"|null)')

# (name, method, path, headers, body: dict → JSON, bytes → raw, None → none, served by the hot
# path: True; by the router: False; by the app's middleware in front of both: None)
# ``{t}`` in paths, header values and bodies becomes the app's tag.
Request = tuple[str, str, str, dict[str, str], Any, bool]
JSON = {"Content-Type": "application/json"}
HOLD = {"lines": [{"sku": "EQ-1-{t}", "qty": 1}], "ttl_seconds": 600}
MULTI = {
    "lines": [{"sku": "EQ-2-{t}", "qty": 1, "location": "WH1"}, {"sku": "EQ-1-{t}", "qty": 1}],
    "channel": "web",
    "customer_id": "cust-{t}",
}
R = {**bearer(RESERVER), **JSON}

REQUESTS: list[Request] = [
    ("hold", "POST", "/v1/reservations", {**R, "Idempotency-Key": "eq-a-{t}"}, HOLD, True),
    ("hold repeated", "POST", "/v1/reservations", {**R, "Idempotency-Key": "eq-a-{t}"}, HOLD, True),
    ("key reused with other lines", "POST", "/v1/reservations", {**R, "Idempotency-Key": "eq-a-{t}"},
     {"lines": [{"sku": "EQ-1-{t}", "qty": 2}]}, True),
    ("refused", "POST", "/v1/reservations", {**R, "Idempotency-Key": "eq-b-{t}"},
     {"lines": [{"sku": "EQ-1-{t}", "qty": 50}]}, True),
    ("multi-line hold", "POST", "/v1/reservations", {**R, "Idempotency-Key": "eq-c-{t}"}, MULTI, True),
    ("multi-line refused", "POST", "/v1/reservations", {**R, "Idempotency-Key": "eq-d-{t}"},
     {"lines": [{"sku": "EQ-1-{t}", "qty": 1}, {"sku": "EQ-2-{t}", "qty": 9}]}, True),
    ("one sku at two locations", "POST", "/v1/reservations", {**R, "Idempotency-Key": "eq-e-{t}"},
     {"lines": [{"sku": "EQ-1-{t}", "qty": 1, "location": "A"}, {"sku": "EQ-1-{t}", "qty": 1, "location": "B"}]},
     True),
    ("charset parameter", "POST", "/v1/reservations",
     {**bearer(RESERVER), "Content-Type": "application/json; charset=utf-8", "Idempotency-Key": "eq-f-{t}"},
     HOLD, True),
    ("admin token", "POST", "/v1/reservations", {**bearer(ADMIN), **JSON, "Idempotency-Key": "eq-g-{t}"}, HOLD,
     True),
    ("read", "GET", "/v1/reservations/eq-a-{t}", bearer(READER), None, True),
    ("read unknown", "GET", "/v1/reservations/eq-none-{t}", bearer(READER), None, True),
    ("confirm", "POST", "/v1/reservations/eq-a-{t}/confirm", bearer(RESERVER), None, True),
    ("confirm again", "POST", "/v1/reservations/eq-a-{t}/confirm", bearer(RESERVER), None, True),
    ("release", "POST", "/v1/reservations/eq-a-{t}/release", bearer(RESERVER), None, True),
    ("release again", "POST", "/v1/reservations/eq-a-{t}/release", bearer(RESERVER), None, True),
    ("confirm after release", "POST", "/v1/reservations/eq-a-{t}/confirm", bearer(RESERVER), None, True),
    ("confirm unknown", "POST", "/v1/reservations/eq-none-{t}/confirm", bearer(RESERVER), None, True),
    ("read after release", "GET", "/v1/reservations/eq-a-{t}", bearer(READER), None, True),
    ("extend", "POST", "/v1/reservations/eq-c-{t}/extend", {**bearer(RESERVER), **JSON}, {"ttl_seconds": 60},
     True),
    ("extend after release", "POST", "/v1/reservations/eq-a-{t}/extend", {**bearer(RESERVER), **JSON},
     {"ttl_seconds": 60}, True),
    ("extend unknown", "POST", "/v1/reservations/eq-none-{t}/extend", {**bearer(RESERVER), **JSON},
     {"ttl_seconds": 60}, True),
    ("atp", "GET", "/v1/atp/EQ-1-{t}", bearer(READER), None, True),
    ("atp at a location", "GET", "/v1/atp/EQ-2-{t}?location=WH1", bearer(READER), None, True),
    ("atp of an unknown sku", "GET", "/v1/atp/EQ-9-{t}", bearer(READER), None, True),
    # Everything below goes to the app.
    ("no token", "POST", "/v1/reservations", {**JSON, "Idempotency-Key": "eq-h-{t}"}, HOLD, False),
    ("unknown token", "POST", "/v1/reservations", {**bearer("nope"), **JSON, "Idempotency-Key": "eq-h-{t}"}, HOLD,
     False),
    ("read-only token holds", "POST", "/v1/reservations", {**bearer(READER), **JSON, "Idempotency-Key": "eq-h-{t}"},
     HOLD, False),
    ("operator token confirms", "POST", "/v1/reservations/eq-c-{t}/confirm", bearer(OPERATOR), None, False),
    ("two spaces after Bearer", "POST", "/v1/reservations",
     {"Authorization": f"Bearer  {RESERVER}", **JSON, "Idempotency-Key": "eq-i-{t}"}, HOLD, False),
    ("basic auth", "GET", "/v1/atp/EQ-1-{t}", {"Authorization": "Basic dXNlcjpwYXNz"}, None, False),
    ("malformed json", "POST", "/v1/reservations", {**R, "Idempotency-Key": "eq-j-{t}"}, b"{lines: [", False),
    ("json array", "POST", "/v1/reservations", {**R, "Idempotency-Key": "eq-j-{t}"}, b"[]", False),
    ("NaN", "POST", "/v1/reservations", {**R, "Idempotency-Key": "eq-j-{t}"},
     b'{"lines": [{"sku": "EQ-1-{t}", "qty": NaN}]}', False),
    ("integer beyond 64 bits", "POST", "/v1/reservations", {**R, "Idempotency-Key": "eq-j-{t}"},
     b'{"lines": [{"sku": "EQ-1-{t}", "qty": 100000000000000000000000}]}', False),
    ("qty as string", "POST", "/v1/reservations", {**R, "Idempotency-Key": "eq-j-{t}"},
     {"lines": [{"sku": "EQ-1-{t}", "qty": "1"}]}, False),
    ("unknown field", "POST", "/v1/reservations", {**R, "Idempotency-Key": "eq-j-{t}"}, {**HOLD, "x": 1}, False),
    ("text/plain body", "POST", "/v1/reservations",
     {**bearer(RESERVER), "Content-Type": "text/plain", "Idempotency-Key": "eq-j-{t}"}, b'{"lines": []}', False),
    ("vendor json type", "POST", "/v1/reservations",
     {**bearer(RESERVER), "Content-Type": "application/vnd.atp+json", "Idempotency-Key": "eq-k-{t}"}, HOLD, False),
    ("no idempotency key", "POST", "/v1/reservations", R, HOLD, False),
    ("bad idempotency key", "POST", "/v1/reservations", {**R, "Idempotency-Key": "has space {t}"}, HOLD, False),
    ("body over the limit", "POST", "/v1/reservations", {**R, "Idempotency-Key": "eq-l-{t}"},
     {**HOLD, "pad": "x" * MAX_BODY}, None),
    ("bad reservation id", "GET", "/v1/reservations/%24%24{t}", bearer(READER), None, False),
    ("extend ttl too long", "POST", "/v1/reservations/eq-c-{t}/extend", {**bearer(RESERVER), **JSON},
     {"ttl_seconds": 86_401}, False),
    ("extend without a body", "POST", "/v1/reservations/eq-c-{t}/extend", {**bearer(RESERVER), **JSON}, None,
     False),
    ("extend without content type", "POST", "/v1/reservations/eq-c-{t}/extend", bearer(RESERVER),
     b'{"ttl_seconds": 60}', False),
    ("trailing slash", "GET", "/v1/reservations/eq-c-{t}/", bearer(READER), None, False),
    ("atp with another query parameter", "GET", "/v1/atp/EQ-1-{t}?location=WH1&x=1", bearer(READER), None, False),
    ("atp with an encoded location", "GET", "/v1/atp/EQ-1-{t}?location=a%2Fb", bearer(READER), None, False),
    ("atp of a bad sku", "GET", "/v1/atp/bad%20sku-{t}", bearer(READER), None, False),
    ("batch atp", "POST", "/v1/atp/query", {**bearer(READER), **JSON}, {"skus": ["EQ-1-{t}"]}, False),
    ("wrong method", "DELETE", "/v1/atp/EQ-1-{t}", bearer(READER), None, False),
]


def _fill(value: Any, tag: str) -> Any:
    if isinstance(value, str):
        return value.replace("{t}", tag)
    if isinstance(value, bytes):
        return value.replace(b"{t}", tag.encode())
    if isinstance(value, dict):
        return {k: _fill(v, tag) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, tag) for v in value]
    return value


def _normal(body: bytes, tag: str) -> bytes:
    """The body with the tag made neutral and times masked."""
    return _TIME_FIELD.sub(rb'"\1":"<time>"', body.replace(tag.encode(), b"TAG"))


def _headers(reply: httpx.Response, tag: str) -> list[tuple[str, str]]:
    return [(k, v.replace(tag, "TAG")) for k, v in reply.headers.items()]


class FallbackCounter:
    """Wraps the hot path's fallback (the app's router) and counts the requests it gets."""

    def __init__(self, app: AtpApi) -> None:
        assert app.hot_path is not None
        self.inner = app.hot_path.app
        self.calls = 0
        app.hot_path.app = self

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        await self.inner(scope, receive, send)


@pytest.fixture
def recorded_http(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, str, int]]]:
    seen: list[tuple[str, str, int]] = []
    real = metrics.observe_http

    def spy(route: str, method: str, status: int, seconds: float) -> None:
        seen.append((route, method, status))
        real(route, method, status, seconds)

    monkeypatch.setattr(metrics, "observe_http", spy)
    yield seen


def _client(app: AtpApi) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://atp.test")


async def _send(api: httpx.AsyncClient, request: Request, tag: str) -> httpx.Response:
    _, method, path, headers, body, _ = request
    kwargs: dict[str, Any] = {"headers": _fill(headers, tag)}
    if isinstance(body, bytes):
        kwargs["content"] = _fill(body, tag)
    elif body is not None:
        kwargs["content"] = orjson.dumps(_fill(body, tag))
    return await api.request(method, _fill(path, tag), **kwargs)


async def test_hot_path_replies_match_the_fastapi_app_byte_for_byte(
    redis: Any, redis_url: str, settings: Settings, topics: Topics, recorded_http: list[tuple[str, str, int]]
) -> None:
    store = sync_store(redis_url, settings)
    for tag in TAGS:
        seed(store, f"EQ-1-{tag}", 3)
        seed(store, f"EQ-2-{tag}", 1, "WH1")
    hot = create_app(api_settings(settings, max_body_bytes=MAX_BODY), topics=topics, sweep=False)
    ref = create_app(api_settings(settings, max_body_bytes=MAX_BODY), topics=topics, sweep=False, hot_path=False)
    assert ref.hot_path is None
    fallback = FallbackCounter(hot)
    async with hot.router.lifespan_context(hot), ref.router.lifespan_context(ref), _client(hot) as h, _client(ref) as r:
        for request in REQUESTS:
            name, served_hot = request[0], request[5]
            before = fallback.calls
            seen = len(recorded_http)
            got = await _send(h, request, "zhq")
            hot_labels = recorded_http[seen:]
            seen = len(recorded_http)
            want = await _send(r, request, "zrq")
            ref_labels = recorded_http[seen:]
            assert (fallback.calls != before) is (served_hot is False), name
            assert got.status_code == want.status_code, (name, got.text, want.text)
            assert got.status_code < 500, (name, got.text)
            assert _headers(got, "zhq") == _headers(want, "zrq"), name
            assert _normal(got.content, "zhq") == _normal(want.content, "zrq"), name
            assert hot_labels == ref_labels and len(hot_labels) == 1, (name, hot_labels, ref_labels)
    for sku in ("EQ-1", "EQ-2"):
        assert figures(store, f"{sku}-zhq") == figures(store, f"{sku}-zrq")


class _FailingClient:
    """A checkout client whose every call fails with ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    async def hold(self, *args: Any, **kwargs: Any) -> Any:
        raise self.error

    async def confirm(self, *args: Any) -> Any:
        raise self.error

    async def atp(self, *args: Any) -> Any:
        raise self.error


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [(RedisConnectionError("connection refused by 10.0.0.1"), 503, "unavailable"),
     (TimeoutError(), 503, "unavailable"),
     (RuntimeError("a bug"), 500, "internal")],
)
async def test_backend_failures_and_bugs_get_the_apps_error_replies(
    settings: Settings, topics: Topics, error: Exception, status: int, code: str
) -> None:
    calls = [
        ("POST", "/v1/reservations", {**R, "Idempotency-Key": "eq-x"}, HOLD),
        ("POST", "/v1/reservations/eq-x/confirm", bearer(RESERVER), None),
        ("GET", "/v1/atp/EQ-1", bearer(READER), None),
    ]
    replies: dict[bool, list[tuple[int, dict[str, str], bytes]]] = {}
    for hot_path in (True, False):
        app = create_app(api_settings(settings), topics=topics, sweep=False, hot_path=hot_path,
                         client=_FailingClient(error))  # type: ignore[arg-type]
        replies[hot_path] = []
        async with app.router.lifespan_context(app), _client(app) as api:
            for method, path, headers, body in calls:
                content = None if body is None else orjson.dumps(_fill(body, "x"))
                reply = await api.request(method, path, headers=headers, content=content)
                replies[hot_path].append((reply.status_code, dict(reply.headers), reply.content))
    assert replies[True] == replies[False]
    for got_status, _, content in replies[True]:
        assert got_status == status
        assert code.encode() in content
        assert b"10.0.0.1" not in content  # the reason stays in the log


async def test_a_chunked_body_over_the_limit_gets_the_apps_413_on_the_hot_path(
    settings: Settings, topics: Topics
) -> None:
    """No Content-Length: the size limit in front of the hot path refuses the body as it streams
    in, and the reply is the one the app gives without the hot path."""
    replies = {}
    for hot_path in (True, False):
        app = create_app(api_settings(settings, max_body_bytes=MAX_BODY), topics=topics, sweep=False,
                         hot_path=hot_path)
        fallback = FallbackCounter(app) if hot_path else None

        async def chunks() -> Any:
            yield b'{"lines": [{"sku": "EQ-1", "qty": 1}], "pad": "'
            for _ in range(8):
                yield b"x" * (MAX_BODY // 4)
            yield b'"}'

        async with app.router.lifespan_context(app), _client(app) as api:
            reply = await api.post("/v1/reservations", headers={**R, "Idempotency-Key": "eq-chunked"}, content=chunks())
        replies[hot_path] = (reply.status_code, reply.content)
        if fallback is not None:
            assert fallback.calls == 0  # the hot path read the body itself
    assert replies[True] == replies[False]
    assert replies[True][0] == 413 and b"payload_too_large" in replies[True][1]
