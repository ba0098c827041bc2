"""Identifier validation and the Redis key builders of the store.

Every key of one SKU carries the hash tag ``{<sku>}`` so that all of a SKU's state lives in one
Redis Cluster slot and every script touches exactly one slot. Keys are only ever built from
identifiers that passed the patterns of docs/semantics.md; a bad identifier raises ``ValueError``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import orjson

from engine.domain.ids import is_valid_id, require_id

# The identifiers' patterns are engine.domain.ids'; the key prefix is the store's own.
# fullmatch, never "$": Python's "$" also matches before a trailing newline.
PREFIX_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,15}")

DEFAULT_PREFIX = "atp"


def validate_sku(sku: object) -> str:
    """Return ``sku`` if it matches the SKU pattern, else raise ``ValueError`` saying why."""
    return require_id("sku", sku)


def validate_location(loc: object, what: str = "location") -> str:
    """Return ``loc`` if it is a valid ``what`` (location, channel or supplier_id), else raise
    ``ValueError`` saying why."""
    return require_id(what, loc)


def validate_id(value: object, what: str = "reservation_id") -> str:
    """Return ``value`` if it is a valid ``what`` (reservation, order, inbound, event or customer
    id), else raise ``ValueError`` saying why."""
    return require_id(what, value)


def validate_prefix(prefix: object) -> str:
    """Return the key prefix if it matches the settings pattern, else raise ``ValueError``."""
    if not isinstance(prefix, str) or PREFIX_PATTERN.fullmatch(prefix) is None:
        raise ValueError(f"invalid key prefix: {prefix!r} (must match {PREFIX_PATTERN.pattern})")
    return prefix


# Order of the KEYS every script receives (lib.lua names them in the same order).
KEY_NAMES: tuple[str, ...] = (
    "state", "lots", "res", "exp", "dead", "cust", "chan", "srel", "pol", "pos", "ended", "pool", "job",
    "due", "duet", "log",
)


@dataclass(frozen=True)
class SkuKeys:
    """All keys of one SKU; ``all`` is the KEYS list passed to every script, in ``KEY_NAMES`` order."""

    sku: str
    state: str  # hash: '!L' counters + location buckets, '!P' compact policy, '@<source>' offsets,
    #             'e<event_id>' recent-event log, 'j<k>' journal ring (see lua/lib.lua)
    lots: str   # hash lot_id -> '<loc>,<qty>,<eta_ms>,<supplier>,<alloc>'
    res: str    # hash rid -> line, compact (see lua/lib.lua)
    exp: str    # zset, expiry index: member = space-separated rids, score = their expires_ms
    dead: str   # zset rid -> ms the line reached a final state (retention purge)
    cust: str   # hash customer -> live+shipped units ('~<customer>': units of purged shipped lines)
    chan: str   # hash channel -> live+shipped units (same)
    srel: str   # hash supplier -> reliability per mille
    pol: str    # string: json policy, complete (absent = defaults)
    pos: str    # string: json position of all locations, kept until time could change it
    ended: str  # hash rid -> line in a final state (released, expired, shipped) until purged: out
    #             of ``res``, so what reads every live line never reads the retention's history
    pool: str   # zset (all scores 0), the pool index: '<pool>|<seq:012>|<rid>' for each pool a live
    #             line draws on (pool 'o<loc>', 'l<lot_id>', 'b' or 's'), so supply changes find
    #             the lines they move in allocation order without reading the others
    job: str    # zset (all scores 0): '<seq:012>|<rid>|<promised ms before>' of each line a paused
    #             supply job touched, for its report phase (see lua/rebalance.lua)
    due: str    # hash, due usage: 'c<T>|<customer>' / 'h<T>|<channel>' -> units of the held lines
    #             expiring at second T (the buckets themselves are 'p<T>' fields of ``state``;
    #             see lua/lib.lua)
    duet: str   # zset T -> T of the buckets in ``due``
    log: str    # list, the change log: one record per call that changed the SKU, until the
    #             relay shipped it (docs/changelog.md; lua/lib.lua F.record)

    @property
    def all(self) -> list[str]:
        return [getattr(self, name) for name in KEY_NAMES]


def sku_keys(sku: str, prefix: str = DEFAULT_PREFIX) -> SkuKeys:
    """The keys of ``sku`` under ``prefix``; raises ``ValueError`` for a bad sku or prefix."""
    if isinstance(sku, str) and isinstance(prefix, str):
        return _sku_keys(sku, prefix)  # every call builds keys: remember the valid ones
    return _build_sku_keys(sku, prefix)


def _build_sku_keys(sku: str, prefix: str) -> SkuKeys:
    validate_sku(sku)
    validate_prefix(prefix)
    base = f"{prefix}:{{{sku}}}:"
    return SkuKeys(sku, *(base + name for name in KEY_NAMES))


_sku_keys = lru_cache(maxsize=65_536)(_build_sku_keys)


#: Slots of a Redis Cluster: a key's slot is CRC16 of its hash tag mod this.
CLUSTER_SLOTS = 16384


@lru_cache(maxsize=1)
def _slot_tags() -> tuple[str, ...]:
    """A short hash tag for each cluster slot (slot -> tag), the first hex numbers to land there."""
    from redis.crc import key_slot

    tags: list[str | None] = [None] * CLUSTER_SLOTS
    left, i = CLUSTER_SLOTS, 0
    while left:
        tag = format(i, "x")
        slot = key_slot(tag.encode())
        if tags[slot] is None:
            tags[slot] = tag
            left -= 1
        i += 1
    return tuple(t for t in tags if t is not None)


def changed_key(sku: str, prefix: str = DEFAULT_PREFIX, cluster: bool = False) -> str:
    """The set of SKUs whose change log holds records (docs/changelog.md) that ``sku`` is put in
    by the script that writes its first waiting record, and taken out of by the trim that empties
    it: the relay finds the SKUs to ship there, without scanning the keyspace. One set on a
    standalone server; on a cluster one per hash slot, in the SKU's own slot (a script may only
    write keys of its slot)."""
    validate_prefix(prefix)
    if not cluster:
        return f"{prefix}:changed"
    from redis.crc import key_slot

    return f"{prefix}:changed:{{{_slot_tags()[key_slot(validate_sku(sku).encode())]}}}"


def changed_keys(prefix: str = DEFAULT_PREFIX, cluster: bool = False) -> list[str]:
    """Every set ``changed_key`` may name: one, or one per cluster slot."""
    validate_prefix(prefix)
    if not cluster:
        return [f"{prefix}:changed"]
    return [f"{prefix}:changed:{{{tag}}}" for tag in _slot_tags()]


def script_keys(sku: str, prefix: str = DEFAULT_PREFIX, cluster: bool = False) -> list[str]:
    """The KEYS every script call of ``sku`` takes: the SKU's keys (``KEY_NAMES`` order), then
    its changed set (lua/lib.lua KEYS[17]); apply's stash keys follow."""
    return [*sku_keys(sku, prefix).all, changed_key(sku, prefix, cluster)]


#: How many KEYS every script call takes before apply's stash keys.
SCRIPT_KEY_COUNT = len(KEY_NAMES) + 1


def event_marks_key(sku: str, rid: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Key of the changes of reservation ``rid`` whose events were kept in ``sku``'s log (a
    string in the SKU's slot, lua/publish.lua): the mark that keeps each event once."""
    validate_id(rid, "reservation_id")
    return f"{sku_keys(sku, prefix).state[:-len('state')]}ev:{rid}"


def publish_keys(sku: str, rids: Sequence[str], prefix: str = DEFAULT_PREFIX, cluster: bool = False) -> list[str]:
    """The KEYS of a ``publish`` call: the script's keys, then ``event_marks_key`` of each event's
    reservation, in the order of the events."""
    return [*script_keys(sku, prefix, cluster), *(event_marks_key(sku, rid, prefix) for rid in rids)]


def logs_key(prefix: str = DEFAULT_PREFIX) -> str:
    """The hash of the input topics' identities and generations (``engine.flow.log_identity``)."""
    return f"{validate_prefix(prefix)}:logs"


def rid_index_key(rid: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Key of the client-side index ``rid -> JSON list of the SKUs`` of a multi-SKU reservation."""
    validate_id(rid, "reservation_id")
    validate_prefix(prefix)
    return f"{prefix}:rid:{{{rid}}}"


#: First byte of a reservation-index value written by a multi-SKU hold that is still placing its
#: lines. Another request with the same id waits until the value is final (or gone) instead of
#: adopting lines the first one may still roll back (docs/semantics.md "Reservation index").
RID_INDEX_PENDING = b"~"


def rid_index_value(skus: list[str], pending: bool = False) -> bytes:
    """The index value of a reservation over ``skus`` (sorted JSON list; marked while pending)."""
    value = orjson.dumps(sorted(set(skus)))
    return RID_INDEX_PENDING + value if pending else value


def rid_index_pending(raw: object) -> bool:
    """Whether an index value is marked as written by a hold still in progress."""
    return isinstance(raw, (bytes, str)) and raw[:1] in (RID_INDEX_PENDING, "~")


def decode_rid_index(raw: object) -> list[str] | None:
    """The sorted SKUs of a reservation-index value (a JSON list, pending or final), or None when
    absent or malformed."""
    if raw is None:
        return None
    if rid_index_pending(raw):
        raw = raw[1:]  # type: ignore[index]
    try:
        skus = orjson.loads(raw)  # type: ignore[arg-type]
    except orjson.JSONDecodeError:
        return None
    if not isinstance(skus, list) or not all(isinstance(s, str) for s in skus):
        return None
    return sorted(set(skus))


def exp_scan_pattern(prefix: str = DEFAULT_PREFIX) -> str:
    """SCAN MATCH pattern of every SKU's expiry zset (used by the sweeper)."""
    validate_prefix(prefix)
    return f"{prefix}:{{*}}:exp"


def dead_scan_pattern(prefix: str = DEFAULT_PREFIX) -> str:
    """SCAN MATCH pattern of every SKU's zset of final-state lines (used by the retention purge)."""
    validate_prefix(prefix)
    return f"{prefix}:{{*}}:dead"


def sku_from_key(key: str | bytes, prefix: str = DEFAULT_PREFIX) -> str | None:
    """The SKU of a per-SKU key (``<prefix>:{<sku>}:<name>``), or None if it is not one."""
    if isinstance(key, bytes):
        key = key.decode("utf-8", "replace")
    head = prefix + ":{"
    if not key.startswith(head):
        return None
    end = key.find("}:", len(head))
    if end < 0:
        return None
    sku = key[len(head):end]
    return sku if is_valid_id("sku", sku) else None
