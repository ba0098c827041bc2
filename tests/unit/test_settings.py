"""Settings: env vars, the TOML file named by ATP_CONFIG, precedence, and refusal of bad values."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.settings import Settings

DIGEST = hashlib.sha256(b"secret-token").hexdigest()


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No ATP_* from the developer's shell and no atp.toml from the working directory."""
    for name in list(os.environ):
        if name.startswith("ATP_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield


def test_defaults_ask_for_embedded_servers() -> None:
    s = Settings()
    assert s.redis_url == "" and s.kafka_bootstrap == ""
    assert s.key_prefix == "atp" and s.topic_partitions == 3 and s.workers == 1


def test_env_vars_are_parsed_into_typed_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATP_REDIS_URL", "redis://10.0.0.5:6380/2")
    monkeypatch.setenv("ATP_REDIS_CLUSTER", "true")
    monkeypatch.setenv("ATP_WORKERS", "4")
    monkeypatch.setenv("ATP_SNAPSHOT_INTERVAL_S", "2.5")
    monkeypatch.setenv("ATP_API_TOKENS", f'{{"{DIGEST}": ["read", "reserve"]}}')
    s = Settings()
    assert s.redis_url == "redis://10.0.0.5:6380/2"
    assert s.redis_cluster is True
    assert s.workers == 4
    assert s.snapshot_interval_s == 2.5
    assert s.api_tokens == {DIGEST: ["read", "reserve"]}


def test_env_var_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("atp_batch_size", "42")
    assert Settings().batch_size == 42


def test_toml_file_named_by_atp_config_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "engine.toml"
    config.write_text(
        'kafka_bootstrap = "broker-1:9092,broker-2:9092"\n'
        "topic_partitions = 12\n"
        'key_prefix = "shop1"\n'
        "[api_tokens]\n"
        f'{DIGEST} = ["operate"]\n'
    )
    monkeypatch.setenv("ATP_CONFIG", str(config))
    s = Settings()
    assert s.kafka_bootstrap == "broker-1:9092,broker-2:9092"
    assert s.topic_partitions == 12
    assert s.key_prefix == "shop1"
    assert s.api_tokens == {DIGEST: ["operate"]}


def test_atp_toml_in_the_working_directory_is_the_default_file(tmp_path: Path) -> None:
    (tmp_path / "atp.toml").write_text("workers = 3\n")
    assert Settings().workers == 3


def test_env_wins_over_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "engine.toml"
    config.write_text("workers = 3\nbatch_size = 100\n")
    monkeypatch.setenv("ATP_CONFIG", str(config))
    monkeypatch.setenv("ATP_WORKERS", "8")
    s = Settings()
    assert s.workers == 8 and s.batch_size == 100


def test_a_missing_config_file_means_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ATP_CONFIG", str(tmp_path / "absent.toml"))
    assert Settings().workers == 1


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("ATP_WORKERS", "0"),
        ("ATP_WORKERS", "many"),
        ("ATP_TOPIC_PARTITIONS", "2000"),
        ("ATP_TOPIC_REPLICATION", "0"),
        ("ATP_TOPIC_REPLICATION", "33"),
        ("ATP_KEY_PREFIX", "Bad-Prefix"),
        ("ATP_KEY_PREFIX", "{atp}"),
        ("ATP_KAFKA_SECURITY_PROTOCOL", "TLS"),
        ("ATP_API_PORT", "70000"),
        ("ATP_SERVICE_LEVEL", "1.0"),
        ("ATP_REDIS_CLUSTER", "maybe"),
        ("ATP_API_TOKENS", "not json"),
        ("ATP_API_TOKENS", '{"short": ["read"]}'),
        ("ATP_API_TOKENS", f'{{"{DIGEST}": ["admin"]}}'),
        ("ATP_WATCH_SKUS", "FLASH-1"),
        ("ATP_WATCH_SKUS", '["bad sku"]'),
        ("ATP_WATCH_SKUS", "[" + ",".join(f'"S{i}"' for i in range(51)) + "]"),
    ],
)
def test_bad_env_values_raise_naming_the_field(monkeypatch: pytest.MonkeyPatch, env: str, value: str) -> None:
    monkeypatch.setenv(env, value)
    field = env.removeprefix("ATP_").lower()
    with pytest.raises((ValidationError, ValueError)) as info:
        Settings()
    assert field in str(info.value)


def test_http_edge_defaults_and_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings()
    assert (s.max_header_bytes, s.max_headers, s.max_connections) == (16384, 100, 2048)
    assert (s.header_timeout_s, s.keepalive_timeout_s) == (10.0, 5.0)
    monkeypatch.setenv("ATP_MAX_HEADER_BYTES", "8192")
    monkeypatch.setenv("ATP_MAX_HEADERS", "50")
    monkeypatch.setenv("ATP_HEADER_TIMEOUT_S", "2.5")
    monkeypatch.setenv("ATP_KEEPALIVE_TIMEOUT_S", "1")
    monkeypatch.setenv("ATP_MAX_CONNECTIONS", "10000")
    s = Settings()
    assert (s.max_header_bytes, s.max_headers, s.max_connections) == (8192, 50, 10000)
    assert (s.header_timeout_s, s.keepalive_timeout_s) == (2.5, 1.0)


@pytest.mark.parametrize(
    ("env", "value"),
    [
        ("ATP_MAX_HEADER_BYTES", "100"),
        ("ATP_MAX_HEADER_BYTES", str(2 * 1024 * 1024)),
        ("ATP_MAX_HEADER_BYTES", "16k"),
        ("ATP_MAX_HEADERS", "0"),
        ("ATP_MAX_HEADERS", "100000"),
        ("ATP_HEADER_TIMEOUT_S", "0"),
        ("ATP_HEADER_TIMEOUT_S", "-1"),
        ("ATP_HEADER_TIMEOUT_S", "inf"),
        ("ATP_HEADER_TIMEOUT_S", "nan"),
        ("ATP_KEEPALIVE_TIMEOUT_S", "0"),
        ("ATP_KEEPALIVE_TIMEOUT_S", "7200"),
        ("ATP_MAX_CONNECTIONS", "0"),
        ("ATP_MAX_CONNECTIONS", "2000000"),
    ],
)
def test_bad_http_edge_values_raise_naming_the_field(monkeypatch: pytest.MonkeyPatch, env: str, value: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert env.removeprefix("ATP_").lower() in str(info.value)


def test_watch_skus_is_a_json_list_without_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().watch_skus == []
    monkeypatch.setenv("ATP_WATCH_SKUS", '["FLASH-1", "PRE-1", "FLASH-1"]')
    assert Settings().watch_skus == ["FLASH-1", "PRE-1"]


def test_bad_value_in_the_file_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "engine.toml"
    config.write_text("batch_size = -5\n")
    monkeypatch.setenv("ATP_CONFIG", str(config))
    with pytest.raises(ValidationError, match="batch_size"):
        Settings()


def test_kafka_config_carries_credentials_and_tls() -> None:
    s = Settings(
        kafka_bootstrap="b:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="engine",
        kafka_sasl_password="pw",
        kafka_ssl_ca="/etc/ca.pem",
    )
    assert s.kafka_config() == {
        "bootstrap.servers": "b:9093",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "engine",
        "sasl.password": "pw",
        "ssl.ca.location": "/etc/ca.pem",
    }


def test_plaintext_kafka_config_has_no_credentials() -> None:
    assert Settings(kafka_bootstrap="b:9092").kafka_config() == {
        "bootstrap.servers": "b:9092",
        "security.protocol": "PLAINTEXT",
    }


def test_topic_replication_is_one_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    # One: the embedded broker and a single-node Kafka have one replica to give.
    assert Settings().topic_replication == 1
    monkeypatch.setenv("ATP_TOPIC_REPLICATION", "3")
    assert Settings().topic_replication == 3


def test_alert_windows_and_scores_come_from_settings() -> None:
    from engine.domain.sku_monitor import RulePolicies
    from engine.domain.suppliers import SupplierParams

    s = Settings(alert_resolve_after_s=60, unfulfillable_quiet_s=7200, demand_alpha=0.5, demand_window_hours=12,
                 demand_baseline_days=3, supplier_alpha=0.1, supplier_resolve_band=0.1)
    rules = RulePolicies.from_settings(s)
    assert (rules.alerts.resolve_after_ms, rules.alerts.unfulfillable_quiet_ms) == (60_000, 7_200_000)
    assert (rules.demand.alpha, rules.demand.window_hours, rules.demand.baseline_days) == (0.5, 12, 3)
    supplier = SupplierParams.from_settings(s)
    assert (supplier.alpha, supplier.band, supplier.unreliable_below) == (0.1, 0.1, 0.8)
    with pytest.raises(ValidationError):
        Settings(demand_window_hours=0)
