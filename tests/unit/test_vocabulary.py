"""Each vocabulary and limit has one home in Python; where the Lua must write the same value it
cannot import, these tests hold the two together (docs/architecture.md)."""

from __future__ import annotations

import re
from pathlib import Path

from engine.domain import oracle
from engine.domain.alerts import SEVERITY
from engine.domain.commands import REBALANCING
from engine.domain.ids import DEFAULT_LOCATION
from engine.domain.outputs import ALERT_KINDS, STATEFUL_ALERT_KINDS
from engine.store.keys import KEY_NAMES

LUA = Path(__file__).resolve().parents[2] / "engine" / "store" / "lua"


def _lua(name: str) -> str:
    return (LUA / f"{name}.lua").read_text()


def _lua_number(source: str, name: str) -> int:
    found = re.findall(rf"^local {name} = (\d+)$", source, re.M)
    assert len(found) == 1, f"{name} is not defined once"
    return int(found[0])


def test_every_alert_kind_has_a_severity_and_nothing_else_does() -> None:
    assert set(SEVERITY) == set(ALERT_KINDS)
    assert STATEFUL_ALERT_KINDS < set(ALERT_KINDS)


def test_the_lua_rebalances_after_the_commands_the_oracle_does() -> None:
    table = re.search(r"^local REBALANCING = \{(.*?)\}", _lua("apply"), re.M | re.S)
    assert table is not None
    assert set(re.findall(r"(\w+) = true", table.group(1))) == REBALANCING


def test_the_lua_numbers_are_the_oracle_s() -> None:
    assert _lua_number(_lua("lib"), "DAY_MS") == oracle.DAY_MS
    assert _lua_number(_lua("lib"), "DUE_MS") == oracle.DUE_MS
    assert _lua_number(_lua("apply"), "EVENT_LOG_SIZE") == oracle.EVENT_LOG_SIZE
    assert _lua_number(_lua("apply"), "JOURNAL_SIZE") == oracle.JOURNAL_SIZE


def test_the_lua_backorders_at_the_default_location_when_the_sku_has_none() -> None:
    body = re.search(r"^function F\.bo_location\(loc\)\n(.*?)^end$", _lua("lib"), re.M | re.S)
    assert body is not None
    assert re.findall(r"return '([^']*)'", body.group(1)) == [DEFAULT_LOCATION]


def test_the_lua_names_the_keys_in_the_order_the_store_passes_them() -> None:
    names = re.findall(r"(\w+) = keys\[(\d+)\]", _lua("lib"))
    assert [n for n, i in sorted(names, key=lambda x: int(x[1]))] == [*KEY_NAMES, "changed"]
