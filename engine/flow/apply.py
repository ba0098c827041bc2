"""The apply step: a batch of commands → the store in one pipelined round trip → outcomes.

Per batch, in order:

1. ``order.cancelled`` events without lines are bound to the SKUs of their reservation: the SKUs
   of ``order.placed`` events earlier in the same batch, plus the reservation index
   ``<prefix>:rid:{rid}`` (one pipelined read, only when the batch has such a cancel).
2. All commands go to ``Store.apply`` in one pipelined round trip. Commands of one SKU keep
   their order, so the store's per-partition offset watermark sees offsets ascending. With
   ``keep_replies_s`` > 0 the store keeps each command's reply that long (the reply stash,
   ``engine.store.reply_stash``), for the alert step to judge after a crash.
3. Every ``order.placed`` records its SKUs in the reservation index (``SET NX`` with a TTL, one
   pipelined round trip) so that a later cancel without lines can find them.

Redis being unreachable is retried with backoff for ``retry_for_s``, then raised: the flow stops
and a restart resumes from the last snapshot, which is safe because applying is idempotent. A
command the scripts reject (a Lua error: a bug, never bad input, which the parse step catches)
is isolated by applying the batch one command at a time, and goes to the DLQ (``apply_failed``);
the other commands of that batch were applied by the failed round trip already, so their
outcomes then say ``duplicate`` (with the position after them). A message whose event id the
store has applied with other content is not applied and goes to the DLQ (``event_id_reused``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
from redis.exceptions import ResponseError

from connectors.dlq import DlqRecord
from engine import metrics
from engine.flow.parse import dead_letter, supply_command
from engine.flow.records import Command, Outcome
from engine.store.connect import retrying
from engine.store.keys import decode_rid_index, rid_index_key, validate_sku
from engine.store.store import Positions, Store

log = logging.getLogger(__name__)

#: The store's duplicate reason, and the DLQ reason, for an event id that came back with other content.
REUSED_EVENT_ID = "event_id_reused"

RID_INDEX_TTL_S = 90 * 86_400
"""How long the flow keeps an order's SKUs for a later cancel without lines."""

Applied = tuple[str, Outcome] | DlqRecord


class Applier:
    """``flat_map_batch`` mapper: ``list[Command]`` → ``(sku, Outcome)`` items and DLQ records.

    ``store_factory`` builds a ``Store``; it is called lazily, once per worker thread, because a
    store holds sockets and cannot be pickled or shared across processes.
    """

    def __init__(
        self,
        store_factory: Callable[[], Store],
        *,
        retry_for_s: float = 60.0,
        rid_index_ttl_s: int = RID_INDEX_TTL_S,
        keep_replies_s: int = 0,
    ) -> None:
        self._factory = store_factory
        self._retry_for_s = retry_for_s
        self._ttl_s = rid_index_ttl_s
        self._keep_s = keep_replies_s
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        return {"factory": self._factory, "retry": self._retry_for_s, "ttl": self._ttl_s, "keep": self._keep_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._factory = state["factory"]
        self._retry_for_s = state["retry"]
        self._ttl_s = state["ttl"]
        self._keep_s = state.get("keep", 0)
        self._local = threading.local()

    def store(self) -> Store:
        """This worker thread's store (built on first use)."""
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._factory()
            self._local.store = store
        return store

    def __call__(self, batch: list[Command]) -> list[Applied]:
        if not batch:
            return []
        store = self.store()
        started = time.perf_counter()
        out: list[Applied] = []
        bound = self._bind_lookups(store, batch, out)
        replies = self._apply(store, bound, out)
        self._index_orders(store, batch)
        metrics.observe_apply_batch(time.perf_counter() - started, len(bound))
        counts: Counter[tuple[str, str]] = Counter()
        reused: set[tuple[str, int, int]] = set()
        for command, reply in zip(bound, replies, strict=True):
            if reply is None:
                continue  # dead-lettered by _apply
            sc = command.sku_command
            supply = command.supply
            assert supply is not None
            counts[(sc.event_type, str(reply.get("status", "")))] += 1
            if reply.get("reason") == REUSED_EVENT_ID:
                self._reused(command, reused, out)
            out.append(
                (
                    supply.sku,
                    Outcome(
                        sku=supply.sku,
                        event_id=sc.event_id,
                        event_type=sc.event_type,
                        cmd=sc.cmd,
                        payload=supply.payload,
                        source=supply.source,
                        offset=supply.offset,
                        occurred_ms=sc.occurred_ms,
                        reply=reply,
                    ),
                )
            )
            if metrics.is_watched(supply.sku):
                for loc, figures in (reply.get("position") or {}).get("locations", {}).items():
                    metrics.set_watched_atp(supply.sku, loc, int(figures.get("atp", 0)))
        for (event_type, status), n in counts.items():
            metrics.record_event(event_type, status, n)
        return out

    @staticmethod
    def _reused(command: Command, seen: set[tuple[str, int, int]], out: list[Applied]) -> None:
        """One DLQ record per message whose event id the store knows with other content: the
        message was not applied (the first one with that id was), and saying so loses nothing."""
        raw = command.raw
        if (raw.topic, raw.partition, raw.offset) in seen:
            return
        seen.add((raw.topic, raw.partition, raw.offset))
        sc = command.sku_command
        out.append(dead_letter(
            raw, REUSED_EVENT_ID,
            f"event_id {sc.event_id!r} was applied with other content (command, payload, reason or "
            "ref); this message was not applied", sc.event_type, sc.event_id,
        ))

    # --- 1. cancels without lines ----------------------------------------------------------

    def _bind_lookups(self, store: Store, batch: list[Command], out: list[Applied]) -> list[Command]:
        pending = [c for c in batch if c.supply is None]
        if not pending:
            return batch
        indexed = self._read_index(store, {c.sku_command.payload["rid"] for c in pending})
        placed: dict[str, list[str]] = {}
        bound: list[Command] = []
        for c in batch:
            sc = c.sku_command
            if c.supply is not None:
                if sc.cmd == "order_placed":
                    placed.setdefault(sc.payload["rid"], []).append(c.supply.sku)
                bound.append(c)
                continue
            rid = sc.payload["rid"]
            skus = list(dict.fromkeys([*indexed.get(rid, []), *placed.get(rid, [])]))
            if not skus:
                metrics.record_event(sc.event_type, "not_found")
                out.append(("", self._unknown_reservation(c)))
                continue
            for sku in skus:
                try:
                    bound.append(Command(sc.for_sku(sku), supply_command(sc, sku, c.raw), c.raw))
                except ValueError as exc:
                    out.append(dead_letter(c.raw, "invalid_command", str(exc)[:300], sc.event_type, sc.event_id))
        return bound

    def _read_index(self, store: Store, rids: set[str]) -> dict[str, list[str]]:
        keys = {rid: rid_index_key(rid, store.prefix) for rid in sorted(rids)}
        raw = self._retrying(lambda: _pipelined_get(store.redis, list(keys.values())))
        found: dict[str, list[str]] = {}
        for rid, value in zip(keys, raw, strict=True):
            if value is None:
                continue
            try:
                skus = decode_rid_index(value)
                if skus is None:
                    raise ValueError("not a JSON list of SKUs")
                found[rid] = [validate_sku(s) for s in skus]
            except ValueError as exc:
                log.warning("ignoring a malformed reservation index for %s: %s", rid, exc)
        return found

    @staticmethod
    def _unknown_reservation(c: Command) -> Outcome:
        sc = c.sku_command
        return Outcome(
            sku="",
            event_id=sc.event_id,
            event_type=sc.event_type,
            cmd=sc.cmd,
            payload=sc.payload,
            source=c.raw.source,
            offset=c.raw.offset,
            occurred_ms=sc.occurred_ms,
            reply={"status": "not_found", "reason": "unknown_reservation"},
        )

    # --- 2. the apply round trip -----------------------------------------------------------

    def _apply(self, store: Store, bound: list[Command], out: list[Applied]) -> list[dict[str, Any] | None]:
        supplies = [c.supply for c in bound]
        keep = self._keep_s
        # the alert step judges each reply's position; without it only a watched SKU's gauges read one
        positions: Positions = True if keep else metrics.is_watched
        try:
            return list(self._retrying(
                lambda: store.apply(supplies, keep_replies_s=keep, positions=positions)))  # type: ignore[arg-type]
        except ResponseError as exc:
            log.error("a batch of %d commands failed (%s); applying one by one to isolate it", len(bound), exc)
        replies: list[dict[str, Any] | None] = []
        for c in bound:
            try:
                replies.append(self._retrying(
                    lambda c=c: store.apply([c.supply], keep_replies_s=keep, positions=positions))[0])  # type: ignore[list-item]
            except ResponseError as exc:
                sc = c.sku_command
                out.append(dead_letter(c.raw, "apply_failed", str(exc)[:300], sc.event_type, sc.event_id))
                replies.append(None)
        return replies

    # --- 3. the reservation index ----------------------------------------------------------

    def _index_orders(self, store: Store, batch: list[Command]) -> None:
        skus: dict[str, list[str]] = {}
        for c in batch:
            if c.sku_command.cmd == "order_placed" and c.supply is not None:
                skus.setdefault(c.sku_command.payload["rid"], []).append(c.supply.sku)
        if not skus:
            return
        # The same shape the checkout client writes: a sorted JSON list of the SKUs.
        entries = [(rid_index_key(rid, store.prefix), orjson.dumps(sorted(set(s)))) for rid, s in skus.items()]
        self._retrying(lambda: _pipelined_set_nx(store.redis, entries, self._ttl_s))

    # --- retries ---------------------------------------------------------------------------

    def _retrying(self, fn: Callable[[], Any]) -> Any:
        return retrying(fn, self._retry_for_s)


def _pipelined_get(client: Any, keys: list[str]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.get(key)
    return list(pipe.execute())


def _pipelined_set_nx(client: Any, entries: list[tuple[str, bytes]], ttl_s: int) -> None:
    pipe = client.pipeline(transaction=False)
    for key, value in entries:
        pipe.set(key, value, nx=True, ex=ttl_s)
    pipe.execute()


