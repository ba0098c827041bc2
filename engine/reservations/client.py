"""The Python client for checkouts: ATP queries and reservations, sync (``AtpClient``) and async
(``AsyncAtpClient``).

A reservation may have several lines. Lines of one SKU are summed into one store line; a
reservation of one SKU is one atomic script call; across SKUs it is a saga (hold line by line in
sorted SKU order, roll back the lines this call held on the first refusal), so a refused
reservation leaves no trace. ``reservation_id`` is the idempotency key: the same call again gives
the same reservation (status ``duplicate``); the same id with other lines is a ``conflict``.

The SKUs of a reservation are kept under ``<prefix>:rid:{rid}`` (a JSON list), written before the
first line is held, so confirm / release / extend / get find every line.

Concurrent single-SKU holds on one SKU are coalesced into one ``hold_batch`` script call
(README, "Serving a flash sale"); each reservation in a batch is still all-or-nothing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from engine.domain.ids import MAX_HOLD_TTL_S, MAX_LINES, require_id, require_qty
from engine.store.keys import decode_rid_index as _decode_index
from engine.store.keys import rid_index_key, rid_index_pending, rid_index_value
from engine.store.store import AsyncStore, Clock, Store
from engine.store.wire import HoldRequest, checked_hold_request, reservation_state

#: How long a multi-SKU hold waits for another request with the same id that is still placing its
#: lines (the index is marked pending) before presuming it dead and taking over.
PENDING_WAIT_S = 2.0
_PENDING_POLL_S = (0.002, 0.05)  # first and longest pause between looks at a pending index


@dataclass(frozen=True)
class LineRequest:
    """One requested line: ``location`` None means any location."""

    sku: str
    qty: int
    location: str | None = None


@dataclass(frozen=True)
class Allocation:
    """Where units of a line come from: kind ``oh`` (on hand at ``location``), ``lot`` (inbound lot
    ``ref``), ``bo`` (backordered) or ``short`` (lost its supply, at risk)."""

    kind: str
    ref: str
    location: str
    qty: int


@dataclass(frozen=True)
class ReservedLine:
    """One SKU line of a reservation as the store holds it (``location`` None = any)."""

    sku: str
    qty: int
    location: str | None
    state: str
    expires_ms: int
    promised_ms: int
    atp_after: int
    allocations: list[Allocation] = field(default_factory=list)

    @classmethod
    def from_wire(cls, line: dict[str, Any]) -> ReservedLine:
        """From the store's line dict (docs/semantics.md "line")."""
        return cls(
            sku=line["sku"],
            qty=line["qty"],
            location=line["loc"] or None,
            state=line["state"],
            expires_ms=line["expires_ms"],
            promised_ms=line["promised_ms"],
            atp_after=line["atp_after"],
            allocations=[Allocation(k, r, loc, q) for k, r, loc, q in line["alloc"]],
        )


@dataclass(frozen=True)
class Reservation:
    """A reservation that exists. ``status`` ok (changed now) or duplicate (the same call again,
    or nothing left to change). ``state`` is the lines' common state (``partial`` if they differ);
    ``promised_ms`` the latest promised date; ``expires_ms`` the earliest expiry of a held line
    (0 = none); ``atp_after`` the ATP of each line's SKU (at its location) after the hold."""

    status: str
    reservation_id: str
    state: str
    lines: list[ReservedLine]
    promised_ms: int
    expires_ms: int
    atp_after: dict[str, int]
    ok: bool = True


@dataclass(frozen=True)
class Refusal:
    """A call that did not succeed: ``status`` refused / conflict / not_found, with a reason.

    For a refused hold, ``reason`` is one of ``engine.store.wire.HOLD_REFUSALS``,
    ``sku`` names the line that could not be served and ``available`` gives what each line's SKU
    could take in stock (the refused line: exactly what the script saw; the others: their ATP
    after the rollback); a guard's ``limit`` and ``used`` are what the script saw too. For a lifecycle call, ``reason`` is the state that forbids it and ``lines`` the
    reservation as it is. A lifecycle call on several SKUs is all or nothing; the one exception
    is a release racing a shipment of another line: the lines it did release stay released and
    are in ``changed`` (so they can be published), else ``changed`` is None.
    """

    status: str
    reservation_id: str
    reason: str
    sku: str | None = None
    available: dict[str, int] = field(default_factory=dict)
    lines: list[ReservedLine] = field(default_factory=list)
    changed: Reservation | None = None
    ok: bool = False
    limit: int | None = None  # the broken guard's limit (order_cap, customer_limit, channel_quota)
    used: int | None = None  # units already counted against a customer_limit or channel_quota


Result = Reservation | Refusal


# --------------------------------------------------------------------------- pure helpers


def _opt(kind: str, value: str | None) -> str:
    return "" if value is None or value == "" else require_id(kind, value)


def _ttl_ms(ttl_s: object) -> int:
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not 1 <= ttl_s <= MAX_HOLD_TTL_S:
        raise ValueError(f"ttl_s must be an integer between 1 and {MAX_HOLD_TTL_S}, got {ttl_s!r}")
    return ttl_s * 1000


def group_lines(lines: Sequence[LineRequest | tuple[str, int, str | None]]) -> dict[str, tuple[int, str]]:
    """Validate the lines and sum them per SKU: sku -> (qty, location or "" for any).

    Raises ``ValueError`` for no lines, too many, a bad id or quantity, a SKU asked for at two
    different locations (or at one and at any), or a sum above the largest quantity.
    """
    if isinstance(lines, (str, bytes)) or not isinstance(lines, Sequence) or not lines:
        raise ValueError("a reservation needs at least one line")
    if len(lines) > MAX_LINES:
        raise ValueError(f"a reservation has at most {MAX_LINES} lines, got {len(lines)}")
    out: dict[str, tuple[int, str]] = {}
    for line in lines:
        if isinstance(line, LineRequest):
            sku, qty, loc = line.sku, line.qty, line.location
        elif isinstance(line, tuple) and len(line) in (2, 3):
            sku, qty, loc = line[0], line[1], (line[2] if len(line) == 3 else None)
        else:
            raise ValueError(f"a line is (sku, qty, location|None), got {line!r}")
        require_id("sku", sku)
        require_qty(qty)
        where = _opt("location", loc)
        if sku in out:
            total, seen = out[sku]
            if seen != where:
                raise ValueError(
                    f"lines of sku {sku!r} name different locations ({seen or 'any'!r} and {where or 'any'!r})"
                )
            qty = require_qty(total + qty)
        out[sku] = (qty, where)
    return out


def _state_of(lines: list[ReservedLine]) -> str:
    return reservation_state(line.state for line in lines)


def _reservation(status: str, rid: str, lines: list[ReservedLine]) -> Reservation:
    lines = sorted(lines, key=lambda ln: ln.sku)
    return Reservation(
        status=status,
        reservation_id=rid,
        state=_state_of(lines),
        lines=lines,
        promised_ms=max((ln.promised_ms for ln in lines), default=0),
        expires_ms=min((ln.expires_ms for ln in lines if ln.state == "held" and ln.expires_ms), default=0),
        atp_after={ln.sku: ln.atp_after for ln in lines},
    )


def _combine(rid: str, replies: list[tuple[str, dict[str, Any]]], op: str = "") -> Result:
    """One result from the per-SKU op replies of a lifecycle call (``get_line``: status ok)."""
    lines = [ReservedLine.from_wire(r["line"]) for _sku, r in replies if "line" in r]
    found = [(sku, r) for sku, r in replies if r["status"] != "not_found"]
    if not found:
        return Refusal("not_found", rid, "not_found")
    for sku, r in found:
        if r["status"] in ("refused", "conflict"):
            return Refusal("refused", rid, r.get("reason", r["status"]), sku=sku, lines=sorted(lines, key=lambda ln: ln.sku))
    status = "ok" if op == "get_line" or any(r["status"] == "ok" for _sku, r in found) else "duplicate"
    return _reservation(status, rid, lines)


def _held(rid: str, held: list[tuple[str, dict[str, Any]]]) -> Reservation:
    status = "ok" if any(r["status"] == "ok" for _s, r in held) else "duplicate"
    if len(held) == 1:  # the common case: _reservation of one line, without the loops
        line = ReservedLine.from_wire(held[0][1]["line"])
        return Reservation(
            status=status, reservation_id=rid, state=line.state, lines=[line],
            promised_ms=line.promised_ms,
            expires_ms=line.expires_ms if line.state == "held" else 0,
            atp_after={line.sku: line.atp_after},
        )
    return _reservation(status, rid, [ReservedLine.from_wire(r["line"]) for _s, r in held])


def _replay(rid: str, reqs: dict[str, HoldRequest], gets: list[tuple[str, dict[str, Any]]]) -> Reservation | None:
    """A finished hold of the same id asked again: the reservation as stored, when every line
    exists with the requested terms; else None."""
    held = []
    for sku, r in gets:
        line = r.get("line")
        if r["status"] != "ok" or line["qty"] != reqs[sku].qty or line["loc"] != reqs[sku].loc:
            return None
        held.append((sku, {"status": "duplicate", "line": line}))
    return _held(rid, held)


# op -> the line states in which a lifecycle call may act on a reservation of several SKUs
_ACTS_ON = {
    "confirm": frozenset({"held", "committed"}),
    "release": frozenset({"held", "committed", "released", "expired"}),
    "extend": frozenset({"held"}),
}


def _forbidding(op: str, rid: str, gets: list[tuple[str, dict[str, Any]]]) -> Refusal | None:
    """Before a lifecycle call on several SKUs: the refusal when a line's state forbids ``op``
    (or the reservation is gone), None when every line may take it."""
    now = _combine(rid, gets, "get_line")
    if isinstance(now, Refusal):
        return now
    for line in now.lines:
        if line.state not in _ACTS_ON[op]:
            return Refusal("refused", rid, line.state, sku=line.sku, lines=now.lines)
    return None


def _undo(op: str, before: list[tuple[str, dict[str, Any]]],
          replies: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, int]] | None:
    """After a lifecycle call on several SKUs that one line refused (its state changed since the
    check: an expiry, a cancel on the stream): the (sku, expiry) to revert the lines this call
    confirmed or extended to; None when no line refused. A release is not undone."""
    if not any(r["status"] in ("refused", "conflict") for _s, r in replies):
        return None
    if op == "release":
        return []
    expiry = {sku: r["line"]["expires_ms"] for sku, r in before if r["status"] == "ok"}
    return [(sku, max(1, expiry[sku])) for sku, r in replies if r["status"] == "ok" and sku in expiry]


def _refused_after(rid: str, op: str, replies: list[tuple[str, dict[str, Any]]],
                   after: list[tuple[str, dict[str, Any]]]) -> Refusal:
    """The refusal of a lifecycle call undone by ``_undo``; ``after``: the lines as they are now."""
    sku, reply = next((s, r) for s, r in replies if r["status"] in ("refused", "conflict"))
    lines = sorted((ReservedLine.from_wire(r["line"]) for _s, r in after if "line" in r), key=lambda ln: ln.sku)
    released = [ReservedLine.from_wire(r["line"]) for _s, r in replies if op == "release" and r["status"] == "ok"]
    changed = _reservation("ok", rid, released) if released else None
    return Refusal("refused", rid, reply.get("reason", reply["status"]), sku=sku, lines=lines, changed=changed)


def _as_made(reply: dict[str, Any], made: bool) -> dict[str, Any]:
    """A hold reply, ``ok`` when this call made the line in an earlier try of the same hold."""
    return {**reply, "status": "ok"} if made and reply["status"] == "duplicate" else reply


def _refused_hold(rid: str, sku: str, reply: dict[str, Any], others: dict[str, int]) -> Refusal:
    """The refusal of a hold whose ``sku`` line the script refused with ``reply``; ``others``:
    the ATP of the reservation's other SKUs."""
    return Refusal("refused", rid, reply["reason"], sku=sku, available={sku: reply["available"], **others},
                   limit=reply.get("limit"), used=reply.get("used"))


def _next_pause(pause: float) -> float:
    return min(pause * 2, _PENDING_POLL_S[1])


def _delete_many(redis: Any, keys: list[str]) -> None:
    # one DEL per key in one pipeline: the keys live in different cluster slots
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.delete(key)
    pipe.execute()


async def _adelete_many(redis: Any, keys: list[str]) -> None:
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.delete(key)
    await pipe.execute()


# --------------------------------------------------------------------------- coalescing


@dataclass(frozen=True)
class HoldItem:
    """One hold waiting for its batch: the request, and the reservation-index key to claim
    (``SET NX``) in the same round trip — None when the caller claimed it already (sagas)."""

    req: HoldRequest
    claim: tuple[str, bytes] | None = None


# (whether the claim created the index key — None without a claim, the hold reply)
HoldOutcome = tuple[bool | None, dict[str, Any]]
_Item = TypeVar("_Item")
_Outcome = TypeVar("_Outcome")


class _Waiter:
    __slots__ = ("item", "event", "outcome", "error", "lead")

    def __init__(self, item: HoldItem) -> None:
        self.item = item
        self.event = threading.Event()
        self.outcome: HoldOutcome | None = None
        self.error: BaseException | None = None
        self.lead = False

    def result(self) -> HoldOutcome:
        if self.error is not None:
            raise self.error
        assert self.outcome is not None
        return self.outcome


class _SkuQueue:
    __slots__ = ("pending", "busy")

    def __init__(self) -> None:
        self.pending: list[_Waiter] = []
        self.busy = False


class SyncCoalescer:
    """Leader/follower batching of holds per SKU across threads.

    The first caller on an idle SKU leads: it sends every waiting item (up to ``max_batch``) with
    one ``send(sku, items)`` call; items arriving meanwhile wait, and the oldest of them is
    promoted to lead the next batch. So at most one batch per SKU is in flight per client.
    """

    def __init__(self, send: Callable[[str, list[HoldItem]], list[HoldOutcome]], max_batch: int = 256) -> None:
        self._send = send
        self._max = max_batch
        self._lock = threading.Lock()
        self._queues: dict[str, _SkuQueue] = {}

    def submit(self, sku: str, item: HoldItem) -> HoldOutcome:
        """The outcome of ``item``, sent together with concurrent holds of the same SKU."""
        me = _Waiter(item)
        with self._lock:
            q = self._queues.get(sku)
            if q is None:
                q = self._queues[sku] = _SkuQueue()
            q.pending.append(me)
            if not q.busy:
                q.busy = True
                me.lead = True
        if not me.lead:
            me.event.wait()
            if not me.lead:
                return me.result()
        self._lead(sku, q)
        return me.result()

    def _lead(self, sku: str, q: _SkuQueue) -> None:
        with self._lock:
            batch = q.pending[: self._max]
            del q.pending[: self._max]
        try:
            outcomes = self._send(sku, [w.item for w in batch])
        except BaseException as exc:  # every waiter of the batch sees the failure
            for w in batch:
                w.error = exc
        else:
            for w, outcome in zip(batch, outcomes, strict=True):
                w.outcome = outcome
        with self._lock:
            if q.pending:
                successor = q.pending[0]
                successor.lead = True
                successor.event.set()
            else:
                q.busy = False
                if self._queues.get(sku) is q:
                    del self._queues[sku]
        for w in batch:
            w.lead = False
            w.event.set()


class AsyncCoalescer(Generic[_Item, _Outcome]):
    """Per-SKU queues of items (holds, reservation events), drained by one task per SKU while
    requests keep coming: each ``send(sku, items)`` carries what waited for that SKU, up to
    ``max_batch``, and gives one outcome per item."""

    def __init__(self, send: Callable[[str, list[_Item]], Awaitable[list[_Outcome]]],
                 max_batch: int = 256) -> None:
        self._send = send
        self._max = max_batch
        self._queues: dict[str, list[tuple[_Item, asyncio.Future[_Outcome]]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, sku: str, item: _Item) -> _Outcome:
        """The outcome of ``item``, sent together with the concurrent items of the same SKU."""
        fut: asyncio.Future[_Outcome] = asyncio.get_running_loop().create_future()
        queue = self._queues.get(sku)
        if queue is None:
            # no batch in flight: this caller starts the drain
            queue = self._queues[sku] = []
            task = asyncio.create_task(self._drain(sku, queue))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        queue.append((item, fut))
        return await fut

    async def _drain(self, sku: str, queue: list[tuple[_Item, asyncio.Future[_Outcome]]]) -> None:
        try:
            while queue:
                batch = queue[: self._max]
                del queue[: self._max]
                try:
                    outcomes = await self._send(sku, [item for item, _ in batch])
                except Exception as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                else:
                    for (_, fut), outcome in zip(batch, outcomes, strict=True):
                        if not fut.done():
                            fut.set_result(outcome)
        finally:
            if self._queues.get(sku) is queue:
                del self._queues[sku]
            for _, fut in queue:  # only after a cancellation of the drain itself
                if not fut.done():
                    fut.set_exception(RuntimeError("batch cancelled"))


def _claims_of(items: list[HoldItem]) -> list[tuple[str, bytes]]:
    return [it.claim for it in items if it.claim is not None]


def _outcomes(items: list[HoldItem], created: list[bool], replies: list[dict[str, Any]]) -> list[HoldOutcome]:
    flags = iter(created)
    return [(next(flags) if it.claim is not None else None, reply) for it, reply in zip(items, replies, strict=True)]


def _unclaim(items: list[HoldItem], outcomes: list[HoldOutcome]) -> list[str]:
    """Index keys this batch created for holds that were refused: a refusal leaves no trace."""
    return [
        it.claim[0]
        for it, (created, reply) in zip(items, outcomes, strict=True)
        if created and it.claim is not None and reply["status"] in ("refused", "conflict")
    ]


# --------------------------------------------------------------------------- the clients


class _ClientBase:
    def __init__(self, prefix: str, default_ttl_s: int, max_batch: int) -> None:
        _ttl_ms(default_ttl_s)
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or not 1 <= max_batch <= 10_000:
            raise ValueError("max_batch must be an integer between 1 and 10000")
        self.prefix = prefix
        self.default_ttl_s = default_ttl_s

    def _requests(self, rid: str, lines: Sequence[Any], ttl_s: int | None, channel: str | None,
                  customer_id: str | None) -> dict[str, HoldRequest]:
        require_id("reservation_id", rid)
        grouped = group_lines(lines)
        ttl_ms = _ttl_ms(self.default_ttl_s if ttl_s is None else ttl_s)
        ch = _opt("channel", channel)
        cust = _opt("customer_id", customer_id)
        # every field is checked above (group_lines: sku, qty, location)
        return {
            sku: checked_hold_request(rid, qty, loc, ttl_ms, ch, cust)
            for sku, (qty, loc) in sorted(grouped.items())
        }

    def _index(self, rid: str) -> str:
        return rid_index_key(require_id("reservation_id", rid), self.prefix)

    def _index_of_checked(self, rid: str) -> str:
        """``_index`` of a reservation id this call has validated already."""
        return f"{self.prefix}:rid:{{{rid}}}"


class AtpClient(_ClientBase):
    """Sync client over ``redis.Redis`` / ``redis.RedisCluster``; thread-safe, and it coalesces
    the holds of concurrent threads on one SKU (``coalesce=False``: one call per hold).

    ``now_ms`` is for tests only (a fixed clock for the scripts, see ``Store``).
    """

    def __init__(self, redis: Any, *, prefix: str = "atp", default_ttl_s: int = 600,
                 coalesce: bool = True, max_batch: int = 256, now_ms: Clock = None) -> None:
        super().__init__(prefix, default_ttl_s, max_batch)
        self.redis = redis
        self.store = Store(redis, prefix, now_ms)
        self._coalescer = SyncCoalescer(self._send, max_batch) if coalesce else None

    # --- ATP

    def atp(self, sku: str, location: str | None = None) -> dict[str, Any]:
        """The SKU's position (semantics.md "position"), of one location or all."""
        return self.store.position(sku, location)

    def atp_many(self, skus: Sequence[str], location: str | None = None) -> dict[str, dict[str, Any]]:
        """Positions of several SKUs in one round trip: sku -> position (in the order asked)."""
        unique = list(dict.fromkeys(skus))
        return dict(zip(unique, self.store.positions(unique, location), strict=True))

    # --- reservations

    def hold(self, reservation_id: str, lines: Sequence[LineRequest | tuple[str, int, str | None]],
             ttl_s: int | None = None, channel: str | None = None,
             customer_id: str | None = None) -> Result:
        """Hold every line or none. Lines are ``LineRequest`` or ``(sku, qty, location|None)``.

        Raises ``ValueError`` for bad ids, quantities or ttl, or lines of one SKU naming different
        locations. Returns a ``Reservation`` (ok / duplicate) or a ``Refusal`` (refused / conflict).
        """
        reqs = self._requests(reservation_id, lines, ttl_s, channel, customer_id)
        rid = reservation_id
        skus = list(reqs)
        if len(skus) == 1:
            return self._hold_single(rid, skus[0], reqs[skus[0]])
        mode, known = self._claim(rid, reqs)
        if known is not None:
            return known
        held: list[tuple[str, dict[str, Any]]] = []
        for sku in skus:
            _, reply = self._hold_item(sku, HoldItem(reqs[sku]))
            if reply["status"] == "ok" or (reply["status"] == "duplicate" and mode != "create"):
                held.append((sku, reply))
                continue
            # refused, a conflict, or (for the creator) a line another request made and will undo
            for done_sku, done in held:
                if done["status"] == "ok":
                    self.store.rollback(done_sku, rid)
            if mode != "join":
                self.redis.delete(self._index(rid))
            return self._refusal(rid, reqs, sku, reply)
        self.redis.set(self._index(rid), rid_index_value(skus))  # final: later repeats replay it
        return _held(rid, held)

    def confirm(self, reservation_id: str) -> Result:
        """Held → committed on every line."""
        return self._each(reservation_id, "confirm")

    def release(self, reservation_id: str) -> Result:
        """Release every line; units come back exactly once."""
        return self._each(reservation_id, "release")

    def extend(self, reservation_id: str, ttl_s: int) -> Result:
        """Keep a held reservation alive ``ttl_s`` seconds from now."""
        return self._each(reservation_id, "extend", _ttl_ms(ttl_s))

    def get_reservation(self, reservation_id: str) -> Result:
        """The reservation (status ok) or a ``Refusal`` with status not_found."""
        return self._each(reservation_id, "get_line")

    def close(self) -> None:
        """Nothing to stop (the redis client stays the caller's)."""

    # --- internals

    def _send(self, sku: str, items: list[HoldItem]) -> list[HoldOutcome]:
        """One batch: claim the index keys and hold, in one round trip; unclaim the refused."""
        created, replies = self.store.hold_batch_claiming(sku, [it.req for it in items], _claims_of(items))
        outcomes = _outcomes(items, created, replies)
        stale = _unclaim(items, outcomes)
        if stale:
            _delete_many(self.redis, stale)
        return outcomes

    def _hold_item(self, sku: str, item: HoldItem) -> HoldOutcome:
        if self._coalescer is not None:
            return self._coalescer.submit(sku, item)
        return self._send(sku, [item])[0]

    def _hold_single(self, rid: str, sku: str, req: HoldRequest, made: bool = False, tries: int = 3) -> Result:
        """Claim the index and hold in one round trip. ``made``: an earlier try made the line."""
        key = self._index_of_checked(rid)
        created, reply = self._hold_item(sku, HoldItem(req, (key, rid_index_value([sku]))))
        made = made or reply["status"] == "ok"
        if reply["status"] in ("ok", "duplicate") and not created:
            # the id was known already: it must name this SKU alone
            existing = _decode_index(self.redis.get(key))
            if existing is None and tries > 1:
                # gone meanwhile: a refused hold of other lines cleaned up, and the line found
                # may have been its own, rolled back — claim the index and hold again
                return self._hold_single(rid, sku, req, made, tries - 1)
            if existing != [sku]:
                if made:
                    self.store.rollback(sku, rid)
                return self._conflict(rid, existing or [])
        if reply["status"] in ("ok", "duplicate"):
            return _held(rid, [(sku, _as_made(reply, made))])
        return self._refusal(rid, {sku: req}, sku, reply)

    def _settled_index(self, rid: str) -> Any:
        """The reservation's index value once no hold is placing its lines (a hold in progress
        may still roll them back, so nothing may read or change them before it ends)."""
        key = self._index(rid)
        deadline = time.monotonic() + PENDING_WAIT_S
        pause = _PENDING_POLL_S[0]
        raw = self.redis.get(key)
        while rid_index_pending(raw) and time.monotonic() < deadline:
            time.sleep(pause)
            pause = _next_pause(pause)
            raw = self.redis.get(key)
        return raw

    def _claim(self, rid: str, reqs: dict[str, HoldRequest]) -> tuple[str, Result | None]:
        """Claim the reservation index of a multi-SKU hold: (mode, known answer or None).

        Modes: ``create`` (this call wrote the index, marked pending: only it places lines, so a
        line it finds made is not its own — also when it replaced an index of other SKUs that
        still had no line after ``PENDING_WAIT_S``, a refused hold's leftover), ``takeover`` (a
        pending index of these SKUs whose writer is presumed dead: its lines are adopted),
        ``join`` (final index with lines missing).
        A known answer is a conflict (the id names other lines) or the replay of a finished hold.
        """
        key = self._index(rid)
        skus = list(reqs)
        pending = rid_index_value(skus, pending=True)
        deadline = time.monotonic() + PENDING_WAIT_S
        pause = _PENDING_POLL_S[0]
        while True:
            if self.redis.set(key, pending, nx=True):
                return "create", None
            raw = self.redis.get(key)
            if raw is None:
                continue  # released between the two calls: claim again
            existing = _decode_index(raw)
            waiting = time.monotonic() < deadline
            if existing != skus:
                if existing:
                    conflict = self._conflict(rid, existing)
                    if conflict.lines:
                        return "create", conflict
                if not (existing and waiting):
                    # no line of it after the wait: a refused hold's leftover, take it over
                    self.redis.set(key, pending)
                    return "create", None
                # else a hold of those lines may be placing its line right now: look again
            elif not rid_index_pending(raw):
                replay = _replay(rid, reqs, [(sku, self.store.get_line(sku, rid)) for sku in skus])
                return ("join", None) if replay is None else ("join", replay)
            elif not waiting:
                return "takeover", None
            time.sleep(pause)
            pause = _next_pause(pause)

    def _conflict(self, rid: str, skus: list[str]) -> Refusal:
        lines = [r["line"] for s in skus if (r := self.store.get_line(s, rid))["status"] == "ok"]
        return Refusal("conflict", rid, "conflict", lines=[ReservedLine.from_wire(ln) for ln in lines])

    def _refusal(self, rid: str, reqs: dict[str, HoldRequest], sku: str, reply: dict[str, Any]) -> Refusal:
        if reply["status"] in ("conflict", "duplicate"):
            return Refusal("conflict", rid, "conflict", sku=sku, lines=[ReservedLine.from_wire(reply["line"])])
        available = {other: self.store.position(other, req.loc or None)["atp"]
                     for other, req in reqs.items() if other != sku}
        return _refused_hold(rid, sku, reply, available)

    def _each(self, rid: str, op: str, *args: int) -> Result:
        """``op`` on every line: one atomic call for one SKU; for several, check every line,
        act on each, and revert what this call changed if a line refused meanwhile."""
        skus = _decode_index(self._settled_index(rid))
        if not skus:
            return Refusal("not_found", rid, "not_found")
        call = getattr(self.store, op)
        if len(skus) == 1 or op == "get_line":
            return _combine(rid, [(sku, call(sku, rid, *args)) for sku in skus], op)
        before = [(sku, self.store.get_line(sku, rid)) for sku in skus]
        refusal = _forbidding(op, rid, before)
        if refusal is not None:
            return refusal
        replies = [(sku, call(sku, rid, *args)) for sku in skus]
        undo = _undo(op, before, replies)
        if undo is None:
            return _combine(rid, replies, op)
        for sku, expires_ms in undo:
            self.store.revert(sku, rid, expires_ms)
        return _refused_after(rid, op, replies, [(sku, self.store.get_line(sku, rid)) for sku in skus])


class AsyncAtpClient(_ClientBase):
    """Async client over ``redis.asyncio.Redis`` / ``RedisCluster``; same methods as ``AtpClient``,
    coalescing the holds of concurrent tasks on one SKU. Use it from one event loop."""

    def __init__(self, redis: Any, *, prefix: str = "atp", default_ttl_s: int = 600,
                 coalesce: bool = True, max_batch: int = 256, now_ms: Clock = None) -> None:
        super().__init__(prefix, default_ttl_s, max_batch)
        self.redis = redis
        self.store = AsyncStore(redis, prefix, now_ms)
        self._coalescer: AsyncCoalescer[HoldItem, HoldOutcome] | None = (
            AsyncCoalescer(self._send, max_batch) if coalesce else None)

    async def atp(self, sku: str, location: str | None = None) -> dict[str, Any]:
        """See ``AtpClient.atp``."""
        return await self.store.position(sku, location)

    async def atp_many(self, skus: Sequence[str], location: str | None = None) -> dict[str, dict[str, Any]]:
        """See ``AtpClient.atp_many``."""
        unique = list(dict.fromkeys(skus))
        return dict(zip(unique, await self.store.positions(unique, location), strict=True))

    async def hold(self, reservation_id: str, lines: Sequence[LineRequest | tuple[str, int, str | None]],
                   ttl_s: int | None = None, channel: str | None = None,
                   customer_id: str | None = None) -> Result:
        """See ``AtpClient.hold``."""
        reqs = self._requests(reservation_id, lines, ttl_s, channel, customer_id)
        await self.store.ready()
        rid = reservation_id
        skus = list(reqs)
        if len(skus) == 1:
            return await self._hold_single(rid, skus[0], reqs[skus[0]])
        mode, known = await self._claim(rid, reqs)
        if known is not None:
            return known
        held: list[tuple[str, dict[str, Any]]] = []
        for sku in skus:
            _, reply = await self._hold_item(sku, HoldItem(reqs[sku]))
            if reply["status"] == "ok" or (reply["status"] == "duplicate" and mode != "create"):
                held.append((sku, reply))
                continue
            for done_sku, done in held:
                if done["status"] == "ok":
                    await self.store.rollback(done_sku, rid)
            if mode != "join":
                await self.redis.delete(self._index(rid))
            return await self._refusal(rid, reqs, sku, reply)
        await self.redis.set(self._index(rid), rid_index_value(skus))
        return _held(rid, held)

    async def confirm(self, reservation_id: str) -> Result:
        """See ``AtpClient.confirm``."""
        return await self._each(reservation_id, "confirm")

    async def release(self, reservation_id: str) -> Result:
        """See ``AtpClient.release``."""
        return await self._each(reservation_id, "release")

    async def extend(self, reservation_id: str, ttl_s: int) -> Result:
        """See ``AtpClient.extend``."""
        return await self._each(reservation_id, "extend", _ttl_ms(ttl_s))

    async def get_reservation(self, reservation_id: str) -> Result:
        """See ``AtpClient.get_reservation``."""
        return await self._each(reservation_id, "get_line")

    async def aclose(self) -> None:
        """Nothing to stop (the redis client stays the caller's)."""

    async def _send(self, sku: str, items: list[HoldItem]) -> list[HoldOutcome]:
        created, replies = await self.store.hold_batch_claiming(sku, [it.req for it in items], _claims_of(items))
        outcomes = _outcomes(items, created, replies)
        stale = _unclaim(items, outcomes)
        if stale:
            await _adelete_many(self.redis, stale)
        return outcomes

    async def _hold_item(self, sku: str, item: HoldItem) -> HoldOutcome:
        if self._coalescer is not None:
            return await self._coalescer.submit(sku, item)
        return (await self._send(sku, [item]))[0]

    async def _hold_single(self, rid: str, sku: str, req: HoldRequest, made: bool = False,
                           tries: int = 3) -> Result:
        """See ``AtpClient._hold_single``."""
        key = self._index_of_checked(rid)
        created, reply = await self._hold_item(sku, HoldItem(req, (key, rid_index_value([sku]))))
        made = made or reply["status"] == "ok"
        if reply["status"] in ("ok", "duplicate") and not created:
            existing = _decode_index(await self.redis.get(key))
            if existing is None and tries > 1:
                return await self._hold_single(rid, sku, req, made, tries - 1)
            if existing != [sku]:
                if made:
                    await self.store.rollback(sku, rid)
                return await self._conflict(rid, existing or [])
        if reply["status"] in ("ok", "duplicate"):
            return _held(rid, [(sku, _as_made(reply, made))])
        return await self._refusal(rid, {sku: req}, sku, reply)

    async def _settled_index(self, rid: str) -> Any:
        """See ``AtpClient._settled_index``."""
        key = self._index(rid)
        deadline = time.monotonic() + PENDING_WAIT_S
        pause = _PENDING_POLL_S[0]
        raw = await self.redis.get(key)
        while rid_index_pending(raw) and time.monotonic() < deadline:
            await asyncio.sleep(pause)
            pause = _next_pause(pause)
            raw = await self.redis.get(key)
        return raw

    async def _claim(self, rid: str, reqs: dict[str, HoldRequest]) -> tuple[str, Result | None]:
        """See ``AtpClient._claim``."""
        key = self._index(rid)
        skus = list(reqs)
        pending = rid_index_value(skus, pending=True)
        deadline = time.monotonic() + PENDING_WAIT_S
        pause = _PENDING_POLL_S[0]
        while True:
            if await self.redis.set(key, pending, nx=True):
                return "create", None
            raw = await self.redis.get(key)
            if raw is None:
                continue
            existing = _decode_index(raw)
            waiting = time.monotonic() < deadline
            if existing != skus:
                if existing:
                    conflict = await self._conflict(rid, existing)
                    if conflict.lines:
                        return "create", conflict
                if not (existing and waiting):
                    await self.redis.set(key, pending)
                    return "create", None
            elif not rid_index_pending(raw):
                gets = [(sku, await self.store.get_line(sku, rid)) for sku in skus]
                replay = _replay(rid, reqs, gets)
                return ("join", None) if replay is None else ("join", replay)
            elif not waiting:
                return "takeover", None
            await asyncio.sleep(pause)
            pause = _next_pause(pause)

    async def _conflict(self, rid: str, skus: list[str]) -> Refusal:
        lines = []
        for s in skus:
            r = await self.store.get_line(s, rid)
            if r["status"] == "ok":
                lines.append(ReservedLine.from_wire(r["line"]))
        return Refusal("conflict", rid, "conflict", lines=lines)

    async def _refusal(self, rid: str, reqs: dict[str, HoldRequest], sku: str, reply: dict[str, Any]) -> Refusal:
        if reply["status"] in ("conflict", "duplicate"):
            return Refusal("conflict", rid, "conflict", sku=sku, lines=[ReservedLine.from_wire(reply["line"])])
        available = {other: (await self.store.position(other, req.loc or None))["atp"]
                     for other, req in reqs.items() if other != sku}
        return _refused_hold(rid, sku, reply, available)

    async def _each(self, rid: str, op: str, *args: int) -> Result:
        """See ``AtpClient._each``."""
        await self.store.ready()
        skus = _decode_index(await self._settled_index(rid))
        if not skus:
            return Refusal("not_found", rid, "not_found")
        call = getattr(self.store, op)
        if len(skus) == 1 or op == "get_line":
            return _combine(rid, [(sku, await call(sku, rid, *args)) for sku in skus], op)
        before = [(sku, await self.store.get_line(sku, rid)) for sku in skus]
        refusal = _forbidding(op, rid, before)
        if refusal is not None:
            return refusal
        replies = [(sku, await call(sku, rid, *args)) for sku in skus]
        undo = _undo(op, before, replies)
        if undo is None:
            return _combine(rid, replies, op)
        for sku, expires_ms in undo:
            await self.store.revert(sku, rid, expires_ms)
        return _refused_after(rid, op, replies, [(sku, await self.store.get_line(sku, rid)) for sku in skus])
