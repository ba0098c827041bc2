"""The environment ``atp demo`` / ``atp up`` give the flow and API processes they start."""

from __future__ import annotations

import os

import orjson
import pytest

from engine.dev.demo import child_env
from engine.settings import Settings

ROLES = {"digest": ["read"]}


@pytest.fixture
def running(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name in list(os.environ):
        if name.startswith("ATP_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ATP_CONFIG", os.devnull)
    return Settings(redis_url="redis://127.0.0.1:7001/0", kafka_bootstrap="127.0.0.1:9092", redis_cluster=True)


def test_the_children_are_told_redis_is_a_cluster_when_only_the_settings_say_so(running: Settings) -> None:
    # the settings were built in code (the Prometheus test, a demo on a cluster): nothing in the
    # environment says Cluster, yet the children must build Cluster clients
    assert "ATP_REDIS_CLUSTER" not in os.environ
    env = child_env(running, ROLES, "/tmp/rec")
    assert env["ATP_REDIS_CLUSTER"] == "true"
    assert (env["ATP_REDIS_URL"], env["ATP_KAFKA_BOOTSTRAP"]) == ("redis://127.0.0.1:7001/0", "127.0.0.1:9092")
    assert orjson.loads(env["ATP_API_TOKENS"]) == ROLES and env["ATP_RECOVERY_DIR"] == "/tmp/rec"


def test_a_standalone_setting_wins_over_a_stale_cluster_flag_in_the_environment(
    running: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATP_REDIS_CLUSTER", "true")
    env = child_env(running.model_copy(update={"redis_cluster": False}), ROLES, "/tmp/rec", {"ATP_X": "1"})
    assert env["ATP_REDIS_CLUSTER"] == "false" and env["ATP_X"] == "1"
