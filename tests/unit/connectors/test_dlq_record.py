"""The DLQ record's wire form: byte-exact originals, stable ids, headers, and refusal of non-records."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from connectors.dlq import MAX_ORIGINAL_BYTES, DlqDecodeError, DlqRecord, decode_dlq_value, header
from engine.domain.outputs import DlqValue


def record(original: bytes | None = b"\xff\xfe not utf-8 {", key: bytes | None = b"SKU-1") -> DlqRecord:
    return DlqRecord("inventory.orders", 2, 41, "bad_json", "unexpected byte", original, key, 1234, None, None)


def test_a_record_round_trips_through_its_json_value_byte_for_byte() -> None:
    r = record()
    key, value, _ = r.to_message()

    back = decode_dlq_value(value)

    assert back == r
    assert key == b"SKU-1"
    assert orjson.loads(value)["original_sha256"] == hashlib.sha256(r.original or b"").hexdigest()


def test_the_same_record_always_encodes_to_the_same_bytes_under_a_stable_id() -> None:
    assert record().to_message() == record().to_message()
    assert record().dlq_id == "inventory.orders:2:41"


def test_headers_carry_the_id_reason_and_position_for_consumers_that_do_not_decode() -> None:
    _, _, headers = record().to_message()

    assert header(headers, "dlq.id") == "inventory.orders:2:41"
    assert header(headers, "dlq.reason") == "bad_json"
    assert (header(headers, "dlq.topic"), header(headers, "dlq.partition"), header(headers, "dlq.offset")) == (
        "inventory.orders", "2", "41")
    assert header(headers, "nope") is None


def test_an_original_beyond_the_limit_is_cut_but_described_whole() -> None:
    big = b"x" * (MAX_ORIGINAL_BYTES + 10)
    value = orjson.loads(record(big).to_message()[1])

    assert value["original_truncated"] is True and value["original_size"] == len(big)
    assert value["original_sha256"] == hashlib.sha256(big).hexdigest()
    assert len(decode_dlq_value(record(big).to_message()[1]).original or b"") == MAX_ORIGINAL_BYTES


def test_a_message_without_key_or_value_still_makes_a_record() -> None:
    r = record(original=None, key=None)
    key, value, _ = r.to_message()

    assert key == b"inventory.orders:2:41"  # keyed by its id when the original had no key
    assert decode_dlq_value(value) == r


@pytest.mark.parametrize("value", [None, b"", b"not json", b"[]", b'{"topic": "t"}',
                                   orjson.dumps({**orjson.loads(record().to_message()[1]), "offset": "41"})])
def test_anything_else_on_the_dlq_topic_is_refused_with_a_clear_error(value: bytes | None) -> None:
    with pytest.raises(DlqDecodeError):
        decode_dlq_value(value)


@pytest.mark.parametrize("original, key", [(b"\xff\xfe not utf-8 {", b"SKU-1"), (None, None),
                                            (b"x" * (MAX_ORIGINAL_BYTES + 10), b"K")])
def test_every_record_matches_the_published_dlq_schema(original: bytes | None, key: bytes | None) -> None:
    schema = orjson.loads((Path(__file__).resolve().parents[3] / "schemas" / "dlq-record.schema.json").read_bytes())
    value = orjson.loads(record(original, key).to_message()[1])
    assert set(value) == set(schema["properties"]) and schema["additionalProperties"] is False
    DlqValue.model_validate(value)  # the model the schema file is generated from
    with pytest.raises(ValidationError):
        DlqValue.model_validate({**value, "surprise": 1})
