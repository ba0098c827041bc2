"""The Redis store: every change to a SKU's stock goes through one atomic Lua script call.

``Store`` works over a sync ``redis.Redis`` or ``redis.RedisCluster``; ``AsyncStore`` over their
``redis.asyncio`` twins, with the same methods. Replies are the plain dicts of docs/semantics.md
("Wire shapes") — the same dicts the pure-Python oracle returns.

Every method validates its arguments (``ValueError`` with the reason) before any key is built.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import SlotNotCoveredError

from engine.store import listing, scripts
from engine.store.keys import (
    DEFAULT_PREFIX,
    dead_scan_pattern,
    decode_rid_index,
    exp_scan_pattern,
    logs_key,
    publish_keys,
    rid_index_key,
    script_keys,
    sku_from_key,
    sku_keys,
    validate_id,
    validate_prefix,
    validate_sku,
)
from engine.store.reply_stash import stash_key
from engine.store.wire import (
    EVENT_CHANGE_PATTERN,
    EVENT_MARK_TTL_MS,
    MAX_EVENT_BYTES,
    MAX_TTL_MS,
    POLICY_DEFAULTS,
    HoldRequest,
    SupplyCommand,
    _opt_location,
    check_int,
    decode_hold_replies,
    decode_reply,
    journal_entries,
    normalize_policy,
)

Clock = int | Callable[[], int] | None

SWEEP_CHUNK = 100  # SKUs per pipelined round trip of the sweeper
#: Lines one sweep call purges at most: a long history is purged in many short calls, so no call
#: keeps Redis (which runs one script at a time) from every other SKU for long.
PURGE_LINES_PER_CALL = 16
MAX_KEEP_REPLIES_S = 86_400
#: apply.lua's keep_s for a reply without its position (nothing kept either)
BARE_REPLY = -1
#: Which supply replies carry the SKU's position: all (True), none (False), or those of the SKUs
#: a predicate accepts. Computing it reads every lot of the SKU (about 30 % of the stream's script
#: time, docs/semantics-decisions-store.md), so a caller that does not read it says so.
Positions = bool | Callable[[str], bool]
MAX_RETENTION_MS = 3650 * 86_400_000


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _stash_key(prefix: str, command: SupplyCommand) -> str | None:
    """The reply stash key of a command with a valid input position, else None."""
    if not command.source or command.offset < 0:
        return None
    try:
        return stash_key(prefix, command.sku, command.source, command.offset)
    except ValueError:  # a source that is not topic:partition: nothing to replay by
        return None


def _either(pairs: list[Any]) -> list[bool]:
    """Pairs of HEXISTS replies (live lines, ended lines) -> whether the line is in either."""
    return [bool(a) or bool(b) for a, b in zip(pairs[::2], pairs[1::2], strict=True)]


def _oldest_score(entries: Any) -> float | None:
    """The score of ``ZRANGE key 0 0 WITHSCORES`` (None for an empty zset)."""
    return float(entries[0][1]) if entries else None


class _IndexPlan:
    """Which reservation-index keys a purge may delete: those whose every line is gone.

    ``start`` gets ``{rid: purged skus}``; ``reads()`` lists the index keys to GET; ``checks(values)``
    the ``(sku, rid)`` lines of other SKUs to test with HEXISTS; ``doomed(exists)`` the index keys
    to delete. Pure: the stores do the I/O.
    """

    def __init__(self, prefix: str, purged: dict[str, set[str]]) -> None:
        self.prefix = prefix
        self.purged = purged
        self.rids = sorted(purged)
        self.pending: list[tuple[str, list[str]]] = []  # (rid, other skus to check)

    def reads(self) -> list[str]:
        return [rid_index_key(rid, self.prefix) for rid in self.rids]

    def checks(self, values: list[Any]) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for rid, raw in zip(self.rids, values, strict=True):
            skus = decode_rid_index(raw)
            if not skus or not self.purged[rid] & set(skus):
                continue  # no index, or one that names other SKUs: not ours to remove
            others = [s for s in skus if s not in self.purged[rid]]
            self.pending.append((rid, others))
            out.extend((s, rid) for s in others)
        return out

    def doomed(self, exists: list[Any]) -> list[str]:
        found = iter(exists)
        out = []
        for rid, others in self.pending:
            alive = [bool(next(found)) for _ in others]
            if not any(alive):
                out.append(rid_index_key(rid, self.prefix))
        return out


class _Base:
    """Argument encoding shared by the sync and async stores (no I/O here)."""

    def __init__(self, redis: Any, prefix: str = DEFAULT_PREFIX, now_ms: Clock = None) -> None:
        self.redis = redis
        self.prefix = validate_prefix(prefix)
        # Tests only: a fixed instant (int) or a clock (callable) instead of Redis TIME.
        self.now_ms: Clock = now_ms
        # The most lines one apply call works on (0 = the script's own, apply.lua JOB_LINES); a
        # larger change goes on in further calls (tests set a few to see every pause).
        self.job_lines = 0
        self._scripts = scripts.load_scripts()
        self._cluster = scripts.is_cluster(redis)

    def _now_arg(self) -> int:
        now = self.now_ms() if callable(self.now_ms) else self.now_ms
        if now is None or now <= 0:
            return 0
        return check_int(now, "now_ms", 1, 10**14 - 1)

    def _call(self, name: str, sku: str, *args: Any) -> scripts.Call:
        keys = script_keys(sku, self.prefix, self._cluster)
        return self._scripts[name], keys, [sku, self._now_arg(), *args]

    def _hold_call(self, sku: str, requests: Sequence[HoldRequest]) -> scripts.Call:
        if not requests:
            raise ValueError("hold_batch needs at least one request")
        argv: list[Any] = []
        for req in requests:
            if not isinstance(req, HoldRequest):
                raise ValueError("hold_batch takes HoldRequest records")
            argv.extend(req.argv())
        return self._call("hold", sku, *argv)

    def _op_call(self, op: str, sku: str, rid: str, ttl_ms: int = 0) -> scripts.Call:
        validate_id(rid, "reservation_id")
        if op == "extend":
            check_int(ttl_ms, "ttl_ms", 1, MAX_TTL_MS)
        elif op == "revert":
            check_int(ttl_ms, "expires_ms", 1, 10**14 - 1)
        return self._call("reservation", sku, op, rid, ttl_ms)

    def _publish_call(self, sku: str, events: Sequence[tuple[str, bytes | str, str]]) -> scripts.Call:
        if not events:
            raise ValueError("publish needs at least one event")
        argv: list[Any] = [EVENT_MARK_TTL_MS]
        for rid, event, change in events:
            validate_id(rid, "reservation_id")
            text = event.decode() if isinstance(event, bytes) else event
            if not isinstance(text, str) or not text.startswith("{") or len(text) > MAX_EVENT_BYTES:
                raise ValueError(f"an event is a JSON object of at most {MAX_EVENT_BYTES} bytes")
            if not isinstance(change, str) or EVENT_CHANGE_PATTERN.fullmatch(change) is None:
                raise ValueError(f"invalid change {change!r} (must match {EVENT_CHANGE_PATTERN.pattern})")
            argv += [rid, text, change]
        entry, _keys, args = self._call("publish", sku, *argv)
        return entry, publish_keys(sku, [rid for rid, _e, _c in events], self.prefix, self._cluster), args

    def _position_call(self, sku: str, location: str | None) -> scripts.Call:
        return self._call("position", sku, _opt_location(location))

    def _kept_position_keys(self, skus: Sequence[str], location: str | None) -> list[str] | None:
        """The keys holding the kept positions of ``skus``, or None when a batch read must run the
        scripts (a location asked for, or a test clock: the keys expire on Redis' own clock)."""
        if _opt_location(location) or self.now_ms is not None:
            return None
        return [sku_keys(s, self.prefix).pos for s in skus]

    def _apply_calls(self, commands: Iterable[SupplyCommand], keep_replies_s: int = 0,
                     positions: Positions = True) -> list[scripts.Call]:
        check_int(keep_replies_s, "keep_replies_s", 0, MAX_KEEP_REPLIES_S)
        wants_position = positions if callable(positions) else (lambda _sku: positions)
        calls = []
        for c in commands:
            if not isinstance(c, SupplyCommand):
                raise ValueError("apply takes SupplyCommand records")
            script, keys, args = self._call("apply", c.sku, *c.argv())
            stash = _stash_key(self.prefix, c) if keep_replies_s else None
            if stash is not None:  # the reply stash: one more key, in the SKU's slot
                keys = [*keys, stash]
                keep = keep_replies_s  # (a kept reply always has its position)
            else:
                keep = 0 if wants_position(c.sku) else BARE_REPLY
            args += [keep, self.job_lines]
            calls.append((script, keys, args))
        return calls

    def _policy_command(self, sku: str, policy: dict[str, Any]) -> SupplyCommand:
        return SupplyCommand(sku=sku, cmd="policy", payload={"policy": normalize_policy(policy)},
                             reason="policy set", ref="ops")

    def _decode_policy(self, raw: bytes | str | None) -> dict[str, Any]:
        if raw is None:
            return normalize_policy({})
        return normalize_policy(orjson.loads(raw))

    def _fill_policy(self, dump: dict[str, Any]) -> dict[str, Any]:
        dump["policy"] = normalize_policy(dump.get("policy") or {})
        return dump

    def _sku_of_exp_key(self, key: bytes | str) -> str | None:
        return sku_from_key(key, self.prefix)

    def _sweep_call(self, sku: str, retention_ms: int = 0) -> scripts.Call:
        return self._call("sweep", sku, retention_ms, PURGE_LINES_PER_CALL)

    @staticmethod
    def _purged(due: list[str], replies: list[Any], purged: dict[str, set[str]]) -> list[str]:
        """Note one round of sweep replies' purged rids (rid -> skus); the SKUs that have more
        lines past the retention, for another round."""
        again = []
        for sku, reply in zip(due, replies, strict=True):
            for rid in reply[2:]:
                purged.setdefault(_text(rid), set()).add(sku)
            if int(reply[1]):
                again.append(sku)
        return again

    @staticmethod
    def _check_retention(retention_ms: int) -> int:
        return check_int(retention_ms, "retention_ms", 1, MAX_RETENTION_MS)


class Store(_Base):
    """Synchronous store over ``redis.Redis`` / ``redis.RedisCluster``.

    ``now_ms`` (tests only) fixes the scripts' clock: an int, or a callable returning one;
    ``None`` (production) means Redis ``TIME``. It may be reassigned between calls.
    """

    def _run(self, call: scripts.Call) -> Any:
        return decode_reply(scripts.call(self.redis, *call))

    def hold_batch(self, sku: str, requests: Sequence[HoldRequest]) -> list[dict[str, Any]]:
        """Process ``requests`` in order in one script call, each all-or-nothing.

        Returns one hold reply per request: ``{status: ok|duplicate, rid, line}``,
        ``{status: refused, rid, reason, available}`` or ``{status: conflict, rid, line}``.
        """
        return decode_hold_replies(sku, requests, scripts.call(self.redis, *self._hold_call(sku, requests)))

    def hold_batch_claiming(
        self, sku: str, requests: Sequence[HoldRequest], claims: Sequence[tuple[str, bytes]]
    ) -> tuple[list[bool], list[dict[str, Any]]]:
        """``SET key value NX`` for each claim, then ``hold_batch``, in one round trip.

        The client claims its reservation-index keys this way (other slots than the SKU's, so
        not inside the script). Returns (whether each claim created its key, the hold replies).
        """
        created, raw = scripts.call_after_sets(self.redis, claims, self._hold_call(sku, requests))
        return created, decode_hold_replies(sku, requests, raw)

    def confirm(self, sku: str, rid: str) -> dict[str, Any]:
        """held → committed. Op reply ``{status, rid, line?, reason?}``."""
        return self._run(self._op_call("confirm", sku, rid))

    def release(self, sku: str, rid: str) -> dict[str, Any]:
        """held/committed → released, units returned once. Op reply."""
        return self._run(self._op_call("release", sku, rid))

    def extend(self, sku: str, rid: str, ttl_ms: int) -> dict[str, Any]:
        """A held line expires ``ttl_ms`` from now, rounded up to a whole second. Op reply."""
        return self._run(self._op_call("extend", sku, rid, ttl_ms))

    def revert(self, sku: str, rid: str, expires_ms: int) -> dict[str, Any]:
        """Undo a confirm or extend of this line: held again, expiring at ``expires_ms``. Op reply.

        For a multi-SKU confirm or extend that another line refused (all or nothing)."""
        return self._run(self._op_call("revert", sku, rid, expires_ms))

    def rollback(self, sku: str, rid: str) -> dict[str, Any]:
        """Delete the line as if it never existed (units and usage returned). Op reply."""
        return self._run(self._op_call("rollback", sku, rid))

    def get_line(self, sku: str, rid: str) -> dict[str, Any]:
        """``{status: ok, rid, line}`` or ``{status: not_found, rid}`` (after lazy expiry)."""
        return self._run(self._op_call("get", sku, rid))

    def position(self, sku: str, location: str | None = None) -> dict[str, Any]:
        """The position of ``sku`` (all locations, or figures of ``location`` only)."""
        return self._run(self._position_call(sku, location))

    def positions(self, skus: Sequence[str], location: str | None = None) -> list[dict[str, Any]]:
        """Positions of several SKUs, in the order given: one MGET of the positions the scripts keep
        (all locations; per slot on a cluster), then one pipelined round trip of position scripts
        for the SKUs that had none."""
        keys = self._kept_position_keys(skus, location)
        if keys is None:
            raw: list[Any] = [None] * len(skus)
        elif isinstance(self.redis, RedisCluster):
            raw = self.redis.mget_nonatomic(keys)  # one MGET per slot, pipelined
        else:
            raw = self.redis.mget(keys)
        missing = [i for i, r in enumerate(raw) if r is None]
        if missing:
            calls = [self._position_call(skus[i], location) for i in missing]
            for i, r in zip(missing, scripts.call_many(self.redis, calls), strict=True):
                raw[i] = r
        return [decode_reply(r) for r in raw]

    def apply(self, commands: Sequence[SupplyCommand], keep_replies_s: int = 0,
              positions: Positions = True) -> list[dict[str, Any]]:
        """Apply supply commands (any SKUs) in one pipelined round trip; one supply reply each.

        Commands of one SKU are applied in the order given, up to 16 in one script call. ``keep_replies_s`` > 0: each command
        with an input position (``source`` = ``topic:partition``, ``offset`` ≥ 0) that is applied
        or refused as a duplicate by event id also keeps its reply under its stash key
        (``engine.store.reply_stash``) for that many seconds, in the same script call.
        ``positions`` (``Positions``): the replies that carry ``position``; a kept reply always does.
        """
        calls = self._apply_calls(commands, keep_replies_s, positions)
        return [decode_reply(r) for r in scripts.call_grouped(self.redis, calls)]

    def publish(self, sku: str, rid: str, event: bytes | str, change: str) -> bool:
        """Keep reservation ``rid``'s ``event`` (JSON) of ``change`` (its event id after
        ``res:<rid>:``) in ``sku``'s change log, in one atomic call: the relay produces it to
        ``inventory.reservations`` (key: ``rid``) when it ships the record (docs/changelog.md
        "Reservation events"). Returns once Redis has it: True, or False when the event of that
        change was kept before (for ``EVENT_MARK_TTL_MS``), which keeps nothing again."""
        return self.publish_many(sku, [(rid, event, change)])[0]

    def publish_many(self, sku: str, events: Sequence[tuple[str, bytes | str, str]]) -> list[bool]:
        """``publish`` of several ``(rid, event, change)`` in one call (one record, of the events
        kept): whether each was kept now."""
        return [bool(k) for k in scripts.call(self.redis, *self._publish_call(sku, events))]

    def set_policy(self, sku: str, policy: dict[str, Any]) -> dict[str, Any]:
        """Replace the SKU's policy (missing fields take defaults) and rebalance. Supply reply."""
        return self.apply([self._policy_command(sku, policy)])[0]

    def get_policy(self, sku: str) -> dict[str, Any]:
        """The SKU's complete policy (defaults when none was set)."""
        return self._decode_policy(self.redis.get(sku_keys(sku, self.prefix).pol))

    def dump(self, sku: str) -> dict[str, Any]:
        """The SKU's state dump (tests): locs, lots, lines, customers, channels, policy, reliability, seq."""
        return self._fill_policy(self._run(self._call("dump", sku)))

    def forget_offsets(self) -> int:
        """Drop every SKU's input offset watermarks (the ``@<topic:partition>`` state fields), for
        a log that starts again from offset 0 (a new, empty broker): without this, its events
        would be duplicates by offset. The recorded log identities go too, so the new log is a first
        generation rather than a reset (``engine.flow.log_identity``). Event-id dedupe stays. One
        SCAN page and one SKU at a time; run it while no flow applies. Returns how many watermarks
        went."""
        self.redis.delete(logs_key(self.prefix))
        gone = 0
        for key in self.redis.scan_iter(match=f"{self.prefix}:{{*}}:state", count=1000):
            fields = [f for f, _v in self.redis.hscan_iter(key, match="@*", count=1000)]
            if fields:
                gone += int(self.redis.hdel(key, *fields))
        return gone

    def journal(self, sku: str, limit: int = 200, before: int | None = None) -> list[dict[str, Any]]:
        """The SKU's movement journal (the last 200 commands applied), newest first, ``limit`` at a
        time below command number ``before``: ``{n, at, cmd, qty, reason, ref, event_id}``."""
        check_int(limit, "limit", 1, 200)
        return journal_entries(self.redis.hgetall(sku_keys(sku, self.prefix).state), limit, before)

    def list_reservations(self, *, sku: str | None = None, customer: str | None = None,
                          state: str | None = None, cursor: str | None = None,
                          limit: int = listing.LIST_LIMIT_DEFAULT) -> listing.Page:
        """One page of reservations (``engine.store.listing``: bounded work per page, weakly
        consistent like SCAN). With ``sku``, its lines; else whole reservations. ``cursor``: the
        ``next_cursor`` of the page before (None: the first page).

        Raises ``ValueError`` for a bad filter or limit, ``listing.BadCursor`` (a ValueError)
        for a cursor this listing did not give for these filters."""
        plan = listing.plan_page(self.prefix, listing.ListQuery(sku, customer, state, limit), cursor)
        op = next(plan)  # the cursor is checked here, before any read
        while True:
            try:
                op = plan.send(self._listing_read(op))
            except StopIteration as done:
                return done.value

    def _listing_read(self, op: listing.Op) -> Any:
        kind = op[0]
        if kind == "now":
            return self._now_arg() or _server_ms(self.redis.time())
        if kind == "shards":
            return sorted(_primaries(self.redis)) if isinstance(self.redis, RedisCluster) else [0]
        if kind == "hscan":
            _kind, key, pos, count = op
            return self.redis.hscan(key, pos, count=count)
        if kind == "scan":
            _kind, shard, pos, match, count = op
            if isinstance(self.redis, RedisCluster):
                node = _primary_of(self.redis, shard)
                answered, keys = self.redis.scan(pos, match=match, count=count, target_nodes=node)
                return answered[node.name], keys
            return self.redis.scan(pos, match=match, count=count)
        pipe = self.redis.pipeline(transaction=False)
        if kind == "get":
            for key in op[1]:  # one GET per key: they live in different cluster slots
                pipe.get(key)
        else:
            for key, field in op[1]:
                pipe.hget(key, field)
        return pipe.execute()

    def _scan_skus(self, pattern: str, max_skus: int) -> list[str]:
        seen: set[str] = set()
        for key in self.redis.scan_iter(match=pattern, count=1000):
            sku = self._sku_of_exp_key(key)
            if sku is not None:
                seen.add(sku)
                if len(seen) >= max_skus:
                    break
        return sorted(seen)

    def sweep(self, max_skus: int = 10_000) -> int:
        """Expire the due holds of every SKU that has holds (SCAN), up to ``max_skus`` SKUs.

        Returns the number of lines expired.
        """
        check_int(max_skus, "max_skus", 1, 10**9)
        skus = self._scan_skus(exp_scan_pattern(self.prefix), max_skus)
        expired = 0
        for i in range(0, len(skus), SWEEP_CHUNK):
            due = skus[i:i + SWEEP_CHUNK]
            while due:  # a SKU with more due holds than one call expires goes round again
                replies = scripts.call_many(self.redis, [self._sweep_call(s) for s in due])
                expired += sum(int(r[0]) for r in replies)
                due = [s for s, r in zip(due, replies, strict=True) if int(r[1])]
        return expired

    def purge(self, retention_ms: int, max_skus: int = 10_000) -> int:
        """Delete the lines that have been released, expired or shipped for ``retention_ms`` or
        longer, in every SKU that has such lines (up to ``max_skus``), and the reservation index
        of every reservation none of whose lines is left. Due holds are expired on the way.

        Returns the number of lines deleted. A purged reservation id is unknown afterwards: the
        same id starts a new reservation.
        """
        self._check_retention(retention_ms)
        check_int(max_skus, "max_skus", 1, 10**9)
        skus = self._scan_skus(dead_scan_pattern(self.prefix), max_skus)
        if not skus:
            return 0
        cutoff = (self._now_arg() or _server_ms(self.redis.time())) - retention_ms
        purged: dict[str, set[str]] = {}
        for i in range(0, len(skus), SWEEP_CHUNK):
            chunk = skus[i:i + SWEEP_CHUNK]
            pipe = self.redis.pipeline(transaction=False)
            for sku in chunk:
                pipe.zrange(sku_keys(sku, self.prefix).dead, 0, 0, withscores=True)
            due = [s for s, o in zip(chunk, pipe.execute(), strict=True)
                   if (oldest := _oldest_score(o)) is not None and oldest <= cutoff]
            while due:
                replies = scripts.call_many(self.redis, [self._sweep_call(s, retention_ms) for s in due])
                due = self._purged(due, replies, purged)
        self._forget_indexes(_IndexPlan(self.prefix, purged))
        return sum(len(v) for v in purged.values())

    def _forget_indexes(self, plan: _IndexPlan) -> None:
        if not plan.rids:
            return
        pipe = self.redis.pipeline(transaction=False)
        for key in plan.reads():
            pipe.get(key)
        checks = plan.checks(pipe.execute())
        pipe = self.redis.pipeline(transaction=False)
        for sku, rid in checks:
            k = sku_keys(sku, self.prefix)
            pipe.hexists(k.res, rid)
            pipe.hexists(k.ended, rid)
        doomed = plan.doomed(_either(pipe.execute()) if checks else [])
        if doomed:
            pipe = self.redis.pipeline(transaction=False)
            for key in doomed:  # one DEL per key: they live in different cluster slots
                pipe.delete(key)
            pipe.execute()


class AsyncStore(_Base):
    """Asynchronous store over ``redis.asyncio.Redis`` / ``RedisCluster``; same methods as ``Store``."""

    def __init__(self, redis: Any, prefix: str = DEFAULT_PREFIX, now_ms: Clock = None) -> None:
        super().__init__(redis, prefix, now_ms)
        self._ready = False
        self._ready_lock = asyncio.Lock()

    async def ready(self) -> None:
        """Initialise a cluster client once, before concurrent use.

        redis-py's async cluster client initialises itself lazily on first use; when many tasks
        trigger that together it breaks connections under them ("Connection closed by server").
        """
        if self._ready:
            return
        async with self._ready_lock:
            if not self._ready:
                if isinstance(self.redis, AsyncRedisCluster):
                    await self.redis.initialize()
                self._ready = True

    async def _run(self, call: scripts.Call) -> Any:
        return decode_reply(await scripts.acall(self.redis, *call))

    async def hold_batch(self, sku: str, requests: Sequence[HoldRequest]) -> list[dict[str, Any]]:
        """See ``Store.hold_batch``."""
        await self.ready()
        return decode_hold_replies(sku, requests, await scripts.acall(self.redis, *self._hold_call(sku, requests)))

    async def hold_batch_claiming(
        self, sku: str, requests: Sequence[HoldRequest], claims: Sequence[tuple[str, bytes]]
    ) -> tuple[list[bool], list[dict[str, Any]]]:
        """See ``Store.hold_batch_claiming``."""
        await self.ready()
        created, raw = await scripts.acall_after_sets(self.redis, claims, self._hold_call(sku, requests))
        return created, decode_hold_replies(sku, requests, raw)

    async def confirm(self, sku: str, rid: str) -> dict[str, Any]:
        """See ``Store.confirm``."""
        await self.ready()
        return await self._run(self._op_call("confirm", sku, rid))

    async def release(self, sku: str, rid: str) -> dict[str, Any]:
        """See ``Store.release``."""
        await self.ready()
        return await self._run(self._op_call("release", sku, rid))

    async def extend(self, sku: str, rid: str, ttl_ms: int) -> dict[str, Any]:
        """See ``Store.extend``."""
        await self.ready()
        return await self._run(self._op_call("extend", sku, rid, ttl_ms))

    async def revert(self, sku: str, rid: str, expires_ms: int) -> dict[str, Any]:
        """See ``Store.revert``."""
        await self.ready()
        return await self._run(self._op_call("revert", sku, rid, expires_ms))

    async def rollback(self, sku: str, rid: str) -> dict[str, Any]:
        """See ``Store.rollback``."""
        await self.ready()
        return await self._run(self._op_call("rollback", sku, rid))

    async def get_line(self, sku: str, rid: str) -> dict[str, Any]:
        """See ``Store.get_line``."""
        await self.ready()
        return await self._run(self._op_call("get", sku, rid))

    async def position(self, sku: str, location: str | None = None) -> dict[str, Any]:
        """See ``Store.position``."""
        await self.ready()
        return await self._run(self._position_call(sku, location))

    async def positions(self, skus: Sequence[str], location: str | None = None) -> list[dict[str, Any]]:
        """See ``Store.positions``."""
        await self.ready()
        keys = self._kept_position_keys(skus, location)
        if keys is None:
            raw: list[Any] = [None] * len(skus)
        elif isinstance(self.redis, AsyncRedisCluster):
            raw = await self.redis.mget_nonatomic(keys)
        else:
            raw = await self.redis.mget(keys)
        missing = [i for i, r in enumerate(raw) if r is None]
        if missing:
            calls = [self._position_call(skus[i], location) for i in missing]
            for i, r in zip(missing, await scripts.acall_many(self.redis, calls), strict=True):
                raw[i] = r
        return [decode_reply(r) for r in raw]

    async def apply(self, commands: Sequence[SupplyCommand], keep_replies_s: int = 0,
                    positions: Positions = True) -> list[dict[str, Any]]:
        """See ``Store.apply``."""
        await self.ready()
        calls = self._apply_calls(commands, keep_replies_s, positions)
        return [decode_reply(r) for r in await scripts.acall_grouped(self.redis, calls)]

    async def publish(self, sku: str, rid: str, event: bytes | str, change: str) -> bool:
        """See ``Store.publish``."""
        return (await self.publish_many(sku, [(rid, event, change)]))[0]

    async def publish_many(self, sku: str, events: Sequence[tuple[str, bytes | str, str]]) -> list[bool]:
        """See ``Store.publish_many``."""
        await self.ready()
        return [bool(k) for k in await scripts.acall(self.redis, *self._publish_call(sku, events))]

    async def set_policy(self, sku: str, policy: dict[str, Any]) -> dict[str, Any]:
        """See ``Store.set_policy``."""
        await self.ready()
        return (await self.apply([self._policy_command(sku, policy)]))[0]

    async def get_policy(self, sku: str) -> dict[str, Any]:
        """See ``Store.get_policy``."""
        await self.ready()
        return self._decode_policy(await self.redis.get(sku_keys(sku, self.prefix).pol))

    async def dump(self, sku: str) -> dict[str, Any]:
        """See ``Store.dump``."""
        await self.ready()
        return self._fill_policy(await self._run(self._call("dump", sku)))

    async def journal(self, sku: str, limit: int = 200, before: int | None = None) -> list[dict[str, Any]]:
        """See ``Store.journal``."""
        await self.ready()
        check_int(limit, "limit", 1, 200)
        return journal_entries(await self.redis.hgetall(sku_keys(sku, self.prefix).state), limit, before)

    async def list_reservations(self, *, sku: str | None = None, customer: str | None = None,
                                state: str | None = None, cursor: str | None = None,
                                limit: int = listing.LIST_LIMIT_DEFAULT) -> listing.Page:
        """See ``Store.list_reservations``."""
        plan = listing.plan_page(self.prefix, listing.ListQuery(sku, customer, state, limit), cursor)
        op = next(plan)  # the cursor is checked here, before any read
        await self.ready()
        while True:
            try:
                op = plan.send(await self._listing_read(op))
            except StopIteration as done:
                return done.value

    async def _listing_read(self, op: listing.Op) -> Any:
        kind = op[0]
        if kind == "now":
            return self._now_arg() or _server_ms(await self.redis.time())
        if kind == "shards":
            return sorted(_primaries(self.redis)) if isinstance(self.redis, AsyncRedisCluster) else [0]
        if kind == "hscan":
            _kind, key, pos, count = op
            return await self.redis.hscan(key, pos, count=count)
        if kind == "scan":
            _kind, shard, pos, match, count = op
            if isinstance(self.redis, AsyncRedisCluster):
                node = _primary_of(self.redis, shard)
                answered, keys = await self.redis.scan(pos, match=match, count=count, target_nodes=node)
                return answered[node.name], keys
            return await self.redis.scan(pos, match=match, count=count)
        pipe = self.redis.pipeline(transaction=False)
        if kind == "get":
            for key in op[1]:
                pipe.get(key)
        else:
            for key, field in op[1]:
                pipe.hget(key, field)
        return await pipe.execute()

    async def _scan_skus(self, pattern: str, max_skus: int) -> list[str]:
        seen: set[str] = set()
        async for key in self.redis.scan_iter(match=pattern, count=1000):
            sku = self._sku_of_exp_key(key)
            if sku is not None:
                seen.add(sku)
                if len(seen) >= max_skus:
                    break
        return sorted(seen)

    async def sweep(self, max_skus: int = 10_000) -> int:
        """See ``Store.sweep``."""
        await self.ready()
        check_int(max_skus, "max_skus", 1, 10**9)
        skus = await self._scan_skus(exp_scan_pattern(self.prefix), max_skus)
        expired = 0
        for i in range(0, len(skus), SWEEP_CHUNK):
            due = skus[i:i + SWEEP_CHUNK]
            while due:
                replies = await scripts.acall_many(self.redis, [self._sweep_call(s) for s in due])
                expired += sum(int(r[0]) for r in replies)
                due = [s for s, r in zip(due, replies, strict=True) if int(r[1])]
        return expired

    async def purge(self, retention_ms: int, max_skus: int = 10_000) -> int:
        """See ``Store.purge``."""
        await self.ready()
        self._check_retention(retention_ms)
        check_int(max_skus, "max_skus", 1, 10**9)
        skus = await self._scan_skus(dead_scan_pattern(self.prefix), max_skus)
        if not skus:
            return 0
        cutoff = (self._now_arg() or _server_ms(await self.redis.time())) - retention_ms
        purged: dict[str, set[str]] = {}
        for i in range(0, len(skus), SWEEP_CHUNK):
            chunk = skus[i:i + SWEEP_CHUNK]
            pipe = self.redis.pipeline(transaction=False)
            for sku in chunk:
                pipe.zrange(sku_keys(sku, self.prefix).dead, 0, 0, withscores=True)
            due = [s for s, o in zip(chunk, await pipe.execute(), strict=True)
                   if (oldest := _oldest_score(o)) is not None and oldest <= cutoff]
            while due:
                replies = await scripts.acall_many(self.redis, [self._sweep_call(s, retention_ms) for s in due])
                due = self._purged(due, replies, purged)
        await self._forget_indexes(_IndexPlan(self.prefix, purged))
        return sum(len(v) for v in purged.values())

    async def _forget_indexes(self, plan: _IndexPlan) -> None:
        if not plan.rids:
            return
        pipe = self.redis.pipeline(transaction=False)
        for key in plan.reads():
            pipe.get(key)
        checks = plan.checks(await pipe.execute())
        pipe = self.redis.pipeline(transaction=False)
        for sku, rid in checks:
            k = sku_keys(sku, self.prefix)
            pipe.hexists(k.res, rid)
            pipe.hexists(k.ended, rid)
        doomed = plan.doomed(_either(await pipe.execute()) if checks else [])
        if doomed:
            pipe = self.redis.pipeline(transaction=False)
            for key in doomed:
                pipe.delete(key)
            await pipe.execute()


def _primaries(cluster: Any) -> dict[int, Any]:
    """Shard id → primary of a sync or async Cluster client (``listing.cluster_primaries``)."""
    return listing.cluster_primaries(cluster.nodes_manager.slots_cache)


def _primary_of(cluster: Any, shard: int) -> Any:
    """The primary serving slot ``shard`` now (after a failover: the replica that took over)."""
    nodes = cluster.nodes_manager.slots_cache.get(shard)
    if not nodes:
        raise SlotNotCoveredError(f"no node serves slot {shard}")
    return nodes[0]


def _server_ms(time_reply: Any) -> int:
    secs, micros = time_reply
    return int(secs) * 1000 + int(micros) // 1000


__all__ = ["AsyncStore", "HoldRequest", "POLICY_DEFAULTS", "Store", "SupplyCommand", "validate_sku"]
