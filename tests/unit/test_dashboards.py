"""The committed dashboards and rules are what the code renders, and every query names real metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from dashboards import build, panels
from engine import metrics

ROOT = Path(__file__).resolve().parents[2]
_METRIC = re.compile(r"\b(atp_[a-z_]+)")
_SERIES_SUFFIXES = ("_bucket", "_sum", "_count")


def _exported_names() -> set[str]:
    """Every series name ``engine.metrics.REGISTRY`` can export."""
    names: set[str] = set()
    for family in metrics.REGISTRY.collect():
        base = family.name + ("_total" if family.type == "counter" else "")
        names.add(base)
        if family.type == "histogram":
            names.update(family.name + s for s in _SERIES_SUFFIXES)
    return names


def test_committed_generated_files_are_fresh() -> None:
    stale = build.stale_files(ROOT / "dashboards")
    assert not stale, f"stale: {stale}; run python -m dashboards.build and commit"


def test_stale_detection_notices_an_edited_file(tmp_path: Path) -> None:
    build.write(tmp_path)
    assert build.stale_files(tmp_path) == []
    path = tmp_path / "generated" / "supply.json"
    path.write_text(path.read_text().replace("atp_", "xtp_", 1))
    assert build.stale_files(tmp_path) == [Path("generated/supply.json")]


def test_three_dashboards_with_unique_uids_on_the_provisioned_datasource() -> None:
    boards = {p.stem: json.loads(p.read_text()) for p in (ROOT / "dashboards" / "generated").glob("*.json")}
    assert set(boards) == {"flash-sale", "stream-health", "supply"}
    assert len({b["uid"] for b in boards.values()}) == 3
    datasource = yaml.safe_load((ROOT / "dashboards/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["uid"] == panels.DATASOURCE_UID
    for board in boards.values():
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids))
        for panel in board["panels"]:
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == panels.DATASOURCE_UID


def test_required_panels_exist() -> None:
    titles = {(q.dashboard, q.panel) for q in build.all_queries()}
    for needed in [
        ("flash-sale", "Holds/s by outcome"),
        ("flash-sale", "Reserve latency p50 / p99"),
        ("flash-sale", "Watched ATP"),
        ("flash-sale", "Sold-out SKUs"),
        ("stream-health", "Events/s by type and outcome"),
        ("stream-health", "Consumer lag by topic"),
        ("stream-health", "Apply latency per batch p50 / p99"),
        ("stream-health", "DLQ by reason"),
        ("supply", "Alerts by type"),
        ("supply", "Replenishment triggers"),
        ("supply", "Late inbound lots"),
        ("supply", "Supplier reliability"),
        ("supply", "Drift units"),
    ]:
        assert needed in titles


def test_every_query_and_rule_names_only_metrics_the_engine_exports() -> None:
    exported = _exported_names()
    exprs = [q.expr for q in build.all_queries()] + [r.expr for r in build.all_rule_signals()]
    for expr in exprs:
        for name in _METRIC.findall(expr):
            assert name in exported, f"{expr!r} uses {name}, which engine.metrics does not export"


def test_rules_cover_lag_dlq_oversold_and_dependencies() -> None:
    by_name = {r.name: r for r in build.all_rule_signals()}
    assert "atp_consumer_lag" in by_name["AtpConsumerLagHigh"].expr
    assert "atp_dlq_total" in by_name["AtpDlqRate"].expr
    assert by_name["AtpOversold"].expr.endswith("> 0")
    assert 'dependency="redis"' in by_name["AtpRedisDown"].expr
    assert 'dependency="kafka"' in by_name["AtpBrokerDown"].expr
    committed = yaml.safe_load((ROOT / "dashboards" / "rules.yml").read_text())
    assert [r["expr"] for r in committed["groups"][0]["rules"]] == [r.expr for r in build.all_rule_signals()]
