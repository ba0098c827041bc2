"""The change log of the store: each SKU's change records, their wire form, their replay, and
the state digest that says whether two keyspaces hold the same SKU (docs/changelog.md).

Every script call that changes a SKU appends one record to the SKU's log list in the same
atomic call (``lua/lib.lua`` ``F.record``). A record is the call itself — its entry, its time
and its arguments — and its per-SKU change number ``q`` (1, 2, … with no gap). Every entry is a
pure function of the SKU's state, its time and its arguments, so replaying a SKU's records in
``q`` order on an empty keyspace gives the state the live one had after the last of them. The
relay ships the records to Kafka (``engine.log.relay``); rebuild and reconcile replay them
(``engine.log.rebuild``).

Pure parts (``Record``, ``replay_call``, ``digest_of``) here; the I/O is a few thin functions
taking a redis-py client.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from engine.domain.outputs import CHANGE_ENTRIES
from engine.store import scripts
from engine.store.keys import (
    KEY_NAMES,
    SkuKeys,
    changed_key,
    changed_keys,
    publish_keys,
    script_keys,
    sku_from_key,
    sku_keys,
    validate_prefix,
    validate_sku,
)

#: The state fields and keys a digest leaves out: a kept position and its marker (a cache that
#: reads make, which the log does not carry) and the log itself.
_NOT_STATE_KEYS = frozenset({"pos", "log"})
_NOT_STATE_FIELDS = frozenset({"!K"})
#: The entries a replay may send: every entry that can change a SKU.
REPLAYABLE = frozenset(CHANGE_ENTRIES)
#: Entries read per HSCAN / ZSCAN call while digesting: bounded work per call.
SCAN_COUNT = 1000


class LogGap(RuntimeError):
    """A SKU's records skip a change number: the log is missing a record (or holds another
    SKU's history), so replaying it cannot give the live state."""


@dataclass(frozen=True)
class Record:
    """One change record of one SKU."""

    sku: str
    q: int                    # the SKU's change number: 1, 2, … in the order Redis applied them
    fn: str                   # the entry that ran (hold, reservation, apply, apply_many, position, sweep, publish)
    now_ms: int               # the call's time
    args: tuple[str, ...]     # the entry's ARGV from 3 on
    stash: tuple[str, ...] = ()  # apply's reply stash keys without the key prefix ('rp:{sku}:…')
    #: the lines the call expired ({rid, qty, location, expires_ms, channel, customer_id,
    #: promised_ms, atp_after}): an effect, for consumers; a replay does not need it
    expired: tuple[dict[str, Any], ...] = ()

    def to_json(self) -> bytes:
        """The record's JSON, as the script wrote it and the relay ships it (topic
        ``inventory.changes``, key = the SKU)."""
        body: dict[str, Any] = {"sku": self.sku, "q": self.q, "fn": self.fn, "now_ms": self.now_ms,
                                "args": list(self.args)}
        if self.stash:
            body["stash"] = list(self.stash)
        if self.expired:
            body["expired"] = list(self.expired)
        return orjson.dumps(body)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Record:
        """A record from its Kafka value; ``ValueError`` when it is not one."""
        try:
            body = orjson.loads(raw)
            sku = validate_sku(body["sku"])
            q, fn, now_ms = body["q"], body["fn"], body["now_ms"]
            args, stash, expired = body["args"], body.get("stash", []), body.get("expired", [])
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"not a change record: {exc}") from exc
        if fn not in REPLAYABLE or not (isinstance(q, int) and q > 0) or not isinstance(now_ms, int):
            raise ValueError(f"not a change record: fn={fn!r} q={q!r}")
        if not all(isinstance(a, str) for a in args) or not all(isinstance(s, str) for s in stash):
            raise ValueError("not a change record: args and stash must be strings")
        if not all(isinstance(e, dict) for e in expired):
            raise ValueError("not a change record: expired must hold objects")
        return cls(sku, q, fn, now_ms, tuple(args), tuple(stash), tuple(expired))


# The head of a record as F.record writes it (lib.lua): the SKU, the change number, the entry.
_HEAD = re.compile(rb'^\{"sku":"([A-Za-z0-9][A-Za-z0-9._-]{0,63})","q":([1-9][0-9]{0,17}),"fn":"([a-z_]+)"')


def record_head(value: bytes) -> tuple[str, int, str]:
    """``(sku, q, fn)`` of a record as the script wrote it, read from its head without decoding
    the rest (the relay reads every waiting record; a whole decode is most of its work);
    ``ValueError`` when it is not a record's head."""
    m = _HEAD.match(value)
    if m is None or m.group(3).decode() not in REPLAYABLE:
        raise ValueError(f"not a change record: {value[:80]!r}")
    return m.group(1).decode(), int(m.group(2)), m.group(3).decode()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def replay_call(record: Record, prefix: str, cluster: bool = False) -> scripts.Call:
    """The call that replays ``record`` on the keyspace of ``prefix`` (of a cluster: ``cluster``)."""
    validate_prefix(prefix)
    entry = scripts.load_scripts()[record.fn]
    keys = script_keys(record.sku, prefix, cluster)
    if record.fn == "publish" and len(record.args) > 2:  # with the marks of its events' reservations
        keys = publish_keys(record.sku, record.args[1::3], prefix, cluster)
    for tail in record.stash:
        if not tail.startswith(f"rp:{{{record.sku}}}:"):
            raise ValueError(f"stash key {tail!r} is not one of SKU {record.sku!r}")
        keys.append(f"{prefix}-{tail}")
    return entry, keys, [record.sku, record.now_ms, *record.args]


def read_log_raw(client: Any, sku: str, prefix: str, count: int = 500, start: int = 0) -> list[bytes]:
    """Up to ``count`` records of the SKU's log from the ``start``-th (0: the oldest waiting), as
    the script wrote them (the Kafka value)."""
    raw = client.lrange(sku_keys(sku, prefix).log, start, start + count - 1)
    return [r if isinstance(r, bytes) else r.encode() for r in raw]


def read_log(client: Any, sku: str, prefix: str, count: int = 500, start: int = 0) -> list[Record]:
    """``read_log_raw``, decoded."""
    return [Record.from_json(r) for r in read_log_raw(client, sku, prefix, count, start)]


# The records of one SKU at or below a change number leave its log, atomically: the log is in q
# order and grows only at its tail, so they are a head of the list (an empty list is deleted, and
# the SKU leaves the changed set, KEYS[2]).
_TRIM = """
local n = 0
local head = redis.call('LINDEX', KEYS[1], 0)
if head then
  local first = tonumber(string.match(head, '"q":(%d+)'))
  n = math.max(0, tonumber(ARGV[1]) - first + 1)
  if n > 0 then redis.call('LTRIM', KEYS[1], n, -1) end
end
if redis.call('EXISTS', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], ARGV[2]) end
return n
"""


def trim_log(client: Any, sku: str, prefix: str, through_q: int) -> int:
    """Delete the SKU's waiting records with q ≤ ``through_q`` (shipped); returns how many. A SKU
    whose log is then empty leaves the changed set (``through_q`` 0 only does that)."""
    return trim_logs(client, [(sku, through_q)], prefix)[0]


def trim_logs(client: Any, trims: Sequence[tuple[str, int]], prefix: str, chunk: int = 500) -> list[int]:
    """``trim_log`` of each (SKU, through_q), ``chunk`` a pipelined round trip; how many each lost."""
    cluster = scripts.is_cluster(client)
    out: list[int] = []
    if cluster:  # redis-py's cluster pipeline sends no EVAL: one call each
        return [int(client.eval(_TRIM, 2, sku_keys(sku, prefix).log, changed_key(sku, prefix, True), q, sku))
                for sku, q in trims]
    for i in range(0, len(trims), chunk):
        pipe = client.pipeline(transaction=False)
        for sku, through_q in trims[i:i + chunk]:
            pipe.eval(_TRIM, 2, sku_keys(sku, prefix).log, changed_key(sku, prefix, cluster), through_q, sku)
        out.extend(int(n) for n in pipe.execute())
    return out


def change_number(client: Any, sku: str, prefix: str) -> int:
    """The SKU's last change number in the keyspace of ``prefix`` (0: none)."""
    return int(client.hget(sku_keys(sku, prefix).state, "!Q") or 0)


class Replayer:
    """Replays records into the keyspace of ``prefix``, each SKU's in ``q`` order: records at or
    below the SKU's change number there are skipped (a record shipped twice, a replay run again),
    a record past the next number raises ``LogGap``. The replayed calls append records to the
    target's own logs; ``drop_logs`` deletes those (a rebuild's are already in Kafka)."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = validate_prefix(prefix)
        self.cluster = scripts.is_cluster(client)
        self.at: dict[str, int] = {}
        self.applied = 0
        self.skipped = 0

    def _at(self, sku: str) -> int:
        if sku not in self.at:
            self.at[sku] = change_number(self.client, sku, self.prefix)
        return self.at[sku]

    def apply(self, records: Iterable[Record]) -> None:
        """Replay ``records`` (each SKU's in order; SKUs may interleave)."""
        for record in records:
            at = self._at(record.sku)
            if record.q <= at:
                self.skipped += 1
                continue
            if record.q != at + 1:
                raise LogGap(f"SKU {record.sku}: record {record.q} follows change {at}; "
                             f"records {at + 1}..{record.q - 1} are missing")
            scripts.send(self.client, *replay_call(record, self.prefix, self.cluster))
            self.at[record.sku] = record.q
            self.applied += 1

    def drop_logs(self, skus: Iterable[str] | None = None) -> None:
        """Delete the logs the replay wrote (of ``skus``, default every SKU replayed)."""
        for sku in (self.at if skus is None else skus):
            self.client.delete(sku_keys(sku, self.prefix).log)


# ---------------------------------------------------------------------------- state digest

_SIZE_OF = {"hash": "hlen", "zset": "zcard"}


def _read_whole(pipe: Any, kind: str, key: str) -> None:
    if kind == "hash":
        pipe.hgetall(key)
    elif kind == "zset":
        pipe.zrange(key, 0, -1, withscores=True)
    else:
        pipe.get(key)


def _content(kind: str, raw: Any) -> Any:
    if kind == "hash":
        return {_text(f): _text(v) for f, v in (raw.items() if isinstance(raw, dict) else raw)}
    if kind == "zset":
        return sorted((_text(m), float(s)) for m, s in raw)
    if kind == "string":
        return _text(raw)
    return repr(kind)


def sku_state(client: Any, sku: str, prefix: str) -> dict[str, Any]:
    """The SKU's state in the keyspace of ``prefix``, key name (``state``, ``res``, …) -> content;
    without what is not state (``_NOT_STATE_KEYS``, ``_NOT_STATE_FIELDS``) and absent keys.
    Two pipelined round trips for a SKU whose keys hold at most ``SCAN_COUNT`` entries each; a
    bigger hash or zset is read a page per call (HSCAN / ZSCAN), so no call grows with history."""
    keys: SkuKeys = sku_keys(validate_sku(sku), prefix)
    names = [n for n in KEY_NAMES if n not in _NOT_STATE_KEYS]
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.type(getattr(keys, name))
    kinds = [_text(k) for k in pipe.execute()]
    sizes: dict[str, int] = {}
    pipe = client.pipeline(transaction=False)
    sized = [(n, k) for n, k in zip(names, kinds, strict=True) if k in _SIZE_OF]
    for name, kind in sized:
        getattr(pipe, _SIZE_OF[kind])(getattr(keys, name))
    for (name, _kind), size in zip(sized, pipe.execute() if sized else [], strict=True):
        sizes[name] = int(size)
    out: dict[str, Any] = {}
    whole = [(n, k) for n, k in zip(names, kinds, strict=True)
             if k != "none" and sizes.get(n, 0) <= SCAN_COUNT]
    pipe = client.pipeline(transaction=False)
    for name, kind in whole:
        _read_whole(pipe, kind, getattr(keys, name))
    for (name, kind), raw in zip(whole, pipe.execute() if whole else [], strict=True):
        out[name] = _content(kind, raw)
    for name, kind in zip(names, kinds, strict=True):
        if name in out or kind == "none":
            continue
        key = getattr(keys, name)
        if kind == "hash":
            out[name] = _content(kind, client.hscan_iter(key, count=SCAN_COUNT))
        elif kind == "zset":
            out[name] = _content(kind, client.zscan_iter(key, count=SCAN_COUNT))
        else:
            out[name] = repr(kind)
    if "state" in out:
        out["state"] = {f: v for f, v in out["state"].items() if f not in _NOT_STATE_FIELDS}
    return {name: out[name] for name in names if name in out}


def digest_of(state: dict[str, Any]) -> str:
    """SHA-256 (hex) of a state from ``sku_state``."""
    return hashlib.sha256(orjson.dumps(state, option=orjson.OPT_SORT_KEYS)).hexdigest()


def state_diff(live: dict[str, Any], other: dict[str, Any], limit: int = 20) -> list[str]:
    """Where two states from ``sku_state`` differ, field by field, at most ``limit`` lines: the
    location buckets of '!L' by name, other hash fields by name, zset members, strings whole."""
    out: list[str] = []
    for name in sorted(set(live) | set(other)):
        a, b = live.get(name), other.get(name)
        if a == b:
            continue
        if isinstance(a, dict) or isinstance(b, dict):
            a, b = a or {}, b or {}
            for field in sorted(set(a) | set(b)):
                if a.get(field) != b.get(field):
                    if name == "state" and field == "!L":
                        out.extend(_bucket_diff(a.get(field), b.get(field)))
                    else:
                        out.append(f"{name}[{field}]: live {a.get(field)!r}, log {b.get(field)!r}")
        elif isinstance(a, list) or isinstance(b, list):
            sa, sb = set(map(tuple, a or [])), set(map(tuple, b or []))
            out.extend(f"{name}: live only {m!r}" for m in sorted(sa - sb))
            out.extend(f"{name}: log only {m!r}" for m in sorted(sb - sa))
        else:
            out.append(f"{name}: live {a!r}, log {b!r}")
    return out[:limit]


_BUCKETS = ("on_hand", "held", "committed", "oh_alloc", "bo_alloc", "short")


def _locations(raw: str | None) -> tuple[str, dict[str, tuple[str, ...]]]:
    if raw is None:
        return "", {}
    head, *segments = raw.split("|")
    locs = {}
    for seg in segments:
        name, _, values = seg.partition("=")
        locs[name] = tuple(values.split(","))
    return head, locs


def _bucket_diff(live: str | None, other: str | None) -> list[str]:
    (ha, la), (hb, lb) = _locations(live), _locations(other)
    out = []
    if ha != hb:
        out.append(f"state[!L] counters: live {ha!r}, log {hb!r}")
    for loc in sorted(set(la) | set(lb)):
        va, vb = la.get(loc, ("0",) * 6), lb.get(loc, ("0",) * 6)
        for bucket, x, y in zip(_BUCKETS, va, vb, strict=False):
            if x != y:
                out.append(f"{loc}.{bucket}: live {x}, log {y}")
    return out


def iter_changed_skus(client: Any, prefix: str, count: int = 1000) -> Iterator[str]:
    """The SKUs in the changed sets of the keyspace of ``prefix`` (``keys.changed_key``): those
    whose log holds records, and a few whose log was just emptied some other way (the relay's
    trim takes them out). On a cluster the sets of all slots are looked at ``count`` a round
    trip, then the non-empty ones read with SSCAN; no call grows with the keyspace."""
    names = changed_keys(prefix, scripts.is_cluster(client))
    for i in range(0, len(names), count):
        chunk = names[i:i + count]
        if len(chunk) == 1:
            found = chunk
        else:
            pipe = client.pipeline(transaction=False)
            for key in chunk:
                pipe.exists(key)
            found = [key for key, n in zip(chunk, pipe.execute(), strict=True) if n]
        for key in found:
            for sku in client.sscan_iter(key, count=count):
                yield _text(sku)


def iter_log_skus(client: Any, prefix: str, count: int = 1000) -> Iterator[str]:
    """The SKUs whose log holds records in the keyspace of ``prefix``, by a SCAN of the whole
    keyspace (``count`` a call): for tools that must not trust the changed sets."""
    validate_prefix(prefix)
    for key in client.scan_iter(match=f"{prefix}:{{*}}:log", count=count, _type="list"):
        sku = sku_from_key(key, prefix)
        if sku is not None:
            yield sku


def skus_of(records: Sequence[Record]) -> list[str]:
    """The SKUs of ``records``, in first-seen order."""
    return list(dict.fromkeys(r.sku for r in records))
