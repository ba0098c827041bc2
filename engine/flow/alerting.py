"""Alerts and replenishment triggers in the flow: the extra that ``run_flow`` attaches to the outcomes.

```
outcomes (sku, Outcome)
  └► alert_prefetch   one pipelined read per batch: the SKUs' policies (cached), memos and stashed
  │                   replies of replays
  │   inventory.reservations (the API's changes), re-checks            (checkouts.py)
  │     └► checkout_read   one read of the positions per batch: (sku, Checkout), one per SKU
  └► alert_monitor    per SKU, bytewax state: sku_monitor.observe, lateness ticks  (alert_monitor.py)
  └► alert_publish    one pipelined write per batch: memos of new observations, then the deletion
  │                   of their stashed replies; metrics
       ├► alerts ─────────────────────────────────────────────┬─► inventory.alerts (key = SKU)
       ├► triggers ───────────────────────────────────────────│─► inventory.replenishment (key = SKU)
       └► receipts, lot changes ► supplier_stats (per supplier) ┤   (supplier_monitor.py)
                                     └► reliability_write: the store's ``reliability`` command
```

Outputs go through the flow's idempotent producer (``engine.flow.sinks``): at least once, and a
message written again after a crash or a replay carries the same ``alert_id`` / ``trigger_id``
(the memo — ``alert_memo.py`` — makes a replayed tail produce the same messages). Consumers
dedupe alerts on ``(alert_id, status, revision)`` and triggers on ``trigger_id``.

A process killed after the store applied a batch but before its memos were stored is covered by
the reply stash (``engine.store.reply_stash``): the store keeps each stream command's reply in
the script call that applied it; a replayed outcome with no memo is judged from that reply as the
first pass would have been (the SKU's policy is the one read now: a policy change between the
kill and the restart is seen one outcome early). Publish deletes the stash of every outcome it
has judged, in the same pipeline right after the memos (per key: Redis Cluster-safe; memo and
stash of an outcome share the SKU's slot, so the deletion never overtakes the memo).

The alert step runs after the store applied a batch, so its Redis round trips (prefetch and
publish) are per batch, never per event. The same holds for the API's changes: the checkout path
only publishes its reservation events (as it always did), and ``checkout_read`` reads the figures
of the SKUs a batch of them touched.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import bytewax.operators as op
import orjson
from bytewax.dataflow import Stream
from bytewax.inputs import Source
from bytewax.outputs import Sink

from connectors.topics import Topics
from engine import metrics
from engine.domain.observation import ObservationError, parse_position
from engine.domain.outputs import Alert, ReplenishmentTrigger
from engine.domain.policy import Policy
from engine.domain.suppliers import SupplierParams
from engine.flow.alert_memo import MemoError, decode_memo, encode_memo, memo_key
from engine.flow.alert_monitor import (
    Checkout,
    Emitted,
    Memo,
    MonitorConfig,
    PolicyKnobs,
    Seen,
    SkuLogic,
    SupplierMessage,
    is_offset_duplicate,
)
from engine.flow.checkouts import (
    CheckoutInput,
    CheckoutItem,
    CheckoutLine,
    RecheckSource,
    Watchlist,
    parse_reservations,
)
from engine.flow.dataflow import Extra, FlowStreams, OutcomeItem
from engine.flow.records import Outcome
from engine.flow.sinks import KafkaMessage, KafkaOutput
from engine.flow.source import RawMessage
from engine.flow.stream_clock import StreamClock, wall_clock_ms
from engine.flow.supplier_monitor import ReliabilityWrite, SupplierLogic
from engine.store.connect import retrying
from engine.store.keys import sku_keys
from engine.store.reply_stash import stash_key
from engine.store.store import Store
from engine.store.wire import SupplyCommand, decode_reply

log = logging.getLogger(__name__)

T = TypeVar("T")

_POLICY_CACHE_MAX = 200_000
"""Cached SKU policies per worker before the cache starts over (bounds memory on huge catalogues)."""


@dataclass(frozen=True)
class AlertingOptions:
    """Tuning of the alert steps (the rule thresholds themselves come from settings and policies)."""

    ticks: bool = True
    """Call a quiet SKU's lots late once the stream time passes their ETA (``inbound_late`` without
    events of that SKU)."""
    tick_interval_s: float = 10.0
    """How often a quiet SKU with a lot to wait for looks at the stream time."""
    idle_s: float = 60.0
    """After this long without input, the stream time follows the wall clock."""
    memo_ttl_s: int = 600
    """How long a memo stays: the longest a replay may lag behind the first pass and still give
    the same messages (a restart from recovery replays the last seconds). Older replays publish
    fewer messages, never a new id. Memory ≈ memos per second × TTL × ~450 bytes (a memo per
    outcome that changed an alert, a trigger, a lot or a policy)."""
    policy_refresh_s: float = 30.0
    """How often a SKU's policy is read again (policy changes come through the ops API, not the log)."""
    retry_for_s: float = 60.0
    """How long Redis may be unreachable before the step fails (and the flow stops)."""
    recheck_interval_s: float = 5.0
    """How often a SKU with a condition that may resolve without an event (``engine.flow.checkouts``)
    has its figures read and judged again: within this long, a sell-out ended by expired holds
    resolves."""
    recheck_max: int = 1000
    """SKUs re-checked per worker and interval at most (one pipelined read); more wait their turn."""
    wall_ms: Callable[[], int] = wall_clock_ms
    """The wall clock (tests pass a fake one)."""

    def __post_init__(self) -> None:
        if (self.memo_ttl_s < 1 or self.policy_refresh_s <= 0 or self.tick_interval_s <= 0 or self.idle_s < 0
                or self.retry_for_s < 0 or self.recheck_interval_s <= 0 or self.recheck_max < 1):
            raise ValueError("need memo_ttl_s ≥ 1, policy_refresh_s > 0, tick_interval_s > 0, idle_s ≥ 0, "
                             "retry_for_s ≥ 0, recheck_interval_s > 0, recheck_max ≥ 1")


# --- sinks ---------------------------------------------------------------------------------------


def encode_alert(alert: Alert) -> KafkaMessage:
    """Key = SKU, value = the alert JSON, headers to route without decoding."""
    headers = [
        ("alert.id", alert.alert_id.encode()),
        ("alert.kind", alert.kind.encode()),
        ("alert.status", alert.status.encode()),
    ]
    return alert.message_key(), alert.to_json(), headers


def encode_trigger(trigger: ReplenishmentTrigger) -> KafkaMessage:
    """Key = SKU, value = the trigger JSON."""
    return trigger.message_key(), trigger.to_json(), [("trigger.id", trigger.trigger_id.encode())]


def alerts_sink(conf: Mapping[str, Any], topic: str) -> KafkaOutput[Alert]:
    """``Alert`` items to ``topic`` (idempotent producer)."""
    return KafkaOutput(conf, topic, encode_alert)


def triggers_sink(conf: Mapping[str, Any], topic: str) -> KafkaOutput[ReplenishmentTrigger]:
    """``ReplenishmentTrigger`` items to ``topic`` (idempotent producer)."""
    return KafkaOutput(conf, topic, encode_trigger)


# --- the steps that talk to Redis ----------------------------------------------------------------


class _RedisStep:
    """A batch mapper with one store per worker thread (built lazily: stores hold sockets) and
    retries while Redis is unreachable."""

    def __init__(self, store_factory: Callable[[], Store], retry_for_s: float) -> None:
        self._factory = store_factory
        self._retry_for_s = retry_for_s
        self._local = threading.local()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_local"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = threading.local()

    def store(self) -> Store:
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = self._factory()
        return store

    def retrying(self, fn: Callable[[], T]) -> T:
        return retrying(fn, self._retry_for_s)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class _PolicyStep(_RedisStep):
    """A ``_RedisStep`` that keeps the SKUs' policy knobs, read again every ``policy_refresh_s``."""

    def __init__(self, store_factory: Callable[[], Store], options: AlertingOptions) -> None:
        super().__init__(store_factory, options.retry_for_s)
        self._refresh_s = options.policy_refresh_s

    def _policy_cache(self) -> dict[str, tuple[PolicyKnobs, float]]:
        """This worker thread's SKU → (policy knobs, when read); started over when it grows too big."""
        cache: dict[str, tuple[PolicyKnobs, float]] | None = getattr(self._local, "policies", None)
        if cache is None or len(cache) > _POLICY_CACHE_MAX:
            cache = self._local.policies = {}
        return cache

    @staticmethod
    def _remember_policies(
        cache: dict[str, tuple[PolicyKnobs, float]], skus: list[str], raws: list[Any], now: float
    ) -> None:
        for sku, raw in zip(skus, raws, strict=True):
            try:
                policy = Policy.from_wire(orjson.loads(raw)) if raw is not None else Policy()
            except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
                log.warning("unreadable policy of %s (%s); the alert rules use the defaults", sku, exc)
                policy = Policy()
            cache[sku] = (PolicyKnobs.of(policy), now)


class Prefetch(_PolicyStep):
    """``(sku, Outcome)`` batch → ``(sku, Seen)``: the SKUs' policy knobs, and the replays' memos and
    stashed replies."""

    def __init__(self, store_factory: Callable[[], Store], options: AlertingOptions, stream: StreamClock) -> None:
        super().__init__(store_factory, options)
        self._stream = stream

    def __call__(self, batch: list[OutcomeItem]) -> list[tuple[str, Seen]]:
        items = [o for sku, o in batch if sku]  # sku "" = a cancel of an unknown reservation
        if not items:
            return []
        self._stream.saw(max(o.occurred_ms for o in items))
        store = self.store()
        policies = self._policy_cache()
        now = time.monotonic()
        stale = sorted({o.sku for o in items if now - policies.get(o.sku, (None, -1e18))[1] > self._refresh_s})
        replays: list[_Replay] = []
        for o in items:
            if is_offset_duplicate(o):
                try:
                    replays.append(_Replay(o, memo_key(store.prefix, o.sku, o.source, o.offset),
                                           stash_key(store.prefix, o.sku, o.source, o.offset)))
                except ValueError as exc:
                    log.warning("no memo for %s: %s", o.outcome_id, exc)
        memos: dict[str, Memo] = {}
        stashed: dict[str, dict[str, Any]] = {}
        if stale or replays:
            keys = [sku_keys(sku, store.prefix).pol for sku in stale]
            for r in replays:
                keys += (r.memo_key, r.stash_key)
            values = self.retrying(lambda: _get_many(store.redis, keys))
            self._remember_policies(policies, stale, values[: len(stale)], now)
            rest = values[len(stale):]
            for i, r in enumerate(replays):
                memo = _read_memo(r, rest[2 * i])
                if memo is not None:
                    memos[r.outcome.outcome_id] = memo
                elif (reply := _read_stash(r, rest[2 * i + 1])) is not None:
                    stashed[r.outcome.outcome_id] = reply
        return [
            (o.sku, Seen(o, policies[o.sku][0], memos.get(o.outcome_id), stashed.get(o.outcome_id)))
            for o in items
        ]


class CheckoutRead(_PolicyStep):
    """``(sku, CheckoutLine | RECHECK)`` batch → one ``(sku, Checkout)`` per SKU: its lines of the
    batch, its policy knobs, and its position as it is now (one read for the whole batch, however
    many events touched a SKU)."""

    def __call__(self, batch: list[CheckoutItem]) -> list[tuple[str, Checkout]]:
        lines: dict[str, list[CheckoutLine]] = {}
        for sku, line in batch:
            got = lines.setdefault(sku, [])
            if line is not None:
                got.append(line)
        if not lines:
            return []
        skus = list(lines)
        store = self.store()
        policies = self._policy_cache()
        now = time.monotonic()
        stale = [sku for sku in skus if now - policies.get(sku, (None, -1e18))[1] > self._refresh_s]
        if stale:
            keys = [sku_keys(sku, store.prefix).pol for sku in stale]
            self._remember_policies(policies, stale, self.retrying(lambda: _get_many(store.redis, keys)), now)
        replies = self.retrying(lambda: store.positions(skus))
        out: list[tuple[str, Checkout]] = []
        for sku, reply in zip(skus, replies, strict=True):
            try:
                position = parse_position(reply)
            except ObservationError as exc:
                log.error("alert rules skip the figures read for %s: %s", sku, exc)
                continue
            out.append((sku, Checkout(sku, tuple(lines[sku]), position, policies[sku][0])))
        return out


@dataclass(frozen=True, slots=True)
class _Replay:
    outcome: Outcome
    memo_key: str
    stash_key: str


def _read_memo(r: _Replay, raw: Any) -> Memo | None:
    if raw is None:
        return None
    try:
        memo = decode_memo(raw)
    except MemoError as exc:
        log.warning("ignoring memo %s: %s", r.memo_key, exc)
        return None
    if memo.observation.sku != r.outcome.sku or memo.observation.event_id != r.outcome.event_id:
        log.warning("ignoring memo %s: it is of another event (%s)", r.memo_key, memo.observation.event_id)
        return None
    return memo


def _read_stash(r: _Replay, raw: Any) -> dict[str, Any] | None:
    """The stashed reply, if it is one the store could have kept for this command (never a
    duplicate by offset, always with a position of this SKU)."""
    if raw is None:
        return None
    try:
        reply = decode_reply(raw)
    except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
        log.warning("ignoring stashed reply %s: %s", r.stash_key, exc)
        return None
    position = reply.get("position") if isinstance(reply, dict) else None
    if (not isinstance(position, dict) or position.get("sku") != r.outcome.sku
            or not isinstance(reply.get("status"), str) or reply.get("reason") == "offset"):
        log.warning("ignoring stashed reply %s: not a supply reply of %s", r.stash_key, r.outcome.sku)
        return None
    return reply


class Publish(_RedisStep):
    """``(sku, Emitted)`` batch → alerts, triggers and supplier messages, after storing the memos."""

    def __init__(self, store_factory: Callable[[], Store], options: AlertingOptions) -> None:
        super().__init__(store_factory, options.retry_for_s)
        self._ttl_s = options.memo_ttl_s

    def __call__(self, batch: list[tuple[str, Emitted]]) -> list[Alert | ReplenishmentTrigger | SupplierMessage]:
        prefix = self.store().prefix
        memos: list[tuple[str, bytes]] = []
        stashes: list[str] = []
        for _, e in batch:
            if e.memo is not None and e.memo_of is not None:
                o = e.memo_of
                try:
                    memos.append((memo_key(prefix, o.sku, o.source, o.offset), encode_memo(e.memo)))
                except ValueError as exc:
                    log.warning("cannot keep a memo of %s: %s", o.outcome_id, exc)
            if e.stash_of is not None and e.stash_of.source:
                o = e.stash_of
                try:
                    stashes.append(stash_key(prefix, o.sku, o.source, o.offset))
                except ValueError as exc:
                    log.warning("no stashed reply of %s to delete: %s", o.outcome_id, exc)
        if memos or stashes:
            store = self.store()
            self.retrying(lambda: _write_memos(store.redis, memos, stashes, self._ttl_s))
        out: list[Alert | ReplenishmentTrigger | SupplierMessage] = []
        for _, e in batch:
            for alert in e.alerts:
                metrics.record_alert(alert.kind, alert.status, alert.revision)
            if e.triggers:
                metrics.record_replenishment_trigger(len(e.triggers))
            out += e.alerts
            out += e.triggers
            out += e.supplier
        return out


class WriteReliability(_RedisStep):
    """Applies ``ReliabilityWrite`` items to the SKUs whose policy uses reliability, skipping those
    that already hold the figure (a replay writes nothing)."""

    def __call__(self, batch: list[ReliabilityWrite]) -> list[Any]:
        if not batch:
            return []
        store = self.store()

        def read() -> list[Any]:
            pipe = store.redis.pipeline(transaction=False)
            for w in batch:
                keys = sku_keys(w.sku, store.prefix)
                pipe.get(keys.pol)
                pipe.hget(keys.srel, w.supplier)
            return list(pipe.execute())

        values = self.retrying(read)
        commands = []
        for i, w in enumerate(batch):
            raw_policy, raw_rel = values[2 * i], _text(values[2 * i + 1])
            try:
                uses = raw_policy is not None and bool(orjson.loads(raw_policy).get("use_reliability"))
            except (orjson.JSONDecodeError, AttributeError):
                uses = False
            current = int(raw_rel) if raw_rel is not None and raw_rel.isdigit() else 1000
            if uses and current != w.rel_pm:
                commands.append(
                    SupplyCommand(
                        sku=w.sku,
                        cmd="reliability",
                        payload={"supplier": w.supplier, "rel_pm": w.rel_pm},
                        event_id=w.event_id,
                        reason="supplier reliability",
                        ref=f"supplier:{w.supplier}",
                    )
                )
        if commands:
            self.retrying(lambda: store.apply(commands))
            for c in commands:
                log.info("reliability of %s at %s set to %d‰", c.payload["supplier"], c.sku, c.payload["rel_pm"])
        return []


def _get_many(client: Any, keys: list[str]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.get(key)
    return list(pipe.execute())


def _write_memos(client: Any, memos: list[tuple[str, bytes]], stashes: list[str], ttl_s: int) -> None:
    """The memos, then the deletion of the stashed replies, in one pipeline (one key per command:
    Cluster-safe; an outcome's memo and stash share a slot, so its stash never goes first)."""
    pipe = client.pipeline(transaction=False)
    for key, value in memos:
        pipe.set(key, value, ex=ttl_s)
    for key in stashes:
        pipe.delete(key)
    pipe.execute()


# --- wiring --------------------------------------------------------------------------------------


def attach_alerting(
    streams: FlowStreams,
    *,
    settings: Any,
    store_factory: Callable[[], Store],
    alert_output: Sink[Alert],
    trigger_output: Sink[ReplenishmentTrigger],
    options: AlertingOptions = AlertingOptions(),  # frozen: one shared default is safe
    checkouts: Source[RawMessage] | None = None,
    rechecks: threading.Event | None = None,
) -> None:
    """Attach the alert, replenishment and supplier steps to ``streams.outcomes``.

    ``settings`` gives the rule defaults (``engine.settings.Settings``); the SKUs' policies are read
    from the store. Alerts go to ``alert_output``, triggers to ``trigger_output``. ``checkouts``
    reads the API's reservation events (``engine.flow.checkouts``); ``rechecks``, when given, turns
    the periodic re-checks on until it is set (a bounded run has none: they would never end).
    """
    stream = StreamClock(options.idle_s, options.wall_ms)  # one per process: shared by its workers
    seen = op.flat_map_batch("alert_prefetch", streams.outcomes, Prefetch(store_factory, options, stream))
    watchlist = Watchlist() if rechecks is not None else None  # one per process, like the stream clock
    monitor = MonitorConfig(settings, stream, ticks=options.ticks, tick_interval_s=options.tick_interval_s,
                            watchlist=watchlist)
    touched: list[Stream[CheckoutItem]] = []
    if checkouts is not None:
        raw = op.input("checkout_in", streams.outcomes.flow(), checkouts)
        touched.append(op.flat_map_batch("checkout_parse", raw, parse_reservations))
    if watchlist is not None:
        source = RecheckSource(watchlist, options.recheck_interval_s, options.recheck_max, rechecks)
        touched.append(op.input("recheck_in", streams.outcomes.flow(), source))
    if touched:
        marks = op.merge("checkout_merge", *touched) if len(touched) > 1 else touched[0]
        read = op.flat_map_batch("checkout_read", marks, CheckoutRead(store_factory, options))
        seen = op.merge("alert_inputs", seen, read)  # type: ignore[assignment]
    emitted = op.stateful_batch("alert_monitor", seen, SkuLogic.builder(monitor))  # type: ignore[arg-type]
    published = op.flat_map_batch("alert_publish", emitted, Publish(store_factory, options))
    alerts_or_not = op.branch("alert_split", published, _is_alert)
    triggers_or_supplier = op.branch("trigger_split", alerts_or_not.falses, _is_trigger)
    by_supplier = op.key_on("supplier_key", triggers_or_supplier.falses, _supplier_of)  # type: ignore[arg-type]
    supplier_out = op.stateful_batch(
        "supplier_stats", by_supplier, SupplierLogic.builder(SupplierParams.from_settings(settings))
    )
    supplier_items = op.branch("supplier_split", op.key_rm("supplier_unkey", supplier_out), _is_alert)
    op.flat_map_batch(
        "reliability_write", supplier_items.falses, WriteReliability(store_factory, options.retry_for_s)
    )
    every_alert = op.merge("alerts_merge", alerts_or_not.trues, supplier_items.trues)
    op.output("alerts_out", every_alert, alert_output)  # type: ignore[arg-type]
    op.output("replenishment_out", triggers_or_supplier.trues, trigger_output)  # type: ignore[arg-type]


def alerting_extra(
    settings: Any,
    topics: Topics,
    store_factory: Callable[[], Store],
    options: AlertingOptions = AlertingOptions(),
    *,
    stop_event: threading.Event | None = None,
    until_end: bool = False,
    single_group: bool = True,
) -> Extra:
    """The production extra: the API's reservation events from ``topics.reservations`` and, unless
    ``until_end``, re-checks until ``stop_event`` is set; alerts to ``topics.alerts``, triggers to
    ``topics.replenishment``, on the broker of ``settings``. ``until_end``, ``stop_event`` and
    ``single_group`` are the flow input's (``KafkaInput``)."""
    conf = settings.kafka_config()

    def extra(streams: FlowStreams) -> None:
        checkouts = CheckoutInput(
            conf,
            [topics.reservations],
            batch_size=settings.batch_size,
            max_buffer=max(20_000, 4 * settings.batch_size),
            until_end=until_end,
            stop_event=stop_event,
            single_group=single_group,
        )
        attach_alerting(
            streams,
            settings=settings,
            store_factory=store_factory,
            alert_output=alerts_sink(conf, topics.alerts),
            trigger_output=triggers_sink(conf, topics.replenishment),
            options=options,
            checkouts=checkouts,
            rechecks=None if until_end else (stop_event or threading.Event()),
        )

    return extra


def _is_alert(item: object) -> bool:
    return isinstance(item, Alert)


def _is_trigger(item: object) -> bool:
    return isinstance(item, ReplenishmentTrigger)


def _supplier_of(item: SupplierMessage) -> str:
    return item.supplier
