"""``atp demo``: the whole engine on one machine, and a simulated flash sale against it.

It starts the embedded Redis and broker, creates the topics, runs the flow and the API as child
processes, loads a catalogue with policies (one SKU presells against an inbound lot), then for
``duration_s`` runs many concurrent checkouts through the HTTP API (hold, then confirm or release
or let expire) while the simulated order / inbound / receipt stream flows in. It ends with a
summary: reservations ok / refused, oversold units (must be 0), alerts and triggers emitted, the
ATP of the hot SKUs, and where to look. Every child process stops at the end or on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import secrets
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.live import Live
from rich.table import Table

from connectors.embedded import ManagedProcess, embedded_stack, free_port
from connectors.kafka import admin_config, producer_config
from connectors.topics import Topics, create_topics
from engine.http import AsyncAtpHttpClient, AtpHttpError
from engine.settings import Settings

HOT_SKUS = {"FLASH-1": 300, "FLASH-2": 200, "FLASH-3": 120}
PRESELL_SKU = "PRE-1"
PRESELL_ON_HAND = 20
PRESELL_LOT = 200
LOCATION = "WH1"
SHOPPERS = 48
HOLD_TTL_S = 4


@dataclass
class Tally:
    """What the shoppers and the output consumer saw (updated from several threads)."""

    reservations: Counter[str] = field(default_factory=Counter)
    alerts: Counter[str] = field(default_factory=Counter)
    critical: Counter[str] = field(default_factory=Counter)  # SKU -> critical alerts fired
    episodes: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)  # condition -> episodes
    alert_span_ms: list[int] = field(default_factory=list)  # the first and last alert's event time
    triggers: int = 0
    events_sent: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, what: str) -> None:
        with self.lock:
            self.reservations[what] += 1

    def note_alert(self, body: dict[str, Any]) -> None:
        """Count one alert message (hold ``lock``): by kind and status, and each new firing per
        SKU (critical) and per condition (episodes)."""
        self.alerts[f"{body.get('kind')}:{body.get('status')}"] += 1
        at = int(body.get("occurred_ms") or 0)
        self.alert_span_ms[:] = [min(self.alert_span_ms[0], at), max(self.alert_span_ms[1], at)] \
            if self.alert_span_ms else [at, at]
        if body.get("status") != "firing" or body.get("revision"):
            return
        sku = str(body.get("sku"))
        if body.get("severity") == "critical":
            self.critical[sku] += 1
        self.episodes[(str(body.get("kind")), sku, str(body.get("location")), str(body.get("subject")))] += 1

    def alert_rates(self) -> dict[str, Any]:
        """Per simulated day (the alerts' event-time span, at least a day): the most critical
        firings of one SKU and the most episodes of one condition (hold ``lock``)."""
        days = max(1.0, (self.alert_span_ms[1] - self.alert_span_ms[0]) / 86_400_000) if self.alert_span_ms else 1.0
        return {
            "simulated_days": round(days, 2),
            "critical_firings_per_sku_day_max": round(max(self.critical.values(), default=0) / days, 2),
            "episodes_per_condition_day_max": round(max(self.episodes.values(), default=0) / days, 2),
            "critical_most": [[sku, n] for sku, n in self.critical.most_common(3)],
            "episodes_most": [[*cond, n] for cond, n in self.episodes.most_common(3)],
        }


def _now_rfc3339(delta: timedelta = timedelta()) -> str:
    return (datetime.now(UTC) + delta).isoformat().replace("+00:00", "Z")


def _event(kind: str, **payload: Any) -> bytes:
    return orjson.dumps({"event_id": f"demo-{uuid.uuid4().hex}", "type": kind, "occurred_at": _now_rfc3339(), **payload})


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def child_env(running: Settings, token_roles: dict[str, list[str]], recovery_dir: str,
              extra_env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the flow and API processes: this one's, plus what ``running`` says
    about Redis and the broker — the URLs the embedded servers got, and whether Redis is a
    Cluster (``running`` may say so while this environment does not: a plain client on a
    Cluster gets MOVED for most keys)."""
    return {
        **os.environ,
        "ATP_REDIS_URL": running.redis_url,
        "ATP_REDIS_CLUSTER": "true" if running.redis_cluster else "false",
        "ATP_KAFKA_BOOTSTRAP": running.kafka_bootstrap,
        "ATP_API_TOKENS": orjson.dumps(token_roles).decode(),
        "ATP_RECOVERY_DIR": recovery_dir,
        **(extra_env or {}),
    }


@contextlib.contextmanager
def engine_processes(running: Settings, token_roles: dict[str, list[str]], *, recovery_dir: str | None = None,
                     api_port: int | None = None, extra_env: dict[str, str] | None = None) -> Iterator[tuple[str, str]]:
    """The flow and the API as child processes over ``running``'s Redis and broker; yields (API base
    URL, flow metrics URL). ``recovery_dir``: the flow's snapshots (default: a new temp dir);
    ``extra_env``: more settings for both."""
    recovery = recovery_dir or tempfile.mkdtemp(prefix="atp-demo-recovery-")
    env = child_env(running, token_roles, recovery, extra_env)
    flow_port = free_port()
    flow = ManagedProcess(
        "flow",
        lambda port: [sys.executable, "-m", "engine.flow", "--log-level", "WARNING"],
        lambda port: _http_ok(f"http://127.0.0.1:{port}/metrics"),
        env={**env, "ATP_FLOW_METRICS_PORT": str(flow_port)},
        port=flow_port,
    )
    api = ManagedProcess(
        "api",
        lambda port: [sys.executable, "-c", "from engine.cli import main; main()", "serve",
                      "--port", str(port), "--log-level", "warning"],
        lambda port: _http_ok(f"http://127.0.0.1:{port}/healthz"),
        env=env,
        port=api_port,
    )
    with flow, api:
        yield f"http://127.0.0.1:{api.port}", f"http://127.0.0.1:{flow_port}/metrics"


class _Producer:
    """The demo's own idempotent producer: catalogue stock and the order system's order.placed."""

    def __init__(self, running: Settings, tally: Tally) -> None:
        from confluent_kafka import Producer

        self._producer = Producer(producer_config(running))
        self._tally = tally
        self.topics = Topics()

    def send(self, topic: str, key: str, value: bytes) -> None:
        self._producer.produce(topic, key=key.encode(), value=value)
        self._producer.poll(0)
        with self._tally.lock:
            self._tally.events_sent += 1

    def flush(self) -> None:
        self._producer.flush(15)

    def close(self) -> None:
        """Flush and let librdkafka go (before the broker stops, or it logs disconnects)."""
        self._producer.flush(15)
        self._producer = None


def _load_catalogue(api: httpx.Client, producer: _Producer) -> None:
    for sku, stock in HOT_SKUS.items():
        policy = {"mode": "strict", "order_cap": 2, "customer_limit": 2, "low_stock": stock // 5,
                  "quotas": {"marketplace": stock // 4}}
        api.put(f"/v1/policies/{sku}", json=policy).raise_for_status()
        producer.send(producer.topics.adjustments, sku,
                      _event("stock.counted", sku=sku, location=LOCATION, on_hand=stock, reason="cycle count"))
    api.put(f"/v1/policies/{PRESELL_SKU}", json={"mode": "presell", "cap_pm": 500, "order_cap": 3,
                                                  "low_stock": 10}).raise_for_status()
    producer.send(producer.topics.adjustments, PRESELL_SKU,
                  _event("stock.counted", sku=PRESELL_SKU, location=LOCATION, on_hand=PRESELL_ON_HAND))
    producer.send(producer.topics.inbound, PRESELL_SKU,
                  _event("inbound.created", inbound_id="PO-DEMO-1", sku=PRESELL_SKU, location=LOCATION,
                         qty=PRESELL_LOT, eta=_now_rfc3339(timedelta(days=3)), supplier_id="SUP-DEMO"))
    producer.flush()
    deadline = time.monotonic() + 60
    want = dict(HOT_SKUS) | {PRESELL_SKU: PRESELL_ON_HAND}
    while time.monotonic() < deadline:
        seen = {sku: api.get(f"/v1/atp/{sku}").json().get("on_hand") for sku in want}
        if seen == want:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the flow did not apply the catalogue within 60 s (saw {seen})")


async def _shopper(base: str, token: str, stop: float, tally: Tally, producer: _Producer, seed: int) -> None:
    """One checkout service: holds through the HTTP client, then confirms, releases or lets the
    hold expire. A hold that fails after the client's retries counts as an error."""
    rng = random.Random(seed)
    skus = [*HOT_SKUS, PRESELL_SKU]
    weights = [3, 2, 1, 1]
    async with AsyncAtpHttpClient(base, token, timeout=10.0) as atp:
        while time.monotonic() < stop:
            sku = rng.choices(skus, weights)[0]
            rid = f"demo-{uuid.uuid4().hex[:16]}"
            qty = rng.randint(1, 2)
            channel = rng.choice(["web", "web", "app", "marketplace"])
            started = time.perf_counter()
            try:
                result = await atp.hold([(sku, qty)], reservation_id=rid, ttl_seconds=HOLD_TTL_S, channel=channel,
                                        customer=f"cust-{rng.randint(1, 4000)}")
            except AtpHttpError as exc:
                tally.count("error")
                if exc.status is not None:  # an answer (not a dropped connection) has its latency
                    with tally.lock:
                        tally.latencies_ms.append((time.perf_counter() - started) * 1000)
                continue
            with tally.lock:
                tally.latencies_ms.append((time.perf_counter() - started) * 1000)
            if not result.ok:
                tally.count("refused")
                continue
            tally.count("held")
            roll = rng.random()
            with contextlib.suppress(AtpHttpError):  # a checkout that could not finish: not a sale
                if roll < 0.7:
                    await atp.confirm(rid)
                    tally.count("confirmed")
                    # What the order system does next: the order enters the log.
                    producer.send(producer.topics.orders, sku, _event(
                        "order.placed", order_id=rid, channel=channel, lines=[{"sku": sku, "qty": qty}]))
                elif roll < 0.9:
                    await atp.release(rid)
                    tally.count("released")
                else:
                    tally.count("left_to_expire")


def _consume_outputs(running: Settings, topics: Topics, tally: Tally, stop: threading.Event) -> None:
    """Count what the flow emits on the alert and replenishment topics."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**admin_config(running), "group.id": f"atp-demo-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(timeout=10)
        parts = [TopicPartition(name, p, 0) for name in (topics.alerts, topics.replenishment)
                 for p in meta.topics[name].partitions]
        consumer.assign(parts)
        while not stop.is_set():
            for msg in consumer.consume(500, 0.2):
                if msg.error() or msg.value() is None:
                    continue
                if msg.topic() == topics.replenishment:
                    with tally.lock:
                        tally.triggers += 1
                    continue
                body = orjson.loads(msg.value())
                with tally.lock:
                    tally.note_alert(body)
    finally:
        consumer.close()


def _render(tally: Tally, positions: dict[str, dict[str, Any]], elapsed: float, duration: float) -> Table:
    table = Table(title=f"atp demo — flash sale {elapsed:4.0f}/{duration:.0f} s", show_lines=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    with tally.lock:
        res = dict(tally.reservations)
        alerts = sum(tally.alerts.values())
        triggers, sent = tally.triggers, tally.events_sent
    for key in ("held", "refused", "confirmed", "released", "left_to_expire", "error"):
        table.add_row(f"reservations {key}", str(res.get(key, 0)))
    table.add_row("events sent (catalogue + orders)", str(sent))
    table.add_row("alerts / triggers received", f"{alerts} / {triggers}")
    for sku, pos in positions.items():
        table.add_row(f"ATP {sku}", f"{pos.get('atp')} (held {pos.get('held')}, committed {pos.get('committed')})")
    return table


@dataclass
class DemoEngine:
    """A running demo engine: the embedded services, the flow and the API, catalogue loaded."""

    settings: Settings
    topics: Topics
    token: str
    api_url: str
    flow_metrics_url: str
    api: httpx.Client
    producer: _Producer
    tally: Tally


@contextlib.contextmanager
def demo_engine(settings: Settings, console: Console | None = None) -> Iterator[DemoEngine]:
    """Start everything (embedded Redis and broker, topics, flow, API) and load the catalogue.

    Also used by the Prometheus test to scrape a real engine under load.
    """
    console = console or Console(stderr=True)
    token = secrets.token_urlsafe(24)
    roles = {hashlib.sha256(token.encode()).hexdigest(): ["read", "reserve", "operate"]}
    settings = settings.model_copy(update={"api_tokens": roles})
    tally = Tally()
    topics = Topics()
    with embedded_stack(settings) as running:
        create_topics(admin_config(running), topics, partitions=running.topic_partitions)
        console.print(f"[dim]Redis {running.redis_url} · broker {running.kafka_bootstrap}[/dim]")
        demo_env = {"ATP_SNAPSHOT_INTERVAL_S": "2", "ATP_SWEEP_INTERVAL_S": "0.5",
                    "ATP_WATCH_SKUS": orjson.dumps(list(HOT_SKUS)).decode()}
        with engine_processes(running, roles, extra_env=demo_env) as (base, flow_metrics):
            console.print(f"[dim]API {base}/docs · flow metrics {flow_metrics}[/dim]")
            producer = _Producer(running, tally)
            api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=10.0)
            try:
                _load_catalogue(api, producer)
                yield DemoEngine(running, topics, token, base, flow_metrics, api, producer, tally)
            finally:
                api.close()
                producer.close()


def run_sale(engine: DemoEngine, duration_s: float, console: Console, *, live: bool = True,
             stream_events: int | None = None) -> dict[str, Any]:
    """The flash sale through the API beside the simulated stream; returns the summary."""
    tally = engine.tally
    stop_outputs = threading.Event()
    outputs = threading.Thread(target=_consume_outputs, args=(engine.settings, engine.topics, tally, stop_outputs),
                               daemon=True)
    outputs.start()
    n_stream = stream_events or int(400 * duration_s)
    stream = threading.Thread(target=_stream, args=(engine.settings, engine.topics, n_stream), daemon=True)
    stream.start()
    summary = _flash_sale(engine, duration_s, console, live)
    stream.join(timeout=60)
    _settle(console)
    stop_outputs.set()
    outputs.join(timeout=10)
    summary.update(_summary(engine))
    return summary


def run_demo(settings: Settings, duration_s: float = 60.0, keep_running: bool = False,
             as_json: bool = False, stream_events: int | None = None) -> dict[str, Any]:
    """Run the demo end to end; returns (and prints) the summary."""
    console = Console(stderr=as_json)
    with demo_engine(settings, console) as engine:
        summary = run_sale(engine, duration_s, console, stream_events=stream_events)
        _print_summary(summary, console, as_json)
        if keep_running:
            console.print("[bold]Services keep running; Ctrl-C stops them.[/bold]")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(1)
    return summary


def _stream(running: Settings, topics: Topics, n: int) -> None:
    """The simulated order / inbound / receipt / adjustment stream (with a few bad messages)."""
    from engine.dev.simulate import produce

    produce(running, topics, n=n, seed=7, skus=40, bad_fraction=0.01, progress=False)


def _flash_sale(engine: DemoEngine, duration_s: float, console: Console, live: bool) -> dict[str, Any]:
    base, token, api, producer, tally = engine.api_url, engine.token, engine.api, engine.producer, engine.tally
    started = time.monotonic()
    stop = started + duration_s
    positions: dict[str, dict[str, Any]] = {}

    async def sale() -> None:
        shoppers = [asyncio.create_task(_shopper(base, token, stop, tally, producer, i)) for i in range(SHOPPERS)]
        with Live(_render(tally, positions, 0, duration_s), console=console, refresh_per_second=4,
                  transient=not live) as display:
            while not all(s.done() for s in shoppers):
                await asyncio.sleep(0.5)
                with contextlib.suppress(httpx.HTTPError):
                    resp = await asyncio.to_thread(api.post, "/v1/atp/query", json={"skus": [*HOT_SKUS, PRESELL_SKU]})
                    positions.update({p["sku"]: p for p in resp.json().get("positions", [])})
                display.update(_render(tally, positions, time.monotonic() - started, duration_s))
        await asyncio.gather(*shoppers, return_exceptions=True)

    asyncio.run(sale())
    producer.flush()
    return {"duration_s": round(time.monotonic() - started, 1)}


def _settle(console: Console) -> None:
    """Give the flow a moment to apply the tail and the holds left to expire time to lapse."""
    console.print("[dim]letting the stream settle and unconfirmed holds expire…[/dim]")
    time.sleep(HOLD_TTL_S + 2)


def _summary(engine: DemoEngine) -> dict[str, Any]:
    from engine.store.connect import sync_redis
    from engine.store.invariants import check_invariants

    api, running, tally, base, flow_metrics = (
        engine.api, engine.settings, engine.tally, engine.api_url, engine.flow_metrics_url)
    body = api.post("/v1/atp/query", json={"skus": [*HOT_SKUS, PRESELL_SKU]}).json()
    positions = {p["sku"]: p for p in body.get("positions", [])}
    client = sync_redis(running)  # a Cluster client on a Cluster: the check reads every primary
    try:
        violations = check_invariants(client)
    finally:
        client.close()
    # Oversold: units promised beyond what the policy allows, on the SKUs only checkouts touch (a
    # negative ATP is at most the oversold figure; the larger of the two is counted, so either
    # one going wrong shows)
    oversold = sum(max(-int(p["atp"]), int(p.get("oversold", 0)), 0) for p in positions.values())
    with tally.lock:
        lat = sorted(tally.latencies_ms)
        res = dict(tally.reservations)
        alerts = dict(tally.alerts)
        rates = tally.alert_rates()
        triggers, sent = tally.triggers, tally.events_sent
    return {
        "reservations_ok": res.get("held", 0),
        "reservations_refused": res.get("refused", 0),
        "reservations_confirmed": res.get("confirmed", 0),
        "reservations_released": res.get("released", 0),
        "reservations_left_to_expire": res.get("left_to_expire", 0),
        "http_errors": res.get("error", 0),
        "hold_p50_ms": round(lat[len(lat) // 2], 2) if lat else None,
        "hold_p99_ms": round(lat[int(len(lat) * 0.99)], 2) if lat else None,
        "oversold": oversold,
        "invariant_violations": violations,
        "alerts_emitted": sum(alerts.values()),
        "alerts_by_kind": alerts,
        **rates,
        "triggers_emitted": triggers,
        "events_sent": sent,
        "atp": {sku: {k: p.get(k) for k in ("atp", "on_hand", "in_transit", "held", "committed")}
                for sku, p in positions.items()},
        "api_docs": f"{base}/docs",
        "metrics": [f"{base}/metrics", flow_metrics],
    }


def _print_summary(summary: dict[str, Any], console: Console, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(summary).decode() + "\n")
        sys.stdout.flush()
        return
    table = Table(title="atp demo — summary")
    table.add_column("what")
    table.add_column("value", justify="right")
    for key in ("duration_s", "reservations_ok", "reservations_refused", "reservations_confirmed",
                "reservations_released", "reservations_left_to_expire", "http_errors", "hold_p50_ms",
                "hold_p99_ms", "oversold", "alerts_emitted", "triggers_emitted", "events_sent", "simulated_days",
                "critical_firings_per_sku_day_max", "episodes_per_condition_day_max"):
        table.add_row(key, str(summary.get(key)))
    for kind, n in sorted(summary["alerts_by_kind"].items()):
        table.add_row(f"alerts {kind}", str(n))
    for sku, pos in summary["atp"].items():
        table.add_row(f"ATP {sku}", str(pos))
    table.add_row("invariant violations", str(len(summary["invariant_violations"])))
    table.add_row("API docs", summary["api_docs"])
    table.add_row("metrics", " ".join(summary["metrics"]))
    console.print(table)
