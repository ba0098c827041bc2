"""A Redis Cluster that cannot be reached: the API answers 503 ``unavailable`` with Retry-After
on the hot path and on FastAPI routes alike, and the ``atp`` command prints one line and exits 1.

The Cluster client raises its own errors (``RedisClusterUnreachableError`` when no node
answers, as it is built or on a command), which are not ``RedisError`` subclasses; they must
not be taken for bugs (500, a traceback). Two outages: a Cluster that was never there (a dead
loopback port), and an embedded Cluster the app was using, stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest
from fastapi import FastAPI
from redis.exceptions import (
    CrossSlotTransactionError,
    RedisClusterException,
    RedisClusterUnreachableError,
    SlotNotCoveredError,
)

from connectors.embedded import EmbeddedRedisCluster, free_port
from connectors.topics import Topics
from engine import cli
from engine.api import create_app
from engine.api.errors import install_error_handlers, runtime_error_reply
from engine.settings import Settings
from tests.integration.api_harness import ADMIN, READER, RESERVER, api_settings, bearer

pytestmark = pytest.mark.anyio

JSON = {"Content-Type": "application/json"}
HOLD = orjson.dumps({"lines": [{"sku": "CD-1", "qty": 1}], "ttl_seconds": 600})

# (name, method, path, headers, body); the first three are served by the hot path.
CALLS = [
    ("hold", "POST", "/v1/reservations", {**bearer(RESERVER), **JSON, "Idempotency-Key": "cd-1"}, HOLD),
    ("ATP of one SKU", "GET", "/v1/atp/CD-1", bearer(READER), None),
    ("read a reservation", "GET", "/v1/reservations/cd-1", bearer(READER), None),
    ("confirm", "POST", "/v1/reservations/cd-1/confirm", bearer(RESERVER), None),
    ("ATP of many (FastAPI)", "POST", "/v1/atp/query", {**bearer(READER), **JSON},
     orjson.dumps({"skus": ["CD-1", "CD-2"]})),
    ("a policy (FastAPI)", "GET", "/v1/policies/CD-1", bearer(ADMIN), None),
]


def _client(app: object) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://atp.test", timeout=30)


def _cluster_settings(settings: Settings, url: str) -> Settings:
    return api_settings(settings, redis_url=url, redis_cluster=True)


async def _assert_all_unavailable(api: httpx.AsyncClient) -> None:
    for name, method, path, headers, body in CALLS:
        started = time.monotonic()
        reply = await api.request(method, path, headers=headers, content=body)
        took = time.monotonic() - started
        assert reply.status_code == 503, (name, reply.status_code, reply.text)
        assert reply.json()["error"] == "unavailable", (name, reply.text)
        assert reply.json()["retry_after"] == 1, name
        assert reply.headers["Retry-After"] == "1", name
        assert "127.0.0.1" not in reply.text, name  # the reason goes to the log only
        assert took < 2.0, (name, took)


@pytest.fixture
async def stopped_cluster_app(settings: Settings, topics: Topics) -> AsyncIterator[httpx.AsyncClient]:
    """The app over an embedded Cluster it has used, which is then stopped."""
    cluster = EmbeddedRedisCluster(primaries=3)
    cluster.start()
    try:
        app = create_app(_cluster_settings(settings, cluster.url), topics=topics, sweep=False)
        async with app.router.lifespan_context(app), _client(app) as api:
            assert (await api.get("/v1/atp/CD-1", headers=bearer(READER))).status_code == 200
            cluster.stop()
            yield api
    finally:
        cluster.stop()


@pytest.mark.parametrize("hot_path", [True, False], ids=["hot path", "FastAPI only"])
async def test_a_cluster_never_reached_is_503_unavailable(settings: Settings, topics: Topics, hot_path: bool) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    app = create_app(_cluster_settings(settings, dead), topics=topics, sweep=False, hot_path=hot_path)
    async with app.router.lifespan_context(app), _client(app) as api:
        for _ in range(2):  # the first call builds the topology, later ones find it missing
            await _assert_all_unavailable(api)


async def test_a_cluster_gone_down_is_503_unavailable(stopped_cluster_app: httpx.AsyncClient) -> None:
    for _ in range(2):
        await _assert_all_unavailable(stopped_cluster_app)


async def test_cluster_errors_map_to_503_but_bugs_stay_500() -> None:
    outages = [RedisClusterUnreachableError("no node"), SlotNotCoveredError("slot 1"), RedisClusterException("x")]
    for exc in outages:
        reply = runtime_error_reply(exc, "GET", "/v1/atp/CD-1")
        assert reply is not None and reply.status_code == 503, exc
        assert reply.headers["Retry-After"] == "1"
    # A transaction across slots is a bug in the engine, not an outage: the hot path answers 500
    # and re-raises, and so does the FastAPI app (its 500 handler, past the Cluster one).
    assert runtime_error_reply(CrossSlotTransactionError("x"), "GET", "/v1/atp/CD-1") is None
    app = FastAPI()
    install_error_handlers(app)
    raised: dict[str, Exception] = {"outage": outages[0], "bug": CrossSlotTransactionError("x")}

    @app.get("/{what}")
    async def fail(what: str) -> None:
        raise raised[what]

    async with _client(app) as api:
        outage, bug = await api.get("/outage"), await api.get("/bug")
    assert (outage.status_code, outage.json()["error"], outage.headers["Retry-After"]) == (503, "unavailable", "1")
    assert (bug.status_code, bug.json()["error"]) == (500, "internal")


@pytest.fixture
def dead_cluster_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """ATP_* for a Redis Cluster on a dead loopback port (with a password, which must not show)."""
    for name in list(os.environ):
        if name.upper().startswith("ATP_"):
            monkeypatch.delenv(name)
    env = {"ATP_CONFIG": os.devnull, "ATP_REDIS_CLUSTER": "true",
           "ATP_REDIS_URL": f"redis://:hunter2@127.0.0.1:{free_port()}/0"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def test_cli_with_the_cluster_unreachable_is_one_line_and_exit_1(
    dead_cluster_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["get", "CD-1"], ["get", "CD-1", "--json"], ["reserve", "CD-1:1"], ["confirm", "cd-1"],
                 ["policy", "get", "CD-1"]):
        with pytest.raises(SystemExit) as exited:
            cli.main(argv)
        out, err = capsys.readouterr()
        assert exited.value.code == cli.EXIT_ERROR == 1, (argv, err)
        # --json: the failure is {error, detail} on stdout too; without it stdout stays empty
        assert (json.loads(out)["error"] == "error") if "--json" in argv else out == "", argv
        assert "hunter2" not in out
        lines = err.strip().splitlines()
        assert len(lines) == 1, (argv, err)
        assert lines[0].startswith("atp: error: cannot reach Redis at redis://:***@127.0.0.1:"), (argv, err)
        assert "hunter2" not in err and "Traceback" not in err, argv


def test_console_script_with_the_cluster_unreachable(dead_cluster_env: dict[str, str]) -> None:
    script = Path(sys.executable).parent / "atp"
    env = {"PATH": os.environ.get("PATH", ""), **dead_cluster_env}
    done = subprocess.run([str(script), "get", "CD-1"], env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("atp: error: cannot reach Redis at "), done.stderr
