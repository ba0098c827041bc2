"""The parse step's shortcuts give what the full checks give (engine/flow/parse.py, engine/store/wire.py)."""

from __future__ import annotations

import orjson
import pytest

from connectors.topics import Topics
from engine.dev.simulate import generate
from engine.domain.commands import to_commands
from engine.domain.events import ParseError, parse_event
from engine.domain.ids import QTY_MAX
from engine.flow.parse import supply_command
from engine.flow.runner import topic_bases
from engine.flow.source import RawMessage
from engine.store.connect import PlainArgsPacker
from engine.store.wire import SupplyCommand, decode_reply, normalize_reply


def _full(c, sku: str, raw: RawMessage) -> SupplyCommand:
    return SupplyCommand(sku=sku, cmd=c.cmd, payload=c.payload, event_id=c.event_id, source=raw.source,
                         offset=raw.offset, reason=c.reason[:256], ref=c.ref[:256])


def test_commands_of_valid_events_equal_the_fully_checked_ones() -> None:
    bases = topic_bases(Topics())
    checked = 0
    for i, m in enumerate(generate(3000, seed=5, bad_fraction=0.05)):
        raw = RawMessage(m.topic, i % 3, i, m.value, m.key)
        event = parse_event(m.value, bases[m.topic])
        if isinstance(event, ParseError):
            continue
        for c in to_commands(event):
            if c.sku is None:
                continue
            fast = supply_command(c, c.sku, raw)
            full = _full(c, c.sku, raw)
            assert fast == full and list(fast.payload) == list(full.payload)  # same JSON sent to the store
            assert fast.argv() == full.argv()
            checked += 1
    assert checked > 2500


def test_a_summed_quantity_beyond_the_limit_still_raises() -> None:
    line = {"sku": "A1", "qty": QTY_MAX}
    event = parse_event(orjson.dumps({
        "event_id": "e1", "type": "order.placed", "occurred_at": "2025-01-01T00:00:00Z", "order_id": "o1",
        "channel": "web", "lines": [line, line],
    }))  # fmt: skip
    (c,) = to_commands(event)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="qty"):
        supply_command(c, "A1", RawMessage("inventory.orders", 0, 1, b"{}"))
    with pytest.raises(ValueError, match="offset"):
        c2 = to_commands(parse_event(orjson.dumps({  # type: ignore[arg-type]
            "event_id": "e2", "type": "stock.counted", "occurred_at": "2025-01-01T00:00:00Z", "sku": "A1",
            "on_hand": 1,
        })))[0]  # fmt: skip
        supply_command(c2, "A1", RawMessage("inventory.adjustments", 0, -5, b"{}"))


@pytest.mark.parametrize("raw", [
    b'{"status":"ok","at_risk":{},"slipped":{},"line":{"alloc":{},"qty":1},"position":{"locations":{}}}',
    b'{"status":"ok","at_risk":[["r1",2]],"slipped":{},"lots":[{"alloc":{}},{"alloc":[1]}]}',
    b'{"status":"duplicate","reason":"offset","position":{"sku":"A","locations":{"WH1":{"atp":3}}}}',
    '{"status":"ok","at_risk":{}}',
])  # fmt: skip
def test_decode_reply_normalises_empty_lists_as_the_walk_did(raw: bytes | str) -> None:
    assert decode_reply(raw) == normalize_reply(orjson.loads(raw))


def test_the_plain_args_packer_packs_as_redis_py_does() -> None:
    from redis.connection import Connection

    default = Connection()._command_packer
    packer = PlainArgsPacker()
    for args in [("FCALL", "f", 2, "k1", b"k2", "é", 12, -1), ("FUNCTION LOAD", "x"), ("SET", "k", 1.5),
                 ("SET", "k", memoryview(b"ab"))]:  # fmt: skip
        assert b"".join(packer.pack(*args)) == b"".join(default.pack(*args))
