"""Identifier validation and the Redis key builders of the store.

Every key of one SKU carries the hash tag ``{<sku>}`` so that all of a SKU's state lives in one
Redis Cluster slot and every script touches exactly one slot. Keys are only ever built from
identifiers that passed the patterns of docs/semantics.md; a bad identifier raises ``ValueError``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from engine.domain.ids import ID_KINDS, require_id

# fullmatch, never "$": Python's "$" also matches before a trailing newline.
SKU_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
LOCATION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
PREFIX_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,15}")

DEFAULT_PREFIX = "atp"


def _check(value: object, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise ValueError(f"invalid {what}: {value!r} (must match {pattern.pattern})")
    return value


def validate_sku(sku: object) -> str:
    """Return ``sku`` if it matches the SKU pattern, else raise ``ValueError`` saying why."""
    return require_id("sku", sku)


def validate_location(loc: object, what: str = "location") -> str:
    """Return ``loc`` if it matches the location/channel/supplier pattern, else raise ``ValueError``."""
    if what in ID_KINDS:
        return require_id(what, loc)
    return _check(loc, LOCATION_PATTERN, what)


def validate_id(value: object, what: str = "reservation_id") -> str:
    """Return ``value`` if it matches the reservation/order/inbound/event/customer id pattern."""
    if what in ID_KINDS:
        return require_id(what, value)
    return _check(value, ID_PATTERN, what)


def validate_prefix(prefix: object) -> str:
    """Return the key prefix if it matches the settings pattern, else raise ``ValueError``."""
    return _check(prefix, PREFIX_PATTERN, "key prefix")


# Order of the KEYS every script receives (lib.lua names them in the same order).
KEY_NAMES: tuple[str, ...] = (
    "loc", "lots", "res", "exp", "pol", "cust", "chan", "srel", "evt", "off", "jrnl", "seq",
)


@dataclass(frozen=True)
class SkuKeys:
    """All keys of one SKU; ``all`` is the KEYS list passed to every script, in ``KEY_NAMES`` order."""

    sku: str
    loc: str   # hash "<loc>|<bucket>" -> int (buckets oh, hd, cm, oa, ba, st)
    lots: str  # hash lot_id -> json {loc, qty, eta_ms, supplier, alloc}
    res: str   # hash rid -> json line
    exp: str   # zset rid -> expires_ms of held lines
    pol: str   # string: json policy (absent = defaults)
    cust: str  # hash customer -> live+shipped units
    chan: str  # hash channel -> live+shipped units
    srel: str  # hash supplier -> reliability per mille
    evt: str   # zset of recent event ids
    off: str   # hash source -> last applied offset
    jrnl: str  # list of movement journal entries, newest first, capped
    seq: str   # string: counter of created lines

    @property
    def all(self) -> list[str]:
        return [getattr(self, name) for name in KEY_NAMES]


def sku_keys(sku: str, prefix: str = DEFAULT_PREFIX) -> SkuKeys:
    """The keys of ``sku`` under ``prefix``; raises ``ValueError`` for a bad sku or prefix."""
    validate_sku(sku)
    validate_prefix(prefix)
    base = f"{prefix}:{{{sku}}}:"
    return SkuKeys(sku, *(base + name for name in KEY_NAMES))


def rid_index_key(rid: str, prefix: str = DEFAULT_PREFIX) -> str:
    """Key of the client-side index ``rid -> JSON list of the SKUs`` of a multi-SKU reservation."""
    validate_id(rid, "reservation_id")
    validate_prefix(prefix)
    return f"{prefix}:rid:{{{rid}}}"


def exp_scan_pattern(prefix: str = DEFAULT_PREFIX) -> str:
    """SCAN MATCH pattern of every SKU's expiry zset (used by the sweeper)."""
    validate_prefix(prefix)
    return f"{prefix}:{{*}}:exp"


def loc_scan_pattern(prefix: str = DEFAULT_PREFIX) -> str:
    """SCAN MATCH pattern of every SKU's location hash (used by the invariant checker)."""
    validate_prefix(prefix)
    return f"{prefix}:{{*}}:loc"


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
    return sku if SKU_PATTERN.fullmatch(sku) else None
