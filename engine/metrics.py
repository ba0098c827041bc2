"""Every Prometheus metric of the engine, in one registry (README "Observability").

Callers use the thin functions below, never the metric objects, so label values stay bounded:
every label value must match ``[A-Za-z0-9/][A-Za-z0-9._:/{}-]{0,79}`` and each label keeps at most a
fixed number of distinct values; anything else is counted under ``"other"``. A metrics call never
raises on a bad label value (observability must not crash the flow); configuring the watch lists
does raise ``ValueError``, because that is a configuration mistake.

SKUs appear only in ``atp_watch_atp`` and only for SKUs on the configured watch list (at most
``WATCH_LIMIT``); suppliers only in ``atp_supplier_reliability``, for at most ``SUPPLIER_LIMIT``.

Several processes (bytewax ``-i``/``-a``; the API beside the flow): each process has its own
registry and serves it on its own port. The flow's process ``i`` serves on
``flow_metrics_port(settings.flow_metrics_port, i)`` = base port + ``i``; Prometheus scrapes every
port as a separate target and the dashboards ``sum`` over instances. The API serves ``/metrics``
on its own HTTP port (see ``render_latest``). There is no shared multi-process directory.

Metric names (the dashboards and alerting rules in ``dashboards/`` query exactly these):

========================================  ======================================================
atp_events_total{type,outcome}             stream events applied, by event type and reply status
atp_apply_seconds                          histogram: time to apply one batch to Redis
atp_apply_batch_size                       histogram: events per applied batch
atp_consumer_lag{topic,partition}          gauge: messages behind the partition's end
atp_dlq_total{reason}                      messages sent to the DLQ, by reason
atp_reservations_total{op,outcome}         hold/confirm/release/extend calls, by reply status
atp_reserve_seconds{op}                    histogram: reservation call latency
atp_alerts_total{kind,status}              alert transitions published (firing / resolved)
atp_alerts_firing{kind}                    gauge: alerts of a kind currently firing
atp_oversold_units                         gauge: Σ short units over the positions applied here
atp_replenishment_triggers_total           replenishment triggers published
atp_holds_expired_total                    holds released by expiry (lazily or by the sweeper)
atp_hold_age_seconds{end}                  histogram: age of a hold when it ended
atp_expiry_lag_seconds                     gauge: how long past its expiry the latest swept hold was
atp_drift_skus                             gauge: SKUs whose Redis state differs from the log
atp_drift_units                            gauge: Σ |drift| units found by the last reconcile
atp_drift_checked_skus                     gauge: SKUs the last reconcile checked
atp_drift_checked_timestamp_seconds        gauge: when the last reconcile ended (unix time; 0: none yet)
atp_reconcile_round_timestamp_seconds      gauge: when the reconcile loop's last round ended (unix time; 0: none yet)
atp_watch_atp{sku,location}                gauge: ATP of watched SKUs
atp_supplier_reliability{supplier}         gauge: on-time × fill rate, 0..1
atp_dependency_up{dependency}              gauge: 1 when redis / kafka answered the last probe
atp_producer_rebuilds_total                API producers replaced after a fatal error
atp_changelog_backlog                      gauge: change records waiting in Redis for the relay (last full pass)
atp_changelog_shipped_total                change records the relay shipped to inventory.changes
atp_changelog_relay_errors_total           relay rounds or deliveries that failed (retried)
atp_http_requests_total{route,method,status}  API requests
atp_http_request_seconds{route}            histogram: API request latency
========================================  ======================================================
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from engine.domain.events import EVENT_TYPES
from engine.domain.ids import SKU_PATTERN
from engine.domain.observation import STATUSES
from engine.domain.outputs import ALERT_KINDS, ALERT_STATUSES, STATEFUL_ALERT_KINDS

# The *_created series double the exposition size and no dashboard uses them.
disable_created_metrics()

REGISTRY = CollectorRegistry()
"""The engine's one registry (not prometheus_client's global one, so tests can read it alone)."""

CONTENT_TYPE = CONTENT_TYPE_LATEST
WATCH_LIMIT = 50
SUPPLIER_LIMIT = 50
OTHER = "other"

_LABEL_VALUE = re.compile(r"^[A-Za-z0-9/][A-Za-z0-9._:/{}-]{0,79}$")
_SKU = re.compile(SKU_PATTERN)

EVENT_OUTCOMES = STATUSES
RESERVATION_OPS = ("hold", "confirm", "release", "extend")
RESERVATION_OUTCOMES = (*STATUSES, "error")
HOLD_ENDS = ("confirmed", "released", "expired")
DEPENDENCIES = ("redis", "kafka")

_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 50_000, 100_000)
_HOLD_AGE_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 86_400)


class _BoundedLabel:
    """Admits label values that look sane, up to ``limit`` distinct ones; the rest become ``other``."""

    def __init__(self, limit: int, known: Iterable[str] = ()) -> None:
        self._limit = limit
        self._seen: set[str] = set(known)
        self._lock = threading.Lock()

    def __call__(self, value: object) -> str:
        text = str(value)
        if text in self._seen:
            return text
        if not _LABEL_VALUE.match(text):
            return OTHER
        with self._lock:
            if len(self._seen) >= self._limit:
                return OTHER
            self._seen.add(text)
        return text


_event_type = _BoundedLabel(32, EVENT_TYPES)
_event_outcome = _BoundedLabel(16, EVENT_OUTCOMES)
_topic = _BoundedLabel(32)
_partition = _BoundedLabel(1024)
_dlq_reason = _BoundedLabel(32)
_res_op = _BoundedLabel(8, RESERVATION_OPS)
_res_outcome = _BoundedLabel(16, RESERVATION_OUTCOMES)
_alert_kind = _BoundedLabel(32, ALERT_KINDS)
_alert_status = _BoundedLabel(4, ALERT_STATUSES)
_hold_end = _BoundedLabel(8, HOLD_ENDS)
_location = _BoundedLabel(64)
_dependency = _BoundedLabel(8, DEPENDENCIES)
_route = _BoundedLabel(64)
_method = _BoundedLabel(8)
_status = _BoundedLabel(64)


EVENTS = Counter("atp_events", "Stream events applied, by type and outcome", ["type", "outcome"], registry=REGISTRY)
APPLY_SECONDS = Histogram(
    "atp_apply_seconds", "Time to apply one batch of events to Redis", buckets=_LATENCY_BUCKETS, registry=REGISTRY
)
APPLY_BATCH_SIZE = Histogram(
    "atp_apply_batch_size", "Events per applied batch", buckets=_BATCH_BUCKETS, registry=REGISTRY
)
CONSUMER_LAG = Gauge(
    "atp_consumer_lag",
    "Messages between the consumed offset and the partition end; negative when the flow is past "
    "the end, which only a log that started again can make",
    ["topic", "partition"],
    registry=REGISTRY,
)
LOG_RESETS = Counter(
    "atp_log_resets", "Input topics found with a new identity (a log that started again)", ["topic"],
    registry=REGISTRY,
)
DLQ = Counter("atp_dlq", "Messages sent to the dead-letter topic, by reason", ["reason"], registry=REGISTRY)
RESERVATIONS = Counter(
    "atp_reservations", "Reservation calls, by operation and outcome", ["op", "outcome"], registry=REGISTRY
)
RESERVE_SECONDS = Histogram(
    "atp_reserve_seconds", "Reservation call latency", ["op"], buckets=_LATENCY_BUCKETS, registry=REGISTRY
)
ALERTS = Counter("atp_alerts", "Alert transitions published, by kind and status", ["kind", "status"], registry=REGISTRY)
ALERTS_FIRING = Gauge("atp_alerts_firing", "Alerts currently firing, by kind", ["kind"], registry=REGISTRY)
OVERSOLD_UNITS = Gauge(
    "atp_oversold_units", "Units promised beyond supply (sum of short) over positions applied here", registry=REGISTRY
)
REPLENISHMENT_TRIGGERS = Counter(
    "atp_replenishment_triggers", "Replenishment triggers published", registry=REGISTRY
)
HOLDS_EXPIRED = Counter("atp_holds_expired", "Holds released because they expired", registry=REGISTRY)
HOLD_AGE_SECONDS = Histogram(
    "atp_hold_age_seconds", "Age of a hold when it ended", ["end"], buckets=_HOLD_AGE_BUCKETS, registry=REGISTRY
)
EXPIRY_LAG_SECONDS = Gauge(
    "atp_expiry_lag_seconds", "How long past its expiry the most overdue hold of the last sweep was",
    registry=REGISTRY,
)
DRIFT_SKUS = Gauge("atp_drift_skus", "SKUs whose Redis state differs from the log (last reconcile)", registry=REGISTRY)
DRIFT_UNITS = Gauge("atp_drift_units", "Sum of absolute bucket drift in units (last reconcile)", registry=REGISTRY)
DRIFT_CHECKED = Gauge("atp_drift_checked_skus", "SKUs the last reconcile checked", registry=REGISTRY)
DRIFT_CHECKED_AT = Gauge(
    "atp_drift_checked_timestamp_seconds", "When the last reconcile ended, unix time (0: none yet)", registry=REGISTRY
)
RECONCILE_ROUND_AT = Gauge(
    "atp_reconcile_round_timestamp_seconds", "When the reconcile loop's last round ended, unix time (0: none yet)",
    registry=REGISTRY,
)
WATCH_ATP = Gauge("atp_watch_atp", "ATP of watched SKUs", ["sku", "location"], registry=REGISTRY)
SUPPLIER_RELIABILITY = Gauge(
    "atp_supplier_reliability", "Supplier on-time x fill rate, 0..1", ["supplier"], registry=REGISTRY
)
DEPENDENCY_UP = Gauge(
    "atp_dependency_up", "1 when the dependency answered the last readiness probe, else 0", ["dependency"],
    registry=REGISTRY,
)
PRODUCER_REBUILDS = Counter(
    "atp_producer_rebuilds", "API producers replaced after a fatal error", registry=REGISTRY
)
CHANGELOG_BACKLOG = Gauge(
    "atp_changelog_backlog", "Change records waiting in Redis for the relay (sum of the logs' "
    "lengths seen in the last full pass)", registry=REGISTRY,
)
CHANGELOG_SHIPPED = Counter(
    "atp_changelog_shipped", "Change records the relay shipped to the change log topic and trimmed from Redis",
    registry=REGISTRY,
)
CHANGELOG_RELAY_ERRORS = Counter(
    "atp_changelog_relay_errors", "Relay rounds or deliveries that failed (the records stay in Redis; retried)",
    registry=REGISTRY,
)
HTTP_REQUESTS = Counter(
    "atp_http_requests", "API requests, by route template, method and status", ["route", "method", "status"],
    registry=REGISTRY,
)
HTTP_REQUEST_SECONDS = Histogram(
    "atp_http_request_seconds", "API request latency", ["route"], buckets=_LATENCY_BUCKETS, registry=REGISTRY
)

# Known label combinations start at 0, so rate() and the dashboards show 0 rather than nothing.
for _t in EVENT_TYPES:
    for _o in EVENT_OUTCOMES:
        EVENTS.labels(_t, _o)
for _op in RESERVATION_OPS:
    RESERVE_SECONDS.labels(_op)
    for _o in RESERVATION_OUTCOMES:
        RESERVATIONS.labels(_op, _o)
for _k in ALERT_KINDS:
    for _s in ALERT_STATUSES:
        ALERTS.labels(_k, _s)
for _k in STATEFUL_ALERT_KINDS:
    ALERTS_FIRING.labels(_k)
for _e in HOLD_ENDS:
    HOLD_AGE_SECONDS.labels(_e)

_watch_lock = threading.Lock()
_watched: frozenset[str] = frozenset()
_watch_series: set[tuple[str, str]] = set()
_suppliers = _BoundedLabel(SUPPLIER_LIMIT)


# --- serving -------------------------------------------------------------------------------------


def flow_metrics_port(base_port: int, process_id: int) -> int:
    """The port process ``process_id`` of a multi-process flow serves on: ``base_port + process_id``."""
    if process_id < 0:
        raise ValueError("process_id must be >= 0")
    if base_port == 0:
        return 0
    port = base_port + process_id
    if not 0 < port <= 65535:
        raise ValueError(f"metrics port {port} out of range")
    return port


def serve_metrics(port: int, addr: str = "0.0.0.0") -> int:
    """Serve ``REGISTRY`` at ``http://addr:port/metrics`` from a daemon thread; returns the bound port.

    ``port=0`` picks a free port (useful in tests).
    """
    server, _thread = start_http_server(port, addr=addr, registry=REGISTRY)
    return int(server.server_port)


def render_latest() -> bytes:
    """The exposition text of ``REGISTRY`` (the API's ``/metrics`` body; content type ``CONTENT_TYPE``)."""
    return generate_latest(REGISTRY)


# --- the stream ----------------------------------------------------------------------------------


def record_event(event_type: str, outcome: str, n: int = 1) -> None:
    """Count ``n`` stream events of ``event_type`` whose apply reply had status ``outcome``."""
    EVENTS.labels(_event_type(event_type), _event_outcome(outcome)).inc(n)


def observe_apply_batch(seconds: float, size: int) -> None:
    """Record one batch applied to Redis: its wall time and the number of events in it."""
    APPLY_SECONDS.observe(seconds)
    APPLY_BATCH_SIZE.observe(size)


def set_consumer_lag(topic: str, partition: int, lag: int) -> None:
    """Set how many messages the consumer is behind on one partition (negative: past the end)."""
    CONSUMER_LAG.labels(_topic(topic), _partition(partition)).set(lag)


def record_log_reset(topic: str, resets: int = 1) -> None:
    """Count an input topic found with a new identity (``engine.flow.log_identity``); 0 makes the
    series exist, so the alert rule reads 0 rather than nothing."""
    LOG_RESETS.labels(_topic(topic)).inc(resets)


def record_dlq(reason: str) -> None:
    """Count one message sent to the DLQ with ``reason`` (e.g. ``bad_json``, ``unknown_type``)."""
    DLQ.labels(_dlq_reason(reason)).inc()


# --- reservations --------------------------------------------------------------------------------


def record_reservation(op: str, outcome: str, seconds: float | None = None) -> None:
    """Count one reservation call (``op`` ∈ hold/confirm/release/extend, ``outcome`` = reply status).

    ``seconds``, when given, is the call's latency (observed in ``atp_reserve_seconds``).
    """
    label_op = _res_op(op)
    RESERVATIONS.labels(label_op, _res_outcome(outcome)).inc()
    if seconds is not None:
        RESERVE_SECONDS.labels(label_op).observe(seconds)


def record_holds_expired(n: int) -> None:
    """Count ``n`` holds released by expiry."""
    if n > 0:
        HOLDS_EXPIRED.inc(n)


def observe_hold_age(seconds: float, end: str) -> None:
    """Record the age of a hold when it ended (``end`` ∈ confirmed/released/expired)."""
    HOLD_AGE_SECONDS.labels(_hold_end(end)).observe(max(0.0, seconds))


def set_expiry_lag(seconds: float) -> None:
    """Set how overdue the most overdue hold released by the last sweep was (0 if none)."""
    EXPIRY_LAG_SECONDS.set(max(0.0, seconds))


# --- alerts, replenishment, supply ---------------------------------------------------------------


def record_alert(kind: str, status: str, revision: int = 0) -> None:
    """Count one published alert message and keep ``atp_alerts_firing`` in step.

    A ``firing`` of a stateful kind adds one firing alert, a ``resolved`` removes one; a follow-up
    firing of the same episode (``revision`` > 0) changes nothing. The gauge is per process and
    starts at 0, so after a restart it counts transitions since the restart; a caller that knows
    the absolute number should use ``set_alerts_firing``.
    """
    label_kind = _alert_kind(kind)
    label_status = _alert_status(status)
    ALERTS.labels(label_kind, label_status).inc()
    if kind in STATEFUL_ALERT_KINDS and revision == 0:
        if status == "firing":
            ALERTS_FIRING.labels(label_kind).inc()
        elif status == "resolved":
            ALERTS_FIRING.labels(label_kind).dec()


def set_alerts_firing(kind: str, count: int) -> None:
    """Set the number of alerts of ``kind`` currently firing (for a caller that knows the total)."""
    ALERTS_FIRING.labels(_alert_kind(kind)).set(max(0, count))


def add_oversold_units(delta: int) -> None:
    """Move ``atp_oversold_units`` by ``delta`` (new Σ short − old Σ short of a position)."""
    OVERSOLD_UNITS.inc(delta)


def record_replenishment_trigger(n: int = 1) -> None:
    """Count ``n`` published replenishment triggers."""
    REPLENISHMENT_TRIGGERS.inc(n)


def set_supplier_reliability(supplier: str, score: float) -> None:
    """Set a supplier's reliability (0..1); beyond ``SUPPLIER_LIMIT`` suppliers, lands in ``other``."""
    SUPPLIER_RELIABILITY.labels(_suppliers(supplier)).set(min(1.0, max(0.0, score)))


def set_drift(skus: int, units: int, checked: int | None = None, at_s: float | None = None) -> None:
    """Publish the last reconcile's result: SKUs that drifted, Σ |drift| units, and (when given)
    the SKUs it checked and when it ended (unix time)."""
    DRIFT_SKUS.set(max(0, skus))
    DRIFT_UNITS.set(max(0, units))
    if checked is not None:
        DRIFT_CHECKED.set(max(0, checked))
    if at_s is not None:
        DRIFT_CHECKED_AT.set(max(0.0, at_s))


def set_reconcile_round(at_s: float) -> None:
    """Publish when the reconcile loop's last round ended (unix time)."""
    RECONCILE_ROUND_AT.set(max(0.0, at_s))


# --- the watch list ------------------------------------------------------------------------------


def configure_watch_list(skus: Iterable[str]) -> frozenset[str]:
    """Replace the watch list (SKUs exported by ``atp_watch_atp``); raises ``ValueError`` when a SKU
    is malformed or there are more than ``WATCH_LIMIT``. Series of SKUs no longer watched are removed.
    """
    global _watched
    new = frozenset(skus)
    bad = sorted(s for s in new if not _SKU.match(s))
    if bad:
        raise ValueError(f"malformed SKUs in the watch list: {bad[:5]}")
    if len(new) > WATCH_LIMIT:
        raise ValueError(f"watch list has {len(new)} SKUs; at most {WATCH_LIMIT}")
    with _watch_lock:
        dropped = _watched - new
        _watched = new
        for series in [x for x in _watch_series if x[0] in dropped]:
            WATCH_ATP.remove(*series)
            _watch_series.discard(series)
    return new


def is_watched(sku: str) -> bool:
    """True when ``sku`` is on the watch list."""
    return sku in _watched


def set_watched_atp(sku: str, location: str, atp: int) -> None:
    """Set the ATP gauge of (sku, location) if the SKU is watched; otherwise do nothing."""
    if sku in _watched:
        series = (sku, _location(location))
        with _watch_lock:
            _watch_series.add(series)
        WATCH_ATP.labels(*series).set(atp)


# --- dependencies and HTTP -----------------------------------------------------------------------


def set_dependency_up(dependency: str, up: bool) -> None:
    """Record the result of a readiness probe of ``dependency`` (``redis`` or ``kafka``)."""
    DEPENDENCY_UP.labels(_dependency(dependency)).set(1 if up else 0)


def count_producer_rebuild() -> None:
    """Count one producer replaced after a fatal error."""
    PRODUCER_REBUILDS.inc()


def set_changelog_backlog(n: int) -> None:
    """Change records waiting in Redis for the relay."""
    CHANGELOG_BACKLOG.set(max(0, n))


def count_changelog_shipped(n: int) -> None:
    """Count ``n`` change records shipped (acknowledged by the broker and trimmed)."""
    if n > 0:
        CHANGELOG_SHIPPED.inc(n)


def count_changelog_relay_error() -> None:
    """Count one failed relay round or delivery."""
    CHANGELOG_RELAY_ERRORS.inc()


def observe_http(route: str, method: str, status: int, seconds: float) -> None:
    """Record one API request; ``route`` must be the route template (``/v1/atp/{sku}``), never a raw path."""
    HTTP_REQUESTS.labels(_route(route), _method(method.upper()), _status(status)).inc()
    HTTP_REQUEST_SECONDS.labels(_route(route)).observe(seconds)
