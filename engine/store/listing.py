"""Listing reservations a page at a time, each page a bounded amount of Redis work.

``GET /v1/reservations`` and ``atp reservations list`` read through here (README, "HTTP API"):

* with a ``sku``, that SKU's live lines (the ``res`` hash) and then its ended lines (``ended``),
  by HSCAN; an item is the reservation's line of that SKU;
* without, the reservation index keys ``<prefix>:rid:{<rid>}`` (docs/semantics.md, "Reservation
  index") by SCAN — on a Redis Cluster each primary in turn — and the lines each index names; an
  item is the whole reservation. An index still marked pending (a hold placing its lines) is
  left out, as is one whose lines are all gone.

**Bounded work.** A page makes at most ``SCAN_CALLS_MAX`` SCAN / HSCAN calls of COUNT
``SCAN_COUNT`` and stops reading once it has read ``READS_MAX`` entries (hash fields and keys
the scans return, index values and lines), whatever the history holds. So a page may hold fewer
than ``limit`` items, or none, and still carry a cursor: the listing is complete only when
``next_cursor`` is None.

**Consistency** is that of SCAN, weak: an item present from the first page to the last is
listed at least once; an item may be listed on two pages (a line released meanwhile may show as
held and then as released); one created or removed meanwhile may or may not be listed. A line
brought back from the ended lines by an order of the same id while a listing of its SKU is
past the live lines may be missed. No id repeats within one page. Items come in no particular
order. After a Cluster failover or resharding a listing in progress may miss or repeat items.

Lines are shown as a read shows them: a held line whose expiry has passed is ``expired``, with
no allocations — what the next script call on its SKU makes of it (docs/semantics.md, "Lazy
expiry").

**The cursor** is opaque to callers: base64url of a small JSON object naming where to go on
(which hash or Cluster primary, the SCAN position, and — for a page that ended inside one
scan batch — the batch's end and the last id taken) and a digest of the filters. A cursor
that does not decode, or that belongs to other filters, raises ``BadCursor``.

``plan_page`` is pure: a generator that yields the Redis reads it needs (``Op``) and is sent
their replies. ``Store`` and ``AsyncStore`` run it over their clients.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Generator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from engine.domain.ids import MAX_LINES, is_valid_id
from engine.store.keys import (
    DEFAULT_PREFIX,
    decode_rid_index,
    rid_index_key,
    rid_index_pending,
    sku_keys,
    validate_id,
    validate_prefix,
    validate_sku,
)
from engine.store.wire import RESERVATION_STATES, check_int, decode_line, reservation_state

#: Items per page when the caller names no limit, and the most a caller may ask for.
LIST_LIMIT_DEFAULT = 100
LIST_LIMIT_MAX = 500
#: COUNT of each SCAN / HSCAN call (a hint: a small hash comes back whole, up to the server's
#: listpack size, 128 entries by default).
SCAN_COUNT = 100
#: SCAN / HSCAN calls one page makes at most.
SCAN_CALLS_MAX = 10
#: Entries one page reads before it stops: what the scans return, index values and lines. The
#: last batch read may pass it by one batch; one reservation's lines are always read whole.
READS_MAX = 2000
#: Index values read in one round trip at least (more when more items are still wanted).
INDEX_CHUNK = 32
#: The longest cursor accepted (the cursors given are about 100-350 characters).
CURSOR_MAX_CHARS = 512

CLUSTER_SLOTS = 16384
_CURSOR_VERSION = 1
_SKU, _INDEX = "s", "i"
_LIVE, _ENDED = 0, 1
_U64 = 2**64

#: One Redis read the planner asks for; the reply the runner sends back:
#: ``("now",)`` → ms · ``("shards",)`` → sorted shard ids (the lowest slot of each Cluster
#: primary; ``[0]`` for a single server) · ``("hscan", key, pos, count)`` → (next pos, {field:
#: value}) · ``("scan", shard, pos, match, count)`` → (next pos, keys) · ``("get", keys)`` →
#: values · ``("hget", [(key, field), …])`` → values (None where absent).
Op = tuple[Any, ...]


class BadCursor(ValueError):
    """A cursor this listing did not give, or gave for other filters."""


@dataclass(frozen=True)
class ListQuery:
    """What to list: every filter optional, ``limit`` items per page at most.

    Construction validates every field (``ValueError`` saying why): ids by their patterns
    (docs/semantics.md, "Identifiers"), ``state`` one of ``RESERVATION_STATES``."""

    sku: str | None = None
    customer: str | None = None
    state: str | None = None
    limit: int = LIST_LIMIT_DEFAULT

    def __post_init__(self) -> None:
        if self.sku is not None:
            validate_sku(self.sku)
        if self.customer is not None:
            validate_id(self.customer, "customer_id")
        if self.state is not None and self.state not in RESERVATION_STATES:
            raise ValueError(f"state must be one of {', '.join(RESERVATION_STATES)}, got {self.state!r}")
        check_int(self.limit, "limit", 1, LIST_LIMIT_MAX)

    @property
    def digest(self) -> str:
        """What a cursor carries to tie it to these filters (the limit may change between pages)."""
        text = f"{self.sku or ''}|{self.customer or ''}|{self.state or ''}"
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Listed:
    """One item: a reservation id and its lines (store wire lines, docs/semantics.md "Wire
    shapes", ordered by SKU) — with a ``sku`` filter, only its line of that SKU."""

    reservation_id: str
    lines: list[dict[str, Any]]


@dataclass(frozen=True)
class Page:
    """One page: its items, the cursor of the next page (None: the listing is complete), and
    the work it took — ``scanned`` entries read, ``calls`` SCAN / HSCAN calls."""

    items: list[Listed]
    next_cursor: str | None
    scanned: int
    calls: int


@dataclass(frozen=True)
class _At:
    """Where a listing goes on. ``part``: the hash (sku listing: 0 live lines, 1 ended lines) or
    the shard (index listing); ``pos``: the SCAN position of the next batch. A page that ended
    inside a batch names the batch by ``pos`` and the ``end`` position it answered, and
    ``after``: the last id of it (in id order) the listing went past."""

    part: int
    pos: int
    end: int | None = None
    after: str | None = None


# --------------------------------------------------------------------------- the cursor


def encode_cursor(mode: str, query: ListQuery, at: _At) -> str:
    """The opaque cursor of position ``at`` of a listing of ``query``."""
    data: dict[str, Any] = {"v": _CURSOR_VERSION, "m": mode, "q": query.digest, "p": at.part, "c": at.pos}
    if at.end is not None:
        data["e"] = at.end
        data["a"] = at.after
    return base64.urlsafe_b64encode(orjson.dumps(data)).rstrip(b"=").decode()


def _whole(value: object, lo: int, hi: int) -> bool:
    return type(value) is int and lo <= value < hi


def decode_cursor(text: object, query: ListQuery) -> _At:
    """The position a cursor names; ``BadCursor`` saying why when it is not one this listing
    gave for ``query``'s filters."""
    if not isinstance(text, str) or not text:
        raise BadCursor("the cursor is empty")
    if len(text) > CURSOR_MAX_CHARS:
        raise BadCursor(f"the cursor is longer than {CURSOR_MAX_CHARS} characters")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != text:
            raise ValueError("not canonical base64url")
        data = orjson.loads(raw)
    except (ValueError, binascii.Error, orjson.JSONDecodeError) as exc:
        raise BadCursor("not a cursor of this listing (pass next_cursor as it came)") from exc
    mode = _SKU if query.sku is not None else _INDEX
    if not isinstance(data, dict) or data.get("v") != _CURSOR_VERSION or data.get("m") not in (_SKU, _INDEX):
        raise BadCursor("not a cursor of this listing (pass next_cursor as it came)")
    if data["m"] != mode or data.get("q") != query.digest:
        raise BadCursor("the cursor belongs to a listing with other filters (sku, customer, state)")
    keys = set(data)
    mid_batch = "e" in data
    if keys != ({"v", "m", "q", "p", "c", "e", "a"} if mid_batch else {"v", "m", "q", "p", "c"}):
        raise BadCursor("not a cursor of this listing (pass next_cursor as it came)")
    parts = 2 if mode == _SKU else CLUSTER_SLOTS
    if not (_whole(data["p"], 0, parts) and _whole(data["c"], 0, _U64)):
        raise BadCursor("not a cursor of this listing (pass next_cursor as it came)")
    if mid_batch and not (_whole(data["e"], 0, _U64) and is_valid_id("reservation_id", data["a"])):
        raise BadCursor("not a cursor of this listing (pass next_cursor as it came)")
    return _At(data["p"], data["c"], data.get("e"), data.get("a"))


# --------------------------------------------------------------------------- the planner


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def shown_line(line: dict[str, Any], now_ms: int) -> dict[str, Any]:
    """A stored wire line as a read at ``now_ms`` shows it: a held line past its expiry is
    expired and gives back its allocations (docs/semantics.md, "Lazy expiry")."""
    if line["state"] == "held" and 0 < line["expires_ms"] <= now_ms:
        return {**line, "state": "expired", "alloc": []}
    return line


def _matches(query: ListQuery, lines: list[dict[str, Any]]) -> bool:
    if query.customer is not None and not any(line["customer"] == query.customer for line in lines):
        return False
    return query.state is None or reservation_state(line["state"] for line in lines) == query.state


def rid_index_pattern(prefix: str = DEFAULT_PREFIX) -> str:
    """SCAN MATCH pattern of every reservation index key (``keys.rid_index_key``)."""
    validate_prefix(prefix)
    return f"{prefix}:rid:{{*}}"


def _rid_of_index_key(key: bytes | str, head: str) -> str | None:
    text = _text(key)
    if not (text.startswith(head) and text.endswith("}")):
        return None
    rid = text[len(head):-1]
    return rid if is_valid_id("reservation_id", rid) else None


def _index_skus(raw: Any) -> list[str]:
    """The SKUs of a final index value; none for a pending, malformed or absent one (nothing of
    it is listed)."""
    if raw is None or rid_index_pending(raw):
        return []
    skus = decode_rid_index(raw)
    if not skus or len(skus) > MAX_LINES or not all(is_valid_id("sku", s) for s in skus):
        return []
    return skus


class _Pager:
    """The page being filled, and what it has cost so far."""

    def __init__(self, mode: str, query: ListQuery) -> None:
        self.mode = mode
        self.query = query
        self.items: dict[str, Listed] = {}
        self.scanned = 0
        self.calls = 0

    def spent(self) -> bool:
        return self.calls >= SCAN_CALLS_MAX or self.scanned >= READS_MAX

    def offer(self, rid: str, lines: list[dict[str, Any]]) -> bool:
        """Take the item when it matches the filters (the first one of an id in this page);
        True when the page is full."""
        if lines and rid not in self.items and _matches(self.query, lines):
            self.items[rid] = Listed(rid, sorted(lines, key=lambda line: line["sku"]))
        return len(self.items) >= self.query.limit

    def page(self, at: _At | None) -> Page:
        cursor = None if at is None else encode_cursor(self.mode, self.query, at)
        return Page(list(self.items.values()), cursor, self.scanned, self.calls)


def _skip_to(at: _At, answered: int) -> str | None:
    """The last id taken of a batch a page ended inside, when the same batch came back (the
    scan answered the same end position); else None: take the batch whole again (an id may
    then repeat, none is missed)."""
    return at.after if at.end is not None and at.end == answered else None


def plan_page(prefix: str, query: ListQuery, cursor: str | None) -> Generator[Op, Any, Page]:
    """One page of the listing of ``query``, from ``cursor`` (None: the first page).

    Raises ``BadCursor`` at the first step, before any read, for a cursor that is not one of
    this listing."""
    validate_prefix(prefix)
    mode = _SKU if query.sku is not None else _INDEX
    start = None if cursor is None else decode_cursor(cursor, query)
    now_ms = yield ("now",)
    if mode == _SKU:
        return (yield from _sku_page(prefix, query, start, now_ms))
    return (yield from _index_page(prefix, query, start, now_ms))


def _sku_page(prefix: str, query: ListQuery, start: _At | None, now_ms: int) -> Generator[Op, Any, Page]:
    sku = query.sku
    assert sku is not None
    keys = sku_keys(sku, prefix)
    hashes = (keys.res, keys.ended)
    pager = _Pager(_SKU, query)
    at = start or _At(_LIVE, 0)
    while not pager.spent():
        answered, entries = yield ("hscan", hashes[at.part], at.pos, SCAN_COUNT)
        pager.calls += 1
        pager.scanned += len(entries)
        following = _At(at.part, answered) if answered else (_At(_ENDED, 0) if at.part == _LIVE else None)
        skip = _skip_to(at, answered)
        batch = sorted(
            (rid, raw) for field, raw in entries.items()
            if is_valid_id("reservation_id", rid := _text(field)) and (skip is None or rid > skip)
        )
        for i, (rid, raw) in enumerate(batch):
            if pager.offer(rid, [shown_line(decode_line(rid, sku, raw), now_ms)]):
                more = i + 1 < len(batch)
                return pager.page(_At(at.part, at.pos, answered, rid) if more else following)
        if following is None:
            return pager.page(None)
        at = following
    return pager.page(at)


def _index_page(prefix: str, query: ListQuery, start: _At | None, now_ms: int) -> Generator[Op, Any, Page]:
    shards: list[int] = yield ("shards",)
    head = f"{prefix}:rid:{{"
    match = rid_index_pattern(prefix)
    pager = _Pager(_INDEX, query)
    at = start or _At(shards[0], 0)
    while not pager.spent():
        answered, keys = yield ("scan", at.part, at.pos, match, SCAN_COUNT)
        pager.calls += 1
        pager.scanned += len(keys)
        if answered:
            following: _At | None = _At(at.part, answered)
        else:
            later = [s for s in shards if s > at.part]
            following = _At(later[0], 0) if later else None
        skip = _skip_to(at, answered)
        rids = sorted({
            rid for key in keys
            if (rid := _rid_of_index_key(key, head)) is not None and (skip is None or rid > skip)
        })
        done = 0
        while done < len(rids):
            if done and pager.scanned >= READS_MAX:
                return pager.page(_At(at.part, at.pos, answered, rids[done - 1]))
            chunk = rids[done:done + max(INDEX_CHUNK, query.limit - len(pager.items))]
            values = yield ("get", [rid_index_key(rid, prefix) for rid in chunk])
            pager.scanned += len(chunk)
            named = [(rid, _index_skus(raw)) for rid, raw in zip(chunk, values, strict=True)]
            run = _affordable(named, READS_MAX - pager.scanned)
            lines = yield from _read_lines(prefix, run, now_ms)
            pager.scanned += 2 * sum(len(skus) for _rid, skus in run)
            for k, (rid, _skus) in enumerate(run):
                if pager.offer(rid, lines[k]):
                    more = done + k + 1 < len(rids)
                    return pager.page(_At(at.part, at.pos, answered, rid) if more else following)
            done += len(run)
        if following is None:
            return pager.page(None)
        at = following
    return pager.page(at)


def _affordable(named: list[tuple[str, list[str]]], budget: int) -> list[tuple[str, list[str]]]:
    """The first reservations of ``named`` whose lines (two reads per SKU) fit in ``budget``; at
    least one, so every page makes headway."""
    end, cost = 1, 2 * len(named[0][1])
    while end < len(named) and cost + 2 * len(named[end][1]) <= budget:
        cost += 2 * len(named[end][1])
        end += 1
    return named[:end]


def _read_lines(prefix: str, run: Iterable[tuple[str, list[str]]],
                now_ms: int) -> Generator[Op, Any, list[list[dict[str, Any]]]]:
    """The lines of each reservation of ``run`` (live or ended, as shown at ``now_ms``), one
    read round trip for all of them."""
    run = list(run)
    reads = [(key, rid) for rid, skus in run for sku in skus
             for key in (sku_keys(sku, prefix).res, sku_keys(sku, prefix).ended)]
    found = iter((yield ("hget", reads)) if reads else ())
    out = []
    for rid, skus in run:
        lines = []
        for sku in skus:
            live, ended = next(found), next(found)
            raw = live if live is not None else ended
            if raw is not None:
                lines.append(shown_line(decode_line(rid, sku, raw), now_ms))
        out.append(lines)
    return out


# --------------------------------------------------------------------------- Redis Cluster


def cluster_primaries(slots_cache: Mapping[int, list[Any]]) -> dict[int, Any]:
    """Shard id → primary node of a Cluster client's slot table (``nodes_manager.slots_cache``:
    slot → [primary, replicas…]). A shard is named by the lowest slot its primary serves, which a
    failover keeps (the new primary serves the same slots), so a cursor outlives one."""
    shards: dict[int, Any] = {}
    seen: set[str] = set()
    for slot in range(CLUSTER_SLOTS):
        nodes = slots_cache.get(slot)
        if nodes and nodes[0].name not in seen:
            seen.add(nodes[0].name)
            shards[slot] = nodes[0]
    return shards
