"""Loading the Lua scripts and calling them by SHA, recovering from NOSCRIPT.

Each entry script is ``lib.lua`` (the shared prelude), the sections only that entry needs
(``ops.lua``, ``rebalance.lua``; see ``PRELUDES``), then the entry file. Calls go out as
EVALSHA; when Redis answers NOSCRIPT (a restart, SCRIPT FLUSH, a new cluster node) the same call is
sent once as EVAL with the source, which also caches the script on that node again.

An entry that finds more holds due than one call may expire answers ``MORE`` after expiring a
bounded chunk (lib.lua, ``EXPIRE_LINES``); every function here sends such a call again until it
answers, so callers never see ``MORE`` and each call Redis runs stays short.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError

ENTRY_SCRIPTS = ("hold", "reservation", "apply", "position", "sweep", "dump")
# What goes in front of each entry file: Lua builds every function of a script on every call, so
# an entry carries only the sections it uses.
PRELUDES: dict[str, tuple[str, ...]] = {
    "hold": ("lib",),
    "reservation": ("lib", "ops"),
    "apply": ("lib", "ops", "rebalance"),
    "position": ("lib",),
    "sweep": ("lib",),
    "dump": ("lib",),
}

Arg = str | int
#: The reply of an entry that expired a chunk of due holds and left the rest for another call.
MORE = b"~more"


def _more(reply: Any) -> bool:
    return reply == MORE or reply == "~more"


@dataclass(frozen=True)
class LuaScript:
    """One loadable script: its name, full source (prelude + entry) and SHA1."""

    name: str
    source: str
    sha: str


def _read(name: str) -> str:
    return resources.files("engine.store").joinpath("lua", f"{name}.lua").read_text("utf-8")


@lru_cache(maxsize=1)
def load_scripts() -> dict[str, LuaScript]:
    """Every entry script, built once per process: name -> ``LuaScript``."""
    out = {}
    for name in ENTRY_SCRIPTS:
        parts = [_read(part) for part in PRELUDES[name]]
        source = "\n".join(parts) + "\n-- ==== entry: " + name + ".lua ====\n" + _read(name)
        out[name] = LuaScript(name, source, hashlib.sha1(source.encode("utf-8")).hexdigest())
    return out


def call(client: Any, script: LuaScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
    """Run ``script`` on a sync redis client (or cluster client), by SHA with NOSCRIPT recovery."""
    while True:
        try:
            reply = client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            reply = client.eval(script.source, len(keys), *keys, *args)
        if not _more(reply):
            return reply


async def acall(client: Any, script: LuaScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
    """Async twin of ``call`` for redis.asyncio clients."""
    while True:
        try:
            reply = await client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            reply = await client.eval(script.source, len(keys), *keys, *args)
        if not _more(reply):
            return reply


Call = tuple[LuaScript, Sequence[str], Sequence[Arg]]

# Pipelines send EVALSHA / EVAL through execute_command: redis-py's cluster pipeline refuses its
# evalsha() method, yet routes the raw command by the slot of its keys.


def call_many(client: Any, calls: Sequence[Call]) -> list[Any]:
    """Run several script calls in one pipelined round trip (no MULTI); results in order.

    Calls that met NOSCRIPT are re-sent as EVAL in a second round trip. Other errors are raised.
    """
    if not calls:
        return []
    pipe = client.pipeline(transaction=False)
    for script, keys, args in calls:
        pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
    results = pipe.execute(raise_on_error=False)
    missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
    if missing:
        pipe = client.pipeline(transaction=False)
        for i in missing:
            script, keys, args = calls[i]
            pipe.execute_command("EVAL", script.source, len(keys), *keys, *args)
        for i, r in zip(missing, pipe.execute(raise_on_error=False), strict=True):
            results[i] = r
    for r in results:
        if isinstance(r, Exception):
            raise r
    again = [i for i, r in enumerate(results) if _more(r)]
    if again:
        for i, r in zip(again, call_many(client, [calls[i] for i in again]), strict=True):
            results[i] = r
    return list(results)


async def acall_many(client: Any, calls: Sequence[Call]) -> list[Any]:
    """Async twin of ``call_many``."""
    if not calls:
        return []
    pipe = client.pipeline(transaction=False)
    for script, keys, args in calls:
        pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
    results = await pipe.execute(raise_on_error=False)
    missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
    if missing:
        pipe = client.pipeline(transaction=False)
        for i in missing:
            script, keys, args = calls[i]
            pipe.execute_command("EVAL", script.source, len(keys), *keys, *args)
        for i, r in zip(missing, await pipe.execute(raise_on_error=False), strict=True):
            results[i] = r
    for r in results:
        if isinstance(r, Exception):
            raise r
    again = [i for i, r in enumerate(results) if _more(r)]
    if again:
        for i, r in zip(again, await acall_many(client, [calls[i] for i in again]), strict=True):
            results[i] = r
    return list(results)


# Claims: ``SET key value NX`` per key, or on a standalone Redis one ``MSETNX`` of all of them (a
# command per hold costs the client more than the hold costs Redis). MSETNX sets all or nothing;
# when it finds a key taken, the keys are claimed one by one right after the script.


def _standalone(client: Any) -> bool:
    return not isinstance(client, (RedisCluster, AsyncRedisCluster))


def _distinct(sets: Sequence[tuple[str, bytes]]) -> tuple[list[bool], dict[str, bytes]]:
    """(whether each claim is the first of its key, the distinct key -> value)."""
    first: list[bool] = []
    distinct: dict[str, bytes] = {}
    for key, value in sets:
        first.append(key not in distinct)
        distinct.setdefault(key, value)
    return first, distinct


def _created(first: list[bool], sets: Sequence[tuple[str, bytes]], won: dict[str, bool]) -> list[bool]:
    return [is_first and won[key] for is_first, (key, _value) in zip(first, sets, strict=True)]


def _raise_errors(results: Sequence[Any]) -> None:
    for r in results:
        if isinstance(r, Exception):
            raise r


def call_after_sets(client: Any, sets: Sequence[tuple[str, bytes]], script_call: Call) -> tuple[list[bool], Any]:
    """Claim each of ``sets`` (``SET key value NX``) and make one script call, in one pipelined
    round trip (two when a claim was taken already on a standalone Redis).

    Returns (whether each claim created its key — a key claimed twice in ``sets`` is created at
    most by its first claim —, the script's result). A NOSCRIPT is retried as EVAL.
    """
    script, keys, args = script_call
    if not sets:
        return [], call(client, script, keys, args)
    pipe = client.pipeline(transaction=False)
    batched = _standalone(client) and len(sets) > 1
    first, distinct = _distinct(sets)
    if batched:
        pipe.msetnx(distinct)
    else:
        for key, value in distinct.items():
            pipe.set(key, value, nx=True)
    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
    results = pipe.execute(raise_on_error=False)
    last = results[-1]
    if isinstance(last, NoScriptError) or _more(last):
        last = call(client, script, keys, args)
    _raise_errors(results[:-1])
    if isinstance(last, Exception):
        raise last
    if not batched:
        won = dict(zip(distinct, (bool(r) for r in results[:-1]), strict=True))
    elif results[0]:
        won = dict.fromkeys(distinct, True)
    else:
        pipe = client.pipeline(transaction=False)
        for key, value in distinct.items():
            pipe.set(key, value, nx=True)
        claimed = pipe.execute(raise_on_error=False)
        _raise_errors(claimed)
        won = dict(zip(distinct, (bool(r) for r in claimed), strict=True))
    return _created(first, sets, won), last


async def acall_after_sets(client: Any, sets: Sequence[tuple[str, bytes]],
                           script_call: Call) -> tuple[list[bool], Any]:
    """Async twin of ``call_after_sets``."""
    script, keys, args = script_call
    if not sets:
        return [], await acall(client, script, keys, args)
    pipe = client.pipeline(transaction=False)
    batched = _standalone(client) and len(sets) > 1
    first, distinct = _distinct(sets)
    if batched:
        pipe.msetnx(distinct)
    else:
        for key, value in distinct.items():
            pipe.set(key, value, nx=True)
    pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
    results = await pipe.execute(raise_on_error=False)
    last = results[-1]
    if isinstance(last, NoScriptError) or _more(last):
        last = await acall(client, script, keys, args)
    _raise_errors(results[:-1])
    if isinstance(last, Exception):
        raise last
    if not batched:
        won = dict(zip(distinct, (bool(r) for r in results[:-1]), strict=True))
    elif results[0]:
        won = dict.fromkeys(distinct, True)
    else:
        pipe = client.pipeline(transaction=False)
        for key, value in distinct.items():
            pipe.set(key, value, nx=True)
        claimed = await pipe.execute(raise_on_error=False)
        _raise_errors(claimed)
        won = dict(zip(distinct, (bool(r) for r in claimed), strict=True))
    return _created(first, sets, won), last
