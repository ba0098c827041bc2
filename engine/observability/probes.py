"""Is Redis up, is the broker up: the probes behind ``atp_dependency_up`` in a process without an
event loop (the flow; the API probes from its own loop, as ``/readyz`` does)."""

from __future__ import annotations

import logging
from typing import Any

from engine import metrics

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0


def redis_up(client: Any) -> bool:
    """True when ``client`` (a sync redis client) answers PING."""
    try:
        return bool(client.ping())
    except Exception as exc:  # any failure means "down"; the reason goes to the log
        log.debug("dependency probe: redis: %r", exc)
        return False


def kafka_up(admin: Any, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """True when the broker answers a metadata request of ``admin`` (a confluent-kafka AdminClient)."""
    try:
        admin.list_topics(timeout=timeout_s)
        return True
    except Exception as exc:
        log.debug("dependency probe: kafka: %r", exc)
        return False


def probe_dependencies(redis_client: Any, admin: Any) -> tuple[bool, bool]:
    """Probe both, set ``atp_dependency_up`` for each; returns (redis up, kafka up)."""
    up = (redis_up(redis_client), kafka_up(admin))
    metrics.set_dependency_up("redis", up[0])
    metrics.set_dependency_up("kafka", up[1])
    return up
