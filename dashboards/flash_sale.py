"""The *Flash sale* dashboard: the checkout path under load."""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import Dashboard

from dashboards.panels import Query, graph, single


def _quantile(q: float, metric: str, selector: str = "", by: str = "le") -> str:
    return f"histogram_quantile({q}, sum by ({by}) (rate({metric}_bucket{selector}[1m])))"


def dashboard() -> Dashboard:
    """Holds/s ok vs refused, reserve latency, watched ATP, sold-out SKUs, expiry and the HTTP API."""
    return (
        Dashboard("ATP · Flash sale")
        .uid("atp-flash-sale")
        .tags(["atp"])
        .refresh("10s")
        .time("now-30m", "now")
        .with_panel(
            single(
                "Holds/s granted",
                Query('sum(rate(atp_reservations_total{op="hold",outcome=~"ok|duplicate"}[1m]))'),
                "reqps",
                "Hold calls answered ok (or duplicate: a retried idempotent call), all processes.",
            )
        )
        .with_panel(
            single(
                "Holds/s refused",
                Query('sum(rate(atp_reservations_total{op="hold",outcome="refused"}[1m]))'),
                "reqps",
                "Hold calls refused (sold out, order cap, customer limit or channel quota).",
            )
        )
        .with_panel(
            single(
                "Sold-out SKUs",
                Query('sum(atp_alerts_firing{kind="stockout"})'),
                "short",
                "Positions whose stockout alert is firing (ATP reached zero).",
            )
        )
        .with_panel(
            single(
                "Hold p99",
                Query(_quantile(0.99, "atp_reserve_seconds", '{op="hold"}')),
                "s",
                "99th percentile latency of a hold call over the last minute.",
            )
        )
        .with_panel(
            graph(
                "Holds/s by outcome",
                [Query('sum by (outcome) (rate(atp_reservations_total{op="hold"}[1m]))', "{{outcome}}")],
                "reqps",
                "ok vs refused vs conflict: the shape of a sell-out.",
            )
        )
        .with_panel(
            graph(
                "Reserve latency p50 / p99",
                [
                    Query(_quantile(0.5, "atp_reserve_seconds", "", "le, op"), "p50 {{op}}"),
                    Query(_quantile(0.99, "atp_reserve_seconds", "", "le, op"), "p99 {{op}}"),
                ],
                "s",
                "Latency of hold / confirm / release / extend calls as the caller saw them.",
            )
        )
        .with_panel(
            graph(
                "Watched ATP",
                [Query("max by (sku, location) (atp_watch_atp)", "{{sku}} @ {{location}}")],
                "short",
                "ATP of the SKUs on the watch list (at most 50), as last seen by the engine.",
            )
        )
        .with_panel(
            graph(
                "Reservation calls/s",
                [Query("sum by (op, outcome) (rate(atp_reservations_total[1m]))", "{{op}} {{outcome}}")],
                "reqps",
                "Every reservation operation by reply status.",
            )
        )
        .with_panel(
            graph(
                "Holds expired/s and expiry lag",
                [
                    Query("sum(rate(atp_holds_expired_total[1m]))", "expired/s"),
                    Query("max(atp_expiry_lag_seconds)", "expiry lag (s)"),
                ],
                "short",
                "Holds released by their TTL, and how overdue the most overdue one was when swept.",
            )
        )
        .with_panel(
            graph(
                "Hold age at end (p50)",
                [Query(_quantile(0.5, "atp_hold_age_seconds", "", "le, end"), "{{end}}")],
                "s",
                "How long holds lived before being confirmed, released or expired.",
            )
        )
        .with_panel(
            graph(
                "API requests/s by status",
                [Query("sum by (status) (rate(atp_http_requests_total[1m]))", "{{status}}")],
                "reqps",
                "HTTP requests of the API by status code.",
            )
        )
        .with_panel(
            graph(
                "API latency p99 by route",
                [Query(_quantile(0.99, "atp_http_request_seconds", "", "le, route"), "{{route}}")],
                "s",
                "99th percentile HTTP latency per route template.",
            )
        )
    )
