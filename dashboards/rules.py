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
