"""``changelog.record_head``: the relay reads a record's SKU, change number and entry from its head,
and agrees with the whole decode (``Record.from_json``) on every record it accepts."""

from __future__ import annotations

import pytest

from engine.store.changelog import Record, record_head


@pytest.mark.parametrize("record", [
    Record("SKU-1", 1, "hold", 1_700_000_000_000, ("r1", "1||600000|||0")),
    Record("a.b_c-9", 123456789012, "publish", 0, ("r-2", '{"event_id":"res:r-2:held"}')),
    Record("S", 7, "apply_many", 5, (), ("rp:{S}:t:0:1",), ({"rid": "x", "qty": 1},)),
])
def test_the_head_says_what_the_whole_record_says(record: Record) -> None:
    value = record.to_json()
    assert record_head(value) == (record.sku, record.q, record.fn)
    decoded = Record.from_json(value)
    assert (decoded.sku, decoded.q, decoded.fn) == record_head(value)


@pytest.mark.parametrize("value", [
    b"",
    b"not json",
    b'{"q":1,"sku":"S","fn":"hold"}',             # not the script's order
    b'{"sku":"S","q":0,"fn":"hold","now_ms":1}',  # change numbers start at 1
    b'{"sku":"S","q":1,"fn":"drop","now_ms":1}',  # no such entry
    b'{"sku":"bad sku","q":1,"fn":"hold"}',
    b'{"sku":"S","q":-1,"fn":"hold"}',
])
def test_what_is_not_a_record_head_is_refused(value: bytes) -> None:
    with pytest.raises(ValueError, match="not a change record"):
        record_head(value)
