"""The hot path's request checks (pure): what it reads itself and what it leaves to the app, and
the routes it serves: each must take exactly what it reads."""

from __future__ import annotations

import asyncio
from typing import Annotated

import pytest
from fastapi import APIRouter, Depends, Header, Request

from engine.api.auth import Role
from engine.api.guard import require
from engine.api.hot_path import (
    SERVED,
    bearer_token,
    hot_routes,
    is_json,
    replaying,
    request_headers,
    valid_body,
)
from engine.api.models import ExtendIn, ReservationIn
from engine.api.routes import atp, reservations
from engine.api.routes.atp import LocationQuery, SkuPath


def test_headers_it_reads_are_collected_and_a_repeated_one_gives_up() -> None:
    scope = {"headers": [(b"host", b"x"), (b"authorization", b"Bearer t"), (b"idempotency-key", b"k1")]}
    assert request_headers(scope) == {b"authorization": b"Bearer t", b"idempotency-key": b"k1"}
    scope["headers"].append((b"authorization", b"Bearer u"))
    assert request_headers(scope) is None
    repeated_other = {"headers": [(b"accept", b"a"), (b"accept", b"b")]}
    assert request_headers(repeated_other) == {}


@pytest.mark.parametrize(
    ("value", "token"),
    [
        (b"Bearer abc", "abc"),
        (b"bearer abc", "abc"),
        (b"BEARER abc.def-_~+/=", "abc.def-_~+/="),
        (b"Bearer  abc", None),  # FastAPI strips the blank: left to it
        (b"Bearer abc ", None),
        (b"Bearer a b", None),
        (b"Bearer ", None),
        (b"Bearer", None),
        (b"Basic dXNlcjpwYXNz", None),
        (b"Bearer\tabc", None),
        (b"Bearer abc\xa0", None),  # latin-1 no-break space: str.strip() would remove it
    ],
)
def test_only_plain_bearer_tokens_are_read(value: bytes, token: str | None) -> None:
    assert bearer_token({b"authorization": value}) == token


def test_no_authorization_header_has_no_token() -> None:
    assert bearer_token({}) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"application/json", True),
        (b"Application/JSON; charset=utf-8", True),
        (b"application/json ;charset=utf-8", True),
        (b"application/vnd.atp+json", False),
        (b"text/plain", False),
        (b"application/jsonx", False),
    ],
)
def test_json_content_type(value: bytes, expected: bool) -> None:
    assert is_json({b"content-type": value}) is expected


def test_missing_content_type_is_not_json() -> None:
    assert not is_json({})


def test_valid_body_reads_what_the_model_accepts() -> None:
    raw = b'{"lines": [{"sku": "A-1", "qty": 2, "location": "WH1"}], "ttl_seconds": 30, "channel": "web"}'
    body = valid_body(raw, ReservationIn)
    assert body is not None
    assert [(line.sku, line.qty, line.location) for line in body.lines] == [("A-1", 2, "WH1")]
    assert (body.ttl_seconds, body.channel, body.customer_id) == (30, "web", None)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{lines: [",
        b"[]",
        b'"text"',
        b'{"lines": []}',
        b'{"lines": [{"sku": "A-1", "qty": "2"}]}',
        b'{"lines": [{"sku": "A-1", "qty": 1.0}]}',
        b'{"lines": [{"sku": "A-1", "qty": NaN}]}',
        b'{"lines": [{"sku": "A-1", "qty": 100000000000000000000000}]}',
        b'{"lines": [{"sku": "a b", "qty": 1}]}',
        b'{"lines": [{"sku": "A-1", "qty": 1}], "x": 1}',
        '{"lines": [{"sku": "A-1", "qty": 1}]}'.encode("utf-16"),
    ],
)
def test_valid_body_leaves_everything_else_to_the_app(raw: bytes) -> None:
    assert valid_body(raw, ReservationIn) is None


def test_valid_body_of_an_extension() -> None:
    body = valid_body(b'{"ttl_seconds": 60}', ExtendIn)
    assert body is not None and body.ttl_seconds == 60
    for raw in (b'{"ttl_seconds": 0}', b'{"ttl_seconds": "60"}', b'{"ttl_seconds": 60, "x": 1}', b"{}"):
        assert valid_body(raw, ExtendIn) is None


def test_replaying_hands_out_what_was_read_then_reads_on() -> None:
    later = [{"type": "http.disconnect"}]

    async def receive() -> dict[str, object]:
        return later.pop(0)

    read = [{"type": "http.request", "body": b"a", "more_body": True}, {"type": "http.request", "body": b"b"}]

    async def drain() -> list[dict[str, object]]:
        replay = replaying(read, receive)
        return [await replay(), await replay(), await replay()]

    assert asyncio.run(drain()) == [*read, {"type": "http.disconnect"}]


# --------------------------------------------------------------------------- the served routes


def _routes_with_atp(router: APIRouter) -> list:
    return [*reservations.router.routes, *router.routes]


def test_every_served_route_takes_exactly_what_the_hot_path_reads() -> None:
    served = hot_routes([*reservations.router.routes, *atp.router.routes])
    assert [h.route.name for h in served] == list(SERVED)
    by_name = {h.route.name: h for h in served}
    assert by_name["confirm_reservation"].match("POST", "/v1/reservations/r-1/confirm") == "r-1"
    assert by_name["confirm_reservation"].match("POST", "/v1/reservations/r/1/confirm") is None
    assert by_name["confirm_reservation"].match("GET", "/v1/reservations/r-1/confirm") is None
    assert by_name["get_reservation"].match("GET", "/v1/reservations/r-1") == "r-1"
    assert by_name["get_reservation"].match("GET", "/v1/reservations/") is None
    assert by_name["create_reservation"].match("POST", "/v1/reservations") == ""
    assert by_name["create_reservation"].match("POST", "/v1/reservations/") is None


def _atp_router(*extra_deps: object, role: Role = Role.READ, extra_header: bool = False,
                extra_query: bool = False) -> APIRouter:
    router = APIRouter(prefix="/v1/atp", dependencies=[Depends(require(role)), *(Depends(d) for d in extra_deps)])
    if extra_header:
        async def get_atp(request: Request, sku: SkuPath, location: LocationQuery = None,
                          x_region: Annotated[str | None, Header()] = None) -> None: ...
    elif extra_query:
        async def get_atp(request: Request, sku: SkuPath, location: LocationQuery = None,
                          fresh: bool = False) -> None: ...
    else:
        async def get_atp(request: Request, sku: SkuPath, location: LocationQuery = None) -> None: ...
    router.get("/{sku}")(get_atp)
    return router


def test_the_check_passes_a_route_like_the_app_s() -> None:
    assert len(hot_routes(_routes_with_atp(_atp_router()))) == len(SERVED)


@pytest.mark.parametrize(
    "router",
    [
        pytest.param(_atp_router(extra_query=True), id="a query parameter more"),
        pytest.param(_atp_router(extra_header=True), id="a header more"),
        pytest.param(_atp_router(lambda: None), id="a dependency more"),
        pytest.param(_atp_router(role=Role.OPERATE), id="another role"),
    ],
)
def test_a_served_route_that_takes_anything_more_stops_the_app_from_building(router: APIRouter) -> None:
    with pytest.raises(ValueError, match="get_atp"):
        hot_routes(_routes_with_atp(router))


def test_a_served_route_missing_from_the_app_stops_it_from_building() -> None:
    with pytest.raises(ValueError, match="no route for"):
        hot_routes(reservations.router.routes)
