"""librdkafka configurations built from the engine settings.

Connection, TLS and SASL come from ``Settings.kafka_config()``; these builders add what
producers and consumers of the engine need. ``overrides`` win over everything.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.settings import Settings

_GROUP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def admin_config(settings: Settings, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Config for an AdminClient (topic creation, metadata)."""
    conf = settings.kafka_config()
    conf.update(overrides or {})
    return conf


def producer_config(
    settings: Settings,
    idempotent: bool = True,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Config for a Producer of engine output on the settings' broker (``producer_conf``)."""
    return producer_conf(settings.kafka_config(), idempotent, overrides)


def producer_conf(
    base: Mapping[str, Any],
    idempotent: bool = True,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``base`` (the connection, and any ``linger.ms`` or ``compression.type`` of the caller's)
    plus what every producer of the engine needs; ``overrides`` win over everything.

    ``idempotent=True`` turns on ``enable.idempotence`` with ``acks=all`` so a retried send
    never duplicates or reorders a message within a partition. Compression stays off unless the
    caller says otherwise: the messages are small JSON and the broker is usually local, so CPU
    costs more than bytes.
    """
    conf = {"linger.ms": 5, "compression.type": "none", **base}
    conf.update({"acks": "all" if idempotent else "1", "enable.idempotence": idempotent})
    if idempotent:
        # librdkafka's limit for idempotent producers; keeps ordering across retries.
        conf["max.in.flight.requests.per.connection"] = 5
    conf.update(overrides or {})
    return conf


def consumer_config(
    settings: Settings,
    group: str,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Config for a Consumer in ``group``: offsets committed by the caller, read from the start.

    The engine commits (or snapshots) offsets only after applying, so auto-commit is off;
    a new group starts at the earliest offset so nothing written before it is missed.
    """
    if not _GROUP.match(group):
        raise ValueError(f"bad consumer group {group!r}: letters, digits, . _ - only, ≤ 200 chars")
    conf = settings.kafka_config()
    conf.update(
        {
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
        }
    )
    conf.update(overrides or {})
    return conf


def replace_producer(old: Any, conf: Mapping[str, Any]) -> Any:
    """A new Producer of ``conf`` for one that hit a fatal error: the old one's queued and
    in-flight messages are purged first (each reports a failure to its delivery callback, so the
    caller keeps them), then it is closed."""
    from confluent_kafka import Producer

    with contextlib.suppress(Exception):
        old.purge(in_queue=True, in_flight=True)
        old.poll(0)
    new = Producer(dict(conf))
    with contextlib.suppress(Exception):
        old.close()
    return new
