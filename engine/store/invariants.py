"""The store's invariants (docs/semantics.md "State of one SKU"), checked from the raw Redis state of every SKU.

``check_invariants(client)`` reads each SKU found by SCAN and returns human-readable violations
(empty when all hold). It never writes: the position it compares against is computed by
position.lua with lazy expiry switched off.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import orjson

from engine.domain.oracle import due_at
from engine.store import scripts
from engine.store.keys import DEFAULT_PREFIX, script_keys, sku_from_key, sku_keys, validate_prefix
from engine.store.wire import decode_line, decode_reply, normalize_policy

_LIVE = ("held", "committed")


def _skus(client: Any, prefix: str) -> list[str]:
    found = set()
    for key in client.scan_iter(match=f"{prefix}:{{*}}:*", count=1000):
        sku = sku_from_key(key, prefix)
        if sku is not None:
            found.add(sku)
    return sorted(found)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _promisable(lot: dict[str, Any], policy: dict[str, Any], rel: dict[str, int], now: int) -> int:
    if policy["mode"] == "strict" or lot.get("closing"):
        return 0
    if policy["horizon_s"] > 0 and lot["eta_ms"] > now + policy["horizon_s"] * 1000:
        return 0
    r = rel.get(lot["supplier"], 1000) if policy["use_reliability"] else 1000
    return lot["qty"] * policy["cap_pm"] * r // 1_000_000


_READS = 15  # pipelined reads per SKU, in the order _check_state() unpacks them
_BUCKETS = ("oh", "hd", "cm", "oa", "ba", "st")
_FINAL = ("released", "expired", "shipped")


def _queue_reads(pipe: Any, k: Any) -> None:
    pipe.hget(k.state, "!L")
    pipe.hgetall(k.lots)
    pipe.hgetall(k.res)
    pipe.get(k.pol)
    pipe.hgetall(k.srel)
    pipe.hgetall(k.cust)
    pipe.hgetall(k.chan)
    pipe.zrange(k.exp, 0, -1, withscores=True)
    pipe.zrange(k.dead, 0, -1)
    pipe.hgetall(k.ended)
    pipe.zrange(k.pool, 0, -1)
    pipe.hget(k.state, "!J")
    pipe.hgetall(k.state)  # '!W' and the due buckets ('p<T>')
    pipe.hgetall(k.due)
    pipe.zrange(k.duet, 0, -1, withscores=True)


def location_buckets(raw: Any) -> dict[str, dict[str, int]]:
    """The location buckets of a state hash's ``!L`` field: loc -> {oh, hd, cm, oa, ba, st}."""
    if raw is None:
        return {}
    out = {}
    for part in _text(raw).split("|")[1:]:
        name, _, values = part.partition("=")
        out[name] = dict(zip(_BUCKETS, (int(v) for v in values.split(",")), strict=True))
    return out


def encode_location_buckets(head: str, buckets: dict[str, dict[str, int]]) -> str:
    """The ``!L`` field for ``head`` (``seq,applied,events``) and the buckets (for tests that
    need to corrupt a bucket on purpose)."""
    parts = [head] + [f"{name}=" + ",".join(str(b[k]) for k in _BUCKETS) for name, b in sorted(buckets.items())]
    return "|".join(parts)


def _lot(raw: Any) -> dict[str, Any]:
    loc, qty, eta, supplier, alloc = _text(raw).split(",")
    return {"loc": loc, "qty": int(qty), "eta_ms": int(eta), "supplier": supplier, "alloc": int(alloc)}


def _usage(raw: dict[Any, Any]) -> tuple[dict[str, int], dict[str, int]]:
    counted: dict[str, int] = {}
    retired: dict[str, int] = {}
    for field, value in raw.items():
        name = _text(field)
        if name.startswith("~"):
            retired[name[1:]] = int(value)
        else:
            counted[name] = int(value)
    return counted, retired


def _now_ms(client: Any) -> int:
    secs, micros = client.time()
    return int(secs) * 1000 + int(micros) // 1000


def check_sku(client: Any, sku: str, prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Violations of one SKU's invariants (empty list when it is consistent)."""
    return _check_many(client, [sku], prefix)


def _check_many(client: Any, skus: list[str], prefix: str) -> list[str]:
    """Check a chunk of SKUs with two pipelined round trips (reads, then positions)."""
    keys = [sku_keys(sku, prefix) for sku in skus]
    pipe = client.pipeline(transaction=False)
    for k in keys:
        _queue_reads(pipe, k)
    raw = pipe.execute()
    now = _now_ms(client)
    script = scripts.load_scripts()["position"]
    cluster = scripts.is_cluster(client)
    positions = scripts.call_many(client, [(script, script_keys(k.sku, prefix, cluster), [k.sku, now, "", 1])
                                           for k in keys])
    out: list[str] = []
    for i, sku in enumerate(skus):
        out.extend(_check_state(sku, raw[i * _READS:(i + 1) * _READS], decode_reply(positions[i]), now))
    return out


def _check_state(sku: str, raw: list[Any], pos: dict[str, Any], now: int) -> list[str]:
    out: list[str] = []
    (loc_raw, lots_raw, res_raw, raw_pol, srel_raw, cust_raw, chan_raw, exp_raw, dead_raw, ended_raw, pool_raw,
     job_raw, state_raw, due_raw, duet_raw) = raw
    w_raw = state_raw.get(b"!W", state_raw.get("!W"))
    due_raw = {**{f: v for f, v in state_raw.items() if _text(f).startswith("p")}, **due_raw}
    buckets: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(_BUCKETS, 0))
    buckets.update(location_buckets(loc_raw))
    lots = {_text(i): _lot(v) for i, v in lots_raw.items()}
    # a lot a paused job is receiving or cancelling is promisable to nobody until it is gone
    closing = orjson.loads(job_raw).get("closing") if job_raw else None
    if closing in lots:
        lots[closing]["closing"] = True
    lines = {_text(r): decode_line(_text(r), sku, v) for r, v in res_raw.items()}
    ended = {_text(r): decode_line(_text(r), sku, v) for r, v in ended_raw.items()}
    out.extend(f"{sku}: line {rid} is {ln['state']} but kept with the live lines"
               for rid, ln in lines.items() if ln["state"] in _FINAL)
    out.extend(f"{sku}: line {rid} is {ln['state']} but kept with the ended lines"
               for rid, ln in ended.items() if ln["state"] not in _FINAL)
    out.extend(f"{sku}: line {rid} is kept twice" for rid in lines.keys() & ended.keys())
    out.extend(_check_pool_index(sku, lines, {_text(m) for m in pool_raw}))
    folded_to, _, _ = _due_mark(w_raw)
    out.extend(_check_due(sku, lines, w_raw, due_raw, duet_raw))
    lines.update(ended)
    policy = normalize_policy(orjson.loads(raw_pol) if raw_pol else {})
    rel = {_text(s): int(v) for s, v in srel_raw.items()}
    # '~<id>': units of purged shipped lines, still counted in <id>'s usage
    customers, cust_retired = _usage(cust_raw)
    channels, chan_retired = _usage(chan_raw)
    # the expiry index: members are space-separated rids; a rid may have stale entries
    expiring: dict[str, set[float]] = defaultdict(set)
    for member, score in exp_raw:
        for r in _text(member).split():
            expiring[r].add(float(score))
    dead = {_text(r) for r in dead_raw}

    for lot in lots.values():
        buckets[lot["loc"]]  # a lot names its location
    # what the live lines say the counters must be
    want: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(("hd", "cm", "oa", "ba", "st"), 0))
    lot_alloc: dict[str, int] = defaultdict(int)
    cust_used: dict[str, int] = defaultdict(int, cust_retired)
    chan_used: dict[str, int] = defaultdict(int, chan_retired)
    for rid, line in lines.items():
        state = line["state"]
        if (state in _FINAL) != (rid in dead):
            out.append(f"{sku}: line {rid} in state {state} is {'not ' if rid not in dead else ''}in the "
                       f"retention index")
        if state in _LIVE or state == "shipped":
            if line["customer"]:
                cust_used[line["customer"]] += line["qty"]
            if line["channel"]:
                chan_used[line["channel"]] += line["qty"]
        if state == "held" and line["expires_ms"] not in expiring.get(rid, ()):
            out.append(f"{sku}: held line {rid} expires at {line['expires_ms']} but the expiry index has "
                       f"{sorted(expiring.get(rid, ()))}")
        if state not in _LIVE:
            if state != "shipped" and line["alloc"]:
                out.append(f"{sku}: {state} line {rid} still has allocations {line['alloc']}")
            continue
        if _buried_late(line, folded_to):
            continue  # due, its units given back with its bucket; not buried yet
        total = 0
        for kind, ref, loc, q in line["alloc"]:
            total += q
            if q <= 0:
                out.append(f"{sku}: line {rid} has a non-positive allocation {[kind, ref, loc, q]}")
            want[loc]["hd" if state == "held" else "cm"] += q
            if kind == "oh":
                want[loc]["oa"] += q
            elif kind == "lot":
                lot_alloc[ref] += q
                if ref not in lots:
                    out.append(f"{sku}: line {rid} draws on unknown lot {ref}")
                elif lots[ref]["loc"] != loc:
                    out.append(f"{sku}: line {rid} books lot {ref} at {loc}, the lot is at {lots[ref]['loc']}")
            elif kind == "bo":
                want[loc]["ba"] += q
            else:
                want[loc]["st"] += q
        if total > line["qty"]:
            out.append(f"{sku}: line {rid} allocates {total} units for qty {line['qty']}")
        if state == "held" and total != line["qty"]:
            out.append(f"{sku}: held line {rid} allocates {total} units for qty {line['qty']}")

    for loc in sorted(set(buckets) | set(want)):
        b = buckets[loc]
        w = want[loc]
        for name in ("oh", "hd", "cm", "oa", "ba", "st"):
            if b[name] < 0:
                out.append(f"{sku}@{loc}: negative bucket {name} = {b[name]}")
        for name in ("hd", "cm", "oa", "ba", "st"):
            if b[name] != w[name]:
                out.append(f"{sku}@{loc}: {name} = {b[name]} but the live lines sum to {w[name]}")
        lots_here = sum(lot["alloc"] for lot in lots.values() if lot["loc"] == loc)
        if b["hd"] + b["cm"] != b["oa"] + lots_here + b["ba"] + b["st"]:
            out.append(f"{sku}@{loc}: held+committed {b['hd'] + b['cm']} != oh_alloc+lot alloc+bo_alloc+short "
                       f"{b['oa'] + lots_here + b['ba'] + b['st']}")
    for lot_id, lot in lots.items():
        if lot["alloc"] < 0:
            out.append(f"{sku}: lot {lot_id} has negative alloc {lot['alloc']}")
        if lot["alloc"] != lot_alloc.get(lot_id, 0):
            out.append(f"{sku}: lot {lot_id} alloc {lot['alloc']} but the live lines sum to {lot_alloc.get(lot_id, 0)}")
    if customers != {c: n for c, n in cust_used.items() if n}:
        out.append(f"{sku}: customer usage {customers} != live+shipped lines {dict(cust_used)}")
    if channels != {c: n for c, n in chan_used.items() if n}:
        out.append(f"{sku}: channel usage {channels} != live+shipped lines {dict(chan_used)}")

    # ATP formula, against what the position script reports (read-only, same now): safety holds
    # back only stock that is there, backordered units take nothing, the SKU adds the backorder room
    for loc, b in buckets.items():
        pit = sum(_promisable(lot, policy, rel, now) for lot in lots.values() if lot["loc"] == loc)
        atp = b["oh"] + pit - min(policy["safety"], b["oh"]) - (b["hd"] + b["cm"] - b["ba"])
        got = pos["locations"].get(loc, {}).get("atp")
        if got != atp:
            out.append(f"{sku}@{loc}: ATP reported {got}, formula gives {atp}")
    backordered = sum(b["ba"] for b in buckets.values())
    room = max(0, policy["backorder_limit"] - backordered) if policy["mode"] == "backorder" else 0
    if pos["atp"] != sum(v["atp"] for v in pos["locations"].values()) + room:
        out.append(f"{sku}: SKU ATP {pos['atp']} is not the sum over its locations plus the backorder room {room}")
    if pos.get("backordered") != backordered:
        out.append(f"{sku}: backordered {pos.get('backordered')} reported, the locations hold {backordered}")
    return out


def _due_mark(raw: Any) -> tuple[int, int, int]:
    """``!W``: (the last folded second W, lines of folded buckets not buried yet, next due T)."""
    if raw is None:
        return 0, 0, 0
    w, pending, nxt = (int(v) for v in _text(raw).split(","))
    return w, pending, nxt


def _buried_late(line: dict[str, Any], folded_to: int) -> bool:
    """A held line of a folded bucket: expired, its units already given back, not buried yet."""
    return line["state"] == "held" and 0 < due_at(line["expires_ms"]) <= folded_to


def _check_due(sku: str, live: dict[str, dict[str, Any]], w_raw: Any, due_raw: dict[Any, Any],
               duet_raw: list[Any]) -> list[str]:
    """The due buckets (lua/lib.lua KEYS[14], [15]) against the held lines."""
    folded_to, pending, nxt = _due_mark(w_raw)
    want_n: dict[int, int] = defaultdict(int)
    want_alloc: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    want_use: dict[str, int] = defaultdict(int)
    for line in live.values():
        if line["state"] != "held" or line["expires_ms"] <= 0:
            continue
        t = due_at(line["expires_ms"])
        want_n[t] += 1
        if t > folded_to:
            for kind, ref, loc, q in line["alloc"]:
                want_alloc[t][f"{kind},{ref},{loc}"] += q
        if line["customer"]:
            want_use[f"c{t}|{line['customer']}"] += line["qty"]
        if line["channel"]:
            want_use[f"h{t}|{line['channel']}"] += line["qty"]
    got_n: dict[int, int] = {}
    got_alloc: dict[int, dict[str, int]] = {}
    got_use: dict[str, int] = {}
    for field, value in due_raw.items():
        name, text = _text(field), _text(value)
        if name.startswith("p"):
            count, _, alloc = text.partition("|")
            got_n[int(name[1:])] = int(count)
            got_alloc[int(name[1:])] = {e.rsplit(",", 1)[0]: int(e.rsplit(",", 1)[1]) for e in alloc.split(";") if e}
        else:
            got_use[name] = int(text)
    out: list[str] = []
    if got_n != dict(want_n):
        out.append(f"{sku}: due buckets count lines {got_n}, the held lines say {dict(want_n)}")
    for t in sorted(got_alloc.keys() | want_alloc.keys()):
        want = {k: q for k, q in want_alloc.get(t, {}).items() if q}
        if got_alloc.get(t, {}) != want:
            out.append(f"{sku}: due bucket {t} holds {got_alloc.get(t, {})}, its held lines {want}")
    if got_use != {k: q for k, q in want_use.items() if q}:
        out.append(f"{sku}: due usage {got_use} != the held lines' {dict(want_use)}")
    listed = {int(float(score)) for _m, score in duet_raw}
    if listed != set(got_n):
        out.append(f"{sku}: due bucket index {sorted(listed)} != buckets {sorted(got_n)}")
    waiting = sum(n for t, n in want_n.items() if t <= folded_to)
    if pending != waiting:
        out.append(f"{sku}: {pending} lines of folded buckets to bury, the held lines say {waiting}")
    ahead = [t for t in want_n if t > folded_to]
    if ahead and not 0 < nxt <= min(ahead):
        out.append(f"{sku}: next due bucket {nxt}, but bucket {min(ahead)} is not folded")
    return out


def pool_members(rid: str, line: dict[str, Any]) -> set[str]:
    """The pool-index members of a live line (lua/lib.lua KEYS[12]): one per pool it draws on."""
    pools = set()
    for kind, ref, loc, _q in line["alloc"]:
        pools.add({"oh": "o" + loc, "lot": "l" + ref, "bo": "b"}.get(kind, "s"))
    return {f"{pool}|{line['seq']:012d}|{rid}" for pool in pools}


def _check_pool_index(sku: str, live: dict[str, dict[str, Any]], index: set[str]) -> list[str]:
    want: set[str] = set()
    for rid, line in live.items():
        if line["state"] in _LIVE:
            want |= pool_members(rid, line)
    out = [f"{sku}: pool index lacks {m}" for m in sorted(want - index)]
    out += [f"{sku}: pool index has {m}, no live line draws on that pool" for m in sorted(index - want)]
    return out


def check_invariants(redis_client: Any, prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Every violated invariant of every SKU under ``prefix`` (empty list = all hold).

    Per SKU and location: held / committed equal the sums over live lines; held + committed =
    oh_alloc + Σ lot alloc + bo_alloc + short; no negative bucket; lot allocations and
    customer / channel usage equal the sums over the lines; the expiry index matches the held
    lines; the pool index lists exactly the pools each live line draws on; ATP(L) = on_hand + promisable
    in-transit − min(safety, on_hand) − (held + committed − bo_alloc), the SKU's ATP = Σ ATP(L) + the
    backorder room.
    """
    validate_prefix(prefix)
    problems: list[str] = []
    skus = _skus(redis_client, prefix)
    for i in range(0, len(skus), 200):
        problems.extend(_check_many(redis_client, skus[i:i + 200], prefix))
    return problems
