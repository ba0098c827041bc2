"""docker-compose.yml, the Dockerfile and dashboards/prometheus.yml agree with the engine.

There is no Docker engine here, so these checks read the files: every engine service runs a real
``atp`` subcommand, every ``ATP_*`` variable is a settings field whose value the settings accept,
and the ports the services listen on are the ports Prometheus scrapes and the healthchecks probe.
"""

from __future__ import annotations

import importlib
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from engine.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
ENGINE_SERVICES = {name: s for name, s in SERVICES.items() if (s.get("command") or [""])[0] == "atp"}
PROMETHEUS = yaml.safe_load((ROOT / "dashboards" / "prometheus.yml").read_text())

# Env vars the engine reads that are not settings fields.
NON_FIELD_ENV = {"ATP_CONFIG"}
_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Z_][A-Z0-9_]*)(?:(?P<op>:-|:\?)(?P<arg>[^}]*))?\}")


def _default_value(value: object) -> str | None:
    """The value compose substitutes when the host sets nothing; None when it would refuse to start."""
    text = str(value)
    required = False

    def repl(m: re.Match[str]) -> str:
        nonlocal required
        if m.group("op") == ":?":
            required = True
            return ""
        return m.group("arg") or ""

    text = _INTERPOLATION.sub(repl, text)
    return None if required else text


# Used only until engine/cli.py exists; from then on the real typer app is the reference.
KNOWN_COMMANDS = {("topics", "create"), ("flow",), ("serve",)}


def _cli_group() -> Any | None:
    """The click group behind ``atp`` (typer may vendor its own click, so it is duck-typed)."""
    try:
        cli = importlib.import_module("engine.cli")
    except ModuleNotFoundError as exc:
        if exc.name != "engine.cli":
            raise
        return None
    app = getattr(cli, "app", None)
    assert isinstance(app, typer.Typer), "engine.cli.app is not a typer.Typer"
    group = typer.main.get_command(app)
    assert hasattr(group, "commands"), "the atp app has no subcommands"
    return group


def _resolve(group: Any, args: list[str]) -> Any:
    """The command that ``atp <args>`` runs (options are not subcommands)."""
    cmd = group
    for word in args:
        if word.startswith("-") or not hasattr(cmd, "commands"):
            break
        sub = cmd.commands.get(word)
        assert sub is not None, f"`atp {' '.join(args)}`: no subcommand {word!r}; have {sorted(cmd.commands)}"
        cmd = sub
    assert not hasattr(cmd, "commands"), f"`atp {' '.join(args)}` names a group, not a command"
    return cmd


def test_engine_services_are_the_topics_flow_and_api() -> None:
    assert {n: s["command"][1] for n, s in ENGINE_SERVICES.items()} == {
        "topics": "topics",
        "flow": "flow",
        "api": "serve",
    }


@pytest.mark.parametrize("service", sorted(ENGINE_SERVICES))
def test_engine_service_command_is_an_atp_subcommand(service: str) -> None:
    command = ENGINE_SERVICES[service]["command"]
    group = _cli_group()
    if group is None:
        words = tuple(w for w in command[1:] if not w.startswith("-"))
        assert words in KNOWN_COMMANDS
    else:
        _resolve(group, command[1:])


@pytest.mark.parametrize("service", sorted(ENGINE_SERVICES))
def test_engine_service_env_vars_are_settings_fields_the_settings_accept(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = ENGINE_SERVICES[service].get("environment") or {}
    assert env, f"{service} sets no environment"
    fields = {f"ATP_{name.upper()}" for name in Settings.model_fields}
    unknown = sorted(k for k in env if k.startswith("ATP_") and k not in fields | NON_FIELD_ENV)
    assert not unknown, f"{service}: {unknown} are not fields of engine.settings.Settings"

    for key in list(os.environ):
        if key.startswith("ATP_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(ROOT / "dashboards")  # no atp.toml here, so only the env counts
    expected = {}
    for key, raw in env.items():
        value = _default_value(raw)
        if value is not None and key in fields:
            monkeypatch.setenv(key, value)
            expected[key[4:].lower()] = value
    settings = Settings()
    for field, value in expected.items():
        assert str(getattr(settings, field)).lower() == value.lower(), (service, field)


def test_required_secrets_have_no_insecure_default() -> None:
    # The API refuses to start without tokens rather than running open.
    assert _default_value(SERVICES["api"]["environment"]["ATP_API_TOKENS"]) is None


def _env(service: str, key: str) -> str:
    value = _default_value(SERVICES[service]["environment"][key])
    assert value is not None
    return value


def _scrape_targets() -> dict[str, list[str]]:
    return {
        job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
        for job in PROMETHEUS["scrape_configs"]
    }


def test_flow_metrics_port_is_scraped_exposed_and_probed() -> None:
    port = int(_env("flow", "ATP_FLOW_METRICS_PORT"))
    assert port != Settings.model_fields["api_port"].default
    assert _scrape_targets()["atp-flow"] == [f"flow:{port}"]
    assert str(port) in [str(p) for p in SERVICES["flow"]["expose"]]
    assert f":{port}/metrics" in " ".join(SERVICES["flow"]["healthcheck"]["test"])


def test_api_port_is_published_scraped_and_probed() -> None:
    port = int(_env("api", "ATP_API_PORT"))
    assert _env("api", "ATP_API_HOST") == "0.0.0.0"  # reachable from the other containers
    container_ports = [str(p).rsplit(":", 1)[-1] for p in SERVICES["api"]["ports"]]
    assert str(port) in container_ports
    assert _scrape_targets()["atp-api"] == [f"api:{port}"]
    assert f":{port}/readyz" in " ".join(SERVICES["api"]["healthcheck"]["test"])


def test_redis_and_kafka_urls_name_the_compose_services() -> None:
    for service in ENGINE_SERVICES:
        assert _env(service, "ATP_REDIS_URL").startswith("redis://redis:6379")
        assert _env(service, "ATP_KAFKA_BOOTSTRAP") == "kafka:9092"
    assert "PLAINTEXT://kafka:9092" in SERVICES["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]


def test_kafka_runs_kraft_single_node() -> None:
    kafka = SERVICES["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"


def test_redis_is_7_with_aof_and_configurable_fsync() -> None:
    redis = SERVICES["redis"]
    assert re.match(r"redis:7(\.|-|$)", redis["image"])
    args = redis["command"]
    assert args[args.index("--appendonly") + 1] == "yes"
    fsync = args[args.index("--appendfsync") + 1]
    assert _default_value(fsync) == "everysec" and "${" in fsync


def test_every_service_but_the_one_shot_has_a_healthcheck() -> None:
    missing = sorted(n for n, s in SERVICES.items() if n != "topics" and "healthcheck" not in s)
    assert not missing
    assert SERVICES["topics"]["restart"] == "no"
    for service in ("flow", "api"):
        deps = SERVICES[service]["depends_on"]
        assert deps["topics"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == "service_healthy"


def test_prometheus_and_grafana_mount_the_dashboards() -> None:
    prom_mounts = {m.split(":")[0]: m.split(":")[1] for m in SERVICES["prometheus"]["volumes"] if m.startswith("./")}
    assert prom_mounts["./dashboards/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert prom_mounts["./dashboards/rules.yml"] in PROMETHEUS["rule_files"]
    grafana_mounts = {m.split(":")[0]: m.split(":")[1] for m in SERVICES["grafana"]["volumes"] if m.startswith("./")}
    assert grafana_mounts["./dashboards/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load((ROOT / "dashboards/provisioning/dashboards/atp.yml").read_text())
    assert grafana_mounts["./dashboards/generated"] == provider["providers"][0]["options"]["path"]
    for mount in list(prom_mounts) + list(grafana_mounts):
        assert (ROOT / mount).exists(), mount


def test_dockerfile_copies_every_package_pyproject_installs() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", dockerfile, re.M)
    copied = {w for line in dockerfile.splitlines() if line.startswith("COPY ") for w in line.split()[1:-1]}
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages | {"pyproject.toml", pyproject["project"]["readme"]} <= copied
    assert "pip install ." in dockerfile


def test_api_may_open_a_descriptor_per_allowed_connection() -> None:
    from engine.api.server import OPEN_FILES, OPEN_FILES_MARGIN

    nofile = SERVICES["api"]["ulimits"]["nofile"]
    assert int(nofile["soft"]) == int(nofile["hard"]) == OPEN_FILES
    max_connections = int(SERVICES["api"]["environment"].get("ATP_MAX_CONNECTIONS", Settings().max_connections))
    assert OPEN_FILES >= max_connections + OPEN_FILES_MARGIN
