"""Redis Cluster safety: every script call touches one hash slot, and the scripts touch no key
they were not given (so the store runs unchanged on a Redis Cluster)."""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import pytest
from redis.crc import key_slot

from engine.reservations.client import AtpClient
from engine.store import scripts
from engine.store.keys import SCRIPT_KEY_COUNT, changed_key
from engine.store.scripts import ENTRY_SCRIPTS
from engine.store.store import Store
from engine.store.sweeper import Sweeper
from engine.store.wire import HoldRequest, SupplyCommand

LUA = resources.files("engine.store").joinpath("lua")
KEYLESS = {"TIME"}


def lua_files() -> list[str]:
    return sorted(p.name for p in LUA.iterdir() if p.name.endswith(".lua"))


@pytest.mark.parametrize("name", lua_files())
def test_every_redis_call_in_the_scripts_names_a_declared_key(name: str) -> None:
    source = LUA.joinpath(name).read_text()
    calls = re.findall(r"redis\.call\(\s*'(\w+)'\s*(?:,\s*([^,)]+))?", source)
    calls += re.findall(r"call_chunked\(\s*'(\w+)'\s*,\s*([^,)]+)", source)
    calls += [("HGETALL", arg) for arg in re.findall(r"hgetall_map\(\s*([^,)]+)\)", source)]
    for command, first_arg in calls:
        if command.upper() in KEYLESS:
            continue
        if name == "lib.lua" and first_arg.strip() in ("key", "cmd"):
            continue  # inside the helpers themselves; their callers are checked here too
        assert first_arg.strip().startswith("K."), f"{name}: redis.call('{command}', {first_arg}) uses an undeclared key"
    assert "KEYS[" not in source or name == "lib.lua"


def test_every_script_call_of_every_operation_stays_in_one_slot(redis: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, list[str]]] = []
    real_call, real_many = scripts.call, scripts.call_many

    def call(client: Any, script: Any, keys: Any, args: Any) -> Any:
        seen.append((script.name, list(keys)))
        return real_call(client, script, keys, args)

    def call_many(client: Any, calls: Any) -> Any:
        seen.extend((s.name, list(k)) for s, k, _ in calls)
        return real_many(client, calls)

    monkeypatch.setattr(scripts, "call", call)
    monkeypatch.setattr(scripts, "call_many", call_many)

    store = Store(redis)
    store.apply([SupplyCommand("A", "count", {"loc": "X", "on_hand": 5}),
                 SupplyCommand("B", "count", {"loc": "X", "on_hand": 5})])
    store.apply([SupplyCommand("A", "count", {"loc": "X", "on_hand": 6}, source="t:0", offset=1)],
                keep_replies_s=60)  # the reply stash key joins the SKU's keys
    store.apply([SupplyCommand("A", "adjust", {"loc": "X", "delta": 1}, source="t:0", offset=2),
                 SupplyCommand("A", "adjust", {"loc": "X", "delta": 1}, source="t:0", offset=3)],
                keep_replies_s=60)  # one apply_many call, with both stash keys
    client = AtpClient(redis)
    client.hold("m1", [("A", 1, None), ("B", 1, None)])
    client.confirm("m1")
    client.get_reservation("m1")
    client.release("m1")
    store.hold_batch("A", [HoldRequest("h1", 1, ttl_ms=1)])
    store.extend("A", "h1", 1000)
    store.rollback("A", "h1")
    store.hold_batch("A", [HoldRequest("h2", 1, ttl_ms=60_000)])
    client.atp_many(["A", "B", "C"])
    store.dump("A")
    store.publish("A", "m1", b'{"event_id":"res:m1:released"}', "released")
    Sweeper(store).run_once()

    assert {name for name, _ in seen} == {*ENTRY_SCRIPTS, "apply_many"}
    standalone = not scripts.is_cluster(redis)
    changed = SCRIPT_KEY_COUNT - 1  # the changed set's place in KEYS (keys.script_keys)
    for name, keys in seen:
        if standalone:  # one changed set for the keyspace there; on a cluster the SKU's slot's own
            assert keys[changed] == changed_key("A", "atp", cluster=False), (name, keys)
            keys = keys[:changed] + keys[changed + 1:]
        slots = {key_slot(k.encode()) for k in keys}
        assert len(slots) == 1, f"{name} touches slots {slots}"
