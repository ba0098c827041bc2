"""The flow's Kafka input: the input topics read with ``assign`` and merged in a deterministic order.

Why not bytewax's ``KafkaSource``: it reads each topic-partition on its own, so the order in which
an ``inbound.created`` on one topic and the ``receipt.posted`` for it on another reach the store
depends on timing. Two runs over the same log could then leave different states, and neither
crash recovery (R7, docs/quality.md) nor replay/reconcile could be checked against an uninterrupted run.

Here one source partition (a *group*) holds partition ``i`` of every input topic. Producers key
events by SKU with the same partitioner and the topics have equal partition counts, so all events
of one SKU land in one group, and one worker owns the SKU. Within a group messages are emitted in
the order of ``(message timestamp, topic rank, offset)``, a k-way merge that only emits once every
topic-partition of the group either has a buffered message or has reported that it is at its end
(librdkafka's partition EOF, which comes from fetch responses and is right on Tansu, unlike its
ListOffsets high watermark). So the emitted order is a function of the log alone, and resuming from
a snapshot (the next offset of every topic-partition) continues exactly the same sequence.

The price: a topic that just received a message holds its group back until librdkafka reports its
end again, at most ``fetch.wait.max.ms`` (100 ms here) later.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from engine import metrics
from engine.flow.log_identity import LogReset, TopicLog, admin_client, describe, moved, source_name

log = logging.getLogger(__name__)

ResumeState = dict[str, int]
"""``{"topic:partition": next offset to read}`` for every topic-partition of a group."""

_IDLE_WAIT = timedelta(milliseconds=5)
#: The consumer group the flow reports its read position to (lag tools read it; recovery does not).
PROGRESS_GROUP = "atp-flow"
_COMMIT_EVERY_S = 1.0
#: How often a running source checks that its topics are still the logs it reads.
_LOG_CHECK_EVERY_S = 10.0
_GROUP_PREFIX = "p"
ALL_GROUP = "all"
"""The one source partition of a ``single_group`` input: every partition of every input topic."""


@dataclass(frozen=True, slots=True)
class RawMessage:
    """One input message as read from Kafka (what the flow parses, and what a DLQ record keeps)."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    timestamp_ms: int = 0
    log: str = ""  # the generation of the topic's log ('' = its first; engine.flow.log_identity)

    @property
    def source(self) -> str:
        """``topic:partition`` (``topic@<log>:partition`` after a reset): the store's offset-watermark key."""
        return source_name(self.topic, self.partition, self.log)


def group_name(index: int) -> str:
    """The source partition key of group ``index`` (partition ``index`` of every input topic)."""
    return f"{_GROUP_PREFIX}{index}"


def _group_index(part: str) -> int:
    if not part.startswith(_GROUP_PREFIX) or not part[len(_GROUP_PREFIX) :].isdigit():
        raise ValueError(f"not a source partition of this input: {part!r}")
    return int(part[len(_GROUP_PREFIX) :])


def partition_counts(conf: Mapping[str, Any], topics: Sequence[str], timeout_s: float = 30.0) -> dict[str, int]:
    """Partition count of each topic, from the broker's metadata; raises ``RuntimeError`` if one is missing."""
    admin = AdminClient(dict(conf))
    meta = admin.list_topics(timeout=timeout_s)
    counts: dict[str, int] = {}
    for topic in topics:
        tmeta = meta.topics.get(topic)
        if tmeta is None or tmeta.error is not None or not tmeta.partitions:
            problem = "missing" if tmeta is None else (tmeta.error or "no partitions")
            raise RuntimeError(f"input topic {topic!r} is not usable: {problem}")
        counts[topic] = len(tmeta.partitions)
    return counts


class KafkaInput(FixedPartitionedSource[RawMessage, ResumeState]):
    """The input topics as bytewax source partitions, one per partition index (see the module doc).

    ``conf`` is the librdkafka connection config (``Settings.kafka_config()``); the consumer
    settings this source needs are added to it. ``topics`` are the full topic names, in the rank
    used to break timestamp ties. ``until_end=True`` ends each group once all its partitions
    reported their end (bounded runs: tests, replays, benchmarks); otherwise the source tails.
    ``stop_event``, when set, ends every group at its next poll: the flow then drains and writes a
    final snapshot (the clean shutdown of ``atp flow``).

    ``single_group=True`` merges *every* partition of every input topic in one source partition:
    the emitted order is then a function of the log even for events that couple SKUs of
    different partitions (a multi-SKU order is keyed by its first SKU), at the price of one
    reader. The runner uses it whenever the flow has one worker. The choice is part of the
    recovery state: a snapshot of one layout is not resumed by the other (the new layout starts
    from the beginning of the log, which the idempotent apply turns into a no-op catch-up).
    """

    def __init__(
        self,
        conf: Mapping[str, Any],
        topics: Sequence[str],
        *,
        batch_size: int = 1000,
        until_end: bool = False,
        stop_event: threading.Event | None = None,
        max_buffer: int = 20_000,
        fetch_wait_ms: int = 100,
        single_group: bool = False,
        logs: Mapping[str, TopicLog] | None = None,
    ) -> None:
        if isinstance(topics, str) or not topics:
            raise ValueError("topics must be a non-empty sequence of topic names")
        if batch_size < 1 or max_buffer < batch_size:
            raise ValueError("need 1 <= batch_size <= max_buffer")
        self._conf = dict(conf)
        self._topics = list(topics)
        self._batch_size = batch_size
        self._until_end = until_end
        self._stop_event = stop_event
        self._max_buffer = max_buffer
        self._fetch_wait_ms = fetch_wait_ms
        self._single_group = single_group
        self._logs = dict(logs or {})

    def list_parts(self) -> list[str]:
        if self._single_group:
            return [ALL_GROUP]
        counts = partition_counts(self._conf, self._topics)
        return [group_name(i) for i in range(max(counts.values()))]

    def build_part(self, step_id: str, for_part: str, resume_state: ResumeState | None) -> _GroupPartition:
        counts = partition_counts(self._conf, self._topics)
        if for_part == ALL_GROUP:
            members = [(t, p) for t in self._topics for p in range(counts[t])]
        else:
            index = _group_index(for_part)
            members = [(t, index) for t in self._topics if index < counts[t]]
        conf = {
            **self._conf,
            # Offsets live in the bytewax snapshot. assign() never joins the group (which is also
            # what keeps Tansu fast); the read position is committed to it only for lag tools.
            "group.id": PROGRESS_GROUP,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": self._fetch_wait_ms,
            "statistics.interval.ms": 1000,
        }
        return _GroupPartition(
            conf,
            members,
            dict(resume_state or {}),
            batch_size=self._batch_size,
            until_end=self._until_end,
            stop_event=self._stop_event,
            max_buffer=self._max_buffer,
            logs={t: self._logs[t] for t, _p in members if t in self._logs},
        )


class _GroupPartition(StatefulSourcePartition[RawMessage, ResumeState]):
    def __init__(
        self,
        conf: dict[str, Any],
        members: list[tuple[str, int]],
        resume: ResumeState,
        *,
        batch_size: int,
        until_end: bool,
        stop_event: threading.Event | None,
        max_buffer: int,
        logs: dict[str, TopicLog],
    ) -> None:
        self._members = members
        self._tags = {t: log.tag for t, log in logs.items()}
        self._logs = logs
        self._source_of = {(t, p): source_name(t, p, self._tags.get(t, "")) for t, p in members}
        self._sources = [self._source_of[m] for m in members]
        self._rank = {s: r for r, s in enumerate(self._sources)}
        self._next: dict[str, int] = {s: resume[s] for s in self._sources if s in resume}
        self._buf: dict[str, deque[RawMessage]] = {s: deque() for s in self._sources}
        self._at_end: dict[str, bool] = dict.fromkeys(self._sources, False)
        self._paused: set[str] = set()
        self._batch_size = batch_size
        self._until_end = until_end
        self._stop_event = stop_event
        self._max_buffer = max_buffer
        self._finished = False
        self._admin = admin_client(conf) if logs else None
        self._asked: dict[str, Any] | None = None  # a describe request in flight
        self._consumer = Consumer({**conf, "stats_cb": self._on_stats, "error_cb": self._on_error})
        self._committed: dict[str, int] = {}
        self._commit_at = 0.0
        self._log_check_at = time.monotonic() + _LOG_CHECK_EVERY_S
        self._consumer.assign(
            [TopicPartition(t, p, self._next.get(self._source_of[(t, p)], OFFSET_BEGINNING)) for t, p in members]
        )

    # --- bytewax hooks ---------------------------------------------------------------------

    def next_batch(self) -> list[RawMessage]:
        if self._finished or (self._stop_event is not None and self._stop_event.is_set()):
            raise StopIteration()
        self._poll()
        out = self._merge()
        self._flow_control()
        self._report_progress()
        self._check_logs()
        if self._until_end and all(self._at_end.values()) and not any(self._buf.values()):
            # Emit what we have now; end on the next call.
            self._finished = True
        return out

    def next_awake(self) -> datetime | None:
        # Nothing buffered: let the fetcher work instead of spinning on an empty queue.
        if any(self._buf.values()):
            return None
        return datetime.now(UTC) + _IDLE_WAIT

    def snapshot(self) -> ResumeState:
        return dict(self._next)

    def close(self) -> None:
        self._report_progress(force=True)
        self._consumer.close()

    # --- internals -------------------------------------------------------------------------

    def _poll(self) -> None:
        # Always poll: the merge may be waiting for a partition whose messages are in the queue.
        # Partitions far ahead are paused instead (see _flow_control), which bounds the buffers.
        for msg in self._consumer.consume(self._batch_size * 2, 0):
            err = msg.error()
            source = self._source_of.get((msg.topic(), msg.partition()), f"{msg.topic()}:{msg.partition()}")
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    if source in self._at_end:
                        self._at_end[source] = True
                    continue
                if err.fatal():
                    raise RuntimeError(f"fatal error consuming {source}: {err}")
                log.warning("error consuming %s (librdkafka retries): %s", source, err)
                continue
            ts_type, ts = msg.timestamp()
            self._buf[source].append(RawMessage(
                msg.topic(), msg.partition(), msg.offset(), msg.value(), msg.key(), ts if ts_type else 0,
                self._tags.get(msg.topic(), ""),
            ))
            self._at_end[source] = False

    def _merge(self) -> list[RawMessage]:
        out: list[RawMessage] = []
        buf = self._buf
        at_end = self._at_end
        limit = self._batch_size
        while len(out) < limit:
            best: RawMessage | None = None
            best_key: tuple[int, int, int] | None = None
            blocked = False
            for source, queue in buf.items():
                if not queue:
                    if at_end[source]:
                        continue
                    blocked = True  # this partition may still hold an earlier message: wait for it
                    break
                head = queue[0]
                key = (head.timestamp_ms, self._rank[source], head.offset)
                if best_key is None or key < best_key:
                    best, best_key = head, key
            if blocked or best is None:
                break
            buf[best.source].popleft()
            out.append(best)
        for msg in out:
            self._next[msg.source] = msg.offset + 1
        return out

    def _check_logs(self) -> None:
        """Every ``_LOG_CHECK_EVERY_S``: stop the flow if an input topic is no longer the log it
        was (deleted and created again, a broker that lost its data). Reading on would skip the
        new log's first messages or wait for offsets it may never reach; a restart reads it from
        its start as a new generation (``engine.flow.log_identity``). The broker's answer is
        awaited across batches, never here."""
        if self._admin is None:
            return
        if self._asked is None:
            if time.monotonic() >= self._log_check_at:
                self._asked = describe(self._admin, list(self._logs), _LOG_CHECK_EVERY_S)
            return
        gone = moved(self._asked, self._logs)
        if gone is None:
            return
        self._asked = None
        self._log_check_at = time.monotonic() + _LOG_CHECK_EVERY_S
        if gone:
            for topic in gone:
                metrics.record_log_reset(topic)
            raise LogReset(f"input topic(s) {', '.join(sorted(gone))} have a new topic id: the log started "
                           "again; restart the flow to read it as a new generation")

    def _report_progress(self, force: bool = False) -> None:
        """Commit the read position to ``PROGRESS_GROUP`` (at most once a second, asynchronously),
        so Kafka's own lag tools see the flow. The bytewax snapshot stays what a restart resumes
        from; this position runs at most a batch ahead of what was applied."""
        now = time.monotonic()
        if not force and now < self._commit_at:
            return
        self._commit_at = now + _COMMIT_EVERY_S
        changed = {s: o for s, o in self._next.items() if self._committed.get(s) != o}
        if not changed:
            return
        offsets = [TopicPartition(t, p, changed[s]) for (t, p), s in zip(self._members, self._sources, strict=True)
                   if s in changed]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=not force)
            self._committed.update(changed)
        except KafkaException as exc:  # lag reporting only: the flow goes on
            log.warning("could not commit the read position to %s: %s", PROGRESS_GROUP, exc)

    def _flow_control(self) -> None:
        # A partition far ahead of the others would grow its buffer without bound: pause its
        # fetching until the merge caught up. Never pause one that is empty (the merge may wait on it).
        high = max(self._batch_size, self._max_buffer // len(self._sources))
        low = high // 2
        for (topic, part), source in zip(self._members, self._sources, strict=True):
            size = len(self._buf[source])
            if size > high and source not in self._paused:
                self._consumer.pause([TopicPartition(topic, part)])
                self._paused.add(source)
            elif size < low and source in self._paused:
                self._consumer.resume([TopicPartition(topic, part)])
                self._paused.discard(source)

    def _on_stats(self, stats_json: str) -> None:
        try:
            topics = json.loads(stats_json).get("topics", {})
            for topic, part in self._members:
                pstats = topics.get(topic, {}).get("partitions", {}).get(str(part))
                if not pstats or pstats.get("hi_offset", -1) < 0:
                    continue
                position = self._next.get(self._source_of[(topic, part)], 0)
                metrics.set_consumer_lag(topic, part, int(pstats["hi_offset"]) - position)
        except (ValueError, TypeError, AttributeError) as exc:  # stats are best effort
            log.debug("unreadable consumer stats: %s", exc)

    @staticmethod
    def _on_error(err: KafkaError) -> None:
        if err.fatal():
            log.error("fatal Kafka consumer error: %s", err)
        else:
            log.debug("Kafka consumer: %s", err)
