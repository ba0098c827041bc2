"""The listing's pure parts: the cursor's encoding and validation, the filters, and how a line
and a reservation are shown (engine/store/listing.py)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from engine.store.listing import (
    CURSOR_MAX_CHARS,
    LIST_LIMIT_MAX,
    BadCursor,
    ListQuery,
    _At,
    _skip_to,
    decode_cursor,
    encode_cursor,
    shown_line,
)
from engine.store.wire import RESERVATION_STATES, reservation_state

BY_SKU = ListQuery(sku="SKU-1", state="held", limit=10)
ALL = ListQuery(customer="c-1")


def _raw(data: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("mode", "query", "at"),
    [
        ("s", BY_SKU, _At(0, 0)),
        ("s", BY_SKU, _At(1, 2**64 - 1)),
        ("s", BY_SKU, _At(1, 17, 3, "order:9.x_1-2")),
        ("i", ALL, _At(16383, 5)),
        ("i", ALL, _At(5461, 0, 2**63, "r" * 128)),
    ],
)
def test_a_cursor_names_its_position_and_stays_short(mode: str, query: ListQuery, at: _At) -> None:
    text = encode_cursor(mode, query, at)
    assert len(text) <= CURSOR_MAX_CHARS and text.isascii() and "=" not in text
    assert decode_cursor(text, query) == at
    assert decode_cursor(text, ListQuery(query.sku, query.customer, query.state, limit=LIST_LIMIT_MAX)) == at


def test_a_cursor_of_other_filters_is_refused() -> None:
    text = encode_cursor("s", BY_SKU, _At(0, 5))
    for other in (ListQuery(sku="SKU-2", state="held"), ListQuery(sku="SKU-1"),
                  ListQuery(sku="SKU-1", state="held", customer="c-1"), ListQuery(state="held")):
        with pytest.raises(BadCursor, match="other filters"):
            decode_cursor(text, other)


GOOD = {"v": 1, "m": "i", "q": ALL.digest, "p": 0, "c": 5}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "x" * (CURSOR_MAX_CHARS + 1),
        "not base64!",
        _raw(GOOD) + "A",  # not what any cursor encodes to
        "+" + _raw(GOOD)[1:],
        _raw([1, 2]),
        _raw({**GOOD, "v": 2}),
        _raw({**GOOD, "m": "z"}),
        _raw({**GOOD, "x": 1}),
        _raw({k: v for k, v in GOOD.items() if k != "c"}),
        _raw({**GOOD, "c": -1}),
        _raw({**GOOD, "c": 2**64}),
        _raw({**GOOD, "c": "5"}),
        _raw({**GOOD, "c": True}),
        _raw({**GOOD, "p": 16384}),
        _raw({**GOOD, "e": 3}),  # a batch end without the last id
        _raw({**GOOD, "e": 3, "a": "bad id"}),
        _raw({**GOOD, "e": -3, "a": "r1"}),
        base64.urlsafe_b64encode(b"\xff\xfe").rstrip(b"=").decode(),
    ],
)
def test_anything_but_a_cursor_given_is_refused_with_a_reason(text: str) -> None:
    with pytest.raises(BadCursor) as refused:
        decode_cursor(text, ALL)
    assert str(refused.value)


def test_a_sku_cursor_has_two_parts_only() -> None:
    good = {"v": 1, "m": "s", "q": BY_SKU.digest, "c": 0}
    assert decode_cursor(_raw({**good, "p": 1}), BY_SKU) == _At(1, 0)
    with pytest.raises(BadCursor):
        decode_cursor(_raw({**good, "p": 2}), BY_SKU)
    with pytest.raises(BadCursor, match="other filters"):
        decode_cursor(_raw({**good, "p": 0}), ListQuery(state="held"))  # a listing without sku


@pytest.mark.parametrize(
    "fields",
    [
        {"sku": "bad sku"},
        {"sku": ""},
        {"customer": "-x"},
        {"state": "lost"},
        {"limit": 0},
        {"limit": LIST_LIMIT_MAX + 1},
        {"limit": True},
    ],
)
def test_filters_are_validated(fields: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (the message varies by field)
        ListQuery(**fields)


def test_every_reservation_state_is_a_filter() -> None:
    for state in RESERVATION_STATES:
        assert ListQuery(state=state).state == state
    assert reservation_state(["held", "held"]) == "held"
    assert reservation_state(["held", "released"]) == "partial"


def _line(state: str, expires_ms: int) -> dict[str, Any]:
    return {"rid": "r", "sku": "S", "qty": 2, "loc": "", "state": state, "expires_ms": expires_ms, "seq": 1,
            "channel": "", "customer": "", "alloc": [["oh", "WH", "WH", 2]], "promised_ms": 5, "atp_after": 3}


def test_a_held_line_past_its_expiry_is_shown_expired() -> None:
    due = shown_line(_line("held", 1000), 1000)
    assert (due["state"], due["alloc"], due["expires_ms"]) == ("expired", [], 1000)
    assert shown_line(_line("held", 1001), 1000) == _line("held", 1001)
    assert shown_line(_line("committed", 0), 1000) == _line("committed", 0)


def test_a_batch_is_skipped_into_only_when_it_came_back_the_same() -> None:
    inside = _At(0, 40, 77, "r-5")
    assert _skip_to(inside, 77) == "r-5"
    assert _skip_to(inside, 78) is None  # the batch changed: take it whole (repeats, no misses)
    assert _skip_to(_At(0, 40), 77) is None
