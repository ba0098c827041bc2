"""Producer and consumer configs built from the settings."""

from __future__ import annotations

import pytest

from connectors.kafka import admin_config, consumer_config, producer_config
from engine.settings import Settings


@pytest.fixture
def sasl_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("ATP_CONFIG", "/nonexistent/atp.toml")
    return Settings(
        kafka_bootstrap="b1:9093,b2:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="u",
        kafka_sasl_password="p",
        kafka_ssl_ca="/ca.pem",
    )


def test_producer_is_idempotent_with_acks_all_and_no_compression(sasl_settings: Settings) -> None:
    conf = producer_config(sasl_settings)
    assert conf["enable.idempotence"] is True and conf["acks"] == "all"
    assert conf["compression.type"] == "none" and conf["linger.ms"] >= 0
    assert conf["bootstrap.servers"] == "b1:9093,b2:9093"
    assert conf["sasl.username"] == "u" and conf["ssl.ca.location"] == "/ca.pem"


def test_non_idempotent_producer_and_overrides(sasl_settings: Settings) -> None:
    conf = producer_config(sasl_settings, idempotent=False, overrides={"linger.ms": 50})
    assert conf["enable.idempotence"] is False and conf["linger.ms"] == 50


def test_consumer_commits_manually_and_starts_from_earliest(sasl_settings: Settings) -> None:
    conf = consumer_config(sasl_settings, "atp-flow")
    assert conf["group.id"] == "atp-flow"
    assert conf["enable.auto.commit"] is False and conf["auto.offset.reset"] == "earliest"
    assert conf["security.protocol"] == "SASL_SSL" and conf["sasl.password"] == "p"


@pytest.mark.parametrize("group", ["", "has space", "-leading-dash", "x" * 201])
def test_bad_group_names_are_refused(sasl_settings: Settings, group: str) -> None:
    with pytest.raises(ValueError, match="consumer group"):
        consumer_config(sasl_settings, group)


def test_admin_config_is_the_connection_plus_overrides(sasl_settings: Settings) -> None:
    assert admin_config(sasl_settings, {"socket.timeout.ms": 1000}) == {
        **sasl_settings.kafka_config(),
        "socket.timeout.ms": 1000,
    }
