"""Panel builders shared by the dashboards: every panel queries the provisioned Prometheus.

Queries use fixed ``[1m]`` / ``[5m]`` windows rather than Grafana's ``$__rate_interval`` so the
very same text can be evaluated by Prometheus itself (tests/integration/observability/test_prometheus.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.builders.common import ReduceDataOptions, VizLegendOptions
from grafana_foundation_sdk.models.common import BigValueGraphMode, LegendDisplayMode, LegendPlacement
from grafana_foundation_sdk.models.dashboard import DataSourceRef

DATASOURCE_UID = "prometheus"
"""The uid of the Prometheus datasource in ``provisioning/datasources/prometheus.yml``."""

DATASOURCE = DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)


@dataclass(frozen=True)
class Query:
    """One PromQL expression of a panel and its legend (Grafana ``{{label}}`` syntax)."""

    expr: str
    legend: str = ""


def _targets(queries: list[Query]) -> list[prometheus.Dataquery]:
    targets = []
    for i, q in enumerate(queries):
        target = prometheus.Dataquery().expr(q.expr).ref_id(chr(ord("A") + i)).datasource(DATASOURCE)
        if q.legend:
            target = target.legend_format(q.legend)
        targets.append(target)
    return targets


def graph(
    title: str, queries: list[Query], unit: str, description: str, width: int = 12, no_value: str = ""
) -> timeseries.Panel:
    """A time-series panel; ``no_value``: what it says while its queries return nothing."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_targets(queries))
        .unit(unit)
        .span(width)
        .height(8)
        .fill_opacity(10)
        .legend(
            VizLegendOptions()
            .show_legend(True)
            .display_mode(LegendDisplayMode.TABLE)
            .placement(LegendPlacement.BOTTOM)
            .calcs(["lastNotNull", "max"])
        )
    )
    return panel.no_value(no_value) if no_value else panel


def single(title: str, query: Query, unit: str, description: str, width: int = 6) -> stat.Panel:
    """A single-value (stat) panel with a sparkline."""
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .targets(_targets([query]))
        .unit(unit)
        .span(width)
        .height(5)
        .graph_mode(BigValueGraphMode.AREA)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
