"""The hot path's request checks (pure): what it reads itself and what it leaves to the app."""

from __future__ import annotations

import asyncio

import pytest

from engine.api.hot_path import (
    bearer_token,
    body_may_fit,
    is_json,
    replaying,
    request_headers,
    valid_body,
)
from engine.api.models import ExtendIn, ReservationIn


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


@pytest.mark.parametrize(
    ("value", "fits"),
    [(None, True), (b"0", True), (b"1024", True), (b"1025", False), (b"+10", False), (b" 10", False), (b"1_0", False)],
)
def test_body_may_fit_only_a_plain_declared_length_within_the_limit(value: bytes | None, fits: bool) -> None:
    headers = {} if value is None else {b"content-length": value}
    assert body_may_fit(headers, 1024) is fits


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
