"""Identifier patterns and quantity types: the validators and the pydantic types agree and refuse bad input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from engine.domain import ids
from engine.domain.ids import (
    QTY_MAX,
    Delta,
    Location,
    OnHand,
    Qty,
    ReservationId,
    Sku,
    id_problem,
    is_valid_id,
    require_id,
    require_qty,
    valid_qty,
)


@pytest.mark.parametrize("value", ["A", "sku-1", "SKU_01.v2", "0", "a" * 64])
def test_good_skus_are_valid(value: str) -> None:
    assert is_valid_id("sku", value)
    assert require_id("sku", value) == value


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "empty"),
        ("a" * 65, "65 characters"),
        ("-abc", "start with a letter or digit"),
        (".abc", "start with a letter or digit"),
        ("ab c", "may hold only"),
        ("ab/c", "may hold only"),
        ("ab:c", "may hold only"),  # ':' is for long ids only
        ("abc\n", "may hold only"),
        ("é", "start with a letter or digit"),
        ("ab{c}", "may hold only"),  # would break the Redis hash tag
    ],
)
def test_bad_skus_are_refused_with_the_reason(value: str, why: str) -> None:
    assert not is_valid_id("sku", value)
    with pytest.raises(ValueError, match=why):
        require_id("sku", value)


@pytest.mark.parametrize("value", [None, 5, b"abc", ["abc"]])
def test_non_strings_are_never_identifiers(value: object) -> None:
    assert not is_valid_id("sku", value)
    assert id_problem("sku", value) == f"sku must be a string, not {type(value).__name__}"


def test_short_and_long_ids_have_their_own_lengths_and_characters() -> None:
    assert is_valid_id("location", "a" * 32) and not is_valid_id("location", "a" * 33)
    assert is_valid_id("channel", "web") and is_valid_id("supplier_id", "SUP-A")
    assert not is_valid_id("location", "wh:1")
    assert is_valid_id("reservation_id", "order:2025:" + "x" * 117) and len("order:2025:" + "x" * 117) == 128
    assert not is_valid_id("reservation_id", "x" * 129)
    assert is_valid_id("event_id", "sim-1-000000001")
    with pytest.raises(ValueError, match="location is 33 characters long; at most 32"):
        require_id("location", "a" * 33)


def test_qty_validator_takes_only_integers_in_range() -> None:
    assert valid_qty(1) and valid_qty(QTY_MAX)
    for bad in (0, -1, QTY_MAX + 1, True, 1.0, "1", None):
        assert not valid_qty(bad)
    with pytest.raises(ValueError, match="between 1 and"):
        require_qty(0)
    with pytest.raises(ValueError, match="must be an integer, not bool"):
        require_qty(True)


@pytest.mark.parametrize(
    ("annotation", "good", "bad"),
    [
        (Sku, ["SKU-1", "a" * 64], ["", "a b", "a" * 65, "SKU\n", 5]),
        (Location, ["WH1", "default"], ["wh 1", "a" * 33, 1]),
        (ReservationId, ["ord:1", "a" * 128], ["a" * 129, ":x", 12]),
        (Qty, [1, QTY_MAX], [0, -1, QTY_MAX + 1, True, 2.0, "2"]),
        (OnHand, [0, QTY_MAX], [-1, QTY_MAX + 1, False, "0"]),
        (Delta, [-QTY_MAX, -1, 1, QTY_MAX], [0, QTY_MAX + 1, -QTY_MAX - 1, 1.0, True]),
    ],
)
def test_pydantic_types_are_strict_and_bounded(annotation: object, good: list, bad: list) -> None:
    adapter = TypeAdapter(annotation)
    for value in good:
        assert adapter.validate_python(value) == value
    for value in bad:
        with pytest.raises(ValidationError):
            adapter.validate_python(value)


_SKU = TypeAdapter(Sku)


def _pydantic_accepts(value: str) -> bool:
    try:
        _SKU.validate_python(value)
    except ValidationError:
        return False
    return True


@given(st.text(alphabet=st.sampled_from("aZ09._-:/ {}\n\té"), max_size=70) | st.text(max_size=70))
def test_the_validator_and_the_pydantic_type_agree_on_every_string(value: str) -> None:
    assert is_valid_id("sku", value) == _pydantic_accepts(value)
    assert (id_problem("sku", value) is None) == is_valid_id("sku", value)


def test_every_id_kind_has_a_validator_pair() -> None:
    for kind in ids.ID_KINDS:
        assert ids.is_valid_id(kind, "A1")
        assert ids.require_id(kind, "A1") == "A1"
        with pytest.raises(ValueError, match=kind):
            ids.require_id(kind, "")
