"""Rebuild Redis from the change log, and reconcile Redis against it (docs/changelog.md,
"Rebuild" and "Reconcile").

* ``read_changes`` reads every partition of the changes topic from its start to its end (at or
  past the high watermark it had when the read began), yielding ``Record``\\ s; a message that is
  not a record is counted and reported, never fatal.
* ``rebuild`` replays the whole topic into the live keyspace after Redis was lost: the SKUs'
  state comes back byte for byte (``sku_state``), the records the replay appended to the logs are
  dropped (they are in Kafka already) and the reservation index (``<prefix>:rid:{<rid>}``, which is no
  SKU's state and so not in the log) is made again from the lines. It holds the relay's lock
  while it runs, so no relay ships the replayed records a second time.
* ``reconcile`` replays, per SKU, the topic's records plus the records still waiting in the live
  log into a scratch keyspace and compares the two states; it sets the drift gauges and keeps
  its result in Redis (``<prefix>:reconcile``) for the flow to export.

Each Redis call does bounded work: pipelines of at most ``BATCH`` calls, SCAN / HSCAN / LRANGE
pages. The replay is the ``Replayer``'s (skip what the target has, stop a SKU at a gap), with
its calls pipelined.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from engine import metrics
from engine.domain.ids import is_valid_id
from engine.log.relay import RelayLock
from engine.store import scripts
from engine.store.changelog import (
    LogGap,
    Record,
    Replayer,
    change_number,
    digest_of,
    iter_log_skus,
    read_log_raw,
    replay_call,
    sku_state,
    state_diff,
    trim_log,
)
from engine.store.invariants import location_buckets
from engine.store.keys import (
    KEY_NAMES,
    changed_key,
    rid_index_key,
    rid_index_value,
    sku_from_key,
    sku_keys,
    validate_prefix,
)

log = logging.getLogger(__name__)

#: Replayed calls (and other commands) per pipelined round trip.
BATCH = 500
#: Keys / fields / records asked for per SCAN, HSCAN and LRANGE page.
PAGE = 1000
#: Messages taken from the consumer per ``consume`` call.
CONSUME_BATCH = 1000
#: How long a read may go without a message before it gives up (the broker is gone).
STALL_S = 60.0
#: Bad messages whose partition, offset and reason a read keeps for its report.
BAD_EXAMPLES = 5
#: How often reconcile looks at a SKU whose live state moved while it was read.
SETTLE_TRIES = 3
#: Reads of the topic's new records a reconcile makes for the SKUs whose records were shipped
#: while it read them, and the pause between two.
TAIL_READS = 5
TAIL_PAUSE_S = 0.2


def reconcile_key(prefix: str) -> str:
    """The hash of the last reconcile's result (``checked``, ``drifted``, ``units``, ``at_ms``),
    and of when the reconcile loop's last round ended (``round_ms``), which the flow exports as
    the drift gauges."""
    return f"{validate_prefix(prefix)}:reconcile"


class RebuildError(RuntimeError):
    """A rebuild or reconcile that cannot start or go on (its message says why)."""


class KeyspaceNotEmpty(RebuildError):
    """The keyspace a rebuild would write already holds SKU state."""


class RelayBusy(RebuildError):
    """Another process holds the relay's lock."""


# ---------------------------------------------------------------------------- reading the topic

@dataclass
class ReadStats:
    """What a ``read_changes`` read: filled while it runs."""

    total: int = 0                 # messages between the start offsets and the watermarks
    messages: int = 0              # messages read
    records: int = 0               # of which change records
    bad: int = 0                   # of which not a record (counted, left out)
    bad_examples: list[str] = field(default_factory=list)  # 'partition:offset: reason', the first few
    ends: dict[int, int] = field(default_factory=dict)     # partition -> the offset read up to

    def note_bad(self, partition: int, offset: int, reason: str) -> None:
        self.bad += 1
        if len(self.bad_examples) < BAD_EXAMPLES:
            self.bad_examples.append(f"{partition}:{offset}: {reason}"[:300])


Progress = Callable[[int, int], None]  # (messages read, messages to read)


def read_changes(
    consumer_conf: Mapping[str, Any],
    topic: str,
    *,
    stats: ReadStats | None = None,
    start: Mapping[int, int] | None = None,
    progress: Progress | None = None,
    stall_s: float = STALL_S,
    timeout_s: float = 30.0,
) -> Iterator[Record]:
    """Every change record of ``topic``, partition by partition in offset order (each SKU's records
    in the order they were shipped; partitions interleave), from each partition's start (or the
    offsets of ``start``, partition -> offset) to its end.

    A partition ends where librdkafka reports its end (partition EOF, from the fetch responses) at
    or past the high watermark it had when the read began: the watermarks are the least it reads
    and the progress total, but not the stop, because Tansu's ListOffsets under-reports them (see
    ``engine.flow.source``). With nobody producing (a rebuild holds the relay's lock) that is the
    watermark; otherwise the read ends at the first end it catches up with. ``stats.ends`` holds
    where each partition ended, the ``start`` of a later read of what came since.

    ``consumer_conf`` is a librdkafka config (``connectors.kafka.consumer_config``); the read
    assigns the partitions itself and commits nothing. A message that is not a record is counted in
    ``stats`` (``bad``, ``bad_examples``) and left out. Raises ``RebuildError`` when the topic is
    missing, ``KafkaException`` when the broker fails, ``TimeoutError`` when nothing comes for
    ``stall_s`` while a partition has not reported its end.
    """
    stats = stats if stats is not None else ReadStats()
    conf = {"group.id": "atp-log-rebuild", "fetch.wait.max.ms": 100, **consumer_conf,
            "enable.auto.commit": False, "enable.partition.eof": True, "auto.offset.reset": "earliest"}
    consumer = Consumer(conf)
    try:
        meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if meta is None or meta.error is not None or not meta.partitions:
            why = "missing" if meta is None or not meta.partitions else str(meta.error)
            raise RebuildError(f"the changes topic {topic!r} is not usable: {why}")
        todo: dict[int, int] = {}  # partition -> the least offset its end may be at
        assign = []
        for p in sorted(meta.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            begin = max(low, (start or {}).get(p, low))
            todo[p] = high
            stats.ends[p] = begin
            stats.total += max(0, high - begin)
            assign.append(TopicPartition(topic, p, begin))
        consumer.assign(assign)
        last_seen = time.monotonic()
        while todo:
            batch = consumer.consume(CONSUME_BATCH, timeout=0.1)  # returns at CONSUME_BATCH or the timeout
            if not batch:
                if time.monotonic() - last_seen > stall_s:
                    raise TimeoutError(f"nothing from {topic!r} for {stall_s:.0f} s, "
                                       f"{len(todo)} partition(s) short of their end")
                continue
            last_seen = time.monotonic()
            for msg in batch:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        # the end of what this fetch saw: done once every message before it was
                        # taken (an end reported ahead of messages not handed over yet is not
                        # taken for them: they would be skipped here and by the next read)
                        p = msg.partition()
                        if p in todo and stats.ends[p] >= todo[p] and msg.offset() <= stats.ends[p]:
                            del todo[p]
                        continue
                    if err.fatal() or err.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION):
                        raise KafkaException(err)
                    log.warning("reading %s: %s", topic, err)
                    continue
                p, offset = msg.partition(), msg.offset()
                if p not in todo:
                    continue  # that partition's end was reached: the next read's
                stats.messages += 1
                stats.ends[p] = offset + 1
                try:
                    record = Record.from_json(msg.value() or b"")
                except ValueError as exc:
                    stats.note_bad(p, offset, str(exc))
                    continue
                stats.records += 1
                yield record
            if progress is not None:
                stats.total = max(stats.total, stats.messages)
                progress(stats.messages, stats.total)
    finally:
        consumer.close()


# ---------------------------------------------------------------------------- pipelined replay

class BatchReplayer(Replayer):
    """The ``Replayer`` with its calls pipelined, ``batch`` a round trip: ``feed`` records, then
    ``flush`` (``apply`` does both). The rules are the same — a record at or below the SKU's change
    number in the target is skipped, the next one is sent once — but a record past the next number
    stops only its SKU (``gaps``) unless ``strict``, where it raises ``LogGap`` like ``Replayer``."""

    def __init__(self, client: Any, prefix: str, batch: int = BATCH, strict: bool = False) -> None:
        super().__init__(client, prefix)
        self.batch = batch
        self.strict = strict
        self.start: dict[str, int] = {}     # each SKU's change number in the target when first seen
        self.top: dict[str, int] = {}       # each SKU's highest change number among the records fed
        self.gaps: dict[str, str] = {}      # SKU -> why its replay stopped
        self.left_out = 0                   # records of a stopped SKU
        self._pending: list[Record] = []

    def apply(self, records: Iterable[Record]) -> None:
        for record in records:
            self.feed(record)
        self.flush()

    def feed(self, record: Record) -> None:
        self._pending.append(record)
        if len(self._pending) >= self.batch:
            self.flush()

    def flush(self) -> None:
        records, self._pending = self._pending, []
        if not records:
            return
        self._learn([r.sku for r in records])
        calls: list[scripts.Call] = []
        sent: list[Record] = []
        for record in records:
            sku = record.sku
            if record.q > self.top.get(sku, 0):
                self.top[sku] = record.q
            if sku in self.gaps:
                self.left_out += 1
                continue
            at = self.at[sku]
            if record.q <= at:
                self.skipped += 1
                continue
            if record.q != at + 1:
                why = f"SKU {sku}: record {record.q} follows change {at}; records {at + 1}..{record.q - 1} are missing"
                if self.strict:
                    self._send(calls, sent)
                    raise LogGap(why)
                self.gaps[sku] = why
                self.left_out += 1
                continue
            calls.append(replay_call(record, self.prefix, self.cluster))
            sent.append(record)
            self.at[sku] = record.q
        self._send(calls, sent)

    def _learn(self, skus: Sequence[str]) -> None:
        unknown = [s for s in dict.fromkeys(skus) if s not in self.at]
        for i in range(0, len(unknown), self.batch):
            chunk = unknown[i:i + self.batch]
            pipe = self.client.pipeline(transaction=False)
            for sku in chunk:
                pipe.hget(sku_keys(sku, self.prefix).state, "!Q")
            for sku, q in zip(chunk, pipe.execute(), strict=True):
                self.at[sku] = self.start[sku] = int(q or 0)

    def _send(self, calls: list[scripts.Call], sent: list[Record]) -> None:
        if not calls:
            return
        pipe = self.client.pipeline(transaction=False)
        for call in calls:
            pipe.execute_command(*scripts.fcall(*call))
        replies = pipe.execute(raise_on_error=False)
        for record, reply in zip(sent, replies, strict=True):
            if isinstance(reply, Exception):
                raise RebuildError(f"replaying record {record.q} of SKU {record.sku} ({record.fn}) failed: {reply}")
        self.applied += len(calls)

    def changed(self) -> list[str]:
        """The SKUs this replay changed (something applied), in first-seen order."""
        return [s for s, q in self.at.items() if q > self.start.get(s, 0)]

    def forget(self, sku: str) -> None:
        """Forget what it knew of ``sku`` (its keys in the target were deleted)."""
        self.at.pop(sku, None)
        self.start.pop(sku, None)
        self.top.pop(sku, None)
        self.gaps.pop(sku, None)


# ---------------------------------------------------------------------------- the relay's lock

@contextlib.contextmanager
def _relay_lock(client: Any, prefix: str) -> Iterator[Callable[[], None]]:
    """Hold the relay's lock (``engine.log.relay.RelayLock``: ``SET NX PX`` with a token of this
    process) for the block, renewed by a thread every third of its time to live; the block gets a
    ``check()`` that raises once the lock is no longer this holder's. ``RelayBusy`` at once when
    another process holds it."""
    lock = RelayLock(client, prefix)
    if not lock.acquire():
        raise RelayBusy(f"the relay lock {lock.key} is held by {lock.holder()!r}: another relay or rebuild "
                        "works on this keyspace; stop it and try again")
    stop = threading.Event()
    lost: list[str] = []

    def keep() -> None:
        while not stop.wait(lock.ttl_ms / 3000):
            try:
                if not lock.renew():
                    lost.append(f"now held by {lock.holder()!r}")
                    return
            except Exception as exc:  # Redis away for a moment: the next tick tries again
                log.warning("relay lock %s: renewal failed: %r", lock.key, exc)

    def check() -> None:
        if not lost and (holder := lock.holder()) != lock.token:
            lost.append(f"now held by {holder!r}")
        if lost:
            raise RebuildError(f"lost the relay lock {lock.key} ({lost[0]}); what was replayed stays, "
                               "a rebuild with --force goes on from there")

    keeper = threading.Thread(target=keep, name="atp-rebuild-lock", daemon=True)
    keeper.start()
    try:
        yield check
    finally:
        stop.set()
        keeper.join(5)
        with contextlib.suppress(Exception):
            lock.release()


# ---------------------------------------------------------------------------- rebuild

@dataclass
class RebuildStats:
    """What a rebuild did."""

    skus: int                  # SKUs in the topic
    records: int               # change records read
    applied: int               # of which replayed
    skipped: int               # of which the keyspace had already (a rebuild run again, a record shipped twice)
    bad: int                   # messages that are not records
    bad_examples: list[str]
    gaps: dict[str, str]       # SKU -> the gap its replay stopped at (its state is incomplete)
    left_out: int              # records of those SKUs after their gap
    logs_dropped: int          # SKUs whose log lost records the topic has (``drop_shipped_logs``)
    indexes: int               # reservation-index keys written
    seconds: float

    @property
    def records_per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @property
    def skus_per_s(self) -> float:
        return self.skus / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "skus": self.skus, "records": self.records, "applied": self.applied, "skipped": self.skipped,
            "bad": self.bad, "bad_examples": self.bad_examples, "gaps": self.gaps, "left_out": self.left_out,
            "logs_dropped": self.logs_dropped, "indexes": self.indexes, "seconds": round(self.seconds, 3),
            "records_per_s": round(self.records_per_s, 1), "skus_per_s": round(self.skus_per_s, 1),
        }


def holds_state(client: Any, prefix: str) -> bool:
    """Whether any SKU has state in the keyspace of ``prefix`` (SCAN pages, stops at the first)."""
    for _key in client.scan_iter(match=f"{validate_prefix(prefix)}:{{*}}:state", count=PAGE, _type="hash"):
        return True
    return False


def rebuild(
    client: Any,
    consumer_conf: Mapping[str, Any],
    topic: str,
    prefix: str,
    *,
    force: bool = False,
    progress: Progress | None = None,
    batch: int = BATCH,
) -> RebuildStats:
    """Replay every record of ``topic`` into the keyspace of ``prefix`` (after Redis was lost: an
    empty one), drop from the live logs the records the topic has (``drop_shipped_logs``) and make
    the reservation index again (``restore_rid_index``).

    Refuses (``KeyspaceNotEmpty``) when the keyspace holds SKU state, unless ``force`` (then what it
    has already is skipped, SKU by SKU, and a SKU that is ahead of the topic is left as it is);
    ``RelayBusy`` when another process holds the relay's lock. Run it with the API and the flow
    stopped: what they change meanwhile would be overwritten or replayed twice.
    """
    validate_prefix(prefix)
    if not force and holds_state(client, prefix):
        raise KeyspaceNotEmpty(f"the keyspace {prefix!r} already holds SKU state")
    scripts.load(client, scripts.load_library())  # a new server has no functions
    started = time.perf_counter()
    read = ReadStats()
    with _relay_lock(client, prefix) as check_lock:
        replay = BatchReplayer(client, prefix, batch)
        for n, record in enumerate(read_changes(consumer_conf, topic, stats=read, progress=progress)):
            replay.feed(record)
            if n % (10 * batch) == 0:
                check_lock()
        replay.flush()
        check_lock()
        dropped = drop_shipped_logs(client, prefix, replay, batch)
        indexes = restore_rid_index(client, prefix, list(replay.at), batch)
    return RebuildStats(
        skus=len(replay.at), records=read.records, applied=replay.applied, skipped=replay.skipped,
        bad=read.bad, bad_examples=read.bad_examples, gaps=dict(replay.gaps), left_out=replay.left_out,
        logs_dropped=dropped, indexes=indexes, seconds=time.perf_counter() - started,
    )


def drop_shipped_logs(client: Any, prefix: str, replay: BatchReplayer, batch: int = BATCH) -> int:
    """Delete from the live logs the records the topic has (the relay would ship them again):
    the whole log of each SKU the replay changed (it holds only records at or below the topic's
    last one: those the replay appended, and those of an earlier rebuild cut short), and the
    topic's records from the log of any other SKU of the topic (``trim_log``: records past them,
    not shipped yet, stay). Returns how many SKUs' logs it cut."""
    changed = replay.changed()
    cluster = scripts.is_cluster(client)
    for i in range(0, len(changed), batch):
        pipe = client.pipeline(transaction=False)
        for sku in changed[i:i + batch]:
            pipe.delete(sku_keys(sku, prefix).log)  # one DEL per key: cluster slots
            pipe.srem(changed_key(sku, prefix, cluster), sku)
        pipe.execute()
    done = set(changed)
    trimmed = 0
    for sku in iter_log_skus(client, prefix, PAGE):
        if sku not in done and sku in replay.top and trim_log(client, sku, prefix, replay.top[sku]):
            trimmed += 1
    return len(changed) + trimmed


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _hash_fields(client: Any, keys: Sequence[str], batch: int = BATCH) -> Iterator[tuple[str, str]]:
    """(key, field) of every field of the hashes ``keys``: pipelined HSCAN pages, ``batch`` keys a
    round trip."""
    for i in range(0, len(keys), batch):
        cursors = {k: 0 for k in keys[i:i + batch]}
        while cursors:
            pipe = client.pipeline(transaction=False)
            for key, cursor in cursors.items():
                pipe.hscan(key, cursor, count=PAGE)
            nxt = {}
            for key, (cursor, found) in zip(list(cursors), pipe.execute(), strict=True):
                for name in found:
                    yield key, _text(name)
                if int(cursor):
                    nxt[key] = int(cursor)
            cursors = nxt


def restore_rid_index(client: Any, prefix: str, skus: Sequence[str], batch: int = BATCH) -> int:
    """Write the reservation index (``rid_index_key`` -> the SKUs of its lines) of every reservation
    with a line — live or ended, not yet purged — in ``skus``; an index that exists is left as it
    is (SET NX). The checkout client finds every reservation's lines through it (a single-SKU one
    too), the flow the lines an order event names. Returns how many keys it wrote."""
    owners: dict[str, set[str]] = {}
    keys: list[str] = []
    sku_of: dict[str, str] = {}
    for sku in skus:
        k = sku_keys(sku, prefix)
        keys += [k.res, k.ended]
        sku_of[k.res] = sku_of[k.ended] = sku
    for key, rid in _hash_fields(client, keys, batch):
        if is_valid_id("reservation_id", rid):
            owners.setdefault(rid, set()).add(sku_of[key])
    written = 0
    entries = sorted(owners.items())
    for i in range(0, len(entries), batch):
        pipe = client.pipeline(transaction=False)
        for rid, owned in entries[i:i + batch]:
            pipe.set(rid_index_key(rid, prefix), rid_index_value(sorted(owned)), nx=True)
        written += sum(1 for ok in pipe.execute() if ok)
    return written


# ---------------------------------------------------------------------------- reconcile

@dataclass
class Drift:
    """One SKU whose live state is not what its log gives."""

    sku: str
    live_q: int               # the live state's change number
    log_q: int                # the change number the log reaches
    units: int                # Σ |live − log| over its location buckets
    diff: list[str]           # where they differ (``state_diff``), or why the log cannot tell

    def to_json(self) -> dict[str, Any]:
        return {"sku": self.sku, "live_q": self.live_q, "log_q": self.log_q, "units": self.units, "diff": self.diff}


@dataclass
class ReconcileReport:
    """What a reconcile found."""

    checked: int
    drifted: list[Drift]
    unsettled: list[str]      # SKUs that kept changing while read: not judged
    records: int              # records read from the topic
    live_records: int         # records read from the live logs
    bad: int
    bad_examples: list[str]
    seconds: float

    @property
    def units(self) -> int:
        return sum(d.units for d in self.drifted)

    def to_json(self) -> dict[str, Any]:
        return {
            "checked": self.checked, "drifted": len(self.drifted), "units": self.units,
            "skus": [d.to_json() for d in self.drifted], "unsettled": self.unsettled,
            "records": self.records, "live_records": self.live_records, "bad": self.bad,
            "bad_examples": self.bad_examples, "seconds": round(self.seconds, 3),
        }


def drift_units(live: Mapping[str, Any], other: Mapping[str, Any]) -> int:
    """Σ |live − other| over every location bucket of two states from ``sku_state``."""
    a = location_buckets((live.get("state") or {}).get("!L"))
    b = location_buckets((other.get("state") or {}).get("!L"))
    total = 0
    for loc in set(a) | set(b):
        x, y = a.get(loc, {}), b.get(loc, {})
        total += sum(abs(x.get(k, 0) - y.get(k, 0)) for k in set(x) | set(y))
    return total


def scratch_prefix() -> str:
    """A fresh key prefix for a reconcile's replay (``rc`` + 8 hex digits)."""
    return validate_prefix(f"rc{secrets.token_hex(4)}")


def _live_skus(client: Any, prefix: str) -> set[str]:
    """SKUs with a state hash or a log in the keyspace (SCAN pages)."""
    found = set(iter_log_skus(client, prefix, PAGE))
    for key in client.scan_iter(match=f"{prefix}:{{*}}:state", count=PAGE, _type="hash"):
        sku = sku_from_key(key, prefix)
        if sku is not None:
            found.add(sku)
    return found


def _delete_scratch(client: Any, scratch: str, skus: Iterable[str] = ()) -> None:
    """Delete the scratch keys of ``skus`` (none: every key of the scratch keyspace, SCAN pages)."""
    pipe = client.pipeline(transaction=False)
    n = 0
    cluster = scripts.is_cluster(client)
    for sku in skus:
        for name in KEY_NAMES:
            pipe.delete(getattr(sku_keys(sku, scratch), name))  # one DEL per key: cluster slots
            n += 1
        pipe.delete(changed_key(sku, scratch, cluster))
        n += 1
    if n:
        pipe.execute()
    if skus:
        return
    for pattern in (f"{scratch}:*", f"{scratch}-*"):  # the SKUs' keys, and the replies the replay stashed
        batch = []
        for key in client.scan_iter(match=pattern, count=PAGE):
            batch.append(key)
            if len(batch) >= BATCH:
                _delete_keys(client, batch)
                batch = []
        _delete_keys(client, batch)


def _delete_keys(client: Any, keys: list[Any]) -> None:
    if not keys:
        return
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.delete(key)
    pipe.execute()


class _Checker:
    """Judges one SKU at a time: its live state against the topic's records (already in the
    scratch keyspace) and the live log's records up to the live change number."""

    def __init__(self, client: Any, prefix: str, replay: BatchReplayer) -> None:
        self.client = client
        self.prefix = prefix
        self.replay = replay
        self.live_records = 0
        self.bad: list[str] = []  # records of the live logs that are not records

    def live(self, sku: str) -> tuple[int, dict[str, Any]] | None:
        """(change number, state) of the live SKU, read while it did not change; None when it
        kept changing."""
        for _ in range(SETTLE_TRIES):
            q = change_number(self.client, sku, self.prefix)
            state = sku_state(self.client, sku, self.prefix)
            if change_number(self.client, sku, self.prefix) == q:
                return q, state
        return None

    def live_log(self, sku: str, live_q: int) -> list[Record]:
        """The live log's records of ``sku`` up to ``live_q`` (pages by position: a relay trimming
        the head meanwhile makes a gap; every record it trimmed is on the topic by then)."""
        out: list[Record] = []
        start = 0
        while True:
            page = read_log_raw(self.client, sku, self.prefix, count=PAGE, start=start)
            start += len(page)
            for raw in page:
                try:
                    record = Record.from_json(raw)
                except ValueError as exc:
                    self.bad.append(f"{sku}: live log: {exc}"[:300])
                    continue
                if record.q > live_q:
                    return out
                out.append(record)
            if len(page) < PAGE:
                return out

    def catch_up(self, records: list[Record]) -> None:
        """Replay ``records`` (a SKU's live log, read earlier) into the scratch keyspace."""
        for record in records:
            self.live_records += 1
            self.replay.feed(record)
        self.replay.flush()

    def judge(self, sku: str, final: bool, seen: tuple[int, dict[str, Any], list[Record]] | None = None
              ) -> Drift | str | tuple[int, dict[str, Any], list[Record]] | None:
        """A ``Drift``, None (the same), 'unsettled' (kept changing), or — when the log read so far
        does not reach the live state (records shipped and trimmed meanwhile) and not ``final`` —
        what was seen: (live change number, live state, live log records), to judge again with
        ``seen`` once the topic was read past the moment they were read (every record trimmed
        before is on the topic by then)."""
        if seen is None:
            observed = self.live(sku)
            if observed is None:
                return "unsettled"
            seen = (*observed, self.live_log(sku, observed[0]))
        live_q, live, records = seen
        self.catch_up(records)
        log_q = self.replay.at.get(sku, 0)
        gap = self.replay.gaps.get(sku)
        if (gap or log_q < live_q) and not final:
            return seen
        other = sku_state(self.client, sku, self.replay.prefix)
        if live == other:
            return None
        diff = state_diff(live, other)
        if gap:
            diff = [f"the log cannot be replayed: {gap}", *diff]
        elif log_q < live_q:
            diff = [f"the log ends at change {log_q}, the live state is at change {live_q}", *diff]
        elif log_q > live_q:
            diff = [f"the log goes on to change {log_q}, the live state stopped at change {live_q}", *diff]
        if not diff:  # equal field by field yet not equal: say so rather than nothing
            diff = [f"live digest {digest_of(live)[:12]}, log digest {digest_of(other)[:12]}"]
        return Drift(sku, live_q, log_q, drift_units(live, other), diff)


def reconcile(
    client: Any,
    consumer_conf: Mapping[str, Any],
    topic: str,
    prefix: str,
    *,
    skus: Sequence[str] | None = None,
    progress: Progress | None = None,
    publish: bool = True,
    scratch: str | None = None,
) -> ReconcileReport:
    """Check every SKU (or ``skus``): replay its records from ``topic`` and from the live log (those
    not yet shipped) into a scratch keyspace and compare with the live state.

    Safe while the engine runs: each SKU's live state is read between two looks at its change
    number (a SKU that keeps changing is reported ``unsettled``, not judged), the replay stops at
    the live change number, and a SKU whose records were shipped and trimmed while it was read is
    judged again after a second read of the topic's new records. The scratch keyspace holds, for a
    moment, every checked SKU replayed from the topic (Redis needs room for them); it is deleted
    SKU by SKU and as a whole at the end, whatever happens. With ``publish`` the result sets the
    drift gauges and is kept under ``reconcile_key`` (only a check of every SKU).
    """
    validate_prefix(prefix)
    checked = 0
    scratch = validate_prefix(scratch or scratch_prefix())
    if scratch == prefix:
        raise ValueError("the scratch prefix must not be the live one")
    wanted = set(skus) if skus is not None else None
    scripts.load(client, scripts.load_library())
    started = time.perf_counter()
    read = ReadStats()
    replay = BatchReplayer(client, scratch)
    checker = _Checker(client, prefix, replay)
    drifted: list[Drift] = []
    unsettled: list[str] = []
    try:
        for record in read_changes(consumer_conf, topic, stats=read, progress=progress):
            if wanted is None or record.sku in wanted:
                replay.feed(record)
        replay.flush()
        todo = sorted(wanted if wanted is not None else set(replay.at) | _live_skus(client, prefix))
        checked = len(todo)
        seen: dict[str, Any] = {}
        for final in (False, True):
            behind: list[str] = []
            for sku in todo:
                verdict = checker.judge(sku, final, seen.pop(sku, None))
                if isinstance(verdict, tuple):
                    behind.append(sku)
                    seen[sku] = verdict
                    continue
                if verdict == "unsettled":
                    unsettled.append(sku)
                elif isinstance(verdict, Drift):
                    drifted.append(verdict)
                _delete_scratch(client, scratch, [sku])
                replay.forget(sku)
            if not behind:
                break
            # records shipped (and trimmed from the live log) since the topic was read: read on
            for sku in behind:
                replay.gaps.pop(sku, None)
            # every record a behind SKU's live log no longer had when read is on the topic by now:
            # read on until the replay has them (a partition's end read while the relay produces
            # can come before the last of them: read again from there, a few times)
            need = {sku: min(q, records[0].q - 1) if records else q for sku, (q, _s, records) in seen.items()}
            for _ in range(TAIL_READS):
                tail = ReadStats()
                for record in read_changes(consumer_conf, topic, stats=tail, start=read.ends):
                    # up to the live state as it was read: the topic goes on meanwhile
                    if record.sku in seen and record.q <= seen[record.sku][0]:
                        replay.feed(record)
                replay.flush()
                read.ends.update(tail.ends)
                read.records += tail.records
                read.bad += tail.bad
                read.bad_examples += tail.bad_examples[:max(0, BAD_EXAMPLES - len(read.bad_examples))]
                if all(replay.at.get(sku, 0) >= q for sku, q in need.items()):
                    break
                time.sleep(TAIL_PAUSE_S)
            todo = behind
    finally:
        _delete_scratch(client, scratch)
    report = ReconcileReport(
        checked=checked, drifted=drifted, unsettled=unsettled, records=read.records,
        live_records=checker.live_records, bad=read.bad + len(checker.bad),
        bad_examples=(read.bad_examples + checker.bad)[:BAD_EXAMPLES], seconds=time.perf_counter() - started,
    )
    if publish and wanted is None:
        publish_result(client, prefix, report)
    return report


def merge_reports(reports: Sequence[ReconcileReport]) -> ReconcileReport:
    """One report of several checks of disjoint SKU sets (the rounds of one cycle)."""
    return ReconcileReport(
        checked=sum(r.checked for r in reports),
        drifted=[d for r in reports for d in r.drifted],
        unsettled=[s for r in reports for s in r.unsettled],
        records=sum(r.records for r in reports),
        live_records=sum(r.live_records for r in reports),
        bad=sum(r.bad for r in reports),
        bad_examples=[e for r in reports for e in r.bad_examples][:BAD_EXAMPLES],
        seconds=sum(r.seconds for r in reports),
    )


class Rotation:
    """Reconcile going on, on a budget: each ``round`` checks the next ``per_round`` SKUs of the
    keyspace (or of ``skus``) — one read of the topic, the replay of those SKUs only, so Redis
    holds at most ``per_round`` scratch SKUs — and a cycle is the rounds that check every SKU once
    (the SKUs are listed again when one begins). The end of a cycle publishes its result (the drift
    gauges, ``reconcile_key``), and so does a round that finds drift, at once: a drifted SKU is
    told within a round, not at the end of the cycle."""

    def __init__(self, client: Any, consumer_conf: Mapping[str, Any], topic: str, prefix: str, *,
                 per_round: int = 100, skus: Sequence[str] | None = None) -> None:
        if per_round < 1:
            raise ValueError("per_round must be at least 1")
        self.client = client
        self.consumer_conf = consumer_conf
        self.topic = topic
        self.prefix = validate_prefix(prefix)
        self.per_round = per_round
        self.skus = sorted(set(skus)) if skus is not None else None
        self._todo: list[str] = []
        self._cycle: list[ReconcileReport] = []
        self.cycles = 0                             # cycles ended
        self.last_cycle: ReconcileReport | None = None

    def round(self) -> ReconcileReport | None:
        """Check the next SKUs; None when the keyspace has none."""
        if not self._todo:
            self._todo = list(self.skus) if self.skus is not None else sorted(_live_skus(self.client, self.prefix))
            self._cycle = []
            if not self._todo:
                _round_ended(self.client, self.prefix)
                return None
        chunk, self._todo = self._todo[: self.per_round], self._todo[self.per_round:]
        try:
            report = reconcile(self.client, self.consumer_conf, self.topic, self.prefix, skus=chunk, publish=False)
        except Exception:
            self._todo = chunk + self._todo  # not checked: the next round tries them again
            raise
        self._cycle.append(report)
        if not self._todo or report.drifted:
            cycle = merge_reports(self._cycle)
            publish_result(self.client, self.prefix, cycle)
            if not self._todo:
                self.cycles += 1
                self.last_cycle = cycle
        else:
            _round_ended(self.client, self.prefix)
        return report

    def run(self, stop: threading.Event, every_s: float,
            on_round: Callable[[ReconcileReport], None] | None = None) -> None:
        """Rounds until ``stop`` is set, one every ``every_s`` at most; a round that fails (the
        broker or Redis away) is logged and the next one tries again."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                report = self.round()
            except Exception as exc:  # the loop outlives a round: the next one tries again
                log.warning("reconcile round failed: %s: %s", type(exc).__name__, exc)
            else:
                if report is not None and on_round is not None:
                    on_round(report)
            stop.wait(max(0.0, every_s - (time.monotonic() - started)))


def publish_result(client: Any, prefix: str, report: ReconcileReport) -> None:
    """Set the drift gauges of this process and keep the result under ``reconcile_key`` for the
    flow's reporter, which exports it (``refresh_drift``)."""
    at_ms = int(time.time() * 1000)
    metrics.set_drift(len(report.drifted), report.units, report.checked, at_ms / 1000)
    metrics.set_reconcile_round(at_ms / 1000)
    client.hset(reconcile_key(prefix), mapping={
        "checked": report.checked, "drifted": len(report.drifted), "units": report.units, "at_ms": at_ms,
        "round_ms": at_ms,
    })


def _round_ended(client: Any, prefix: str) -> None:
    # the loop's heartbeat: a round that ended, drift or not (a failed round does not beat)
    now_ms = int(time.time() * 1000)
    metrics.set_reconcile_round(now_ms / 1000)
    client.hset(reconcile_key(prefix), "round_ms", now_ms)


def refresh_drift(client: Any, prefix: str) -> bool:
    """Set the drift gauges from the last reconcile's result kept in Redis; False when there is none."""
    raw = client.hgetall(reconcile_key(prefix))
    if not raw:
        return False
    got = {_text(k): int(v) for k, v in raw.items()}
    metrics.set_drift(got.get("drifted", 0), got.get("units", 0), got.get("checked", 0), got.get("at_ms", 0) / 1000)
    metrics.set_reconcile_round(got.get("round_ms", 0) / 1000)
    return True


def round_age_s(client: Any, prefix: str) -> float | None:
    """Seconds since the reconcile loop's last round ended (None: none has)."""
    raw = client.hget(reconcile_key(prefix), "round_ms")
    return None if raw is None else max(0.0, time.time() - int(raw) / 1000)


def healthcheck(max_age_s: float) -> int:
    """0 when the reconcile loop of the configured keyspace ended a round within ``max_age_s``,
    else 1 (the reconcile service's container healthcheck, docker-compose.yml)."""
    from engine.settings import Settings
    from engine.store.connect import sync_redis

    settings = Settings()
    client = sync_redis(settings)
    try:
        age = round_age_s(client, settings.key_prefix)
    finally:
        client.close()
    return 0 if age is not None and age <= max_age_s else 1
