"""The RFC 7396 merge patch that ``PATCH /v1/policies/{sku}`` applies."""

from __future__ import annotations

from typing import Any

import pytest

from engine.domain.policy import merge_patch

# RFC 7396, Appendix A: original, patch, result
RFC_EXAMPLES: list[tuple[Any, Any, Any]] = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("original", "patch", "result"), RFC_EXAMPLES)
def test_rfc_7396_examples(original: Any, patch: Any, result: Any) -> None:
    assert merge_patch(original, patch) == result


def test_inputs_are_left_alone() -> None:
    original = {"quotas": {"web": 1, "app": 2}, "mode": "strict"}
    patch = {"quotas": {"app": None}}
    assert merge_patch(original, patch) == {"quotas": {"web": 1}, "mode": "strict"}
    assert original == {"quotas": {"web": 1, "app": 2}, "mode": "strict"}
    assert patch == {"quotas": {"app": None}}
