"""The *Supply* dashboard: alerts, replenishment, inbound, suppliers and drift."""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import Dashboard

from dashboards.panels import Query, graph, single


def dashboard() -> Dashboard:
    """Alerts by type, replenishment triggers, late inbound, supplier reliability, oversold, drift
    (drifted and checked SKUs, time since the last reconcile)."""
    return (
        Dashboard("ATP · Supply")
        .uid("atp-supply")
        .tags(["atp"])
        .refresh("30s")
        .time("now-6h", "now")
        .with_panel(
            single(
                "Late inbound lots",
                Query('sum(atp_alerts_firing{kind="inbound_late"})'),
                "short",
                "Lots whose ETA passed without a receipt (inbound_late alerts firing).",
            )
        )
        .with_panel(
            single(
                "Oversold units",
                Query("sum(atp_oversold_units)"),
                "short",
                "Units promised beyond supply after supply shrank; must return to 0.",
            )
        )
        .with_panel(
            single(
                "Drifted SKUs",
                Query("max(atp_drift_skus)"),
                "short",
                "SKUs whose Redis state differed from the replayed log at the last reconcile.",
            )
        )
        .with_panel(
            single(
                "Drift units",
                Query("max(atp_drift_units)"),
                "short",
                "Sum of absolute bucket differences found by the last reconcile.",
            )
        )
        .with_panel(
            graph(
                "Alerts by type",
                [Query("sum by (kind, status) (increase(atp_alerts_total[5m]))", "{{kind}} {{status}}")],
                "short",
                "Alert transitions published in the last 5 minutes.",
            )
        )
        .with_panel(
            graph(
                "Alerts firing",
                [Query("sum by (kind) (atp_alerts_firing)", "{{kind}}")],
                "short",
                "Alerts currently firing, by kind.",
            )
        )
        .with_panel(
            graph(
                "Replenishment triggers",
                [Query("sum(increase(atp_replenishment_triggers_total[5m]))", "triggers / 5m")],
                "short",
                "Reorder triggers published (inventory position fell to the reorder point).",
            )
        )
        .with_panel(
            graph(
                "Supplier reliability",
                [Query("min by (supplier) (atp_supplier_reliability)", "{{supplier}}")],
                "percentunit",
                "On-time × fill rate per supplier, learned from receipts.",
            )
        )
        .with_panel(
            graph(
                "Drifted and checked SKUs",
                [
                    Query("max(atp_drift_skus)", "drifted"),
                    Query("max(atp_drift_checked_skus)", "checked"),
                ],
                "short",
                "SKUs the last `atp reconcile` of every SKU checked, and those whose Redis state differed "
                "from the change log (0 and 0 until one has run).",
            )
        )
        .with_panel(
            graph(
                "Time since the last reconcile",
                [Query("time() - (max(atp_drift_checked_timestamp_seconds) > 0)", "since last reconcile"),
                 Query("time() - (max(atp_reconcile_round_timestamp_seconds) > 0)", "since last round")],
                "s",
                "How old the drift figures are: time since the last `atp reconcile` of every SKU ended, and "
                "since the reconcile loop's last round (a few SKUs) ended (empty until one has run).",
                no_value="no reconcile yet",
            )
        )
    )
