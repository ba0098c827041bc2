"""The reservation saga, written once for both clients (``engine.reservations.client``): a
reservation of one SKU is one atomic script call; across SKUs, hold line by line in sorted SKU
order and roll back the lines this call held on the first refusal, so a refused reservation
leaves no trace. ``reservation_id`` is the idempotency key: the same call again gives the same
reservation (status ``duplicate``); the same id with other lines is a ``conflict``.

The SKUs of a reservation are kept under ``<prefix>:rid:{rid}`` (a JSON list), written before the
first line is held, so confirm / release / extend / get find every line.

Each operation is a generator of I/O effects (``Steps``); the pure helpers around it decide.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from typing import Any, TypeVar

from engine.domain.ids import MAX_HOLD_TTL_S, MAX_LINES, require_id, require_qty
from engine.reservations.coalesce import HoldItem
from engine.reservations.types import LineRequest, Refusal, Reservation, ReservedLine, Result
from engine.store.keys import decode_rid_index as _decode_index
from engine.store.keys import rid_index_key, rid_index_pending, rid_index_value
from engine.store.wire import HoldRequest, checked_hold_request, reservation_state

#: How long a multi-SKU hold waits for another request with the same id that is still placing its
#: lines (the index is marked pending) before presuming it dead and taking over.
PENDING_WAIT_S = 2.0
_PENDING_POLL_S = (0.002, 0.05)  # first and longest pause between looks at a pending index

_T = TypeVar("_T")
#: An operation as a generator of I/O effects, returning its result (``_ClientBase``).
Steps = Generator[tuple[Any, ...], Any, _T]


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


def _per_sku(skus: list[str], name: str, rid: str, *args: int) -> Steps[list[tuple[str, dict[str, Any]]]]:
    """``Store.<name>(sku, rid, *args)`` of each SKU in turn: (sku, reply) pairs."""
    out = []
    for sku in skus:
        out.append((sku, (yield ("store", name, sku, rid, *args))))
    return out


class _ClientBase:
    """The reservation logic of both clients, written once: each operation is a generator of
    I/O effects (``Steps``) that a client's ``_drive`` carries out — ``AtpClient`` blocking,
    ``AsyncAtpClient`` awaiting — and sends the result of each back in.

    Effects: ``("hold", sku, item)`` a hold through the coalescer; ``("store", name, *args)`` a
    ``Store`` call; ``("get", key)``, ``("set", key, value)``, ``("set_nx", key, value)``,
    ``("delete", key)`` on Redis; ``("sleep", seconds)``.
    """

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

    # --- the operations, as steps

    def _hold_steps(self, rid: str, reqs: dict[str, HoldRequest]) -> Steps[Result]:
        skus = list(reqs)
        if len(skus) == 1:
            return (yield from self._hold_single_steps(rid, skus[0], reqs[skus[0]]))
        mode, known = yield from self._claim_steps(rid, reqs)
        if known is not None:
            return known
        held: list[tuple[str, dict[str, Any]]] = []
        for sku in skus:
            _, reply = yield ("hold", sku, HoldItem(reqs[sku]))
            if reply["status"] == "ok" or (reply["status"] == "duplicate" and mode != "create"):
                held.append((sku, reply))
                continue
            # refused, a conflict, or (for the creator) a line another request made and will undo
            for done_sku, done in held:
                if done["status"] == "ok":
                    yield ("store", "rollback", done_sku, rid)
            if mode != "join":
                yield ("delete", self._index(rid))
            return (yield from self._refusal_steps(rid, reqs, sku, reply))
        yield ("set", self._index(rid), rid_index_value(skus))  # final: later repeats replay it
        return _held(rid, held)

    def _hold_single_steps(self, rid: str, sku: str, req: HoldRequest, made: bool = False,
                           tries: int = 3) -> Steps[Result]:
        """Claim the index and hold in one round trip. ``made``: an earlier try made the line."""
        key = self._index_of_checked(rid)
        created, reply = yield ("hold", sku, HoldItem(req, (key, rid_index_value([sku]))))
        made = made or reply["status"] == "ok"
        if reply["status"] in ("ok", "duplicate") and not created:
            # the id was known already: it must name this SKU alone
            existing = _decode_index((yield ("get", key)))
            if existing is None and tries > 1:
                # gone meanwhile: a refused hold of other lines cleaned up, and the line found
                # may have been its own, rolled back — claim the index and hold again
                return (yield from self._hold_single_steps(rid, sku, req, made, tries - 1))
            if existing != [sku]:
                if made:
                    yield ("store", "rollback", sku, rid)
                return (yield from self._conflict_steps(rid, existing or []))
        if reply["status"] in ("ok", "duplicate"):
            return _held(rid, [(sku, _as_made(reply, made))])
        return (yield from self._refusal_steps(rid, {sku: req}, sku, reply))

    def _settled_index_steps(self, rid: str) -> Steps[Any]:
        """The reservation's index value once no hold is placing its lines (a hold in progress
        may still roll them back, so nothing may read or change them before it ends)."""
        key = self._index(rid)
        deadline = time.monotonic() + PENDING_WAIT_S
        pause = _PENDING_POLL_S[0]
        raw = yield ("get", key)
        while rid_index_pending(raw) and time.monotonic() < deadline:
            yield ("sleep", pause)
            pause = _next_pause(pause)
            raw = yield ("get", key)
        return raw

    def _claim_steps(self, rid: str, reqs: dict[str, HoldRequest]) -> Steps[tuple[str, Result | None]]:
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
            if (yield ("set_nx", key, pending)):
                return "create", None
            raw = yield ("get", key)
            if raw is None:
                continue  # released between the two calls: claim again
            existing = _decode_index(raw)
            waiting = time.monotonic() < deadline
            if existing != skus:
                if existing:
                    conflict = yield from self._conflict_steps(rid, existing)
                    if conflict.lines:
                        return "create", conflict
                if not (existing and waiting):
                    # no line of it after the wait: a refused hold's leftover, take it over
                    yield ("set", key, pending)
                    return "create", None
                # else a hold of those lines may be placing its line right now: look again
            elif not rid_index_pending(raw):
                gets = yield from _per_sku(skus, "get_line", rid)
                replay = _replay(rid, reqs, gets)
                return ("join", None) if replay is None else ("join", replay)
            elif not waiting:
                return "takeover", None
            yield ("sleep", pause)
            pause = _next_pause(pause)

    def _conflict_steps(self, rid: str, skus: list[str]) -> Steps[Refusal]:
        lines = []
        for sku in skus:
            r = yield ("store", "get_line", sku, rid)
            if r["status"] == "ok":
                lines.append(ReservedLine.from_wire(r["line"]))
        return Refusal("conflict", rid, "conflict", lines=lines)

    def _refusal_steps(self, rid: str, reqs: dict[str, HoldRequest], sku: str,
                       reply: dict[str, Any]) -> Steps[Refusal]:
        if reply["status"] in ("conflict", "duplicate"):
            return Refusal("conflict", rid, "conflict", sku=sku, lines=[ReservedLine.from_wire(reply["line"])])
        available = {}
        for other, req in reqs.items():
            if other != sku:
                available[other] = (yield ("store", "position", other, req.loc or None))["atp"]
        return _refused_hold(rid, sku, reply, available)

    def _each_steps(self, rid: str, op: str, *args: int) -> Steps[Result]:
        """``op`` on every line: one atomic call for one SKU; for several, check every line,
        act on each, and revert what this call changed if a line refused meanwhile."""
        skus = _decode_index((yield from self._settled_index_steps(rid)))
        if not skus:
            return Refusal("not_found", rid, "not_found")
        if len(skus) == 1 or op == "get_line":
            return _combine(rid, (yield from _per_sku(skus, op, rid, *args)), op)
        before = yield from _per_sku(skus, "get_line", rid)
        refusal = _forbidding(op, rid, before)
        if refusal is not None:
            return refusal
        replies = yield from _per_sku(skus, op, rid, *args)
        undo = _undo(op, before, replies)
        if undo is None:
            return _combine(rid, replies, op)
        for sku, expires_ms in undo:
            yield ("store", "revert", sku, rid, expires_ms)
        return _refused_after(rid, op, replies, (yield from _per_sku(skus, "get_line", rid)))
