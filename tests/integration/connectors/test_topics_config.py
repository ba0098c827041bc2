"""Topic creation: the change log topic keeps its records without a limit (docs/changelog.md)."""

from __future__ import annotations

from confluent_kafka.admin import AdminClient, ConfigResource

from connectors.topics import Topics


def _config(admin: AdminClient, topic: str) -> dict[str, str]:
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    return {name: entry.value for name, entry in admin.describe_configs([res])[res].result(timeout=30).items()}


def test_the_change_log_topic_keeps_its_records_without_a_limit(kafka_bootstrap: str, topics: Topics) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    changes = _config(admin, topics.changes)
    assert (changes["retention.ms"], changes["retention.bytes"]) == ("-1", "-1")
    assert _config(admin, topics.alerts).get("retention.ms") != "-1"  # the others keep the broker's default
