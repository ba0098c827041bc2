"""The flow's scaling curve: processes × workers over one set of input topics, on one Redis or on
a Redis Cluster of several primaries (docs/scaling.md).

One run: an embedded broker; input topics of ``--partitions`` partitions holding ``--events``
simulated events (``engine.dev.simulate``, the same for every configuration); then, per Redis shape
(``--primaries``, 1 = a standalone server) and per configuration ``PxW`` (P flow processes of W
worker threads each, ``python -m engine.flow --until-end``):

* a fresh keyspace (``FLUSHALL`` on every primary), so every configuration applies everything;
* ``seconds``: wall time from starting the processes to the last one's exit, less ``startup_s``,
  the same shape's wall time over empty topics (imports, cluster handshake, reading nothing);
* ``events_per_s`` = events / seconds; ``flow_cpu_s`` (the processes' user + system time, from
  their rusage) and ``redis_cpu_s`` (``INFO cpu`` of every primary); ``events_per_cpu_s`` =
  events / (flow + Redis CPU seconds): what one core's second buys, the per-core efficiency;
* ``speedup``: events/s over the first configuration's on the same Redis shape.

Prints one JSON document, keeps it in ``loadtest/results/scale-<stamp>.json`` with a PNG (the
``loadtest`` extra). Not a test: nothing passes or fails. On a 2-core machine anything beyond
two busy threads shares the cores; the figures say what the engine does with what it has.

    .venv/bin/python -m loadtest.scale_bench [--events 20000] [--configs 1x1,1x2,1x4,2x1,2x2]
        [--primaries 1,3] [--partitions 8]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connectors.embedded import EmbeddedBroker, EmbeddedRedis, EmbeddedRedisCluster, free_port
from connectors.topics import Topics, create_topics
from engine.dev.simulate import produce
from loadtest.progress import bench_progress

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PREFIX = "scale"


@dataclass(frozen=True)
class Shape:
    """``processes`` flow processes of ``workers`` worker threads each."""

    processes: int
    workers: int

    @classmethod
    def parse(cls, text: str) -> Shape:
        p, sep, w = text.partition("x")
        if not sep or not p.isdigit() or not w.isdigit() or not (1 <= int(p) <= 8 and 1 <= int(w) <= 16):
            raise argparse.ArgumentTypeError(f"{text!r}: expected PxW, 1 ≤ P ≤ 8, 1 ≤ W ≤ 16 (e.g. 2x1)")
        return cls(int(p), int(w))

    @property
    def name(self) -> str:
        return f"{self.processes}x{self.workers}"


@contextlib.contextmanager
def redis_shape(primaries: int) -> Iterator[tuple[str, bool, list[Any]]]:
    """(url, cluster?, a client per primary) of an embedded standalone server or cluster."""
    if primaries == 1:
        with EmbeddedRedis() as server:
            client = server.client()
            try:
                yield server.url, False, [client]
            finally:
                client.close()
        return
    import redis

    with EmbeddedRedisCluster(primaries) as cluster:
        clients = [redis.Redis(host="127.0.0.1", port=port) for port in cluster.ports]
        try:
            yield cluster.url, True, clients
        finally:
            for c in clients:
                c.close()


def _redis_cpu(clients: list[Any]) -> float:
    total = 0.0
    for c in clients:
        info = c.info("cpu")
        total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total


def run_shape(shape: Shape, env: dict[str, str], topics: Topics) -> tuple[float, float]:
    """Run the flow in ``shape`` over ``topics`` to their end: (wall seconds, CPU seconds of the
    flow processes). Raises when a process fails."""
    addresses = ";".join(f"127.0.0.1:{free_port()}" for _ in range(shape.processes))
    base = [sys.executable, "-m", "engine.flow", "--until-end", "--no-metrics", "--log-level", "WARNING",
            "-w", str(shape.workers), "--topic-suffix", topics.suffix]
    started = time.perf_counter()
    procs = []
    for i in range(shape.processes):
        extra = ["-i", str(i), "-a", addresses] if shape.processes > 1 else []
        procs.append(subprocess.Popen([*base, *extra], env=env, stderr=subprocess.PIPE))
    cpu = 0.0
    failed = []
    for proc in procs:
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        cpu += usage.ru_utime + usage.ru_stime
        if proc.returncode != 0:
            failed.append((proc.returncode, proc.stderr.read().decode(errors="replace")[-800:] if proc.stderr else ""))
    wall = time.perf_counter() - started
    for proc in procs:
        if proc.stderr:
            proc.stderr.close()
    if failed:
        raise RuntimeError(f"flow {shape.name} failed: {failed}")
    return wall, cpu


def _flow_env(url: str, cluster: bool, bootstrap: str, batch_size: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATP_")}
    env.update({
        "ATP_CONFIG": os.devnull, "ATP_REDIS_URL": url, "ATP_REDIS_CLUSTER": "true" if cluster else "false",
        "ATP_KAFKA_BOOTSTRAP": bootstrap, "ATP_KEY_PREFIX": PREFIX, "ATP_BATCH_SIZE": str(batch_size),
        "ATP_FLOW_METRICS_PORT": "0",
    })  # fmt: skip
    return env


def bench(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {
        "benchmark": "flow scaling curve",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "config": {"events": args.events, "skus": args.skus, "partitions": args.partitions, "seed": args.seed,
                   "batch_size": args.batch_size, "configs": [s.name for s in args.configs],
                   "primaries": args.primaries},
        "runs": [],
    }  # fmt: skip
    runs = len(args.primaries) * len(args.configs)
    progress = bench_progress(args.quiet)
    with progress, EmbeddedBroker() as broker:
        conf = {"bootstrap.servers": broker.bootstrap}
        topics = Topics(suffix=f".scale{uuid.uuid4().hex[:8]}")
        empty = Topics(suffix=f".empty{uuid.uuid4().hex[:8]}")
        create_topics(conf, topics, partitions=args.partitions)
        create_topics(conf, empty, partitions=args.partitions)
        report = produce(conf, topics, args.events, seed=args.seed, skus=args.skus, progress=not args.quiet)
        results["produce"] = {"messages": report.messages, "ok": report.ok, "seconds": round(report.elapsed_s, 3)}
        task = progress.add_task("flow runs", total=runs)
        for primaries in args.primaries:
            with redis_shape(primaries) as (url, cluster, clients):
                env = _flow_env(url, cluster, broker.bootstrap, args.batch_size)
                first_rate = None
                for shape in args.configs:
                    for c in clients:
                        c.flushall()
                    startup, _ = run_shape(shape, env, empty)
                    for c in clients:
                        c.flushall()
                    redis_before = _redis_cpu(clients)
                    wall, flow_cpu = run_shape(shape, env, topics)
                    redis_cpu = _redis_cpu(clients) - redis_before
                    seconds = max(wall - startup, 1e-3)
                    rate = args.events / seconds
                    first_rate = first_rate or rate
                    results["runs"].append({
                        "primaries": primaries, "shape": shape.name, "processes": shape.processes,
                        "workers": shape.workers, "wall_s": round(wall, 3), "startup_s": round(startup, 3),
                        "seconds": round(seconds, 3), "events_per_s": round(rate, 1),
                        "flow_cpu_s": round(flow_cpu, 2), "redis_cpu_s": round(redis_cpu, 2),
                        "events_per_cpu_s": round(args.events / max(flow_cpu + redis_cpu, 1e-3), 1),
                        "speedup": round(rate / first_rate, 3),
                        "skus_in_redis": _skus(clients),
                    })  # fmt: skip
                    progress.advance(task)
    return results


def _skus(clients: list[Any]) -> int:
    """SKUs with state in Redis: every configuration must have applied the same catalogue."""
    return sum(sum(1 for _ in c.scan_iter(match=f"{PREFIX}:{{*}}:state", count=1000)) for c in clients)


def write(results: dict[str, Any], out_dir: Path = RESULTS_DIR) -> tuple[Path, Path | None]:
    """The JSON and, when matplotlib is there, a PNG of events/s per configuration."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = out_dir / f"scale-{stamp}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    png: Path | None = out_dir / f"scale-{stamp}.png"
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return path, None
    fig, ax = plt.subplots(figsize=(8, 4))
    shapes = results["config"]["configs"]
    width = 0.8 / max(1, len(results["config"]["primaries"]))
    for k, primaries in enumerate(results["config"]["primaries"]):
        rates = {r["shape"]: r["events_per_s"] for r in results["runs"] if r["primaries"] == primaries}
        xs = [i + k * width for i in range(len(shapes))]
        ax.bar(xs, [rates.get(s, 0) for s in shapes], width, label=f"{primaries} Redis primar{'y' if primaries == 1 else 'ies'}")
    ax.set_xticks([i + width * (len(results["config"]["primaries"]) - 1) / 2 for i in range(len(shapes))], shapes)
    ax.set_xlabel("flow processes x workers")
    ax.set_ylabel("events/s")
    ax.set_title(f"{results['config']['events']} events over {results['config']['partitions']} partitions per topic")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)  # type: ignore[arg-type]
    plt.close(fig)
    return path, png


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.scale_bench", description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=20_000, help="simulated events to produce and apply")
    p.add_argument("--skus", type=int, default=200, help="SKUs in the simulated catalogue")
    p.add_argument("--partitions", type=int, default=8, help="partitions per input topic")
    p.add_argument("--batch-size", type=int, default=500, help="the flow's batch size")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--configs", type=lambda s: [Shape.parse(x) for x in s.split(",") if x],
                   default=[Shape(1, 1), Shape(1, 2), Shape(1, 4), Shape(2, 1), Shape(2, 2)],
                   help="PxW,… : P flow processes of W workers each")
    p.add_argument("--primaries", type=lambda s: [int(x) for x in s.split(",") if x], default=[1, 3],
                   help="Redis shapes to run: 1 = standalone, N = a cluster of N primaries")
    p.add_argument("--json", type=Path, help="also write the JSON here")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.events < 1 or args.partitions < 1 or any(not 1 <= n <= 16 for n in args.primaries):
        print("scale_bench: --events and --partitions must be ≥ 1, --primaries each 1..16", file=sys.stderr)
        return 2
    results = bench(args)
    path, png = write(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({**results, "written": [str(path), str(png) if png else None]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
