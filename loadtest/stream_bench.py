"""P3 — the stream: Kafka → flow → Redis with one worker, beside the machine's own limits.

One run, in this order:

1. **E16** — ``redis-benchmark -P 16`` of the engine's hold script (``loadtest.limits``), the Redis
   side of the machine's limits.
2. **produce** — N simulated events (``engine.dev.simulate``) to fresh input topics.
3. **K** — the raw confluent-kafka consume rate of the same events: one consumer, ``assign`` of
   every input partition from offset 0, read to each partition's end (no parsing).
4. **naive** — the peer a team would write in a day (``loadtest.naive_applier``): the same events,
   one pipelined ``HINCRBY`` per line, no guarantees. ``p3_over_naive`` is the ratio QUALITY's P3
   targets (≥ 1.0; ≥ 0.7 with alerting).
5. **P3** — the flow with one worker reads the same topics from offset 0 to their end and applies
   everything to Redis (``run_flow(..., until_end=True)``). Sampled every 0.5 s: events applied,
   the consumer lag the flow reports. Lag back to 0 = every message of the backlog was consumed
   (counted by (topic, partition, offset) through the outcome and DLQ streams).
   ``--alerting`` runs the whole production flow (alert and replenishment steps too) instead of
   the apply path alone.

``--history`` (``--events`` defaults to 1,000,000 there) adds the events/s of the last 10 % of
the backlog against the first 10 %, for the flow and for the naive peer (``loadtest.stream_modes``).

``--burst`` is another run: stock for ``--hot-skus`` SKUs, the flow started and caught up, then
``--burst-rate`` one-line orders per second on those SKUs for ``--burst-seconds`` produced while
it runs. Sampled every 0.5 s: produced, through the flow, lag. Reports the highest lag and the
seconds from the last order until the lag was 0 again; then the naive peer applies the same
topics from offset 0 (a backlog: its events/s says whether it would have kept up).

Prints one JSON document, keeps it in ``loadtest/results/stream-<stamp>.json`` with a PNG plot
(matplotlib, the ``loadtest`` extra). Not a test: nothing here passes or fails.

    .venv/bin/python -m loadtest.stream_bench [--events 20000] [--skus 200] [--batch-size 500]
    .venv/bin/python -m loadtest.stream_bench --history [--events 1000000]
    .venv/bin/python -m loadtest.stream_bench --burst [--burst-seconds 60] [--burst-rate 5000] [--hot-skus 20]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from connectors.embedded import EmbeddedBroker
from connectors.kafka import producer_conf
from connectors.topics import Topics, create_topics
from engine import metrics
from engine.dev.simulate import produce
from engine.flow.dataflow import FlowStreams
from engine.flow.runner import run_flow
from engine.settings import Settings
from loadtest.kafka_read import InputReader
from loadtest.limits import LimitsUnavailable, run_limit
from loadtest.naive_applier import naive_apply
from loadtest.progress import bench_progress
from loadtest.server_stats import parse_command_stats, script_totals
from loadtest.stream_modes import burst_order, catch_up, due, hot_skus, seed_receipt, segment_rates
from loadtest.target import Target, TargetError, redis_target, require_loopback
from loadtest.targets import (
    P3_CATCH_UP_S,
    P3_MOONSHOT_E16_RATIO,
    P3_MOONSHOT_EVENTS_PER_S,
    P3_NAIVE_RATIO,
    P3_NAIVE_RATIO_ALERTING,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SAMPLE_EVERY_S = 0.5


# --- the broker --------------------------------------------------------------------------------


@contextlib.contextmanager
def broker(bootstrap: str | None) -> Iterator[str]:
    """``bootstrap`` (loopback only), else ``ATP_KAFKA_BOOTSTRAP``, else an embedded broker."""
    given = bootstrap or os.environ.get("ATP_KAFKA_BOOTSTRAP") or ""
    if given:
        for hostport in given.split(","):
            require_loopback(hostport.rsplit(":", 1)[0])
        yield given
        return
    with EmbeddedBroker() as server:
        yield server.bootstrap


# --- K: the raw consume rate -------------------------------------------------------------------


def raw_consume(bootstrap: str, topics: Topics, expected: int, timeout_s: float = 300.0) -> dict[str, Any]:
    """Read every input partition from 0 to its end with one assign-mode consumer; no parsing."""
    reader = InputReader(bootstrap, topics, "stream-bench-raw", timeout_s)
    count, size = 0, 0
    for batch in reader.batches():
        count += len(batch)
        size += sum(len(msg.value() or b"") for msg in batch)
    started, first = reader.started, reader.first
    done = time.perf_counter()
    streaming = done - (first or started)
    return {
        "messages": count, "bytes": size, "complete": count == expected,
        "seconds": round(done - started, 3), "messages_per_s": round(count / (done - started), 1),
        "streaming_seconds": round(streaming, 3),
        "streaming_messages_per_s": round(count / streaming, 1) if streaming > 0 else None,
    }  # fmt: skip


# --- P3: the flow ------------------------------------------------------------------------------


class _Seen:
    """Counts the distinct input messages that reached the end of the flow (outcome or DLQ).

    A bit per offset and partition: a million-event history stays a few hundred kilobytes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bits: dict[str, bytearray] = {}
        self.count = 0

    def add(self, source: str, offset: int) -> None:
        with self.lock:
            bits = self.bits.get(source)
            if bits is None:
                bits = self.bits[source] = bytearray()
            byte, mask = offset >> 3, 1 << (offset & 7)
            if byte >= len(bits):
                bits.extend(bytes(max(byte + 1 - len(bits), len(bits))))
            if not bits[byte] & mask:
                bits[byte] |= mask
                self.count += 1


class _SeenPartition(StatelessSinkPartition[Any]):
    def __init__(self, seen: _Seen, of_outcome: bool) -> None:
        self._seen = seen
        self._of_outcome = of_outcome

    def write_batch(self, items: list[Any]) -> None:
        for item in items:
            if self._of_outcome:
                o = item[1]
                self._seen.add(o.source, o.offset)
            else:
                self._seen.add(f"{item.topic}:{item.partition}", item.offset)


class _SeenSink(DynamicSink[Any]):
    def __init__(self, seen: _Seen, of_outcome: bool) -> None:
        self._seen = seen
        self._of_outcome = of_outcome

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _SeenPartition:
        return _SeenPartition(self._seen, self._of_outcome)


def _applied_total() -> float:
    return sum(s.value for m in metrics.EVENTS.collect() for s in m.samples if s.name.endswith("_total"))


def _dlq_total() -> float:
    return sum(s.value for m in metrics.DLQ.collect() for s in m.samples if s.name.endswith("_total"))


def _lag(topics: Topics) -> float:
    names = set(topics.inputs)
    return sum(s.value for m in metrics.CONSUMER_LAG.collect() for s in m.samples if s.labels.get("topic") in names)


def run_p3(settings: Settings, topics: Topics, expected: int, alerting: bool, server: Any) -> dict[str, Any]:
    """The flow over the backlog, sampled; server-side script time from INFO commandstats."""
    import bytewax.operators as op

    seen = _Seen()

    def count_messages(streams: FlowStreams) -> None:
        op.output("bench_seen_outcomes", streams.outcomes, _SeenSink(seen, True))
        op.output("bench_seen_dlq", streams.dlq, _SeenSink(seen, False))

    series: list[dict[str, Any]] = []
    stop = threading.Event()
    applied0, dlq0 = _applied_total(), _dlq_total()

    def sample() -> None:
        t0 = time.perf_counter()
        last_t, last_n = t0, 0.0
        while not stop.wait(SAMPLE_EVERY_S):
            now = time.perf_counter()
            n = _applied_total() - applied0
            messages = seen.count
            series.append({"t_s": round(now - t0, 3), "commands": int(n), "messages": messages,
                           "commands_per_s": round((n - last_n) / (now - last_t), 1), "lag": _lag(topics)})
            last_t, last_n = now, n

    server.config_resetstat()
    cpu0 = _server_cpu(server)
    sampler = threading.Thread(target=sample, daemon=True)
    started = time.perf_counter()
    sampler.start()
    try:
        run_flow(settings, topics, until_end=True, serve_metrics=False, alerting=alerting, extras=(count_messages,))
    finally:
        stop.set()
        sampler.join()
    seconds = time.perf_counter() - started
    stats = server.info("commandstats")
    cpu = _server_cpu(server) - cpu0
    scripts = script_totals(parse_command_stats(stats))
    script_calls, script_usec = scripts.calls, scripts.usec
    first_t = next((s["t_s"] for s in series if s["messages"] > 0), 0.0)
    consumed = seen.count
    streaming = seconds - first_t
    return {
        "alerting": alerting,
        "events": expected,
        "consumed_messages": consumed,
        "lag_at_end": expected - consumed,
        "commands_applied": int(_applied_total() - applied0),
        "dlq_records": int(_dlq_total() - dlq0),
        "seconds": round(seconds, 3),
        "events_per_s": round(expected / seconds, 1),
        "startup_s": first_t,
        "streaming_events_per_s": round(consumed / streaming, 1) if streaming > 0 else None,
        "server": {
            "script_calls": script_calls,
            "script_usec_per_call": round(script_usec / script_calls, 1) if script_calls else None,
            "script_seconds": round(script_usec / 1e6, 3),
            "server_cpu_s": round(cpu, 3),
            "script_share_of_wall_time": round(script_usec / 1e6 / seconds, 3),
        },
        "series": series,
    }


def _server_cpu(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


# --- the run -----------------------------------------------------------------------------------


def bench(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "benchmark": "P3 stream apply",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "config": {"events": args.events, "skus": args.skus, "batch_size": args.batch_size, "seed": args.seed,
                   "partitions": args.partitions, "alerting": args.alerting, "e16_requests": args.e16_requests},
    }
    progress = bench_progress(args.quiet)
    with progress, redis_target(args.redis_url) as target, broker(args.kafka_bootstrap) as bootstrap:
        results["E16"] = _e16(target, progress, args.e16_requests)
        prefix = f"lt{target.token}"  # every key of this run, deleted at the end
        topics = Topics(suffix=f".bench{uuid.uuid4().hex[:8]}")
        create_topics({"bootstrap.servers": bootstrap}, topics, partitions=args.partitions)
        report = produce({"bootstrap.servers": bootstrap}, topics, args.events, seed=args.seed, skus=args.skus,
                         progress=not args.quiet)
        results["produce"] = {"messages": report.messages, "ok": report.ok, "seconds": round(report.elapsed_s, 3),
                              "messages_per_s": round(report.rate, 1), "by_topic": report.by_topic}
        results["K"] = raw_consume(bootstrap, topics, args.events)
        server = target.client()
        naive_timeline: list[tuple[float, int]] = []
        results["naive"] = naive_apply(bootstrap, topics, args.events, server, prefix, timeline=naive_timeline)
        settings = Settings(redis_url=target.url, kafka_bootstrap=bootstrap, key_prefix=prefix, workers=1,
                            batch_size=args.batch_size, flow_metrics_port=0)
        try:
            results["P3"] = run_p3(settings, topics, args.events, args.alerting, server)
        finally:
            _cleanup(server, prefix)
            server.close()
    if args.history:
        p3 = results["P3"]
        flow_points = [(x["t_s"], x["messages"]) for x in p3["series"]] + [(p3["seconds"], p3["consumed_messages"])]
        results["history"] = {"flow": segment_rates(flow_points, args.events),
                              "naive": segment_rates(naive_timeline, args.events)}
    results["summary"] = _summary(results)
    return results


# --- the burst ---------------------------------------------------------------------------------


def bench_burst(args: argparse.Namespace) -> dict[str, Any]:
    from confluent_kafka import Producer

    results: dict[str, Any] = {
        "benchmark": "P3 burst",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "config": {"burst_seconds": args.burst_seconds, "burst_rate": args.burst_rate, "hot_skus": args.hot_skus,
                   "batch_size": args.batch_size, "partitions": args.partitions, "alerting": args.alerting},
    }
    with redis_target(args.redis_url) as target, broker(args.kafka_bootstrap) as bootstrap:
        prefix = f"lt{target.token}"
        topics = Topics(suffix=f".burst{uuid.uuid4().hex[:8]}")
        create_topics({"bootstrap.servers": bootstrap}, topics, partitions=args.partitions)
        producer = Producer(producer_conf({"bootstrap.servers": bootstrap}))
        skus = hot_skus(args.hot_skus, target.token)
        now_ms = int(time.time() * 1000)
        for n, sku in enumerate(skus):
            producer.produce(topics.receipts, seed_receipt(sku, n, target.token, now_ms, 10**8), sku.encode())
        producer.flush(30)
        server = target.client()
        settings = Settings(redis_url=target.url, kafka_bootstrap=bootstrap, key_prefix=prefix, workers=1,
                            batch_size=args.batch_size, flow_metrics_port=0)
        try:
            results["burst"] = _run_burst(args, settings, topics, producer, skus, target.token)
            expected = results["burst"]["produced"] + len(skus)
            results["naive"] = naive_apply(bootstrap, topics, expected, server, prefix)
        finally:
            _cleanup(server, prefix)
            server.close()
    b, naive = results["burst"], results["naive"]
    results["summary"] = {
        "burst_rate": args.burst_rate,
        "achieved_produce_rate": b["produce_rate"],
        "max_lag": b["max_lag"],
        "catch_up_s": b["catch_up_s"],
        "target_catch_up_s": P3_CATCH_UP_S,
        "meets_target": b["catch_up_s"] is not None and b["catch_up_s"] <= P3_CATCH_UP_S,
        "flow_events_per_s_during_burst": b["flow_events_per_s"],
        "naive_backlog_events_per_s": naive.get("events_per_s"),
        "naive_keeps_up": bool(naive.get("events_per_s")) and naive["events_per_s"] >= args.burst_rate,
    }
    return results


def _run_burst(args: argparse.Namespace, settings: Settings, topics: Topics, producer: Any, skus: list[str],
               token: str) -> dict[str, Any]:
    """The flow runs; once it has the seed stock, the burst is produced; sampled until caught up."""
    import bytewax.operators as op

    seen = _Seen()

    def count_messages(streams: FlowStreams) -> None:
        op.output("bench_seen_outcomes", streams.outcomes, _SeenSink(seen, True))
        op.output("bench_seen_dlq", streams.dlq, _SeenSink(seen, False))

    stop = threading.Event()
    failure: list[BaseException] = []

    def flow() -> None:
        try:
            run_flow(settings, topics, stop, serve_metrics=False, alerting=args.alerting, extras=(count_messages,))
        except BaseException as exc:  # reported after the run
            failure.append(exc)

    runner = threading.Thread(target=flow, daemon=True)
    runner.start()
    ready_by = time.monotonic() + 120
    while seen.count < len(skus):
        if failure or time.monotonic() > ready_by:
            stop.set()
            raise RuntimeError(f"the flow did not start: {failure[0] if failure else 'no seed stock through'}")
        time.sleep(0.1)

    produced = 0
    series: list[dict[str, Any]] = []
    base = seen.count
    t0 = time.perf_counter()
    sampled_at = t0
    duration, rate = args.burst_seconds, args.burst_rate
    start_ms = int(time.time() * 1000)

    def sample(now: float) -> None:
        through = seen.count - base
        series.append({"t_s": round(now - t0, 3), "produced": produced, "through": through,
                       "lag": produced - through, "flow_gauge_lag": _lag(topics)})

    while True:
        now = time.perf_counter()
        elapsed = now - t0
        target = due(rate, elapsed, duration)
        while produced < target:
            sku = skus[produced % len(skus)]
            value = burst_order(produced, sku, token, start_ms + int(produced * 1000 / rate))
            try:
                producer.produce(topics.orders, value, sku.encode())
            except BufferError:
                producer.poll(0.05)
                continue
            produced += 1
        producer.poll(0)
        if now - sampled_at >= SAMPLE_EVERY_S:
            sample(now)
            sampled_at = now
        if elapsed >= duration:
            break
        time.sleep(0.005)
    producer.flush(60)
    produced_until = time.perf_counter() - t0
    deadline = time.perf_counter() + args.burst_timeout_s
    while seen.count - base < produced and time.perf_counter() < deadline and not failure:
        time.sleep(SAMPLE_EVERY_S)
        sample(time.perf_counter())
    sample(time.perf_counter())
    stop.set()
    runner.join(60)
    if failure:
        raise RuntimeError(f"the flow failed: {failure[0]!r}")
    through = seen.count - base
    done_at = next((x["t_s"] for x in series if x["t_s"] >= produced_until and x["lag"] <= 0), series[-1]["t_s"])
    return {
        "produced": produced,
        "through": through,
        "seconds_producing": round(produced_until, 3),
        "produce_rate": round(produced / produced_until, 1),
        "max_lag": max(x["lag"] for x in series),
        "lag_at_end": produced - through,
        "catch_up_s": catch_up(series, produced_until),
        "flow_events_per_s": round(through / done_at, 1) if done_at > 0 else None,
        "series": series,
    }


def _e16(target: Target, progress: Any, requests: int) -> dict[str, Any]:
    try:
        return run_limit(target, "E16", 16, requests, progress).to_dict()
    except (LimitsUnavailable, RuntimeError) as exc:
        return {"error": str(exc)}


def _cleanup(client: Any, prefix: str) -> None:
    for pattern in (f"{prefix}:*", f"{prefix}-am:*", f"{prefix}-naive:*"):
        batch = list(client.scan_iter(match=pattern, count=1000))
        for i in range(0, len(batch), 1000):
            client.unlink(*batch[i:i + 1000])


def _summary(results: dict[str, Any]) -> dict[str, Any]:
    p3, k, e16 = results["P3"], results["K"], results.get("E16") or {}
    rate = p3["events_per_s"]
    e16_rps = e16.get("rps")
    naive = (results.get("naive") or {}).get("events_per_s")
    over_naive = round(rate / naive, 4) if naive else None
    target_naive = P3_NAIVE_RATIO_ALERTING if p3["alerting"] else P3_NAIVE_RATIO
    return {
        "p3_events_per_s": rate,
        "p3_streaming_events_per_s": p3["streaming_events_per_s"],
        "naive_events_per_s": naive,
        "p3_over_naive": over_naive,
        "target_naive_ratio": target_naive,
        "naive_ratio_met": over_naive is not None and over_naive >= target_naive,
        "k_raw_consume_messages_per_s": k["messages_per_s"],
        "p3_over_k": round(rate / k["messages_per_s"], 4) if k["messages_per_s"] else None,
        "e16_rps": e16_rps,
        "p3_over_e16": round(rate / e16_rps, 4) if e16_rps else None,
        "lag_back_to_0": p3["lag_at_end"] == 0,
        "target_events_per_s": P3_MOONSHOT_EVENTS_PER_S,
        "target_e16_ratio": P3_MOONSHOT_E16_RATIO,
        "meets_target": bool(e16_rps) and rate >= P3_MOONSHOT_EVENTS_PER_S and rate >= P3_MOONSHOT_E16_RATIO * e16_rps,
    }


def write(results: dict[str, Any], out_dir: Path = RESULTS_DIR) -> tuple[Path, Path | None]:
    """The JSON and, when matplotlib is there, a PNG: throughput and lag over time."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    png: Path | None = out_dir / f"stream-{stamp}.png"
    try:
        _plot(results, png)  # type: ignore[arg-type]
    except ImportError as exc:
        results["plot_error"] = f"no plot: {exc} (pip install -e '.[loadtest]')"
        png = None
    results["plot"] = str(png) if png else None
    path = out_dir / f"stream-{stamp}.json"
    path.write_text(json.dumps(results, indent=1, default=str))
    return path, png


def _plot(results: dict[str, Any], path: Path) -> None:
    if "burst" in results:
        _plot_burst(results, path)
    else:
        _plot_backlog(results, path)


def _plot_burst(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    b, s = results["burst"], results["summary"]
    series = b["series"]
    t = [x["t_s"] for x in series]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 8), sharex=True)
    fig.suptitle(f"P3 burst: {s['burst_rate']:,}/s one-line orders on {results['config']['hot_skus']} hot SKUs "
                 f"for {results['config']['burst_seconds']} s — {results['started_at']}", fontsize=11)
    top.plot(t, [x["produced"] for x in series], label="orders produced")
    top.plot(t, [x["through"] for x in series], label="orders through the flow")
    top.set_ylabel("orders")
    top.legend(fontsize=8)
    bottom.plot(t, [x["lag"] for x in series], color="tab:red", label="lag (produced − through)")
    bottom.plot(t, [x["flow_gauge_lag"] for x in series], color="tab:orange", linestyle=":",
                label="consumer lag (flow's gauge)")
    bottom.axvline(b["seconds_producing"], color="grey", linestyle="--", linewidth=1, label="last order produced")
    if b["catch_up_s"] is not None:
        bottom.axvline(b["seconds_producing"] + b["catch_up_s"], color="tab:green", linestyle="--", linewidth=1,
                       label=f"lag 0 again after {b['catch_up_s']:.1f} s")
    bottom.set_xlabel("s since the burst started")
    bottom.set_ylabel("messages")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_backlog(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p3, s = results["P3"], results["summary"]
    series = p3["series"]
    t = [x["t_s"] for x in series]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 8), sharex=True)
    fig.suptitle(f"P3 stream apply, one worker — {p3['events']:,} simulated events — {results['started_at']}", fontsize=11)
    top.plot(t, [x["commands_per_s"] for x in series], label="store commands applied /s")
    top.axhline(s["p3_events_per_s"], color="tab:green", linestyle="--", linewidth=1,
                label=f"P3 mean {s['p3_events_per_s']:,.0f} events/s")
    top.axhline(s["k_raw_consume_messages_per_s"], color="tab:orange", linestyle=":", linewidth=1,
                label=f"K raw consume {s['k_raw_consume_messages_per_s']:,.0f} msg/s")
    if s.get("e16_rps"):
        top.axhline(s["e16_rps"], color="tab:purple", linestyle=":", linewidth=1, label=f"E16 {s['e16_rps']:,.0f}/s")
    top.set_yscale("log")
    top.set_ylabel("per second")
    top.legend(fontsize=8)
    bottom.plot(t, [x["lag"] for x in series], color="tab:red", label="consumer lag (flow's gauge)")
    bottom.plot(t, [p3["events"] - x["messages"] for x in series], color="tab:blue", label="messages not yet through")
    bottom.set_xlabel("s since the flow started")
    bottom.set_ylabel("messages")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _brief(results: dict[str, Any]) -> dict[str, Any]:
    """The results without the time series (those are in the kept JSON)."""
    if "burst" in results:
        return {**results, "burst": {k: v for k, v in results["burst"].items() if k != "series"}}
    out = {k: v for k, v in results.items() if k not in ("P3", "E16")}
    out["P3"] = {k: v for k, v in results["P3"].items() if k != "series"}
    out["E16"] = {k: v for k, v in results.get("E16", {}).items() if k not in ("series", "server")}
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.stream_bench", description="P3: Kafka → flow → Redis, one worker")
    p.add_argument("--events", type=int, help="simulated events to produce and apply (20,000; 1,000,000 with --history)")
    p.add_argument("--skus", type=int, default=200, help="SKUs in the simulated catalogue (Zipf popularity)")
    p.add_argument("--batch-size", type=int, default=500, help="the flow's batch size")
    p.add_argument("--partitions", type=int, default=3, help="partitions per input topic")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--alerting", action="store_true", help="run the alert and replenishment steps too")
    p.add_argument("--history", action="store_true", help="also the events/s of the last 10 %% against the first 10 %%")
    p.add_argument("--burst", action="store_true", help="a burst of orders produced while the flow runs, instead")
    p.add_argument("--burst-seconds", type=float, default=60.0)
    p.add_argument("--burst-rate", type=int, default=5_000, help="orders per second during the burst")
    p.add_argument("--hot-skus", type=int, default=20, help="SKUs the burst's orders are spread over")
    p.add_argument("--burst-timeout-s", type=float, default=600.0, help="longest wait for the flow to catch up")
    p.add_argument("--e16-requests", type=int, default=100_000)
    p.add_argument("--redis-url", help="a loopback standalone Redis (default: embedded)")
    p.add_argument("--kafka-bootstrap", help="a loopback broker (default: embedded)")
    p.add_argument("--json", type=Path, help="also write the JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.events is None:
        args.events = 1_000_000 if args.history else 20_000
    if args.events < 1 or args.skus < 1 or args.batch_size < 1 or args.partitions < 1:
        print("stream_bench: --events, --skus, --batch-size and --partitions must be ≥ 1", file=sys.stderr)
        return 2
    if args.history and args.burst:
        print("stream_bench: --history and --burst are separate runs", file=sys.stderr)
        return 2
    if args.burst and (args.burst_seconds <= 0 or args.burst_rate < 1 or args.hot_skus < 1):
        print("stream_bench: --burst-seconds, --burst-rate and --hot-skus must be > 0", file=sys.stderr)
        return 2
    try:
        results = bench_burst(args) if args.burst else bench(args)
    except TargetError as exc:
        print(f"stream_bench: {exc}", file=sys.stderr)
        return 1
    path, png = write(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    print(json.dumps(_brief(results), indent=1, default=str))
    print(f"stream_bench: results in {path}" + (f", plot {png}" if png else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
