"""The store's Lua, as one Redis function library, and calling it, reloading it when missing.

The library is ``lib.lua``, ``ops.lua`` and ``rebalance.lua``, then each entry file (``hold``,
``reservation``, …) in a block of its own, then the registrations. Redis runs it once, at
``FUNCTION LOAD``, so a call pays for its own work only, not for building the library's functions.
Its name carries a digest of its code (``atp_<digest>``) and so do its functions
(``atp_<digest>_hold``): engines of two versions can share a server, each calling its own.
Calls go out as FCALL; when Redis answers that the function is missing (a restart, FUNCTION
FLUSH, a new cluster node) the library is loaded and the call sent once more.

An entry that finds more holds due than one call may expire answers ``MORE`` after expiring a
bounded chunk (lib.lua, ``EXPIRE_LINES``); every function here sends such a call again until it
answers, so callers never see ``MORE`` and each call Redis runs stays short.

Functions need Redis ≥ 7.0 or Valkey ≥ 7.2 (docs/semantics-decisions-store.md, "Servers").
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import orjson
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import ResponseError

from engine.store.keys import SCRIPT_KEY_COUNT

#: The entry files; each defines one entry or more (apply.lua: apply and apply_many).
ENTRY_SCRIPTS = ("hold", "reservation", "apply", "position", "sweep", "dump", "publish")
#: The files in front of the entries, in this order (the entries use what they define).
LIBRARY_PARTS = ("lib", "ops", "rebalance")
LIBRARY_PREFIX = "atp_"

Arg = str | int
#: The reply of an entry that expired a chunk of due holds and left the rest for another call.
MORE = b"~more"


#: Replies of apply.lua for a supply job in progress: '~part<token>|<lists>' (this call's share
#: of the reply's lists; continue with the token) and '~busy[<token>]' (nothing applied: another
#: command's job, or an earlier offset waiting for due holds, comes first).
PART = b"~part"
BUSY = b"~busy"
#: How long a command may wait behind an earlier offset of its source (apply.lua BLOCK_MS).
BUSY_WAIT_S = 6.0


def _more(reply: Any) -> bool:
    return reply == MORE or reply == "~more"


def _bytes(reply: Any) -> bytes | None:
    if isinstance(reply, str):
        reply = reply.encode()
    return reply if isinstance(reply, bytes) else None


def _unsettled(reply: Any) -> bool:
    raw = _bytes(reply)
    return raw is not None and raw[:5] in (PART, BUSY)


class Settle:
    """The calls that finish one apply call whose reply was a job part or busy (apply.lua's
    header): the pure part of the loop that ``settle`` / ``asettle`` run with I/O.

    ``next(reply)`` takes the reply of the last call sent and answers the call to send next, or
    None once ``result`` holds the command's whole reply (its lists gathered from every part).
    """

    def __init__(self, call: Call) -> None:
        self.call = call
        self.current = call
        self.own: bytes | None = None  # token of this command's job, once it has one
        self.lists: dict[str, list[Any]] = {"at_risk": [], "slipped": []}
        self.waits = 0
        self.pause = False  # wait a moment before sending the next call
        self.result: Any = None

    def _continue(self, token: bytes, own: bool) -> Call:
        script, keys, args = self.call
        args = list(args)
        args[2], args[6] = "~continue", token.decode()
        if not own:
            args[8] = 0  # another command's reply is not kept under this command's stash key
        return script, keys, args

    @property
    def stash(self) -> tuple[str, int] | None:
        """(stash key, seconds) when the command's whole reply is to be kept there."""
        _script, keys, args = self.call
        if self.own is None or len(keys) <= SCRIPT_KEY_COUNT or not int(args[8]):
            return None
        return keys[SCRIPT_KEY_COUNT], int(args[8])

    def next(self, reply: Any) -> Call | None:
        raw = _bytes(reply)
        self.pause = False
        if _more(reply):
            return self.current
        if raw is not None and raw.startswith(PART):
            token, _, lists = raw[5:].partition(b"|")
            own = self.current is self.call or token == self.own
            if own:
                self.own = token
                part = orjson.loads(b"{" + lists + b"}")
                for name in self.lists:
                    self.lists[name].extend(part[name])
            # else: a part of another command's job, which this call only drives to its end
            self.current = self._continue(token, own)
            return self.current
        if raw is not None and raw.startswith(BUSY):
            token = raw[5:]
            if token:
                self.current = self._continue(token, False)
            else:
                self.waits += 1
                self.pause = True
                self.current = self.call
            return self.current
        if self.current is not self.call and self.own is None:
            self.current = self.call  # the other job is done: now this command
            return self.current
        self.result = self._merged(reply)
        return None

    def _merged(self, reply: Any) -> Any:
        if self.own is None or isinstance(reply, Exception):
            return reply
        out = orjson.loads(reply)
        for name, earlier in self.lists.items():
            out[name] = earlier + out[name]
        return orjson.dumps(out)


def settle(client: Any, call_: Call, reply: Any) -> Any:
    """Finish an apply call whose reply was a job part or busy: its whole reply."""
    state = Settle(call_)
    nxt = state.next(reply)
    while nxt is not None:
        if state.pause:
            time.sleep(_wait_s(state))
        reply = _once(client, *nxt)
        nxt = state.next(reply)
    if state.stash is not None:
        client.set(state.stash[0], state.result, ex=state.stash[1])
    return state.result


async def asettle(client: Any, call_: Call, reply: Any) -> Any:
    """Async twin of ``settle``."""
    state = Settle(call_)
    nxt = state.next(reply)
    while nxt is not None:
        if state.pause:
            await asyncio.sleep(_wait_s(state))
        reply = await _aonce(client, *nxt)
        nxt = state.next(reply)
    if state.stash is not None:
        await client.set(state.stash[0], state.result, ex=state.stash[1])
    return state.result


def _wait_s(state: Settle) -> float:
    if state.waits * 0.01 > BUSY_WAIT_S:
        raise TimeoutError("a supply command waited too long behind an earlier offset of its source")
    return 0.01



@dataclass(frozen=True)
class Library:
    """The function library: its name and the text ``FUNCTION LOAD`` takes."""

    name: str
    source: str


@dataclass(frozen=True)
class LuaScript:
    """One entry of the library: its name (``hold``) and the function FCALL names."""

    name: str
    function: str
    library: Library


def _read(name: str) -> str:
    return resources.files("engine.store").joinpath("lua", f"{name}.lua").read_text("utf-8")


def build_library(read: Callable[[str], str] = _read, prefix: str = LIBRARY_PREFIX) -> Library:
    """The library from the Lua files as ``read`` gives them (the benchmarks' profiles pass an
    instrumented copy, under another prefix)."""
    parts = [read(part) for part in LIBRARY_PARTS]
    # each entry in a block: its helpers stay its own, and the main chunk's 200 locals are spared
    parts += [f"do -- ==== entry: {name}.lua ====\n{read(name)}\nend" for name in ENTRY_SCRIPTS]
    code = "\n".join(parts)
    name = prefix + hashlib.sha1(code.encode("utf-8")).hexdigest()[:16]
    # (a library's code may call only the redis API while it loads: no pairs() over ENTRIES)
    footer = "".join(f"\nredis.register_function('{name}_{entry}', ENTRIES.{entry})" for entry in _entry_names(code))
    return Library(name, f"#!lua name={name}\n{code}{footer}\n")


def _entry_names(code: str) -> list[str]:
    """The entries the files define (``entry('apply_many', function() …``), in order."""
    return re.findall(r"^\s*entry\('(\w+)', function\(\)", code, flags=re.M)


@lru_cache(maxsize=8)
def entries(library: Library) -> dict[str, LuaScript]:
    """Every entry of ``library``: name -> ``LuaScript``."""
    return {name: LuaScript(name, f"{library.name}_{name}", library) for name in _entry_names(library.source)}


@lru_cache(maxsize=1)
def load_library() -> Library:
    """The library, built once per process."""
    return build_library()


def load_scripts() -> dict[str, LuaScript]:
    """Every entry of the library: name -> ``LuaScript``."""
    return entries(load_library())


def fcall(script: LuaScript, keys: Sequence[str], args: Sequence[Arg]) -> tuple[Any, ...]:
    """The FCALL command of one call, for ``execute_command`` or a pipeline."""
    return ("FCALL", script.function, len(keys), *keys, *args)


class UnsupportedServer(ResponseError):
    """The server has no function libraries (Redis < 7.0, Valkey < 7.2)."""


def _missing(reply: Any) -> bool:
    """Whether ``reply`` is the error of a function the server does not have (raises
    ``UnsupportedServer`` for a server without FCALL)."""
    if not isinstance(reply, ResponseError):
        return False
    text = str(reply).lower()
    if "unknown command" in text and "fcall" in text:
        raise UnsupportedServer(f"the store needs Redis >= 7.0 or Valkey >= 7.2 (function libraries): {reply}")
    return "function not found" in text


def load(client: Any, library: Library) -> None:
    """Load ``library`` (on every primary of a cluster); loading it again changes nothing."""
    client.function_load(library.source, replace=True)


async def aload(client: Any, library: Library) -> None:
    """Async twin of ``load``."""
    await client.function_load(library.source, replace=True)


def send(client: Any, script: LuaScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
    """Exactly one call, loading the library first when the server lacks it (a replay sends each
    recorded call once, ``~more`` or not)."""
    try:
        return client.execute_command(*fcall(script, keys, args))
    except ResponseError as exc:
        if not _missing(exc):
            raise
        load(client, script.library)
        return client.execute_command(*fcall(script, keys, args))


def _once(client: Any, script: LuaScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
    """One call, loading the library when the server lacks it, sent again while it answers
    ``~more``."""
    while True:
        reply = send(client, script, keys, args)
        if not _more(reply):
            return reply


async def _aonce(client: Any, script: LuaScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
    """Async twin of ``_once``."""
    while True:
        try:
            reply = await client.execute_command(*fcall(script, keys, args))
        except ResponseError as exc:
            if not _missing(exc):
                raise
            await aload(client, script.library)
            reply = await client.execute_command(*fcall(script, keys, args))
        if not _more(reply):
            return reply


def call(client: Any, script: LuaScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
    """Run ``script`` on a sync redis client (or cluster client), loading the library when
    missing; a supply job's parts are gathered into its one reply."""
    reply = _once(client, script, keys, args)
    return settle(client, (script, keys, args), reply) if _unsettled(reply) else reply


async def acall(client: Any, script: LuaScript, keys: Sequence[str], args: Sequence[Arg]) -> Any:
    """Async twin of ``call`` for redis.asyncio clients."""
    reply = await _aonce(client, script, keys, args)
    return await asettle(client, (script, keys, args), reply) if _unsettled(reply) else reply


Call = tuple[LuaScript, Sequence[str], Sequence[Arg]]

# Pipelines send FCALL through execute_command, which redis-py's cluster pipeline routes by the
# slot of its keys.


def _sku_of(call_: Call) -> Any:
    """The SKU of a stream call (apply, apply_many), else None. A stream command answered while
    an earlier one of its SKU was still unsettled can only be a duplicate, answered with the
    position before that one: it is asked again once the earlier one is done."""
    script, _keys, args = call_
    return args[0] if script.name in ("apply", "apply_many") else None


def _pipelined(client: Any, calls: Sequence[Call]) -> Any:
    pipe = client.pipeline(transaction=False)
    for script, keys, args in calls:
        pipe.execute_command(*fcall(script, keys, args))
    return pipe


def _resend(results: list[Any]) -> list[int]:
    """The calls that met a missing library (to send again once it is loaded); other errors are
    raised."""
    missing = [i for i, r in enumerate(results) if _missing(r)]
    for r in results:
        if isinstance(r, Exception) and not _missing(r):
            raise r
    return missing


def call_many(client: Any, calls: Sequence[Call]) -> list[Any]:
    """Run several script calls in one pipelined round trip (no MULTI); results in order.

    Calls that met a missing library are sent again once it is loaded. Errors are raised.
    """
    if not calls:
        return []
    results = _pipelined(client, calls).execute(raise_on_error=False)
    missing = _resend(results)
    if missing:
        load(client, calls[missing[0]][0].library)
        again = _pipelined(client, [calls[i] for i in missing]).execute(raise_on_error=False)
        for i, r in zip(missing, again, strict=True):
            results[i] = r
        _raise_errors(results)
    again = [i for i, r in enumerate(results) if _more(r)]
    if again:
        for i, r in zip(again, call_many(client, [calls[i] for i in again]), strict=True):
            results[i] = r
    stalled: set[Any] = set()
    for i, r in enumerate(results):  # in order: a busy command waits for the ones before it
        if _unsettled(r):
            results[i] = settle(client, calls[i], r)
            stalled.add(_sku_of(calls[i]))
        elif _sku_of(calls[i]) in stalled:
            results[i] = call(client, *calls[i])  # answered before an earlier one: ask again after it
    return list(results)


async def acall_many(client: Any, calls: Sequence[Call]) -> list[Any]:
    """Async twin of ``call_many``."""
    if not calls:
        return []
    results = await _pipelined(client, calls).execute(raise_on_error=False)
    missing = _resend(results)
    if missing:
        await aload(client, calls[missing[0]][0].library)
        again = await _pipelined(client, [calls[i] for i in missing]).execute(raise_on_error=False)
        for i, r in zip(missing, again, strict=True):
            results[i] = r
        _raise_errors(results)
    again = [i for i, r in enumerate(results) if _more(r)]
    if again:
        for i, r in zip(again, await acall_many(client, [calls[i] for i in again]), strict=True):
            results[i] = r
    stalled: set[Any] = set()
    for i, r in enumerate(results):  # in order: a busy command waits for the ones before it
        if _unsettled(r):
            results[i] = await asettle(client, calls[i], r)
            stalled.add(_sku_of(calls[i]))
        elif _sku_of(calls[i]) in stalled:
            results[i] = await acall(client, *calls[i])
    return list(results)


# A stream batch: the apply calls of one SKU go as apply_many calls of at most GROUP_MAX commands
# (lua/apply.lua), which read the SKU's state once for all of them. A command that cannot finish in
# the call (a job part, busy, an unknown command) ends its group; it is settled as a single call
# would be, and the group's later commands go as single calls after it.

#: Commands per apply_many call: each costs about as much as an apply call's own work, so a
#: group stays a bounded call.
GROUP_MAX = 16


def group_call(calls: Sequence[Call]) -> Call:
    """One apply_many call for apply calls of one SKU (``Store._apply_calls``), in order."""
    script, keys, args = calls[0]
    n_keys = SCRIPT_KEY_COUNT
    stash = [k[n_keys] for _s, k, _a in calls if len(k) > n_keys]
    argv: list[Arg] = [args[0], args[1], len(calls)]
    for _s, _k, a in calls:
        argv.extend(a[2:10])  # cmd, event_id, source, offset, payload, note, keep_s, budget
    return entries(script.library)["apply_many"], [*keys[:n_keys], *stash], argv


class Grouped:
    """The pure part of ``call_grouped``: which calls to send, and where their replies go."""

    def __init__(self, calls: Sequence[Call]) -> None:
        self.calls = calls
        by_sku: dict[Any, list[int]] = {}
        for i, (_s, _k, args) in enumerate(calls):
            by_sku.setdefault(args[0], []).append(i)
        self.groups = [idx[j:j + GROUP_MAX] for idx in by_sku.values() for j in range(0, len(idx), GROUP_MAX)]
        self.sent = [group_call([calls[i] for i in idx]) if len(idx) > 1 else calls[idx[0]] for idx in self.groups]
        self.results: list[Any] = [None] * len(calls)

    def take(self, replies: Sequence[Any]) -> tuple[list[tuple[int, Any]], list[int]]:
        """Place the replies of ``sent``. Returns the commands that stopped their group with the
        reply to settle them from, and the commands to send again as single calls, in order."""
        stopped: list[tuple[int, Any]] = []
        rest: list[int] = []
        stalled: set[Any] = set()  # SKUs with a command stopped: their later ones go again (_sku_of)
        for idx, reply in zip(self.groups, replies, strict=True):
            sku = self.calls[idx[0]][2][0]
            if sku in stalled:
                rest.extend(idx)
                continue
            if len(idx) == 1:
                self.results[idx[0]] = reply
                continue
            for j, part in enumerate(reply):
                raw = _bytes(part)
                if raw is not None and raw[:1] == b"~":
                    if raw == b"~stop":
                        rest.extend(idx[j:])
                    else:
                        stopped.append((idx[j], part))
                        rest.extend(idx[j + 1:])
                    stalled.add(sku)
                    break
                self.results[idx[j]] = part
        return stopped, rest


def call_grouped(client: Any, calls: Sequence[Call]) -> list[Any]:
    """Like ``call_many`` for apply calls, with the calls of one SKU grouped (``Grouped``)."""
    grouped = Grouped(calls)
    stopped, rest = grouped.take(call_many(client, grouped.sent))
    for i, reply in stopped:
        grouped.results[i] = settle(client, calls[i], reply)
    for i, reply in zip(rest, call_many(client, [calls[i] for i in rest]), strict=True):
        grouped.results[i] = reply
    return grouped.results


async def acall_grouped(client: Any, calls: Sequence[Call]) -> list[Any]:
    """Async twin of ``call_grouped``."""
    grouped = Grouped(calls)
    stopped, rest = grouped.take(await acall_many(client, grouped.sent))
    for i, reply in stopped:
        grouped.results[i] = await asettle(client, calls[i], reply)
    for i, reply in zip(rest, await acall_many(client, [calls[i] for i in rest]), strict=True):
        grouped.results[i] = reply
    return grouped.results


# Claims: ``SET key value NX`` per key, or on a standalone Redis one ``MSETNX`` of all of them (a
# command per hold costs the client more than the hold costs Redis). MSETNX sets all or nothing;
# when it finds a key taken, the keys are claimed one by one right after the script.


def _standalone(client: Any) -> bool:
    return not isinstance(client, (RedisCluster, AsyncRedisCluster))


def is_cluster(client: Any) -> bool:
    """Whether ``client`` talks to a Redis Cluster (which picks, for one, the changed-set keys)."""
    return not _standalone(client)


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
    most by its first claim —, the script's result). A missing library is loaded and the call sent again.
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
    pipe.execute_command(*fcall(script, keys, args))
    results = pipe.execute(raise_on_error=False)
    last = results[-1]
    if _missing(last) or _more(last):
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
    pipe.execute_command(*fcall(script, keys, args))
    results = await pipe.execute(raise_on_error=False)
    last = results[-1]
    if _missing(last) or _more(last):
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
