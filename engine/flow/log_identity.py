"""Which log the flow reads: a topic's identity (its topic id), and the generation it is.

A topic deleted and created again, a broker that lost its data, a move to another cluster: the
offsets start from 0 again, while the store's per-SKU offset watermarks and the flow's snapshot
still hold the old log's. Left alone, every event of the new log under an old watermark would be
dropped as a duplicate, and the lag would read 0. So each input topic's id is recorded in Redis
(``<prefix>:logs``, field ``<topic>|<topic id>`` → its generation, one per id ever seen) and the
generation becomes part of every source name (``topic@g2:partition``; the first log keeps plain
``topic:partition``): the watermarks, reply stashes and snapshot positions of one log are never
taken for another's. A new generation is a reset: logged as an error and counted in
``atp_log_resets_total{topic}``, which an alert rule watches (README, "When the log is reset").
Event-id dedupe spans generations, so an event republished into the new log with its id is
still applied once (within the recent-event window).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient

from engine import metrics
from engine.store.keys import logs_key

log = logging.getLogger(__name__)

_CONSUMER_ONLY = ("group.", "enable.", "fetch.", "statistics.", "auto.", "isolation.")


class LogReset(RuntimeError):
    """An input topic's identity changed under a running flow: restart it to read the new log."""


@dataclass(frozen=True)
class TopicLog:
    """One input topic as the flow reads it: ``topic_id`` and the generation's ``tag`` ('' for the
    first log of the topic, ``g<n>`` after a reset)."""

    topic: str
    topic_id: str
    tag: str = ""


def source_name(topic: str, partition: int, tag: str = "") -> str:
    """The name a partition's offsets are kept under: ``topic:partition``, ``topic@<tag>:partition``."""
    return f"{topic}@{tag}:{partition}" if tag else f"{topic}:{partition}"


def admin_client(conf: Mapping[str, Any]) -> AdminClient:
    """An admin client on the connection settings of ``conf`` (consumer-only keys left out)."""
    return AdminClient({k: v for k, v in conf.items() if not k.startswith(_CONSUMER_ONLY) and not callable(v)})


def describe(admin: AdminClient, topics: Sequence[str], timeout_s: float = 15.0) -> dict[str, Future[Any]]:
    """Ask the broker for the topics' descriptions; a future per topic (nothing waits here)."""
    return admin.describe_topics(TopicCollection(list(topics)), request_timeout=timeout_s)  # type: ignore[no-any-return]


def topic_ids(admin: AdminClient, topics: Sequence[str], timeout_s: float = 15.0) -> dict[str, str]:
    """Each topic's id, as the broker says now (``KafkaException`` when it cannot tell)."""
    futures = describe(admin, topics, timeout_s)
    return {name: str(future.result(timeout=timeout_s).topic_id) for name, future in futures.items()}


def identify(redis: Any, prefix: str, ids: Mapping[str, str]) -> dict[str, TopicLog]:
    """The generation of each topic's current log, recorded on first sight. Several processes may
    race here: ``HSETNX`` makes one generation per id win, whoever counted first."""
    key = logs_key(prefix)
    out: dict[str, TopicLog] = {}
    for topic, topic_id in ids.items():
        metrics.record_log_reset(topic, 0)
        field = f"{topic}|{topic_id}"
        known = redis.hget(key, field)
        if known is None:
            n = int(redis.hincrby(key, f"{topic}|#", 1)) - 1
            if redis.hsetnx(key, field, n) and n > 0:
                metrics.record_log_reset(topic)
                log.error(
                    "the log of %s was reset (a new topic id, %s): reading it from its start as generation "
                    "g%d; what the old log applied stays applied (README, 'When the log is reset')",
                    topic, topic_id, n,
                )
            known = redis.hget(key, field)
        generation = int(known)
        out[topic] = TopicLog(topic, topic_id, f"g{generation}" if generation else "")
    return out


def moved(answer: Mapping[str, Future[Any]], logs: Mapping[str, TopicLog]) -> list[str] | None:
    """From ``describe``'s answer: the topics whose id is no longer the one read; None while the
    answer is not in, [] when the broker could not tell (the next check asks again)."""
    if not all(f.done() for f in answer.values()):
        return None
    try:
        now = {name: str(f.result().topic_id) for name, f in answer.items()}
    except KafkaException as exc:
        log.debug("cannot check the input topics' ids: %s", exc)
        return []
    return [topic for topic, seen in logs.items() if topic in now and now[topic] != seen.topic_id]
