"""Topic names and topic creation.

The production names are module constants. ``Topics`` carries the same set with an
optional prefix/suffix so that each test (or each demo run) can work on fresh topics:
``Topics(suffix=".t1a2b").orders == "inventory.orders.t1a2b"``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

ORDERS = "inventory.orders"
INBOUND = "inventory.inbound"
RECEIPTS = "inventory.receipts"
ADJUSTMENTS = "inventory.adjustments"
RESERVATIONS = "inventory.reservations"
ALERTS = "inventory.alerts"
REPLENISHMENT = "inventory.replenishment"
DLQ = "inventory.dlq"
CHANGES = "inventory.changes"

#: Consumed by the flow (events keyed by SKU).
INPUT_TOPICS: tuple[str, ...] = (ORDERS, INBOUND, RECEIPTS, ADJUSTMENTS)
#: Produced by the engine: reservation changes made through the API, alerts, triggers, bad input.
#: The change log (docs/changelog.md): every change of every SKU, kept without a time limit.
OUTPUT_TOPICS: tuple[str, ...] = (RESERVATIONS, ALERTS, REPLENISHMENT, DLQ, CHANGES)
#: Topic configs beyond the broker's defaults: the change log is what Redis is rebuilt from.
TOPIC_CONFIGS: dict[str, dict[str, str]] = {CHANGES: {"retention.ms": "-1", "retention.bytes": "-1"}}
ALL_TOPICS: tuple[str, ...] = INPUT_TOPICS + OUTPUT_TOPICS

# Kafka's legal topic characters; the affix must keep every name legal.
_AFFIX = re.compile(r"^[A-Za-z0-9._-]{0,100}$")


@dataclass(frozen=True)
class Topics:
    """The engine's topic names, each as ``prefix + base name + suffix``."""

    prefix: str = ""
    suffix: str = ""

    def __post_init__(self) -> None:
        for label, value in (("prefix", self.prefix), ("suffix", self.suffix)):
            if not _AFFIX.match(value):
                raise ValueError(f"topic {label} {value!r} may hold only A-Z a-z 0-9 . _ - (≤ 100 chars)")

    def name(self, base: str) -> str:
        """The full name for one of the base names above."""
        if base not in ALL_TOPICS:
            raise ValueError(f"unknown topic {base!r}; known: {', '.join(ALL_TOPICS)}")
        return f"{self.prefix}{base}{self.suffix}"

    @property
    def orders(self) -> str:
        return self.name(ORDERS)

    @property
    def inbound(self) -> str:
        return self.name(INBOUND)

    @property
    def receipts(self) -> str:
        return self.name(RECEIPTS)

    @property
    def adjustments(self) -> str:
        return self.name(ADJUSTMENTS)

    @property
    def reservations(self) -> str:
        return self.name(RESERVATIONS)

    @property
    def alerts(self) -> str:
        return self.name(ALERTS)

    @property
    def replenishment(self) -> str:
        return self.name(REPLENISHMENT)

    @property
    def dlq(self) -> str:
        return self.name(DLQ)

    @property
    def changes(self) -> str:
        return self.name(CHANGES)

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(self.name(t) for t in INPUT_TOPICS)

    @property
    def outputs(self) -> tuple[str, ...]:
        return tuple(self.name(t) for t in OUTPUT_TOPICS)

    @property
    def all(self) -> tuple[str, ...]:
        return self.inputs + self.outputs

    def base_of(self, full_name: str) -> str:
        """The base name (e.g. ``inventory.orders``) of one of this set's full names."""
        for base in ALL_TOPICS:
            if self.name(base) == full_name:
                return base
        raise ValueError(f"{full_name!r} is not one of this set's topics")


def create_topics(
    admin_conf: Mapping[str, Any],
    topics: Topics | Iterable[str] = Topics(),  # frozen, so one shared default is safe
    partitions: int = 3,
    replication_factor: int = 1,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create the topics that do not exist yet; returns the names this call created.

    ``admin_conf`` is a librdkafka config (at least ``bootstrap.servers``, e.g.
    ``Settings.kafka_config()``). A topic that already exists is left as it is, whatever
    its partition count. Any other failure raises ``KafkaException``.
    """
    if not 1 <= partitions <= 1024:
        raise ValueError("partitions must be between 1 and 1024")
    names = list(topics.all if isinstance(topics, Topics) else topics)
    bases = topics if isinstance(topics, Topics) else Topics()
    admin = AdminClient(dict(admin_conf))
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = [n for n in dict.fromkeys(names) if n not in existing]
    if not wanted:
        return []
    futures = admin.create_topics(
        [NewTopic(n, num_partitions=partitions, replication_factor=replication_factor,
                  config=_config_of(bases, n)) for n in wanted],
        operation_timeout=timeout_s,
        request_timeout=timeout_s,
    )
    created: list[str] = []
    for name, future in futures.items():
        try:
            future.result(timeout=timeout_s)
            created.append(name)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue  # created concurrently by someone else: that is fine
            raise
    return [n for n in wanted if n in created]


def _config_of(topics: Topics, name: str) -> dict[str, str]:
    try:
        return dict(TOPIC_CONFIGS.get(topics.base_of(name), {}))
    except ValueError:
        return {}  # a topic of another set: the broker's defaults
