"""The relay: ships each SKU's change records from its Redis log to the Kafka topic
``inventory.changes`` (key = the SKU, value = the record as the script wrote it) with an
idempotent producer, and trims from Redis only what the broker acknowledged (docs/changelog.md).

One relay ships per keyspace: a relay holds the lock ``relay_lock_key(prefix)`` =
``<prefix>:relay:lock`` (``SET NX PX`` with a token of its own, renewed every round, released on
close); a relay without it idles. ``atp rebuild`` holds the same key (``engine.log.rebuild``) so
that nothing ships while the keyspace is rebuilt.

A round (``Relay.run_once``):

1. discovers SKUs with records (``changelog.iter_changed_skus``: the changed sets the scripts
   put a SKU in with its first waiting record, ``keys.changed_key``), at most ``max_skus`` and
   about ``max_records`` records a round; one pass over the sets may take several rounds;
2. reads up to ``batch`` (500) records of each log (LRANGE), produces each one, then waits for
   the delivery reports (renewing the lock meanwhile);
3. trims, per SKU, the records up to the last one acknowledged with every record before it
   (``changelog.trim_log``: one small script on the SKU's log and changed set; a log left empty
   is gone and its SKU leaves the set — the change number lives in the state hash, ``!Q``, not in
   the log);
4. saves, per partition of the topic, the offset after the last acknowledged message in the hash
   ``<prefix>:relay``.

Reservation events (``reservation_messages``) go to ``inventory.reservations`` (key: the
reservation id) before the record they come from: the event a ``publish`` record keeps (the API
and the CLI keep each change's event in the log before they answer), and one
``reservation.expired`` per line a record's call expired. A round produces the events of its
records first and waits for them; a record goes only once its events went (``_ship_events``). So
the change log stays exactly once and these events are at least once: an event is produced again
only with a record that goes again (their ids are deterministic: consumers drop a repeat).

Exactly once: a relay that dies between the broker's acknowledgement and the trim leaves records
in Redis that are also on the topic. So a relay that takes the lock first reads the topic from the
saved offsets to its end, takes the highest change number per SKU there, and trims those records
from Redis before it ships anything (``_recover``). It does the same after any round whose outcome
it cannot be sure of (a delivery that failed or timed out, a trim that failed, the lock lost).
The first relay on a keyspace saves the topic's end offsets before it ships anything, so the
offsets always cover every message a relay produced.

The broker away: records stay in Redis (the API never waits for the relay), the relay retries
every round; a fatal producer error (a broker that restarted without its data forgets the
idempotent producer) gets a new producer. ``atp_changelog_backlog`` is the records waiting at the
end of the last full pass (also kept in ``<prefix>:relay`` field ``backlog``, which idle relays
and ``/readyz`` read).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from connectors.kafka import consumer_config, producer_config, replace_producer
from connectors.topics import Topics
from engine import metrics
from engine.settings import Settings
from engine.store.changelog import Record, iter_changed_skus, record_head, trim_log, trim_logs
from engine.store.keys import sku_keys, validate_prefix
from engine.store.lease import Lease, lease_key

log = logging.getLogger(__name__)

#: The lock's time to live; a round renews it (and so does the wait for delivery reports).
LOCK_TTL_MS = 10_000
#: Records read from one SKU's log per visit.
BATCH = 500
#: SKUs visited per round, and about how many records a round ships at most.
MAX_SKUS = 1000
MAX_RECORDS = 50_000
#: SKUs read per pipelined round trip.
_CHUNK = 100
#: How long a round waits for the broker to acknowledge what it produced (also the producer's
#: ``message.timeout.ms``, so every message has its report by then).
ACK_TIMEOUT_S = 10.0
#: The pause between rounds that shipped nothing, and the longest pause after failures.
IDLE_S = 0.2
#: Rounds in a row in which no record was delivered (each failed or timed out) after which the
#: producer is replaced, as after a fatal error: some brokers (Tansu restarted empty) leave an
#: idempotent producer that never delivers again and never says why.
STUCK_ROUNDS = 3
MAX_BACKOFF_S = 5.0
#: How long a clean stop goes on shipping what waits (``Relay.stop``).
DRAIN_S = 5.0
#: Consumer group named in the recovery reader's config; it assigns partitions and never commits.
RECOVERY_GROUP = "atp-relay"
_LOG_EVERY_S = 5.0
#: What a partition answers for a moment after its topic was made (or its leader moved).
_NO_LEADER_YET = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                            KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION})

class RelayError(RuntimeError):
    """The relay cannot do its work (the topic is missing, the broker or Redis is away)."""


def relay_lock_key(prefix: str) -> str:
    """The key of the lock that one relay (or ``atp rebuild``) of the keyspace holds."""
    return lease_key(prefix, "relay")


def relay_state_key(prefix: str) -> str:
    """The hash of the relay: ``topic`` (the topic the offsets are of), ``<partition>`` -> the
    offset after the last message acknowledged there, ``backlog`` (records waiting at the end of
    the last full pass)."""
    return f"{validate_prefix(prefix)}:relay"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def relay_backlog(client: Any, prefix: str) -> int | None:
    """The backlog the relay holding the lock recorded last (None: no relay ever did)."""
    raw = client.hget(relay_state_key(prefix), "backlog")
    return None if raw is None else int(raw)


def changelog_health(backlog: int | None, limit: int) -> tuple[bool, str]:
    """(False, why) when more change records wait for the relay than ``limit``."""
    if backlog is not None and backlog > limit:
        return False, f"{backlog} change records wait for the relay (limit {limit})"
    return True, ""


class RelayLock(Lease):
    """The relay lease of a keyspace (``engine.store.lease``): the relay, or ``atp rebuild``,
    holds it while it ships or replays."""

    def __init__(self, client: Any, prefix: str, ttl_ms: int = LOCK_TTL_MS, token: str | None = None) -> None:
        super().__init__(client, prefix, "relay", ttl_ms, token)


@dataclass
class _Sent:
    """One SKU's records produced in a round, with their delivery reports."""

    sku: str
    qs: list[int]
    acked: list[bool] = field(default_factory=list)

    def acked_prefix(self) -> int:
        """How many records from the first were all acknowledged."""
        n = 0
        for ok in self.acked:
            if not ok:
                break
            n += 1
        return n


_EXPIRED = b'"expired":['
#: A record waiting in a log: its value as the script wrote it, its change number, its entry.
Waiting = tuple[bytes, int, str]


def reservation_messages(sku: str, value: bytes, fn: str) -> list[tuple[str, bytes]]:
    """(reservation id, message) of what a record (``value``, of entry ``fn``) gives
    ``inventory.reservations``: the events a ``publish`` record keeps, and the
    ``reservation.expired`` event of each line the record's call expired
    (``engine.reservations.events.expired_event``)."""
    if fn == "publish":  # nothing expires in a publish call
        args = orjson.loads(value)["args"]
        if len(args) == 2:  # kept before marks existed: [rid, event]
            return [(args[0], args[1].encode())]
        # [marks' lifetime, then rid, event, change of each event kept]
        return [(args[i], args[i + 1].encode()) for i in range(1, len(args), 3)]
    if _EXPIRED not in value:
        return []
    from engine.reservations.events import encode, expired_event

    return [(line["rid"], encode(expired_event(sku, line))) for line in orjson.loads(value)["expired"]]


def _waiting(sku: str, raw: Any) -> Waiting:
    """A waiting record as the script wrote it (the Kafka value), its change number and entry."""
    value = raw if isinstance(raw, bytes) else str(raw).encode()
    of, q, fn = record_head(value)
    if of != sku:
        raise RelayError(f"the log of SKU {sku} holds a record of {of}")
    return value, q, fn


def _is_fatal(err: Any) -> bool:
    return isinstance(err, KafkaError) and (err.fatal() or err.code() == KafkaError._FATAL)



class _RecoveryFailed(Exception):
    """Reading the topic back failed (its cause says why): the round only counts what waits."""


class Relay:
    """Ships the change log of ``settings``' keyspace to ``topics.changes`` (see the module).

    ``redis``: a sync redis-py client (default: one from the settings, made on first use, so a
    Redis that is away fails rounds, not the constructor); ``producer_overrides``: librdkafka
    settings of the producer (tests shorten its timeouts); ``kafka_logger``: a ``logging.Logger``
    for librdkafka's own lines (default: stderr). ``run_once()`` runs one round,
    ``run_forever(stop)`` rounds until ``stop`` is set; ``start()`` / ``stop()`` run it in a daemon
    thread. ``close()`` releases the lock.
    """

    def __init__(
        self,
        settings: Settings,
        topics: Topics | None = None,
        *,
        redis: Any = None,
        producer_overrides: dict[str, Any] | None = None,
        lock_ttl_ms: int = LOCK_TTL_MS,
        batch: int = BATCH,
        max_skus: int = MAX_SKUS,
        max_records: int = MAX_RECORDS,
        ack_timeout_s: float = ACK_TIMEOUT_S,
        idle_s: float = IDLE_S,
        kafka_logger: Any = None,
    ) -> None:
        if not settings.kafka_bootstrap:
            raise ValueError("no broker configured: set ATP_KAFKA_BOOTSTRAP")
        if redis is None and not settings.redis_url:
            raise ValueError("no Redis configured: set ATP_REDIS_URL")
        if min(batch, max_skus, max_records) < 1 or not ack_timeout_s > 0 or not idle_s > 0:
            raise ValueError("batch, max_skus, max_records, ack_timeout_s and idle_s must be > 0")
        if lock_ttl_ms < 100:
            raise ValueError("lock_ttl_ms must be at least 100")
        self.settings = settings
        self.prefix = validate_prefix(settings.key_prefix)
        self.topic = (topics or Topics()).changes
        self.reservations_topic = (topics or Topics()).reservations
        self.events_sent = 0       # reservation events acknowledged
        self.state_key = relay_state_key(self.prefix)
        self.lock_ttl_ms = lock_ttl_ms
        self.batch = batch
        self.max_skus = max_skus
        self.max_records = max_records
        self.ack_timeout_s = ack_timeout_s
        self.idle_s = idle_s
        # broker calls of the recovery, and the longest pause between rounds, stay well inside
        # the lock's time to live
        self._probe_s = min(ack_timeout_s, lock_ttl_ms / 4000)
        self._client = redis
        self._owns_client = redis is None
        self._lock: RelayLock | None = None
        # never create the topic: a broker restarted empty would make it with its own defaults
        # (partitions, a time limit) and the idempotent producer may never deliver to it again;
        # a missing topic waits for the operator (README "The change log relay")
        conf = producer_config(settings, idempotent=True,
                               overrides={"message.timeout.ms": max(1, int(ack_timeout_s * 1000)),
                                          "allow.auto.create.topics": False})
        self._kafka_extra: dict[str, Any] = {} if kafka_logger is None else {"logger": kafka_logger}
        conf.update(self._kafka_extra)
        conf.update(producer_overrides or {})
        conf["error_cb"] = self._on_error
        self._conf = conf
        self._producer = Producer(conf)  # a bad setting fails here, before any thread starts
        self._fatal = threading.Event()
        self._stuck = 0  # rounds in a row whose every record failed
        # round state
        self.active = False          # this relay holds the lock
        self._recovered = False      # the topic's tail was reconciled with Redis since then
        self._pass: Iterator[str] | None = None  # the changed sets' SKUs of the current pass
        self._pass_no = 0
        self._pass_left = 0          # records left in the SKUs this pass visited
        self._again: dict[str, tuple[int, int]] = {}  # SKU with more to ship -> (pass, left counted)
        self.pass_done = False       # the last round ended a pass
        # what callers read
        self.backlog = 0
        self.shipped = 0
        self.errors = 0
        self.rebuilds = 0
        self.last_error = ""
        self._last_log = 0.0
        self._stop = threading.Event()
        self._drain_until = 0.0  # monotonic time until which a stopping relay ships (stop)
        self._thread: threading.Thread | None = None

    # --- plumbing ------------------------------------------------------------------------------

    def _redis(self) -> Any:
        if self._client is None:
            from engine.store.connect import sync_redis

            self._client = sync_redis(self.settings)
        return self._client

    @property
    def lock(self) -> RelayLock:
        """This relay's hold on the keyspace's relay lock."""
        if self._lock is None:
            self._lock = RelayLock(self._redis(), self.prefix, self.lock_ttl_ms)
        return self._lock

    def _on_error(self, err: KafkaError) -> None:
        self.last_error = str(err)
        if err.fatal():
            self._fatal.set()
            log.error("change log relay: fatal producer error %s", err)

    def _rebuild(self) -> None:
        """Replace a producer that hit a fatal error (what it did not deliver is still in Redis)."""
        self._producer = replace_producer(self._producer, self._conf)
        self.rebuilds += 1
        self._fatal.clear()
        self._recovered = False  # what the old one delivered is read back from the topic first
        self._stuck = 0
        log.error("change log relay: producer replaced after a fatal error (%s)", self.last_error)

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        metrics.count_changelog_relay_error()
        now = time.monotonic()
        if now - self._last_log >= _LOG_EVERY_S:  # loud, but not a line per round
            self._last_log = now
            log.warning("change log relay: %s (%d failures so far)", self.last_error, self.errors)

    def _set_backlog(self, n: int) -> None:
        self.backlog = max(0, n)
        metrics.set_changelog_backlog(self.backlog)

    def _forget_pass(self) -> None:
        self._pass = None
        self._again.clear()
        self.pass_done = False

    # --- rounds --------------------------------------------------------------------------------

    def run_once(self, raise_errors: bool = False) -> int:
        """One round; returns the records shipped (acknowledged and trimmed). A failure is counted
        (``atp_changelog_relay_errors_total``), logged and returns 0, or is raised with
        ``raise_errors``."""
        try:
            return self._round()
        except _RecoveryFailed as exc:
            cause = exc.__cause__ or exc
            self._failed(cause)
            if raise_errors:
                raise cause from None
            return 0
        except Exception as exc:
            self._failed(exc)
            self._recovered = False  # whatever the round left half done, read the topic back first
            self._forget_pass()
            if raise_errors:
                raise
            return 0

    def _round(self) -> int:
        client = self._redis()
        if not self.lock.acquire():
            if self.active:
                log.warning("change log relay: lock %s lost to %r", self.lock.key, self.lock.holder())
            self.active = False
            self._recovered = False
            self._forget_pass()
            recorded = relay_backlog(client, self.prefix)  # what the relay holding it measured
            if recorded is not None:
                self._set_backlog(recorded)
            return 0
        if not self.active:
            self.active = True
            self._recovered = False
            self._forget_pass()
            log.info("change log relay: holding %s, shipping to %s", self.lock.key, self.topic)
        if self._fatal.is_set():
            self._rebuild()
        if not self._recovered:
            try:
                self._recover()
            except Exception as exc:
                # the broker (or the topic) is away: ship nothing, count what waits
                self._visit(ship=False)
                raise _RecoveryFailed(str(exc)) from exc
        return self._visit(ship=True)

    def _pull(self, limit: int) -> list[str]:
        """Up to ``limit`` SKUs of the current pass (a new pass when none runs); ``_pass`` is
        None again once it ended."""
        if self._pass is None:
            self._pass = iter_changed_skus(self._redis(), self.prefix)
            self._pass_no += 1
            self._pass_left = 0
        out: list[str] = []
        for sku in self._pass:
            out.append(sku)
            if len(out) >= limit:
                return out
        self._pass = None
        return out

    def _visit(self, ship: bool) -> int:
        """Visit SKUs — first those that had more records than one batch, then the pass's next —
        and ship their records (``ship``) or only count them. Returns the records shipped."""
        client = self._redis()
        self.pass_done = False
        ongoing, current = self._pass is not None, self._pass_no
        if not ship:
            self._again.clear()
        again = list(self._again.items())[: self.max_skus]
        for sku, _ in again:
            del self._again[sku]
        queue = [sku for sku, _ in again]
        # counted in this pass already: their left records change the pass's sum by the difference
        counted = {sku: left for sku, (p, left) in again if ongoing and p == current}
        visited: list[tuple[str, list[Waiting], int, bool]] = []  # sku, its records read, length, pulled
        seen: dict[str, int] = {}  # SKU -> its place in visited
        records = 0
        while len(visited) < self.max_skus and records < self.max_records and not self.pass_done:
            if queue:
                chunk, queue, pulled = queue[:_CHUNK], queue[_CHUNK:], False
            else:
                chunk, pulled = self._pull(min(_CHUNK, self.max_skus - len(visited))), True
                self.pass_done = self._pass is None
                if not chunk:
                    break
            fresh = []
            for sku in chunk:  # a SKU once a round: its records are read before any is trimmed
                if sku in seen:
                    if pulled:  # the pass came to a SKU visited again this round: the pass counts it
                        i = seen[sku]
                        visited[i] = (*visited[i][:3], True)
                        counted.pop(sku, None)
                    continue
                seen[sku] = len(visited) + len(fresh)
                fresh.append(sku)
            pipe = client.pipeline(transaction=False)
            for sku in fresh:
                key = sku_keys(sku, self.prefix).log
                if ship:
                    pipe.lrange(key, 0, self.batch - 1)
                pipe.llen(key)
            replies = iter(pipe.execute() if fresh else ())
            for sku in fresh:
                read = [_waiting(sku, raw) for raw in next(replies)] if ship else []
                visited.append((sku, read, int(next(replies)), pulled))
                records += len(read)
        for sku, _read, length, _pulled in visited:
            if length == 0:  # its log went some other way (a rebuild, a DEL): out of the set
                trim_log(client, sku, self.prefix, 0)
        done = self._ship([(sku, read) for sku, read, _, _ in visited if read]) if records else {}
        for sku, read, length, pulled in visited:
            left = max(0, length - done.get(sku, 0))
            if pulled:
                self._pass_left += left
                pass_of = self._pass_no
            elif sku in counted:
                self._pass_left += left - counted[sku]
                pass_of = current
            else:
                pass_of = -1  # visited before this pass came to it: the pass counts it when it does
            if ship and read and left and done.get(sku, 0) == len(read):
                self._again[sku] = (pass_of, left)  # all of it went and more waits: next round
        if self.pass_done:
            self._set_backlog(self._pass_left)
            with contextlib.suppress(Exception):
                client.hset(self.state_key, "backlog", self.backlog)
        shipped = sum(done.values())
        if shipped:
            self.shipped += shipped
            metrics.count_changelog_shipped(shipped)
        return shipped

    def _ship(self, batches: list[tuple[str, list[Waiting]]]) -> dict[str, int]:
        """Produce the records' reservation events and wait for their reports, then produce the
        records whose events all went, wait for their reports, trim what was acknowledged and save
        the offsets (``_settle``); returns the records trimmed per SKU."""
        sent: list[_Sent] = []
        ends: dict[int, int] = {}
        failures: list[str] = []
        ready = self._ship_events(batches)

        def report(entry: _Sent, index: int) -> Any:
            def on_delivery(err: KafkaError | None, msg: Any) -> None:
                if err is None:
                    entry.acked[index] = True
                    offset = msg.offset()
                    if offset is not None and offset >= 0:
                        ends[msg.partition()] = max(ends.get(msg.partition(), 0), offset + 1)
                else:
                    failures.append(str(err))
                    if _is_fatal(err):
                        self._fatal.set()
            return on_delivery

        deadline = time.monotonic() + self.ack_timeout_s
        producing = True
        for sku, read in batches:
            read = read[: ready.get(sku, len(read))]  # nothing after a record whose events did not go
            entry = _Sent(sku, [q for _, q, _ in read], [False] * len(read))
            sent.append(entry)
            key = sku.encode()
            for i, (value, _q, _fn) in enumerate(read):
                producing = producing and not self._fatal.is_set() and self._produce(
                    key, value, report(entry, i), deadline, failures)
                if not producing:
                    break  # nothing after a record that did not go: each SKU's order is kept
        certain = self._await_reports(deadline)
        trims = [(e, e.acked_prefix()) for e in sent]
        if sent and not any(n for _e, n in trims) and failures:
            self._stuck += 1
            if self._stuck >= STUCK_ROUNDS:  # a producer that delivers nothing, yet raised no fatal error
                self.last_error = f"nothing delivered in {self._stuck} rounds: {failures[0]}"
                self._fatal.set()
        else:
            self._stuck = 0
        if failures or any(n < len(e.qs) for e, n in trims):
            certain = False
        trims = [(e, n) for e, n in trims if n]
        self._settle([(e.sku, e.qs[n - 1]) for e, n in trims], ends)
        if not self.active:
            certain = False
        if not certain:
            self._recovered = False  # read back what went before shipping again
            if failures:
                self._failed(RelayError(f"{len(failures)} records not acknowledged: {failures[0]}"))
        return {e.sku: n for e, n in trims}

    def _ship_events(self, batches: list[tuple[str, list[Waiting]]]) -> dict[str, int]:
        """Produce the reservation events of the records (``reservation_messages``) and wait for
        their reports. Returns, for each SKU one of whose events did not go, how many of its
        records come before the first such record: only those may go now. So a record on the
        topic — which a recovering relay trims and never ships again — has its events there too;
        an event of a record that goes again is produced again (same id: consumers drop it)."""
        failed: dict[str, int] = {}
        failures: list[str] = []

        def report(sku: str, index: int) -> Any:
            def on_delivery(err: KafkaError | None, msg: Any) -> None:
                if err is None:
                    self.events_sent += 1
                    return
                failures.append(str(err))
                failed[sku] = min(failed.get(sku, index), index)
                if _is_fatal(err):
                    self._fatal.set()
            return on_delivery

        deadline = time.monotonic() + self.ack_timeout_s
        produced = False
        for sku, read in batches:
            for i, (value, _q, fn) in enumerate(read):
                for rid, event in reservation_messages(sku, value, fn):
                    produced = True
                    if self._fatal.is_set() or not self._produce(rid.encode(), event, report(sku, i), deadline,
                                                                 failures, topic=self.reservations_topic):
                        failed[sku] = min(failed.get(sku, i), i)
                        break
                if sku in failed:
                    break
        if produced:
            self._await_reports(deadline)  # what it purges reports a failure
        if failures:
            self._failed(RelayError(f"{len(failures)} reservation events not acknowledged: {failures[0]}"))
        return failed

    def _produce(self, key: bytes, value: bytes, on_delivery: Any, deadline: float, failures: list[str],
                 topic: str | None = None) -> bool:
        while True:
            try:
                self._producer.produce(topic or self.topic, key=key, value=value, on_delivery=on_delivery)
                return True
            except BufferError:  # librdkafka's queue is full: serve reports, then again
                if time.monotonic() > deadline:
                    failures.append("the producer's queue stayed full")
                    return False
                self._producer.poll(0.05)
            except KafkaException as exc:
                failures.append(str(exc))
                if _is_fatal(exc.args[0] if exc.args else None):
                    self._fatal.set()
                return False

    def _await_reports(self, deadline: float) -> bool:
        """Serve delivery reports until every record produced has one, renewing the lock about
        every second; False when some are still unknown at the end (they are purged, and the next
        round reads the topic back before it ships)."""
        hard = deadline + 5.0  # message.timeout.ms has passed: every report is in by then
        renewed = time.monotonic()
        while len(self._producer) > 0:
            now = time.monotonic()
            if self._stop.is_set():  # stopping: a moment more for what is in flight, no longer
                hard = min(hard, max(now + 0.2, self._drain_until))
            if now >= hard:
                break
            self._producer.flush(min(0.1, max(0.01, hard - now)))
            if time.monotonic() - renewed >= 1.0:
                renewed = time.monotonic()
                with contextlib.suppress(Exception):
                    if not self.lock.renew():
                        self.active = False
        if len(self._producer) == 0:
            return True
        with contextlib.suppress(Exception):
            self._producer.purge(in_queue=True, in_flight=True)
            self._producer.poll(0)
        return False

    def _settle(self, trims: list[tuple[str, int]], ends: dict[int, int]) -> None:
        """Trim each SKU's log through the change number given (acknowledged with all before
        it), then save the offset after the last acknowledged message of each partition (while
        the lock is still this relay's). A relay killed before this ends is what ``_recover``
        repairs."""
        client = self._redis()
        try:
            trim_logs(client, trims, self.prefix)
            if not self.lock.renew():
                self.active = False
                return
            if ends:
                client.hset(self.state_key, mapping={"topic": self.topic, **{str(p): o for p, o in ends.items()}})
        except Exception:
            self._recovered = False  # unknown what was trimmed: read the topic back first
            raise

    # --- recovery ------------------------------------------------------------------------------

    def _saved(self) -> dict[int, int] | None:
        """The saved offsets of this relay's topic (None: none saved, or of another topic)."""
        raw = {_text(k): _text(v) for k, v in self._redis().hgetall(self.state_key).items()}
        if raw.get("topic") != self.topic:
            return None
        return {int(k): int(v) for k, v in raw.items() if k.isdigit()}

    def _recover(self) -> None:
        """Trim from Redis the records the topic holds past the saved offsets (a relay stopped
        between the acknowledgement and the trim), then save where the topic ends. Without saved
        offsets (a first start) only where it ends is saved: every message a relay produces comes
        after offsets that cover it."""
        client = self._redis()
        consumer = Consumer(consumer_config(self.settings, RECOVERY_GROUP, overrides={
            "enable.partition.eof": True, "fetch.wait.max.ms": 50, "socket.timeout.ms": 5000,
            "error_cb": lambda err: None, **self._kafka_extra}))
        try:
            meta = consumer.list_topics(self.topic, timeout=self._probe_s)
            topic = meta.topics.get(self.topic)
            if topic is None or topic.error is not None or not topic.partitions:
                why = topic.error if topic is not None and topic.error is not None else "no partitions"
                raise RelayError(f"topic {self.topic} is not there ({why}): atp topics create makes it")
            marks = {p: self._watermarks(consumer, p) for p in sorted(topic.partitions)}
            saved = self._saved()
            starts = {}
            for p, (low, high) in marks.items():
                if saved is None:
                    starts[p] = high  # nothing of this keyspace's is there: only where it ends
                else:
                    at = saved.get(p, low)
                    # past the end: the topic started again (a broker without its data): all of it
                    starts[p] = at if low <= at <= high else low
            tops, ends = self._read_tail(consumer, starts, {p: high for p, (_low, high) in marks.items()})
            if saved is None:
                client.delete(self.state_key)  # offsets of another topic, if any
            else:
                trimmed = sum(trim_log(client, sku, self.prefix, q) for sku, q in tops.items())
                if trimmed:
                    log.warning("change log relay: %d records already on %s trimmed from Redis (a relay "
                                "stopped between the acknowledgement and the trim)", trimmed, self.topic)
            if not self.lock.renew():
                self.active = False
                raise RelayError("relay lock lost while reading the topic back")
            client.hset(self.state_key, mapping={"topic": self.topic, **{str(p): o for p, o in ends.items()}})
        finally:
            with contextlib.suppress(Exception):
                consumer.close()
        self._recovered = True
        self._again.clear()

    def _watermarks(self, consumer: Any, partition: int) -> tuple[int, int]:
        """(low, high) of one partition; a retriable error (a topic just made has no leader yet)
        is asked again for a moment."""
        deadline = time.monotonic() + 2 * self._probe_s
        while True:
            try:
                low, high = consumer.get_watermark_offsets(TopicPartition(self.topic, partition),
                                                           timeout=self._probe_s)
                return int(low), int(high)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                passing = isinstance(err, KafkaError) and (err.retriable() or err.code() in _NO_LEADER_YET)
                if not passing or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _read_tail(self, consumer: Any, starts: dict[int, int], highs: dict[int, int]
                   ) -> tuple[dict[str, int], dict[int, int]]:
        """Read every partition from ``starts`` to its end: (the highest change number per SKU
        read, where each partition ended). A partition ends where librdkafka reports its end at
        or past the high watermark: the watermark alone is not the stop, Tansu under-reports it
        (``engine.flow.source``)."""
        todo = {p: max(highs[p], starts[p]) for p in starts}
        ends = dict(starts)
        tops: dict[str, int] = {}
        consumer.assign([TopicPartition(self.topic, p, starts[p]) for p in sorted(starts)])
        deadline = time.monotonic() + max(30.0, self.ack_timeout_s)
        renewed = time.monotonic()
        while todo:
            now = time.monotonic()
            if now > deadline:
                raise RelayError(f"reading {self.topic} back timed out (partitions {sorted(todo)})")
            if now - renewed >= 1.0:
                renewed = now
                if not self.lock.renew():
                    raise RelayError("relay lock lost while reading the topic back")
            for msg in consumer.consume(1000, 0.1):
                err, part = msg.error(), msg.partition()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        raise RelayError(f"reading {self.topic} back: {err}")
                    # done once every message before this end was taken (an end reported ahead
                    # of messages not handed over yet must not cover them)
                    if part in todo and ends[part] >= todo[part] and msg.offset() <= ends[part]:
                        del todo[part]
                    continue
                ends[part] = max(ends.get(part, 0), msg.offset() + 1)
                try:
                    record = Record.from_json(msg.value() or b"")
                except ValueError as exc:
                    log.error("change log relay: %s[%d]@%d is not a change record: %s",
                              self.topic, part, msg.offset(), exc)
                    continue
                tops[record.sku] = max(tops.get(record.sku, 0), record.q)
        return tops, ends

    # --- running -------------------------------------------------------------------------------

    def run_pass(self, raise_errors: bool = True) -> int:
        """Rounds until one pass over the keyspace ends, or this relay does not get the lock;
        returns the records shipped (``backlog`` then says what waits)."""
        total = 0
        while True:
            errors = self.errors
            total += self.run_once(raise_errors=raise_errors)
            if self.pass_done or not self.active or self.errors > errors:
                return total

    def run_forever(self, stop: threading.Event) -> None:
        """Rounds until ``stop`` is set: at once after a round that shipped, else after
        ``idle_s`` (longer while rounds fail, up to a quarter of the lock's time to live)."""
        self._stop = stop
        pause = self.idle_s
        while not stop.is_set():
            errors = self.errors
            shipped = self.run_once()
            if self.errors > errors:
                pause = min(max(self.idle_s, min(MAX_BACKOFF_S, self._probe_s)), pause * 2)
            else:
                pause = self.idle_s
                if shipped:
                    continue
            stop.wait(pause)
        # a clean stop ships what waits (for up to drain_s), so the events of the last answers
        # do not wait for the next relay
        while self.active and time.monotonic() < self._drain_until:
            errors = self.errors
            if not self.run_once() or self.errors > errors:
                break

    def start(self) -> Relay:
        """Run ``run_forever`` in a daemon thread (idempotent)."""
        if self._thread is None or not self._thread.is_alive():
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self.run_forever, args=(self._stop,),
                                            name="atp-changelog-relay", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout_s: float = 15.0, drain_s: float = DRAIN_S) -> None:
        """Stop the thread and close: rounds go on for up to ``drain_s`` while they ship
        something (a clean stop leaves nothing waiting when the broker is there); then a round in
        progress gives up waiting for the broker."""
        self._drain_until = time.monotonic() + max(0.0, min(drain_s, timeout_s / 2))
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("change log relay: still running after %.0f s; left to die with the process", timeout_s)
                return
            self._thread = None
        self.close()

    def close(self) -> None:
        """Release the lock, the producer, and the Redis client this relay made."""
        if self._lock is not None and self.active:
            with contextlib.suppress(Exception):
                self._lock.release()
        self.active = False
        with contextlib.suppress(Exception):
            self._producer.flush(1.0)
        with contextlib.suppress(Exception):
            self._producer.close()
        if self._owns_client and self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
            self._lock = None

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
