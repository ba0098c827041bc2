"""Running the flow from the settings: ``run_flow`` (behind ``atp flow`` and ``python -m engine.flow``).

Delivery: with ``recovery_dir`` set, bytewax snapshots the input offsets every
``snapshot_interval_s``; a restarted flow resumes from the last snapshot and re-applies the tail
after it, which the store's per-partition offset watermark turns into no-ops. Outputs (the DLQ,
alerts, replenishment triggers) are at least once with the same ids. Without ``recovery_dir`` a
restart reads the log from the beginning (also a no-op catch-up, only slower).

Shutdown: SIGTERM or Ctrl-C (when ``run_flow`` runs on the main thread), or ``stop_event`` set
by the caller, ends the input; in-flight batches finish, outputs flush, a final snapshot is
written and ``run_flow`` returns. A second signal stops at once (``KeyboardInterrupt``); the
next start then resumes from the last snapshot.
"""

from __future__ import annotations

import functools
import logging
import re
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from types import FrameType
from typing import Any

from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import Sink
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main
from confluent_kafka import KafkaException

from connectors.topics import ADJUSTMENTS, INBOUND, INPUT_TOPICS, ORDERS, RECEIPTS, Topics
from engine import metrics
from engine.flow.alerting import alerting_extra
from engine.flow.dataflow import Extra, OutcomeItem, build_flow
from engine.flow.log_identity import TopicLog, admin_client, identify, topic_ids
from engine.flow.sinks import dlq_sink
from engine.flow.source import KafkaInput, RawMessage
from engine.observability.flow import observe_flow
from engine.settings import Settings
from engine.store.reply_stash import STASH_TTL_S
from engine.store.store import Store

log = logging.getLogger(__name__)

FLOW_ID = "atp-flow"


class FlowConfigError(ValueError):
    """The settings cannot run a flow (no broker or Redis configured, a bad recovery dir…)."""


def make_store(settings: Settings) -> Store:
    """A store on the Redis of ``settings`` (one per worker; see ``Applier``)."""
    from engine.store.connect import sync_redis

    return Store(sync_redis(settings), prefix=settings.key_prefix)


def prepare_recovery(recovery_dir: str | Path, partitions: int = 1) -> RecoveryConfig:
    """The recovery config for ``recovery_dir``, creating the dir and its partitions when new.

    An existing dir is used as it is (its partition count is fixed when created).
    """
    path = Path(recovery_dir)
    if path.exists() and not path.is_dir():
        raise FlowConfigError(f"recovery dir {path} exists and is not a directory")
    path.mkdir(parents=True, exist_ok=True)
    if not any(path.glob("part-*.sqlite3")):
        init_db_dir(path, max(1, partitions))
    return RecoveryConfig(path)


def topic_bases(topics: Topics) -> dict[str, str]:
    """Full input topic name → base name, for the parse step's topic check."""
    return {topics.name(base): base for base in INPUT_TOPICS}


MERGE_RANK: tuple[str, ...] = (INBOUND, RECEIPTS, ADJUSTMENTS, ORDERS)
"""Input topics in the order that breaks timestamp ties: supply news before the orders that use it."""


def input_logs(settings: Settings, conf: dict[str, Any], inputs: list[str]) -> dict[str, TopicLog]:
    """The generation of each input topic's log, recorded in Redis (``engine.flow.log_identity``).
    A broker that cannot tell topic ids leaves resets unnoticed: said once, loudly."""
    try:
        ids = topic_ids(admin_client(conf), inputs)
    except KafkaException as exc:
        log.warning("cannot read the input topics' ids (%s): a log that starts again would not be noticed", exc)
        return {}
    return identify(make_store(settings).redis, settings.key_prefix, ids)


def flow_from_settings(
    settings: Settings,
    topics: Topics = Topics(),  # frozen: one shared default is safe
    stop_event: threading.Event | None = None,
    *,
    until_end: bool = False,
    outcome_sink: Sink[OutcomeItem] | None = None,
    extras: Sequence[Extra] = (),
    workers: int | None = None,
    alerting: bool = True,
    wrap_source: Callable[[KafkaInput], Source[RawMessage]] | None = None,
) -> Dataflow:
    """The production dataflow: ``KafkaInput`` over the input topics, the store, the DLQ topic, and
    (``alerting``) the alert and replenishment steps, which also read the API's reservation events
    (``engine.flow.checkouts``), writing to their topics.

    ``workers`` is the total over all processes (default ``settings.workers``): with one, the
    source merges every input partition in one deterministic order (``KafkaInput``).
    ``wrap_source`` (tests) replaces the source by a wrapper around it, e.g. one that aborts.
    """
    if not settings.kafka_bootstrap:
        raise FlowConfigError("no broker configured: set ATP_KAFKA_BOOTSTRAP (or run through `atp flow`)")
    if not settings.redis_url:
        raise FlowConfigError("no Redis configured: set ATP_REDIS_URL (or run through `atp flow`)")
    conf = settings.kafka_config()
    n_workers = workers or settings.workers
    inputs = [topics.name(base) for base in MERGE_RANK]
    source = KafkaInput(
        conf,
        inputs,
        batch_size=settings.batch_size,
        max_buffer=max(20_000, 4 * settings.batch_size),
        until_end=until_end,
        stop_event=stop_event,
        single_group=n_workers == 1,
        logs=input_logs(settings, conf, inputs),
    )
    store_factory = functools.partial(make_store, settings)
    if alerting:
        extras = (alerting_extra(settings, topics, store_factory, stop_event=stop_event, until_end=until_end,
                                 single_group=n_workers == 1), *extras)
    return build_flow(
        FLOW_ID,
        wrap_source(source) if wrap_source is not None else source,
        store_factory,
        topic_bases(topics),
        dlq_sink(conf, topics.dlq),
        outcome_sink,
        extras=extras,
        keep_replies_s=STASH_TTL_S if alerting else 0,  # only the alert step reads them
    )


_ADDRESS = re.compile(r"[A-Za-z0-9.\-]+:\d{1,5}")


def check_processes(process_id: int | None, addresses: Sequence[str] | None) -> None:
    """Raise ``FlowConfigError`` unless both or neither are given, every address is ``host:port``
    and ``process_id`` indexes them."""
    if (process_id is None) != (addresses is None):
        raise FlowConfigError("process_id and addresses go together (several processes), or neither")
    if addresses is None:
        return
    bad = [a for a in addresses if not _ADDRESS.fullmatch(a)]
    if bad or not addresses:
        raise FlowConfigError(f"addresses must be host:port, ';'-separated: {';'.join(bad) or 'none given'}")
    if not 0 <= (process_id or 0) < len(addresses):
        raise FlowConfigError(f"process_id must be between 0 and {len(addresses) - 1}")


def run_flow(
    settings: Settings,
    topics: Topics = Topics(),
    stop_event: threading.Event | None = None,
    *,
    until_end: bool = False,
    outcome_sink: Sink[OutcomeItem] | None = None,
    extras: Sequence[Extra] = (),
    serve_metrics: bool = True,
    alerting: bool = True,
    wrap_source: Callable[[KafkaInput], Source[RawMessage]] | None = None,
    process_id: int | None = None,
    addresses: Sequence[str] | None = None,
) -> None:
    """Run the flow in this process with ``settings.workers`` worker threads until it ends.

    It ends when ``stop_event`` is set, on SIGTERM / SIGINT (main thread only), or — with
    ``until_end`` — once every input partition is read to its end. Raises ``FlowConfigError``
    for unusable settings; any error inside the flow propagates after the workers stopped.

    Several processes (bytewax ``-i`` / ``-a``): every process runs ``run_flow`` with the same
    ``addresses`` (``host:port`` of each process, in process order) and its own ``process_id``;
    they must share the recovery dir. Process ``i`` serves metrics on the base port + ``i``.
    """
    check_processes(process_id, addresses)
    processes = len(addresses) if addresses else 1
    stop = stop_event or threading.Event()
    flow = flow_from_settings(
        settings, topics, stop, until_end=until_end, outcome_sink=outcome_sink, extras=extras, alerting=alerting,
        wrap_source=wrap_source, workers=settings.workers * processes,
    )
    recovery = (
        prepare_recovery(settings.recovery_dir, settings.workers * processes) if settings.recovery_dir else None
    )
    if serve_metrics and settings.flow_metrics_port:
        try:
            port = metrics.serve_metrics(metrics.flow_metrics_port(settings.flow_metrics_port, process_id or 0))
            log.info("flow metrics on :%d/metrics", port)
        except OSError as exc:
            log.warning("cannot serve flow metrics on port %d: %s", settings.flow_metrics_port, exc)
    log.info(
        "flow starting: %d worker(s) x %d process(es), batch %d, recovery %s, snapshot every %.1fs",
        settings.workers, processes, settings.batch_size, settings.recovery_dir or "off", settings.snapshot_interval_s,
    )
    with _stop_on_signals(stop), observe_flow(settings, probes=serve_metrics):
        cli_main(
            flow,
            workers_per_process=settings.workers,
            process_id=process_id,
            addresses=list(addresses) if addresses else None,
            epoch_interval=timedelta(seconds=settings.snapshot_interval_s),
            recovery_config=recovery,
        )
    log.info("flow stopped")


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM / SIGINT set ``stop`` (a clean drain); a second one raises ``KeyboardInterrupt``."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        log.info("signal %d: draining and stopping (again to stop at once)", signum)
        stop.set()

    previous: dict[int, Any] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, handler)
    try:
        yield
    finally:
        for signum, prev in previous.items():
            signal.signal(signum, prev)
