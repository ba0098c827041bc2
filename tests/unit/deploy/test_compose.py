"""docker-compose.yml (and its three-broker override), the Dockerfile, the lock file and the
Prometheus / Alertmanager configurations agree with the engine and with how it is deployed.

There is no Docker engine here, so these checks read the files: both compose files are valid
against the Compose Specification's JSON Schema, every engine service runs a real ``atp``
subcommand, every ``ATP_*`` variable is a settings field whose value the settings accept, the
ports the services listen on are the ports Prometheus scrapes and the healthchecks probe, Kafka
advertises a listener for clients outside compose, the three-broker variant replicates every
topic 3 times with 2 in sync, every alert reaches the webhook, no secret has a default, every
image has a version, the image runs as a numeric user and installs the lock file with hashes.
"""

from __future__ import annotations

import importlib
import importlib.resources
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from engine.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
COMPOSE_FILE = ROOT / "docker-compose.yml"
KAFKA3_FILE = ROOT / "docker-compose.kafka3.yml"
COMPOSE = yaml.safe_load(COMPOSE_FILE.read_text())
KAFKA3 = yaml.safe_load(KAFKA3_FILE.read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
ENGINE_SERVICES = {name: s for name, s in SERVICES.items() if (s.get("command") or [""])[0] == "atp"}
PROMETHEUS = yaml.safe_load((ROOT / "dashboards" / "prometheus.yml").read_text())
ALERTMANAGER = yaml.safe_load((ROOT / "dashboards" / "alertmanager.yml").read_text())
RULES = yaml.safe_load((ROOT / "dashboards" / "rules.yml").read_text())
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
LOCK_FILE = ROOT / "requirements.lock"
KAFKA_IMAGE = "apache/kafka:"


def _merge(base: Any, override: Any, key: str = "") -> Any:
    """``override`` laid over ``base`` as ``docker compose -f base -f override`` merges them:
    mappings key by key, ``ports`` added, ``volumes`` replaced by container path, the rest replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for k, v in override.items():
            merged[k] = _merge(base[k], v, k) if k in base else v
        return merged
    if key == "ports":
        return base + [p for p in override if p not in base]
    if key == "volumes":
        targets = {str(v).split(":")[1] for v in override}
        return [v for v in base if str(v).split(":")[1] not in targets] + list(override)
    return override


#: The stack as `docker compose up` runs it, and with the three-broker override.
VARIANTS: dict[str, dict[str, Any]] = {"one broker": COMPOSE, "three brokers": _merge(COMPOSE, KAFKA3)}

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


@pytest.mark.parametrize("path", [COMPOSE_FILE, KAFKA3_FILE], ids=lambda p: p.name)
def test_compose_file_is_valid_against_the_compose_specification(path: Path) -> None:
    # The schema check-jsonschema vendors: the Compose Specification's, read offline.
    text = (importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json").read_text()
    schema = json.loads(text)
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(
        yaml.safe_load(path.read_text()))]
    assert not errors, errors


def test_engine_services_are_the_topics_flow_api_and_reconcile_loop() -> None:
    assert {n: s["command"][1] for n, s in ENGINE_SERVICES.items()} == {
        "topics": "topics",
        "flow": "flow",
        "reconcile": "reconcile",
        "api": "serve",
    }


def test_the_reconcile_loop_beats_well_within_its_healthcheck_and_its_alert() -> None:
    command = SERVICES["reconcile"]["command"]
    every = float(command[command.index("--every") + 1])
    probe = " ".join(SERVICES["reconcile"]["healthcheck"]["test"])
    max_age = float(re.search(r"healthcheck\((\d+)\)", probe).group(1))  # type: ignore[union-attr]
    stale = next(r for r in RULES["groups"][0]["rules"] if r["alert"] == "AtpReconcileStale")
    threshold = float(re.search(r"> (\d+)$", stale["expr"]).group(1))  # type: ignore[union-attr]
    assert 3 * every <= max_age < threshold, (every, max_age, threshold)
    assert "atp_reconcile_round_timestamp_seconds" in stale["expr"]


@pytest.mark.parametrize("service", sorted(ENGINE_SERVICES))
def test_engine_service_command_is_an_atp_subcommand(service: str) -> None:
    command = ENGINE_SERVICES[service]["command"]
    group = _cli_group()
    if group is None:
        words = tuple(w for w in command[1:] if not w.startswith("-"))
        assert words in KNOWN_COMMANDS
    else:
        _resolve(group, command[1:])


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("service", sorted(ENGINE_SERVICES))
def test_engine_service_env_vars_are_settings_fields_the_settings_accept(
    service: str, variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = VARIANTS[variant]["services"][service].get("environment") or {}
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


_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|WEBHOOK|(^|_)KEY$")


def _secret_values() -> list[tuple[str, str]]:
    """(where, value) of every env var of either compose file whose name says it is a secret, and
    of every inline config (the alert webhook URL carries its receiver's credentials)."""
    found = []
    for label, compose in (("docker-compose.yml", COMPOSE), ("kafka3", KAFKA3)):
        for name, service in compose.get("services", {}).items():
            env = service.get("environment") or {}
            assert isinstance(env, dict), f"{label} {name}: environment as a mapping, please"
            found += [(f"{label} {name} {k}", str(v)) for k, v in env.items() if _SECRET_NAME.search(k)]
        for name, config in (compose.get("configs") or {}).items():
            if "content" in config:
                found.append((f"{label} configs {name}", str(config["content"])))
    return found


def test_no_secret_has_a_default() -> None:
    secrets = _secret_values()
    assert {w for w, _ in secrets} >= {
        "docker-compose.yml api ATP_API_TOKENS",
        "docker-compose.yml grafana GF_SECURITY_ADMIN_PASSWORD",
        "docker-compose.yml configs alert-webhook-url",
    }
    for where, value in secrets:
        # `${VAR:?why}`: compose refuses to start, saying why, while VAR is unset or empty.
        assert re.fullmatch(r"\$\{[A-Z_][A-Z0-9_]*:\?[^}]+\}", value), f"{where}: {value!r} is not required"
        assert _default_value(value) is None, where


def test_grafana_admin_password_comes_from_the_environment() -> None:
    # Without GF_SECURITY_ADMIN_PASSWORD Grafana starts with admin/admin.
    env = SERVICES["grafana"]["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")
    assert str(env.get("GF_AUTH_ANONYMOUS_ENABLED", "false")).lower() == "false"
    assert str(env["GF_USERS_ALLOW_SIGN_UP"]).lower() == "false"


def _env(service: str, key: str) -> str:
    value = _default_value(SERVICES[service]["environment"][key])
    assert value is not None
    return value


def _publish(spec: object) -> tuple[str, int, int]:
    """(host address, host port, container port) of a short-syntax ``ports`` entry, defaults applied."""
    value = _default_value(spec)
    assert value is not None, spec
    parts = value.rsplit(":", 2)
    host_ip = parts[0] if len(parts) == 3 else "0.0.0.0"
    return host_ip, int(parts[-2]), int(parts[-1])


def _listeners(value: str) -> dict[str, tuple[str, int]]:
    """``NAME://host:port,…`` (defaults applied) as {name: (host, port)}."""
    text = _default_value(value)
    assert text is not None, value
    out = {}
    for item in text.split(","):
        name, address = item.split("://")
        host, port = address.rsplit(":", 1)
        out[name] = (host, int(port))
    return out


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
    env = SERVICES["kafka"]["environment"]
    internal = env["KAFKA_INTER_BROKER_LISTENER_NAME"]
    assert _listeners(env["KAFKA_ADVERTISED_LISTENERS"])[internal] == ("kafka", 9092)


def _kafka_nodes(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in compose["services"].items() if s.get("image", "").startswith(KAFKA_IMAGE)}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_broker_advertises_an_external_listener_on_its_published_port(variant: str) -> None:
    nodes = _kafka_nodes(VARIANTS[variant])
    host_ports = []
    for name, node in nodes.items():
        env = node["environment"]
        listeners = _listeners(env["KAFKA_LISTENERS"])
        advertised = _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
        protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
        # Inside compose the brokers are their service names; outside, KAFKA_EXTERNAL_HOST (localhost).
        assert advertised["INTERNAL"] == (name, listeners["INTERNAL"][1]), name
        assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] == "INTERNAL"
        assert "EXTERNAL://${KAFKA_EXTERNAL_HOST:-localhost}:" in env["KAFKA_ADVERTISED_LISTENERS"], name
        external_host, external_port = advertised["EXTERNAL"]
        assert external_host == "localhost"
        assert set(protocols) == set(listeners) and protocols["EXTERNAL"] in {"PLAINTEXT", "SSL", "SASL_SSL"}
        # A client told EXTERNAL's address reaches that broker's EXTERNAL listener through the host.
        published = [_publish(p) for p in node["ports"]]
        assert [(h, c) for _, h, c in published] == [(external_port, listeners["EXTERNAL"][1])], name
        # Plaintext without authentication: on the loopback unless KAFKA_EXTERNAL_BIND says otherwise.
        assert all(str(p).startswith("${KAFKA_EXTERNAL_BIND:-127.0.0.1}:") for p in node["ports"]), name
        host_ports.append(external_port)
    assert len(host_ports) == len(set(host_ports)) == len(nodes)
    assert 29092 in host_ports


def _broker_config(env: dict[str, Any], key: str) -> int:
    """A broker setting as the apache/kafka image reads it: ``KAFKA_A_B`` is ``a.b``."""
    value = _default_value(env[f"KAFKA_{key.upper().replace('.', '_')}"])
    assert value is not None
    return int(value)


def test_three_brokers_replicate_every_topic_three_times_with_two_in_sync() -> None:
    compose = VARIANTS["three brokers"]
    nodes = _kafka_nodes(compose)
    assert sorted(nodes) == ["kafka", "kafka-2", "kafka-3"]
    node_ids = {int(n["environment"]["KAFKA_NODE_ID"]): name for name, n in nodes.items()}
    assert sorted(node_ids) == [1, 2, 3]
    voters = f"{','.join(f'{i}@{node_ids[i]}:9093' for i in sorted(node_ids))}"
    for name, node in nodes.items():
        env = node["environment"]
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == voters, name
        assert _listeners(env["KAFKA_LISTENERS"])["CONTROLLER"][1] == 9093
        # The engine's topics (created with ATP_TOPIC_REPLICATION, below) and the broker's own.
        for key in ("default.replication.factor", "offsets.topic.replication.factor",
                    "transaction.state.log.replication.factor"):
            assert _broker_config(env, key) == 3, (name, key)
        for key in ("min.insync.replicas", "transaction.state.log.min.isr"):
            assert _broker_config(env, key) == 2, (name, key)
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    bootstrap = ",".join(f"{name}:9092" for name in sorted(nodes))
    for service in ENGINE_SERVICES:
        env = compose["services"][service]["environment"]
        assert env["ATP_KAFKA_BOOTSTRAP"] == bootstrap, service
        assert int(env["ATP_TOPIC_REPLICATION"]) == len(nodes), service
    depends = compose["services"]["topics"]["depends_on"]
    assert {n: depends[n]["condition"] for n in nodes} == dict.fromkeys(nodes, "service_healthy")
    volumes = [v.split(":")[0] for n in nodes.values() for v in n["volumes"]]
    assert len(set(volumes)) == 3 and set(volumes) <= set(compose["volumes"])


def test_the_added_brokers_are_configured_as_the_first() -> None:
    nodes = _kafka_nodes(VARIANTS["three brokers"])
    per_node = {"KAFKA_NODE_ID", "KAFKA_ADVERTISED_LISTENERS"}
    first = nodes["kafka"]
    for name in ("kafka-2", "kafka-3"):
        node = nodes[name]
        assert node["image"] == first["image"] and node["healthcheck"] == first["healthcheck"], name
        assert node["restart"] == first["restart"]
        shared = {k: v for k, v in node["environment"].items() if k not in per_node}
        assert shared == {k: v for k, v in first["environment"].items() if k not in per_node}, name


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


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_service_but_the_one_shot_has_a_healthcheck(variant: str) -> None:
    services = VARIANTS[variant]["services"]
    missing = sorted(n for n, s in services.items() if n != "topics" and "healthcheck" not in s)
    assert not missing
    assert SERVICES["topics"]["restart"] == "no"
    for service in ("flow", "api", "reconcile"):
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


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split()[0].upper(), line.split(maxsplit=1)[1]) for line in lines if line and line[0] != "#"]


def test_dockerfile_copies_every_package_pyproject_installs() -> None:
    assert re.search(r"^FROM python:3\.11-slim", DOCKERFILE, re.M)
    copied = {w for kw, args in _instructions() if kw == "COPY" for w in args.split()[:-1]}
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages | {"pyproject.toml", PYPROJECT["project"]["readme"], LOCK_FILE.name} <= copied


def test_dockerfile_installs_the_lock_with_hashes_then_the_engine_without_dependencies() -> None:
    steps = _instructions()
    runs = [(i, args) for i, (kw, args) in enumerate(steps) if kw == "RUN"]
    lock = [i for i, args in runs if f"pip install --require-hashes -r {LOCK_FILE.name}" in args]
    engine = [i for i, args in runs if re.search(r"pip install --no-deps( --no-build-isolation)? \.( |$)", args)]
    assert len(lock) == 1 and len(engine) == 1
    copy_lock = next(i for i, (kw, args) in enumerate(steps) if kw == "COPY" and LOCK_FILE.name in args)
    copy_code = min(i for i, (kw, args) in enumerate(steps) if kw == "COPY" and "engine" in args.split())
    # The lock before the code: an edit of the code does not reinstall the dependencies.
    assert copy_lock < lock[0] < copy_code < engine[0]
    # No other pip install could bring in something the lock did not pin.
    installs = [args for _, args in runs if "pip install" in args]
    assert len(installs) == 2 and all(args.count("pip install") == 1 for args in installs)


def test_dockerfile_runs_as_a_numeric_user_that_owns_the_state_directory() -> None:
    steps = _instructions()
    users = [args for kw, args in steps if kw == "USER"]
    assert len(users) == 1 and re.fullmatch(r"\d+:\d+", users[0]), users  # hadolint DL3066
    uid, gid = users[0].split(":")
    assert int(uid) >= 10000  # outside the host's system and login ranges
    assert [kw for kw, _ in steps].index("USER") > max(i for i, (kw, _) in enumerate(steps) if kw == "RUN")
    setup = " ".join(args for kw, args in steps if kw == "RUN")
    assert f"--gid {gid}" in setup and f"--uid {uid} --gid {gid}" in setup
    owned = re.search(rf"chown -R {uid}:{gid} (\S+)", setup)
    assert owned, setup
    recovery = _env("flow", "ATP_RECOVERY_DIR")
    assert recovery.startswith(owned.group(1) + "/") and f"mkdir -p {recovery}" in setup
    assert any(str(v).endswith(":" + recovery) for v in SERVICES["flow"]["volumes"])


_IMAGE = re.compile(r"^(?P<name>[a-z0-9][a-z0-9./_-]*)(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]*))?"
                    r"(?:@sha256:(?P<digest>[0-9a-f]{64}))?$")


def _images() -> dict[str, str]:
    images = {f"Dockerfile FROM #{i}": args.split()[0] for i, (kw, args) in enumerate(_instructions()) if kw == "FROM"}
    for label, compose in (("docker-compose.yml", COMPOSE), ("kafka3", KAFKA3)):
        for name, service in compose.get("services", {}).items():
            if "image" in service:
                images[f"{label} {name}"] = service["image"]
    return images


def test_every_image_has_an_explicit_version() -> None:
    images = _images()
    assert len(images) >= 8
    for where, ref in images.items():
        match = _IMAGE.match(ref)
        assert match, f"{where}: {ref!r}"
        tag = match.group("tag")
        # A version tag (digits in it), never latest; a digest pins it further (README "Production").
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{where}: {ref!r} has no version tag"


def test_the_engine_image_is_tagged_with_the_project_version() -> None:
    built = {n: s["image"] for n, s in SERVICES.items() if "build" in s}
    assert set(built) == set(ENGINE_SERVICES)
    assert set(built.values()) == {f"atp-engine:{PYPROJECT['project']['version']}"}


def _lock() -> dict[str, dict[str, Any]]:
    """requirements.lock as {canonical name: {version, hashes, via}} (uv / pip-compile format)."""
    pins: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    in_via = False
    for line in LOCK_FILE.read_text().splitlines():
        stripped = line.strip()
        pin = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if pin:
            name = canonicalize_name(pin.group(1))
            assert name not in pins, f"{name} pinned twice"
            current = pins[name] = {"version": pin.group(2), "hashes": 0, "via": []}
            in_via = False
        elif current is not None and stripped.startswith("--hash=sha256:"):
            current["hashes"] += 1
        elif current is not None and stripped.startswith("# via"):
            rest = stripped.removeprefix("# via").strip()
            in_via = not rest
            if rest:
                current["via"].append(rest)
        elif current is not None and in_via and stripped.startswith("#   "):
            current["via"].append(stripped.removeprefix("#").strip())
        else:
            assert not stripped or stripped.startswith("#"), f"unexpected line in the lock: {line!r}"
    return pins


# The platform the lock is for: the image's (Dockerfile FROM python:3.11, Linux x86_64).
LOCK_PLATFORM = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux",
                 "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
                 "implementation_name": "cpython", "platform_python_implementation": "CPython"}


def test_lock_is_for_the_image_python() -> None:
    header = " ".join(LOCK_FILE.read_text().splitlines()[:2])
    assert "--generate-hashes" in header and "--python-version 3.11" in header
    assert re.search(r"^FROM python:3\.11-", DOCKERFILE, re.M)
    assert SpecifierSet(PYPROJECT["project"]["requires-python"]).contains(LOCK_PLATFORM["python_full_version"])


def test_lock_pins_every_dependency_of_pyproject_within_its_range() -> None:
    pins = _lock()
    wanted = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    wanted += [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]  # --no-build-isolation
    for req in wanted:
        if req.marker is not None and not req.marker.evaluate(LOCK_PLATFORM):
            continue
        name = canonicalize_name(req.name)
        assert name in pins, f"{req} is not in {LOCK_FILE.name}: regenerate it (README 'Production')"
        assert req.specifier.contains(pins[name]["version"], prereleases=True), (
            f"{LOCK_FILE.name} pins {name}=={pins[name]['version']}, pyproject.toml wants {req}: regenerate it"
        )
    unhashed = sorted(n for n, p in pins.items() if not p["hashes"])
    assert not unhashed, f"pins without a hash (pip --require-hashes refuses them): {unhashed}"


def test_lock_holds_nothing_pyproject_no_longer_needs() -> None:
    pins = _lock()
    roots = {canonicalize_name(Requirement(r).name) for r in
             PYPROJECT["project"]["dependencies"] + PYPROJECT["build-system"]["requires"]}
    # Whom each pin is needed by, as the `# via` lines say; everything must lead back to a root.
    reached = set(roots) & set(pins)
    grew = True
    while grew:
        grew = False
        for name, pin in pins.items():
            if name not in reached and any(canonicalize_name(v) in reached for v in pin["via"]):
                reached.add(name)
                grew = True
    assert set(pins) == reached, f"pinned but needed by nothing in pyproject.toml: {sorted(set(pins) - reached)}"


def test_alerts_go_to_alertmanager_and_on_to_the_webhook() -> None:
    service = SERVICES["alertmanager"]
    config_path = next(a.split("=", 1)[1] for a in service["command"] if a.startswith("--config.file="))
    mounts = {m.split(":")[0]: m.split(":")[1] for m in service["volumes"] if m.startswith("./")}
    assert mounts["./dashboards/alertmanager.yml"] == config_path
    # Prometheus sends to the port Alertmanager listens on (the port its healthcheck probes).
    port = {c for _, _, c in (_publish(p) for p in service["ports"])}
    assert port == {9093} and ":9093/-/ready" in " ".join(service["healthcheck"]["test"])
    targets = [t for am in PROMETHEUS["alerting"]["alertmanagers"] for sc in am["static_configs"]
               for t in sc["targets"]]
    assert targets == ["alertmanager:9093"]
    # Each receiver reads its URL from a file that compose fills from ALERT_WEBHOOK_URL.
    files = {c["target"]: COMPOSE["configs"][c["source"]] for c in service["configs"]}
    receivers = {r["name"]: r for r in ALERTMANAGER["receivers"]}
    for name, receiver in receivers.items():
        hooks = receiver.get("webhook_configs") or []
        assert hooks and set(receiver) == {"name", "webhook_configs"}, name
        for hook in hooks:
            assert "url" not in hook and hook["send_resolved"] is True
            source = files[hook["url_file"]]
            assert source["content"].startswith("${ALERT_WEBHOOK_URL:?"), source
            assert _default_value(source["content"]) is None


def _receiver_for(labels: dict[str, str]) -> str:
    """The receiver Alertmanager's route tree picks for an alert (first matching child, `=` only)."""
    route = ALERTMANAGER["route"]
    receiver = route["receiver"]
    while True:
        for child in route.get("routes", []):
            matchers = [re.fullmatch(r'(\w+)="([^"]*)"', m) for m in child.get("matchers", [])]
            assert all(matchers), child  # another operator: teach this function first
            if all(labels.get(m.group(1)) == m.group(2) for m in matchers if m):
                route = child
                receiver = child.get("receiver", receiver)
                break
        else:
            return receiver


def test_every_rule_routes_to_the_webhook() -> None:
    rules = [r for g in RULES["groups"] for r in g["rules"] if "alert" in r]
    assert rules
    for rule in rules:
        labels = {"alertname": rule["alert"], **rule.get("labels", {})}
        assert labels.get("severity") in {"warning", "critical"}, rule["alert"]
        receiver = _receiver_for(labels)
        assert receiver == "webhook", (rule["alert"], receiver)


def test_api_may_open_a_descriptor_per_allowed_connection() -> None:
    from engine.api.server import OPEN_FILES, OPEN_FILES_MARGIN

    nofile = SERVICES["api"]["ulimits"]["nofile"]
    assert int(nofile["soft"]) == int(nofile["hard"]) == OPEN_FILES
    max_connections = int(SERVICES["api"]["environment"].get("ATP_MAX_CONNECTIONS", Settings().max_connections))
    assert OPEN_FILES >= max_connections + OPEN_FILES_MARGIN
