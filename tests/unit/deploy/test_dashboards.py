"""The committed dashboards and rules are what the code renders, and every query names real metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from dashboards import build, panels
from engine import metrics
from engine.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
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
        ("stream-health", "Change log backlog"),
        ("stream-health", "Change records shipped/s"),
        ("stream-health", "Relay errors/s"),
        ("supply", "Alerts by type"),
        ("supply", "Replenishment triggers"),
        ("supply", "Late inbound lots"),
        ("supply", "Supplier reliability"),
        ("supply", "Drift units"),
        ("supply", "Drifted and checked SKUs"),
        ("supply", "Time since the last reconcile"),
    ]:
        assert needed in titles


def test_change_log_and_drift_panels_query_their_metrics() -> None:
    exprs: dict[str, list[str]] = {}
    for q in build.all_queries():
        exprs.setdefault(q.panel, []).append(q.expr)
    # Every API process reports the backlog the relay holding the lock measured: max, not sum.
    assert exprs["Change log backlog"] == ["max(atp_changelog_backlog)"]
    assert exprs["Change records shipped/s"] == ["sum(rate(atp_changelog_shipped_total[1m]))"]
    assert exprs["Relay errors/s"] == ["sum(rate(atp_changelog_relay_errors_total[1m]))"]
    assert exprs["Drifted and checked SKUs"] == ["max(atp_drift_skus)", "max(atp_drift_checked_skus)"]
    # 0 means "no reconcile yet", not 1970: the panel is empty (and says so) until one has run.
    assert exprs["Time since the last reconcile"] == [
        "time() - (max(atp_drift_checked_timestamp_seconds) > 0)",
        "time() - (max(atp_reconcile_round_timestamp_seconds) > 0)",
    ]
    board = json.loads((ROOT / "dashboards" / "generated" / "supply.json").read_text())
    since = next(p for p in board["panels"] if p["title"] == "Time since the last reconcile")
    assert since["fieldConfig"]["defaults"]["noValue"] == "no reconcile yet"
    assert since["fieldConfig"]["defaults"]["unit"] == "s"


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


def test_rules_cover_the_change_log_relay_and_drift() -> None:
    by_name = {r.name: r for r in build.all_rule_signals()}
    backlog = by_name["AtpChangelogBacklog"]
    assert backlog.signal == "max(atp_changelog_backlog)" and backlog.op == ">"
    # A warning well before /readyz turns the API away (changelog_backlog_max), held for minutes.
    assert 0 < backlog.threshold < Settings.model_fields["changelog_backlog_max"].default
    assert backlog.for_ == "5m"
    assert "the broker is away" in backlog.summary and "Redis memory grows" in backlog.summary
    errors = by_name["AtpChangelogRelayErrors"]
    assert errors.expr == "sum(rate(atp_changelog_relay_errors_total[5m])) > 0"
    assert errors.for_ == "10m"  # errors in every 5-minute window for 10 minutes: they keep rising
    assert by_name["AtpDrift"].expr == "max(atp_drift_skus) > 0"
    assert by_name["AtpDrift"].for_ == "0m"
    rule_file = yaml.safe_load((ROOT / "dashboards" / "rules.yml").read_text())
    committed = {r["alert"]: r for r in rule_file["groups"][0]["rules"]}
    for name in ("AtpChangelogBacklog", "AtpChangelogRelayErrors", "AtpDrift"):
        assert committed[name]["expr"] == by_name[name].expr
        assert committed[name]["annotations"]["summary"] == by_name[name].summary
