"""The atp command on the broker: topics create, simulate, and a flow run to the end of the log."""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

import orjson
import pytest

from connectors.topics import Topics
from engine import cli
from engine.settings import Settings

pytestmark = pytest.mark.kafka_compat  # also run on Apache Kafka (README, tests)


@pytest.fixture
def cli_env(redis: Any, redis_url: str, kafka_bootstrap: str, settings: Settings,
            monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("ATP_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ATP_CONFIG", os.devnull)
    monkeypatch.setenv("ATP_REDIS_URL", redis_url)
    monkeypatch.setenv("ATP_KAFKA_BOOTSTRAP", kafka_bootstrap)
    monkeypatch.setenv("ATP_REDIS_CLUSTER", "true" if settings.redis_cluster else "false")
    monkeypatch.setenv("ATP_TOPIC_PARTITIONS", "3")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def test_topics_simulate_and_flow_until_end(cli_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    suffix = f".cli{uuid.uuid4().hex[:8]}"
    names = Topics(suffix=suffix)

    code, out, err = run(["topics", "create", "--suffix", suffix, "--json"], capsys)
    assert code == 0, err
    assert sorted(orjson.loads(out)["created"]) == sorted(names.all)
    code, out, _ = run(["topics", "create", "--suffix", suffix, "--json"], capsys)
    assert orjson.loads(out) == {"created": [], "existing": list(names.all)}

    code, out, err = run(["simulate", "-n", "400", "--seed", "3", "--skus", "20", "--suffix", suffix, "--json"],
                         capsys)
    assert code == 0, err
    report = orjson.loads(out)
    assert report["messages"] == report["delivered"] == 400 and report["failed"] == 0
    assert sum(report["by_topic"].values()) == 400

    code, _out, err = run(["flow", "--topic-suffix", suffix, "--until-end", "--no-metrics",
                           "--log-level", "WARNING"], capsys)
    assert code == 0, err
    seen = 0
    for sku in (f"SKU-{i:05d}" for i in range(1, 21)):
        code, out, _ = run(["get", sku, "--json"], capsys)
        assert code == 0
        position = orjson.loads(out)
        seen += position["on_hand"] + position["committed"] + position["in_transit"]
    assert seen > 0  # the stream reached Redis through the flow the command ran


def test_unreachable_broker_is_one_line(cli_env: None, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from connectors.embedded import free_port

    monkeypatch.setenv("ATP_KAFKA_BOOTSTRAP", f"127.0.0.1:{free_port()}")
    code, out, err = run(["topics", "create", "--suffix", ".nowhere", "--timeout", "2", "--json"], capsys)
    assert code == cli.EXIT_ERROR
    body = json.loads(out)  # --json: the failure is one JSON object on stdout as well
    assert body["error"] == "error" and body["detail"].startswith("cannot create topics on 127.0.0.1:")
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("atp: error: cannot create topics on 127.0.0.1:")


def test_topics_create_asks_for_the_configured_replication(
    cli_env: None, kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from confluent_kafka.admin import AdminClient

    suffix = f".rf{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("ATP_TOPIC_REPLICATION", "2")
    code, out, err = run(["topics", "create", "--suffix", suffix, "--timeout", "10", "--json"], capsys)
    if code == 0:
        # A broker that grants it (a cluster, or one that records the factor it was asked for).
        metadata = AdminClient({"bootstrap.servers": kafka_bootstrap}).list_topics(timeout=10)
        for name in Topics(suffix=suffix).all:
            replicas = {len(p.replicas) for p in metadata.topics[name].partitions.values()}
            assert replicas == {2}, (name, replicas)
    else:
        # A single-node Kafka refuses two replicas: the factor reached the broker.
        assert code == cli.EXIT_ERROR, err
        assert "replication factor" in orjson.loads(out)["detail"].lower(), out
