"""The pure-Python oracle of one SKU's book: the rules of docs/semantics.md, numbers in, numbers out.

The Lua scripts in ``engine/store/lua`` implement the same rules atomically inside Redis; the
differential property test (tests/integration/store/test_differential.py) drives both with the same operations and requires
identical replies and identical state. Times are integer ms handed in by the caller.
"""

from __future__ import annotations

import copy
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from engine.domain.commands import REBALANCING
from engine.domain.ids import DEFAULT_LOCATION
from engine.domain.policy import Policy

DAY_MS = 86_400_000
#: Holds expire at whole seconds: a hold's expiry is rounded up to one, so every line that comes
#: due in one second is given back together (docs/semantics.md "Expiry").
DUE_MS = 1000
EVENT_LOG_SIZE = 1000
JOURNAL_SIZE = 200
LIVE = ("held", "committed")


def due_at(ms: int) -> int:
    """The whole second (ms) a hold taken until ``ms`` expires at."""
    return -(-ms // DUE_MS) * DUE_MS


@dataclass
class LocBuckets:
    on_hand: int = 0
    held: int = 0
    committed: int = 0
    oh_alloc: int = 0
    bo_alloc: int = 0
    short: int = 0


@dataclass
class Lot:
    loc: str
    qty: int
    eta_ms: int
    supplier: str
    alloc: int = 0


@dataclass
class Line:
    rid: str
    sku: str
    qty: int
    loc: str
    state: str
    expires_ms: int
    seq: int
    channel: str
    customer: str
    alloc: list[list[Any]]
    promised_ms: int
    atp_after: int = 0

    def wire(self) -> dict[str, Any]:
        return {
            "rid": self.rid,
            "sku": self.sku,
            "qty": self.qty,
            "loc": self.loc,
            "state": self.state,
            "expires_ms": self.expires_ms,
            "seq": self.seq,
            "channel": self.channel,
            "customer": self.customer,
            "alloc": [list(a) for a in self.alloc],
            "promised_ms": self.promised_ms,
            "atp_after": self.atp_after,
        }


@dataclass
class HoldRequest:
    """One reservation line of one SKU (lines of the same SKU already summed)."""

    rid: str
    qty: int
    loc: str = ""
    ttl_ms: int = 600_000
    channel: str = ""
    customer: str = ""
    commit: bool = False


@dataclass
class SkuBook:
    """Everything the engine knows about one SKU, and every operation on it."""

    sku: str
    policy: Policy = field(default_factory=Policy)
    locs: dict[str, LocBuckets] = field(default_factory=dict)
    lots: dict[str, Lot] = field(default_factory=dict)
    lines: dict[str, Line] = field(default_factory=dict)
    customers: dict[str, int] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)
    reliability: dict[str, int] = field(default_factory=dict)
    seq: int = 0
    offsets: dict[str, int] = field(default_factory=dict)
    # the last EVENT_LOG_SIZE event ids applied, each with what it came with (cmd, payload, note)
    recent_events: deque[tuple[str, tuple[Any, ...]]] = field(default_factory=lambda: deque(maxlen=EVENT_LOG_SIZE))
    journal: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=JOURNAL_SIZE))
    # rid -> when the line reached a final state (released, expired, shipped): the retention purge
    ended_ms: dict[str, int] = field(default_factory=dict)

    # ------------------------------------------------------------------ derived figures

    def _loc(self, loc: str) -> LocBuckets:
        if loc not in self.locs:
            self.locs[loc] = LocBuckets()
        return self.locs[loc]

    def promisable(self, lot: Lot, now: int) -> int:
        p = self.policy
        if p.mode == "strict":
            return 0
        if p.horizon_s > 0 and lot.eta_ms > now + p.horizon_s * 1000:
            return 0
        rel = self.reliability.get(lot.supplier, 1000) if p.use_reliability else 1000
        return lot.qty * p.cap_pm * rel // 1_000_000

    def _free_oh(self, loc: str) -> int:
        b = self.locs[loc]
        return max(0, b.on_hand - self.policy.safety - b.oh_alloc)

    def _lots_in_order(self, loc: str) -> list[tuple[str, Lot]]:
        chosen = [(lid, lot) for lid, lot in self.lots.items() if loc == "" or lot.loc == loc]
        return sorted(chosen, key=lambda item: (item[1].eta_ms, item[0]))

    def _bo_free(self) -> int:
        if self.policy.mode != "backorder":
            return 0
        used = sum(b.bo_alloc for b in self.locs.values())
        return max(0, self.policy.backorder_limit - used)

    def _bo_location(self, loc: str) -> str:
        if loc:
            return loc
        return min(self.locs) if self.locs else DEFAULT_LOCATION

    def capacity(self, loc: str, now: int) -> int:
        """Units a hold at ``loc`` ("" = any) may take right now."""
        total = sum(self._free_oh(name) for name in self.locs if loc in ("", name))
        for _lid, lot in self._lots_in_order(loc):
            total += max(0, self.promisable(lot, now) - lot.alloc)
        return total + self._bo_free()

    def atp(self, loc: str, now: int) -> int:
        """ATP of one location, or of the whole SKU (backorder room included) when ``loc`` is ""."""
        pos = self.position(now, loc or None)
        return pos["atp"]

    def position_now(self, now: int, location: str | None = None) -> dict[str, Any]:
        """Expire due holds, then the position — what the position script does."""
        self.expire_due(now)
        return self.position(now, location)

    def position(self, now: int, location: str | None = None) -> dict[str, Any]:
        """The wire ``position`` of docs/semantics.md (all locations, or just ``location``).

        Safety holds back only stock that is there (an empty location has ATP 0, not −safety);
        backordered units are promised from future supply and take nothing from ATP, so only
        short units make it negative. The SKU's ATP adds the backorder room, which belongs to no
        location until a hold places it: the SKU's ATP is what can be sold (capacity − oversold)."""
        safety = self.policy.safety
        per: dict[str, dict[str, int]] = {}
        names = sorted(self.locs) if location is None else ([location] if location in self.locs else [])
        for name in names:
            b = self.locs[name]
            lots = [lot for lot in self.lots.values() if lot.loc == name]
            in_transit = sum(lot.qty for lot in lots)
            pit = sum(self.promisable(lot, now) for lot in lots)
            kept = min(safety, b.on_hand)
            per[name] = {
                "on_hand": b.on_hand,
                "safety": kept,
                "held": b.held,
                "committed": b.committed,
                "in_transit": in_transit,
                "promisable_in_transit": pit,
                "atp": b.on_hand + pit - kept - (b.held + b.committed - b.bo_alloc),
                "oh_alloc": b.oh_alloc,
                "bo_alloc": b.bo_alloc,
                "short": b.short,
            }
        next_ms = 0
        for lot in self.lots.values():
            if location is not None and lot.loc != location:
                continue
            if self.promisable(lot, now) - lot.alloc > 0 and (next_ms == 0 or lot.eta_ms < next_ms):
                next_ms = lot.eta_ms

        def total(key: str) -> int:
            return sum(v[key] for v in per.values())

        return {
            "sku": self.sku,
            "on_hand": total("on_hand"),
            "safety": total("safety"),
            "held": total("held"),
            "committed": total("committed"),
            "in_transit": total("in_transit"),
            "promisable_in_transit": total("promisable_in_transit"),
            "atp": total("atp") + (self._bo_free() if location is None else 0),
            "promisable_now": sum(self._free_oh(name) for name in per),
            "next_promise_ms": next_ms,
            "oversold": total("short"),
            "backordered": total("bo_alloc"),
            "locations": per,
        }

    # ------------------------------------------------------------------ allocation

    def _allocate(self, qty: int, loc: str, now: int) -> list[list[Any]]:
        """Take up to ``qty`` units FIFO; returns allocations (may be fewer units than asked)."""
        out: list[list[Any]] = []
        left = qty
        for name in sorted(self.locs):
            if left == 0:
                break
            if loc and name != loc:
                continue
            take = min(left, self._free_oh(name))
            if take > 0:
                out.append(["oh", name, name, take])
                left -= take
        for lid, lot in self._lots_in_order(loc):
            if left == 0:
                break
            take = min(left, max(0, self.promisable(lot, now) - lot.alloc))
            if take > 0:
                out.append(["lot", lid, lot.loc, take])
                left -= take
        if left > 0:
            take = min(left, self._bo_free())
            if take > 0:
                out.append(["bo", "", self._bo_location(loc), take])
        return out

    def _book(self, line: Line, allocs: list[list[Any]]) -> None:
        """Add allocations to a live line and to the pool and bucket counters."""
        for kind, ref, loc, q in allocs:
            b = self._loc(loc)
            if kind == "oh":
                b.oh_alloc += q
            elif kind == "lot":
                self.lots[ref].alloc += q
            elif kind == "bo":
                b.bo_alloc += q
            else:
                b.short += q
            if line.state == "held":
                b.held += q
            else:
                b.committed += q
            _merge(line.alloc, [kind, ref, loc, q])

    def _unbook(self, line: Line, alloc: list[Any], q: int) -> None:
        """Remove ``q`` units of one allocation entry from the pool and bucket counters."""
        kind, ref, loc, _ = alloc
        b = self._loc(loc)
        if kind == "oh":
            b.oh_alloc -= q
        elif kind == "lot":
            if ref in self.lots:
                self.lots[ref].alloc -= q
        elif kind == "bo":
            b.bo_alloc -= q
        else:
            b.short -= q
        if line.state == "held":
            b.held -= q
        else:
            b.committed -= q
        alloc[3] -= q

    def _return_units(self, line: Line) -> None:
        for alloc in line.alloc:
            self._unbook(line, alloc, alloc[3])
        line.alloc = [a for a in line.alloc if a[3] > 0]
        self._usage(line, -line.qty)

    def _commit_units(self, line: Line, sign: int) -> None:
        """Move a line's units from held to committed (sign 1) or back (sign -1)."""
        for _kind, _ref, loc, q in line.alloc:
            b = self._loc(loc)
            b.held -= sign * q
            b.committed += sign * q

    def _usage(self, line: Line, delta: int) -> None:
        for book, who in ((self.customers, line.customer), (self.channels, line.channel)):
            if who:
                book[who] = book.get(who, 0) + delta
                if book[who] == 0:
                    del book[who]

    def _promise(self, allocs: list[list[Any]], now: int) -> int:
        p = now
        for kind, ref, _loc, _q in allocs:
            if kind == "lot":
                p = max(p, self.lots[ref].eta_ms)
            elif kind == "bo":
                p = max(p, now + self.policy.backorder_days * DAY_MS)
        return p

    def _repromise(self, line: Line, now: int) -> int:
        """Promised date from the line's supplied allocations, never later than needed."""
        base = 0
        for kind, ref, _loc, _q in line.alloc:
            if kind == "lot":
                base = max(base, self.lots[ref].eta_ms)
            elif kind == "bo":
                base = max(base, now + self.policy.backorder_days * DAY_MS)
        return base if base > 0 else min(line.promised_ms, now)

    # ------------------------------------------------------------------ expiry

    def expire_due(self, now: int) -> list[str]:
        """Expire every held line whose time has come; returns their ids in expiry order."""
        due = sorted(
            (ln.expires_ms, rid)
            for rid, ln in self.lines.items()
            if ln.state == "held" and 0 < ln.expires_ms <= now
        )
        for _exp, rid in due:
            line = self.lines[rid]
            self._return_units(line)
            line.state = "expired"
            self.ended_ms[rid] = line.expires_ms
        return [rid for _exp, rid in due]

    # ------------------------------------------------------------------ checkout operations

    def hold_batch(self, requests: list[HoldRequest], now: int) -> list[dict[str, Any]]:
        """Reserve each request all-or-nothing, in order (the coalesced hot path)."""
        self.expire_due(now)
        return [self._hold(req, now) for req in requests]

    def _broken_guard(self, req: HoldRequest) -> dict[str, Any]:
        """The flash-sale guard a hold breaks, ``{reason, limit[, used]}`` (``used``: the units
        already counted against a customer or channel), or {} when none."""
        p = self.policy
        if p.order_cap > 0 and req.qty > p.order_cap:
            return {"reason": "order_cap", "limit": p.order_cap}
        if p.customer_limit > 0 and req.customer:
            used = self.customers.get(req.customer, 0)
            if used + req.qty > p.customer_limit:
                return {"reason": "customer_limit", "limit": p.customer_limit, "used": used}
        if req.channel in p.quotas:
            used = self.channels.get(req.channel, 0)
            if used + req.qty > p.quotas[req.channel]:
                return {"reason": "channel_quota", "limit": p.quotas[req.channel], "used": used}
        return {}

    def _hold(self, req: HoldRequest, now: int, replace_dead: bool = False) -> dict[str, Any]:
        existing = self.lines.get(req.rid)
        if existing is not None and not (replace_dead and existing.state in ("released", "expired")):
            same = existing.qty == req.qty and existing.loc == req.loc
            return {"status": "duplicate" if same else "conflict", "rid": req.rid, "line": existing.wire()}
        if req.loc and req.loc not in self.locs and all(lot.loc != req.loc for lot in self.lots.values()):
            return {"status": "refused", "rid": req.rid, "reason": "unknown_location", "available": 0}
        guard = self._broken_guard(req)
        available = self.capacity(req.loc, now)
        if guard:
            return {"status": "refused", "rid": req.rid, **guard, "available": available}
        if available < req.qty:
            return {"status": "refused", "rid": req.rid, "reason": "insufficient", "available": available}
        self.ended_ms.pop(req.rid, None)  # a released or expired line is replaced
        allocs = self._allocate(req.qty, req.loc, now)
        self.seq += 1
        line = Line(
            rid=req.rid,
            sku=self.sku,
            qty=req.qty,
            loc=req.loc,
            state="committed" if req.commit else "held",
            expires_ms=0 if req.commit else due_at(now + req.ttl_ms),
            seq=self.seq,
            channel=req.channel,
            customer=req.customer,
            alloc=[],
            promised_ms=self._promise(allocs, now),
        )
        self.lines[req.rid] = line
        self._book(line, allocs)
        self._usage(line, req.qty)
        line.atp_after = self.atp(req.loc, now)
        return {"status": "ok", "rid": req.rid, "line": line.wire()}

    def confirm(self, rid: str, now: int) -> dict[str, Any]:
        self.expire_due(now)
        line = self.lines.get(rid)
        if line is None:
            return {"status": "not_found", "rid": rid}
        if line.state == "committed":
            return {"status": "duplicate", "rid": rid, "line": line.wire()}
        if line.state != "held":
            return {"status": "refused", "rid": rid, "reason": line.state, "line": line.wire()}
        self._commit_units(line, 1)
        line.state = "committed"
        line.expires_ms = 0
        return {"status": "ok", "rid": rid, "line": line.wire()}

    def release(self, rid: str, now: int) -> dict[str, Any]:
        self.expire_due(now)
        line = self.lines.get(rid)
        if line is None:
            return {"status": "not_found", "rid": rid}
        if line.state in ("released", "expired"):
            return {"status": "duplicate", "rid": rid, "line": line.wire()}
        if line.state == "shipped":
            return {"status": "refused", "rid": rid, "reason": "shipped", "line": line.wire()}
        self._return_units(line)
        line.state = "released"
        line.expires_ms = 0
        self.ended_ms[rid] = now
        return {"status": "ok", "rid": rid, "line": line.wire()}

    def rollback(self, rid: str, now: int) -> dict[str, Any]:
        self.expire_due(now)
        line = self.lines.get(rid)
        if line is None:
            return {"status": "not_found", "rid": rid}
        if line.state == "shipped":
            return {"status": "refused", "rid": rid, "reason": "shipped", "line": line.wire()}
        if line.state in LIVE:
            self._return_units(line)
        del self.lines[rid]
        self.ended_ms.pop(rid, None)
        return {"status": "ok", "rid": rid}

    def extend(self, rid: str, ttl_ms: int, now: int) -> dict[str, Any]:
        self.expire_due(now)
        line = self.lines.get(rid)
        if line is None:
            return {"status": "not_found", "rid": rid}
        if line.state != "held":
            return {"status": "refused", "rid": rid, "reason": line.state, "line": line.wire()}
        line.expires_ms = due_at(now + ttl_ms)
        return {"status": "ok", "rid": rid, "line": line.wire()}

    def revert(self, rid: str, expires_ms: int, now: int) -> dict[str, Any]:
        """Undo a confirm or extend: a live line is held again until ``expires_ms`` (rounded up to
        a whole second), or expires now when that time has passed."""
        self.expire_due(now)
        line = self.lines.get(rid)
        if line is None:
            return {"status": "not_found", "rid": rid}
        if line.state not in LIVE:
            return {"status": "refused", "rid": rid, "reason": line.state, "line": line.wire()}
        if line.state == "committed":
            if sum(a[3] for a in line.alloc) < line.qty:  # a part shipped: that cannot be undone
                return {"status": "refused", "rid": rid, "reason": "shipped", "line": line.wire()}
            self._commit_units(line, -1)
            line.state = "held"
        line.expires_ms = due_at(expires_ms)
        if line.expires_ms <= now:
            self._return_units(line)
            line.state = "expired"
            self.ended_ms[rid] = line.expires_ms
        return {"status": "ok", "rid": rid, "line": line.wire()}

    def purge(self, now: int, retention_ms: int) -> list[str]:
        """The retention purge of this SKU: when a line reached a final state at or before
        ``now - retention_ms`` (retention_ms ≥ 1), expire due holds, then delete every such line;
        returns their ids. Usage of a purged shipped line stays counted: a customer limit does
        not reset when the line's details go."""
        cutoff = now - retention_ms
        if not any(ended <= cutoff for ended in self.ended_ms.values()):
            return []
        self.expire_due(now)  # lines expiring now end after the cutoff
        gone = sorted(rid for rid, ended in self.ended_ms.items() if ended <= cutoff)
        for rid in gone:
            del self.lines[rid]
            del self.ended_ms[rid]
        return gone

    def get_line(self, rid: str, now: int) -> dict[str, Any] | None:
        self.expire_due(now)
        line = self.lines.get(rid)
        return None if line is None else line.wire()

    # ------------------------------------------------------------------ the stream

    def apply(
        self,
        cmd: str,
        payload: dict[str, Any],
        now: int,
        event_id: str = "",
        source: str = "",
        offset: int = -1,
        reason: str = "",
        ref: str = "",
    ) -> dict[str, Any]:
        """Apply one supply command idempotently; returns the wire supply reply."""
        self.expire_due(now)
        if source and offset >= 0 and offset <= self.offsets.get(source, -1):
            return self._supply_reply({"status": "duplicate", "reason": "offset"}, {}, now)
        content = (cmd, payload, reason, ref)
        seen = next((was for eid, was in self.recent_events if eid == event_id), None) if event_id else None
        if seen is not None:
            # an id reused with another command, payload or note is not applied either
            why = "event_id" if seen == content else "event_id_reused"
            return self._supply_reply({"status": "duplicate", "reason": why}, {}, now)
        if source and offset >= 0:
            self.offsets[source] = offset
        if event_id:
            self.recent_events.append((event_id, content))
        self.journal.append({"event_id": event_id, "cmd": cmd, "reason": reason, "ref": ref, "at": now})
        handler = getattr(self, f"_cmd_{cmd}")
        old_promises: dict[str, int] = {}
        reply = handler(payload, now, old_promises)
        if cmd in REBALANCING:
            self._rebalance(now, old_promises)
        for rid in old_promises:
            line = self.lines[rid]
            line.promised_ms = self._repromise(line, now)
        return self._supply_reply(reply, old_promises, now)

    def _supply_reply(self, reply: dict[str, Any], touched: dict[str, int], now: int) -> dict[str, Any]:
        """The wire reply: the lines the command touched (rid -> promised date before it), newest
        first — in ``slipped`` when now promised later, in ``at_risk`` while short of supply."""
        at_risk, slipped = [], []
        for line in sorted((self.lines[rid] for rid in touched), key=lambda ln: -ln.seq):
            if line.state not in LIVE:
                continue
            if line.promised_ms > touched[line.rid]:
                slipped.append({"rid": line.rid, "old_ms": touched[line.rid], "new_ms": line.promised_ms})
            short = sum(a[3] for a in line.alloc if a[0] == "short")
            if short > 0:
                at_risk.append({"rid": line.rid, "short": short})
        out = dict(reply)
        out["at_risk"] = at_risk
        out["slipped"] = slipped
        out["position"] = self.position(now)
        return out

    def _touch(self, touched: dict[str, int], line: Line) -> None:
        touched.setdefault(line.rid, line.promised_ms)

    def _live_lines_newest_first(self) -> list[Line]:
        return sorted((ln for ln in self.lines.values() if ln.state in LIVE), key=lambda ln: -ln.seq)

    def _cmd_inbound_created(self, p: dict[str, Any], now: int, touched: dict[str, int]) -> dict[str, Any]:
        lid = p["inbound_id"]
        if lid in self.lots:
            return {"status": "duplicate", "reason": "exists"}
        self._loc(p["loc"])
        self.lots[lid] = Lot(loc=p["loc"], qty=p["qty"], eta_ms=p["eta_ms"], supplier=p["supplier"])
        return {"status": "ok"}

    def _cmd_inbound_updated(self, p: dict[str, Any], now: int, touched: dict[str, int]) -> dict[str, Any]:
        lot = self.lots.get(p["inbound_id"])
        if lot is None:
            return {"status": "not_found"}
        if p.get("eta_ms"):
            for line in self._live_lines_newest_first():
                if any(a[0] == "lot" and a[1] == p["inbound_id"] for a in line.alloc):
                    self._touch(touched, line)
            lot.eta_ms = p["eta_ms"]
        if p.get("qty"):
            lot.qty = p["qty"]
        return {"status": "ok"}

    def _cmd_inbound_cancelled(self, p: dict[str, Any], now: int, touched: dict[str, int]) -> dict[str, Any]:
        lid = p["inbound_id"]
        lot = self.lots.get(lid)
        if lot is None:
            return {"status": "not_found"}
        self._move_lot(lid, ["short", "", lot.loc], touched)
        return {"status": "ok"}

    def _cmd_receipt(self, p: dict[str, Any], now: int, touched: dict[str, int]) -> dict[str, Any]:
        loc = p["loc"]
        self._loc(loc).on_hand += p["qty"]
        reply: dict[str, Any] = {"status": "ok"}
        lid = p.get("inbound_id") or ""
        lot = self.lots.get(lid) if lid else None
        if lot is not None:
            reply["lot"] = {"inbound_id": lid, "qty": lot.qty, "eta_ms": lot.eta_ms, "supplier": lot.supplier}
            self._move_lot(lid, ["oh", loc, loc], touched)
        return reply

    def _move_lot(self, lid: str, to: list[Any], touched: dict[str, int]) -> None:
        """Close a lot: every allocation on it becomes ``to`` ([kind, ref, loc]) for the same units."""
        for line in self._live_lines_newest_first():
            for a in [a for a in line.alloc if a[0] == "lot" and a[1] == lid]:
                q = a[3]
                self._touch(touched, line)
                self._unbook(line, a, q)
                line.alloc = [x for x in line.alloc if x[3] > 0]
                self._book(line, [[*to, q]])
        del self.lots[lid]

    def _cmd_adjust(self, p: dict[str, Any], now: int, touched: dict[str, int]) -> dict[str, Any]:
        b = self._loc(p["loc"])
        target = b.on_hand + p["delta"]
        b.on_hand = max(0, target)
        return {"status": "ok", "clamped": True} if target < 0 else {"status": "ok"}

    def _cmd_count(self, p: dict[str, Any], now: int, touched: dict[str, int]) -> dict[str, Any]:
        self._loc(p["loc"]).on_hand = p["on_hand"]
        return {"status": "ok"}

    def _cmd_ship(self, p: dict[str, Any], now: int, touched: dict[str, int]) -> dict[str, Any]:
        b = self._loc(p["loc"])
        b.on_hand = max(0, b.on_hand - p["qty"])
        line = self.lines.get(p["rid"])
        if line is None:
            return {"status": "ok"}
        if line.state == "committed":
            left = p["qty"]
            for kind in ("oh", "lot", "bo", "short"):
                for a in line.alloc:
                    if left == 0:
                        break
                    if a[0] == kind and a[3] > 0:
                        q = min(left, a[3])
                        self._unbook(line, a, q)
                        left -= q
            line.alloc = [a for a in line.alloc if a[3] > 0]
            if not line.alloc:
                line.state = "shipped"
                self.ended_ms[line.rid] = now
        return {"status": "ok", "line": line.wire()}

    def _cmd_order_placed(self, p: dict[str, Any], now: int, touched: dict[str, int]) -> dict[str, Any]:
        rid = p["rid"]
        line = self.lines.get(rid)
        if line is not None and line.state in LIVE and not _order_matches(line, p):
            return self._order_replace(line, p, now)
        if line is not None and line.state == "held":
            out = self.confirm(rid, now)
            return {"status": out["status"], "line": out["line"]}
        if line is not None and line.state in ("committed", "shipped"):
            return {"status": "duplicate", "reason": line.state, "line": line.wire()}
        out = self._hold(self._order_request(p), now, replace_dead=True)
        if out["status"] == "refused":
            return {"status": "refused", "reason": out["reason"], "available": out["available"]}
        return {"status": out["status"], "line": out["line"]}

    @staticmethod
    def _order_request(p: dict[str, Any]) -> HoldRequest:
        return HoldRequest(
            rid=p["rid"], qty=p["qty"], loc=p.get("loc", ""), channel=p.get("channel", ""),
            customer=p.get("customer", ""), commit=True,
        )

    def _order_replace(self, line: Line, p: dict[str, Any], now: int) -> dict[str, Any]:
        """The order is what was sold: replace the live line of its id by a committed line of the
        order's terms, checked with the old line's units given back; refused, nothing changes."""
        kept, state = [list(a) for a in line.alloc], line.state
        self._return_units(line)
        line.state = "released"  # so _hold may replace it
        out = self._hold(self._order_request(p), now, replace_dead=True)
        if out["status"] == "refused":
            line.state = state
            self._book(line, kept)
            self._usage(line, line.qty)
            return {"status": "refused", "reason": out["reason"], "available": out["available"]}
        return {"status": out["status"], "reason": "replaced", "line": out["line"]}

    def _cmd_order_cancelled(self, p: dict[str, Any], now: int, touched: dict[str, int]) -> dict[str, Any]:
        out = self.release(p["rid"], now)
        return {k: v for k, v in out.items() if k != "rid"}

    def _cmd_policy(self, p: dict[str, Any], now: int, touched: dict[str, int]) -> dict[str, Any]:
        self.policy = Policy.from_wire(p["policy"])
        return {"status": "ok"}

    def _cmd_reliability(self, p: dict[str, Any], now: int, touched: dict[str, int]) -> dict[str, Any]:
        self.reliability[p["supplier"]] = p["rel_pm"]
        return {"status": "ok"}

    # ------------------------------------------------------------------ rebalance

    def _rebalance(self, now: int, touched: dict[str, int]) -> None:
        """Give back over-allocated supply (newest first), then re-fill shorts (oldest first)."""
        safety = self.policy.safety
        for name in sorted(self.locs):
            b = self.locs[name]
            excess = b.oh_alloc - max(0, b.on_hand - safety)
            self._shed(excess, lambda a, n=name: a[0] == "oh" and a[2] == n, touched)
        for lid, lot in self._lots_in_order(""):
            excess = lot.alloc - self.promisable(lot, now)
            self._shed(excess, lambda a, i=lid: a[0] == "lot" and a[1] == i, touched)
        limit = self.policy.backorder_limit if self.policy.mode == "backorder" else 0
        excess = sum(b.bo_alloc for b in self.locs.values()) - limit
        self._shed(excess, lambda a: a[0] == "bo", touched)
        if not any(b.short for b in self.locs.values()):
            return
        for line in sorted((ln for ln in self.lines.values() if ln.state in LIVE), key=lambda ln: ln.seq):
            for a in [a for a in line.alloc if a[0] == "short"]:
                got = self._allocate(a[3], line.loc, now)
                if not got:
                    continue
                self._touch(touched, line)
                self._unbook(line, a, sum(g[3] for g in got))
                line.alloc = [x for x in line.alloc if x[3] > 0]
                self._book(line, got)

    def _shed(self, excess: int, matches: Any, touched: dict[str, int]) -> None:
        if excess <= 0:
            return
        for line in self._live_lines_newest_first():
            for a in [a for a in line.alloc if matches(a)]:
                if excess == 0:
                    return
                q = min(excess, a[3])
                self._touch(touched, line)
                loc = a[2]
                self._unbook(line, a, q)
                line.alloc = [x for x in line.alloc if x[3] > 0]
                self._book(line, [["short", "", loc, q]])
                excess -= q

    # ------------------------------------------------------------------ tests

    def dump(self) -> dict[str, Any]:
        """The state dump of docs/semantics.md (what R5 compares with the Redis side)."""
        return {
            "locs": {
                name: {
                    "on_hand": b.on_hand,
                    "safety": self.policy.safety,
                    "held": b.held,
                    "committed": b.committed,
                    "oh_alloc": b.oh_alloc,
                    "bo_alloc": b.bo_alloc,
                    "short": b.short,
                }
                for name, b in sorted(self.locs.items())
            },
            "lots": {
                lid: {"loc": lot.loc, "qty": lot.qty, "eta_ms": lot.eta_ms, "supplier": lot.supplier, "alloc": lot.alloc}
                for lid, lot in sorted(self.lots.items())
            },
            "lines": {rid: line.wire() for rid, line in sorted(self.lines.items())},
            "customers": dict(sorted(self.customers.items())),
            "channels": dict(sorted(self.channels.items())),
            "policy": self.policy.to_wire(),
            "reliability": dict(sorted(self.reliability.items())),
            "seq": self.seq,
        }

    def copy(self) -> SkuBook:
        return copy.deepcopy(self)


def _order_matches(line: Line, p: dict[str, Any]) -> bool:
    """Does an order line ask for what the live line of its id holds? (no location = any)"""
    return line.qty == p["qty"] and p.get("loc", "") in ("", line.loc)


def _merge(allocs: list[list[Any]], new: list[Any]) -> None:
    """Add an allocation, folding it into an entry of the same kind, source and location."""
    for a in allocs:
        if a[0] == new[0] and a[1] == new[1] and a[2] == new[2]:
            a[3] += new[3]
            return
    allocs.append(list(new))
