"""A real Prometheus scrapes a running engine; every dashboard query and rule returns data (DESIGN §6).

Prometheus is Debian's package, installed by ``dashboards/install-prometheus.sh`` when missing; the
only allowed skip is a machine where it cannot be installed. The engine side is the
``engine_under_load`` fixture: one place to change when the real flow + API + simulated load
replace the stand-in (see its docstring).
"""

from __future__ import annotations

import math
import random
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from dashboards import build
from engine import metrics

ROOT = Path(__file__).resolve().parents[2]
SCRAPE_INTERVAL_S = 1
READY_TIMEOUT_S = 60
WATCHED = ["FLASH-1", "FLASH-2"]


@dataclass(frozen=True)
class Prometheus:
    """A running Prometheus: its HTTP API base URL."""

    url: str

    def query(self, expr: str) -> list[dict]:
        """Instant query; raises AssertionError when Prometheus rejects it."""
        resp = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = resp.json()
        assert resp.status_code == 200 and body["status"] == "success", f"{expr!r}: {body}"
        return body["data"]["result"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def prometheus_binaries() -> tuple[str, str]:
    """Paths of ``prometheus`` and ``promtool``, installed from Debian's package if missing."""
    if not (shutil.which("prometheus") and shutil.which("promtool")):
        proc = subprocess.run(
            ["bash", str(ROOT / "dashboards" / "install-prometheus.sh")], capture_output=True, text=True, timeout=600
        )
        if proc.returncode != 0:
            pytest.skip(f"Debian's prometheus package cannot be installed here: {proc.stderr.strip()[-500:]}")
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    assert prometheus and promtool
    return prometheus, promtool


def _stand_in_activity(stop: threading.Event) -> None:
    """Drive every engine metric the way the flow and API do, with a flash-sale shape."""
    rng = random.Random(7)
    metrics.configure_watch_list(WATCHED)
    atp = {sku: 1000 for sku in WATCHED}
    while not stop.is_set():
        for _ in range(20):
            sku = rng.choice(WATCHED)
            ok = atp[sku] > 0 and rng.random() < 0.8
            metrics.record_reservation("hold", "ok" if ok else "refused", rng.uniform(0.0004, 0.004))
            metrics.observe_http("/v1/holds", "POST", 200 if ok else 409, rng.uniform(0.0006, 0.006))
            if ok:
                atp[sku] -= 1
                metrics.set_watched_atp(sku, "default", atp[sku])
        for op in ("confirm", "release", "extend"):
            metrics.record_reservation(op, "ok", rng.uniform(0.0003, 0.002))
        metrics.observe_hold_age(rng.uniform(5, 120), rng.choice(metrics.HOLD_ENDS))
        metrics.record_holds_expired(rng.randint(0, 3))
        metrics.set_expiry_lag(rng.uniform(0, 0.5))
        batch = rng.randint(50, 500)
        for event_type in ("order.placed", "receipt.posted", "inbound.created"):
            metrics.record_event(event_type, "ok", batch // 3)
        metrics.record_event("order.placed", "duplicate", 2)
        metrics.observe_apply_batch(rng.uniform(0.002, 0.02), batch)
        for partition in range(3):
            metrics.set_consumer_lag("inventory.orders", partition, rng.randint(0, 200))
        metrics.record_dlq(rng.choice(["bad_json", "unknown_type", "bad_sku"]))
        metrics.set_dependency_up("redis", True)
        metrics.set_dependency_up("kafka", True)
        metrics.record_alert("low_stock", "firing")
        metrics.record_alert("low_stock", "resolved")
        if any(v <= 0 for v in atp.values()):
            metrics.set_alerts_firing("stockout", sum(v <= 0 for v in atp.values()))
        metrics.set_alerts_firing("inbound_late", 1)
        metrics.record_replenishment_trigger()
        metrics.set_supplier_reliability("SUP-A", 0.97)
        metrics.set_supplier_reliability("SUP-B", 0.71)
        metrics.set_drift(0, 0)
        stop.wait(0.05)


@pytest.fixture(scope="module")
def engine_under_load() -> Iterator[dict[str, list[str]]]:
    """Scrape targets by job name (``atp-flow``, ``atp-api``) of an engine kept busy during the test.

    Stand-in for now: this process serves ``engine.metrics`` (as the flow does, via
    ``serve_metrics``) while a thread drives every metric through the helpers. To switch to the
    real engine, start ``atp flow`` (``ATP_FLOW_METRICS_PORT`` = a free port) and ``atp serve``
    (``ATP_API_PORT`` = a free port) against the session's Redis and broker, run a short
    ``atp simulate`` flash sale plus a few bad events in the background, and yield
    ``{"atp-flow": [f"127.0.0.1:{flow_port}"], "atp-api": [f"127.0.0.1:{api_port}"]}``.
    """
    port = metrics.serve_metrics(0, addr="127.0.0.1")
    stop = threading.Event()
    worker = threading.Thread(target=_stand_in_activity, args=(stop,), daemon=True)
    worker.start()
    try:
        yield {"atp-flow": [f"127.0.0.1:{port}"], "atp-api": [f"127.0.0.1:{port}"]}
    finally:
        stop.set()
        worker.join(timeout=5)


@pytest.fixture(scope="module")
def prometheus(
    prometheus_binaries: tuple[str, str],
    engine_under_load: dict[str, list[str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Prometheus]:
    """A real Prometheus scraping ``engine_under_load`` every second, with dashboards/rules.yml loaded."""
    binary, _ = prometheus_binaries
    workdir = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "evaluation_interval": f"{SCRAPE_INTERVAL_S}s"},
        "rule_files": [str(ROOT / "dashboards" / "rules.yml")],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": targets}]} for job, targets in engine_under_load.items()
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
    log = (workdir / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        server = Prometheus(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            assert proc.poll() is None, (workdir / "prometheus.log").read_text()[-2000:]
            try:
                if httpx.get(f"{server.url}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "Prometheus did not become ready"
            time.sleep(0.2)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


def _wait_for_data(server: Prometheus, expr: str, timeout_s: float = READY_TIMEOUT_S) -> list[dict]:
    deadline = time.monotonic() + timeout_s
    while True:
        result = server.query(expr)
        # A panel shows data when at least one series has a number (series of an operation that
        # saw no calls in the window are NaN in a quantile, as in Grafana).
        if any(math.isfinite(float(r["value"][1])) for r in result):
            return result
        assert time.monotonic() < deadline, f"{expr!r} returned no finite data within {timeout_s}s: {result}"
        time.sleep(SCRAPE_INTERVAL_S)


def _summary(result: list[dict]) -> str:
    finite = [r for r in result if math.isfinite(float(r["value"][1]))]
    shown = sorted(finite, key=lambda r: -abs(float(r["value"][1])))[:4]
    return "; ".join(
        f"{ {k: v for k, v in r['metric'].items() if k not in ('job', 'instance', '__name__')} or ''}"
        f" = {float(r['value'][1]):.4g}"
        for r in shown
    ) + f"  ({len(result)} series)"


def test_every_target_is_scraped(prometheus: Prometheus, engine_under_load: dict[str, list[str]]) -> None:
    for job in engine_under_load:
        result = _wait_for_data(prometheus, f'up{{job="{job}"}} == 1')
        assert len(result) == len(engine_under_load[job])


def test_every_dashboard_panel_query_returns_data(prometheus: Prometheus) -> None:
    # Windows are 1m, so a few scrapes in every rate() has two points to compare.
    _wait_for_data(prometheus, "sum(rate(atp_events_total[1m])) > 0")
    queries = build.all_queries()
    assert len(queries) >= 20
    for q in queries:
        result = _wait_for_data(prometheus, q.expr, timeout_s=15)
        print(f"[{q.dashboard}] {q.panel}: {q.expr}\n    -> {_summary(result)}")


def test_activity_shows_in_the_flash_sale_and_stream_panels(prometheus: Prometheus) -> None:
    granted = _wait_for_data(prometheus, 'sum(rate(atp_reservations_total{op="hold",outcome=~"ok|duplicate"}[1m]))')
    refused = _wait_for_data(prometheus, 'sum(rate(atp_reservations_total{op="hold",outcome="refused"}[1m]))')
    assert float(granted[0]["value"][1]) > 0 and float(refused[0]["value"][1]) > 0
    p99 = _wait_for_data(
        prometheus, 'histogram_quantile(0.99, sum by (le) (rate(atp_reserve_seconds_bucket{op="hold"}[1m])))'
    )
    assert 0 < float(p99[0]["value"][1]) < 1
    watched = {r["metric"]["sku"] for r in _wait_for_data(prometheus, "max by (sku, location) (atp_watch_atp)")}
    assert watched <= set(WATCHED) and watched


def test_every_rule_signal_returns_data_and_every_rule_evaluates(prometheus: Prometheus) -> None:
    for rule in build.all_rule_signals():
        result = _wait_for_data(prometheus, rule.signal, timeout_s=15)
        print(f"[rule {rule.name}] {rule.signal} -> {_summary(result)}")
        prometheus.query(rule.expr)  # must parse and evaluate, firing or not
    names = {r.name for r in build.all_rule_signals()}
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        groups = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        loaded = {r["name"]: r for g in groups for r in g["rules"]}
        if set(loaded) == names and all(r.get("health") == "ok" for r in loaded.values()):
            break
        assert time.monotonic() < deadline, f"rules not all evaluated ok: {loaded}"
        time.sleep(SCRAPE_INTERVAL_S)


def test_promtool_accepts_the_rules(prometheus_binaries: tuple[str, str]) -> None:
    _, promtool = prometheus_binaries
    out = subprocess.run(
        [promtool, "check", "rules", str(ROOT / "dashboards" / "rules.yml")], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_accepts_the_compose_prometheus_config(
    prometheus_binaries: tuple[str, str], tmp_path: Path
) -> None:
    _, promtool = prometheus_binaries
    config = yaml.safe_load((ROOT / "dashboards" / "prometheus.yml").read_text())
    # In the container the rules are mounted at /etc/prometheus/rules.yml; here they are in the tree.
    config["rule_files"] = [str(ROOT / "dashboards" / "rules.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    out = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert {job["job_name"] for job in config["scrape_configs"]} >= {"atp-flow", "atp-api"}
