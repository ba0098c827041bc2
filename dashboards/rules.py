"""Prometheus alerting rules as code; ``python -m dashboards.build`` writes them to ``rules.yml``.

Each rule is ``<signal> <op> <threshold>``. The signal alone is what the Prometheus test evaluates
(it must return data from a running engine even when nothing is wrong); the full expression is
what Prometheus alerts on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AlertRule:
    """One alerting rule: fires when ``signal op threshold`` holds for ``for_``."""

    name: str
    signal: str
    op: str
    threshold: float
    for_: str
    severity: str
    summary: str

    @property
    def expr(self) -> str:
        """The PromQL expression Prometheus evaluates."""
        threshold = int(self.threshold) if float(self.threshold).is_integer() else self.threshold
        return f"{self.signal} {self.op} {threshold}"

    def to_yaml_dict(self) -> dict[str, Any]:
        """The rule in Prometheus rule-file form."""
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.for_,
            "labels": {"severity": self.severity},
            "annotations": {"summary": self.summary},
        }


RULES: tuple[AlertRule, ...] = (
    AlertRule(
        "AtpConsumerLagHigh",
        "sum by (topic) (atp_consumer_lag)",
        ">",
        10_000,
        "5m",
        "warning",
        "The flow is {{ $value }} messages behind on {{ $labels.topic }}.",
    ),
    AlertRule(
        "AtpDlqRate",
        "sum(rate(atp_dlq_total[5m]))",
        ">",
        0.1,
        "5m",
        "warning",
        "{{ $value | humanize }} messages/s are going to the dead-letter topic.",
    ),
    AlertRule(
        "AtpOversold",
        "sum(atp_oversold_units)",
        ">",
        0,
        "1m",
        "critical",
        "{{ $value }} units are promised beyond supply; affected orders got promise_at_risk alerts.",
    ),
    AlertRule(
        "AtpRedisDown",
        'min by (job, instance) (atp_dependency_up{dependency="redis"})',
        "==",
        0,
        "1m",
        "critical",
        "{{ $labels.job }} on {{ $labels.instance }} cannot reach Redis.",
    ),
    AlertRule(
        "AtpBrokerDown",
        'min by (job, instance) (atp_dependency_up{dependency="kafka"})',
        "==",
        0,
        "1m",
        "critical",
        "{{ $labels.job }} on {{ $labels.instance }} cannot reach the Kafka broker.",
    ),
    AlertRule(
        "AtpLogReset",
        "sum by (topic) (increase(atp_log_resets_total[15m]))",
        ">",
        0,
        "0m",
        "critical",
        "The log of {{ $labels.topic }} started again (a new topic id): the flow reads it from its "
        "start; check what producers republish (README, 'When the log is reset').",
    ),
    AlertRule(
        "AtpChangelogBacklog",
        "max(atp_changelog_backlog)",
        ">",
        100_000,
        "5m",
        "warning",
        "{{ $value }} change records wait in Redis for the relay: the relay holding the lock cannot ship "
        "them (the broker is away, inventory.changes is missing) or does not keep up. Redis memory grows "
        "with them, a lost Redis loses them, and beyond ATP_CHANGELOG_BACKLOG_MAX (1,000,000 by default) "
        "/readyz reports not ready (docs/changelog.md, 'Relay').",
    ),
    AlertRule(
        "AtpChangelogRelayErrors",
        "sum(rate(atp_changelog_relay_errors_total[5m]))",
        ">",
        0,
        "10m",
        "warning",
        "The change log relay keeps failing ({{ $value | humanize }} rounds or deliveries/s, for 10 minutes): "
        "its records stay in Redis and every round tries again; the log of the API (or of `atp relay`) "
        "says why ('change log relay: …').",
    ),
    AlertRule(
        "AtpDrift",
        "max(atp_drift_skus)",
        ">",
        0,
        "0m",
        "critical",
        "The last reconcile found {{ $value }} SKUs whose Redis state differs from the change log; "
        "`atp reconcile` names them and what differs (README, 'Reconcile').",
    ),
    AlertRule(
        "AtpReconcileStale",
        "time() - max(atp_reconcile_round_timestamp_seconds)",
        ">",
        3600,
        "10m",
        "warning",
        "No reconcile round has ended for {{ $value | humanizeDuration }} (or none ever did): the drift "
        "figures are that old and drift would go unnoticed. Run the reconcile loop (`atp reconcile --every`, "
        "the compose service `reconcile`); its log says why a round fails.",
    ),
    AlertRule(
        "AtpTargetDown",
        'up{job=~"atp-.*"}',
        "==",
        0,
        "1m",
        "critical",
        "Prometheus cannot scrape {{ $labels.job }} on {{ $labels.instance }}.",
    ),
)


def rule_file() -> dict[str, Any]:
    """The whole rule file as a dict (one group)."""
    return {"groups": [{"name": "atp", "rules": [r.to_yaml_dict() for r in RULES]}]}
