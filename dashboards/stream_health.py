"""The *Stream health* dashboard: Kafka → flow → Redis, and the change log relay Redis → Kafka."""

from __future__ import annotations

from grafana_foundation_sdk.builders.dashboard import Dashboard

from dashboards.panels import Query, graph, single


def dashboard() -> Dashboard:
    """Events/s by type and outcome, consumer lag, apply latency and batch size, DLQ, dependencies,
    and the change log relay: records waiting, shipped/s, errors/s."""
    return (
        Dashboard("ATP · Stream health")
        .uid("atp-stream-health")
        .tags(["atp"])
        .refresh("10s")
        .time("now-30m", "now")
        .with_panel(
            single(
                "Events/s applied",
                Query("sum(rate(atp_events_total[1m]))"),
                "ops",
                "Stream events applied to Redis per second, all outcomes, all flow processes.",
            )
        )
        .with_panel(
            single(
                "Consumer lag",
                Query("sum(atp_consumer_lag)"),
                "short",
                "Messages not yet consumed, summed over every input partition.",
            )
        )
        .with_panel(
            single(
                "DLQ/s",
                Query("sum(rate(atp_dlq_total[1m]))"),
                "ops",
                "Messages sent to the dead-letter topic per second.",
            )
        )
        .with_panel(
            single(
                "Dependencies up",
                Query("min(atp_dependency_up)"),
                "bool",
                "1 when every process's last probe of Redis and Kafka succeeded.",
            )
        )
        .with_panel(
            graph(
                "Events/s by type and outcome",
                [Query("sum by (type, outcome) (rate(atp_events_total[1m]))", "{{type}} {{outcome}}")],
                "ops",
                "ok = applied; duplicate = replay or redelivery skipped; refused / not_found per the contract.",
            )
        )
        .with_panel(
            graph(
                "Consumer lag by topic",
                [Query("sum by (topic) (atp_consumer_lag)", "{{topic}}")],
                "short",
                "Messages between the consumed offset and the end of each topic.",
            )
        )
        .with_panel(
            graph(
                "Apply latency per batch p50 / p99",
                [
                    Query("histogram_quantile(0.5, sum by (le) (rate(atp_apply_seconds_bucket[1m])))", "p50"),
                    Query("histogram_quantile(0.99, sum by (le) (rate(atp_apply_seconds_bucket[1m])))", "p99"),
                ],
                "s",
                "Wall time of one pipelined batch of Lua calls.",
            )
        )
        .with_panel(
            graph(
                "Mean batch size",
                [
                    Query(
                        "sum(rate(atp_apply_batch_size_sum[1m])) / sum(rate(atp_apply_batch_size_count[1m]))",
                        "events/batch",
                    )
                ],
                "short",
                "Events per applied batch: grows with load as the flow amortises round trips.",
            )
        )
        .with_panel(
            graph(
                "DLQ by reason",
                [Query("sum by (reason) (increase(atp_dlq_total[5m]))", "{{reason}}")],
                "short",
                "Dead-lettered messages in the last 5 minutes, by reason.",
            )
        )
        .with_panel(
            graph(
                "Dependency up by process",
                [Query("min by (dependency, job) (atp_dependency_up)", "{{job}} → {{dependency}}")],
                "bool",
                "Readiness of Redis and the broker as each engine process sees them.",
            )
        )
        .with_panel(
            graph(
                "Change log backlog",
                [Query("max(atp_changelog_backlog)", "records waiting")],
                "short",
                "Change records waiting in Redis for the relay, as the relay holding the lock counted them "
                "at the end of its last pass over the keyspace (the others report its figure). Grows while "
                "the broker is away; /readyz says not ready beyond ATP_CHANGELOG_BACKLOG_MAX.",
                width=8,
            )
        )
        .with_panel(
            graph(
                "Change records shipped/s",
                [Query("sum(rate(atp_changelog_shipped_total[1m]))", "shipped/s")],
                "ops",
                "Change records the relay shipped to inventory.changes (acknowledged by the broker) and "
                "trimmed from Redis, per second.",
                width=8,
            )
        )
        .with_panel(
            graph(
                "Relay errors/s",
                [Query("sum(rate(atp_changelog_relay_errors_total[1m]))", "errors/s")],
                "ops",
                "Relay rounds or deliveries that failed; their records stay in Redis and the next round "
                "tries again.",
                width=8,
            )
        )
    )
