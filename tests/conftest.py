"""Shared fixtures: the real Redis and broker, clean state per test, invariant checks.

Servers are session-scoped: ``ATP_REDIS_URL`` / ``ATP_KAFKA_BOOTSTRAP`` point the suite at
external ones, otherwise embedded ones are started on free loopback ports and stopped at the
end of the session, whatever happens. ``ATP_REDIS_CLUSTER=true`` runs the suite against a
Redis Cluster (an embedded one with 3 primaries unless ATP_REDIS_URL names one; R14 in docs/quality.md).

Per test:

* ``redis`` — a client (``decode_responses=True``) on a FLUSHALLed server. At teardown the
  ``invariant_check`` list runs; when ``engine.store.invariants`` exists, its
  ``check_invariants(client) -> list[str]`` is in that list, and a non-empty result fails
  the test (R12, docs/quality.md).
* ``invariant_check`` — a list of zero-argument callables run after the test; each may
  raise, or return a list of violation messages (non-empty fails the test).
* ``topics`` — a fresh ``Topics`` set (unique suffix), created with 3 partitions.
* ``settings`` — ``Settings`` pointing at both servers, unaffected by the developer's own
  ``ATP_*`` variables or ``atp.toml``.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis as redis_lib

from connectors.embedded import EmbeddedBroker, EmbeddedRedis, EmbeddedRedisCluster, stop_all
from connectors.topics import Topics, create_topics
from engine.settings import Settings

TOPIC_PARTITIONS = 3

Check = Callable[[], "list[str] | None"]


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Backstop for interrupted sessions, after pytest's own fixture teardown (which may still
    # need the servers, e.g. for invariant checks): whatever is still running is stopped here.
    stop_all()


@pytest.fixture(scope="session")
def redis_cluster_mode() -> bool:
    """True when the suite runs against a Redis Cluster (ATP_REDIS_CLUSTER)."""
    return _truthy(os.environ.get("ATP_REDIS_CLUSTER"))


@pytest.fixture(scope="session")
def redis_url(redis_cluster_mode: bool) -> Iterator[str]:
    """URL of the Redis the suite uses: ATP_REDIS_URL, else an embedded server (or a 3-primary
    embedded cluster when ATP_REDIS_CLUSTER is set)."""
    external = os.environ.get("ATP_REDIS_URL")
    if external:
        yield external
        return
    server: EmbeddedRedis | EmbeddedRedisCluster = (
        EmbeddedRedisCluster(primaries=3) if redis_cluster_mode else EmbeddedRedis()
    )
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """host:port of the broker the suite uses (external from ATP_KAFKA_BOOTSTRAP, else embedded)."""
    external = os.environ.get("ATP_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    broker = EmbeddedBroker()
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def invariant_check() -> Iterator[list[Check]]:
    """Callables to run after the test; append yours. Failures are collected and reported together."""
    checks: list[Check] = []
    yield checks
    problems: list[str] = []
    for check in checks:
        try:
            found = check()
        except AssertionError as exc:
            problems.append(str(exc) or repr(exc))
            continue
        if found:
            problems.extend(str(p) for p in found)
    assert not problems, "invariant violations after the test:\n" + "\n".join(problems)


def _store_invariants() -> Callable[[Any], list[str]] | None:
    """engine.store.invariants.check_invariants if that module exists yet.

    Only a missing module is skipped; a module that exists but fails to import fails the test.
    """
    if importlib.util.find_spec("engine.store.invariants") is None:
        return None
    from engine.store.invariants import check_invariants

    return check_invariants


@pytest.fixture
def redis(redis_url: str, redis_cluster_mode: bool, invariant_check: list[Check]) -> Iterator[Any]:
    """A client on a clean Redis; the store's invariant checker runs at teardown when available."""
    if redis_cluster_mode:
        client: Any = redis_lib.RedisCluster.from_url(redis_url, decode_responses=True)
        client.flushall(target_nodes=redis_lib.RedisCluster.PRIMARIES)
    else:
        client = redis_lib.Redis.from_url(redis_url, decode_responses=True)
        client.flushall()
    checker = _store_invariants()
    if checker is not None:
        invariant_check.append(lambda: checker(client))
    yield client
    # No close here: the invariant checks (torn down after this fixture) still use the client,
    # and redis-py releases its pool when the client is collected.


@pytest.fixture
def topics(kafka_bootstrap: str) -> Topics:
    """A fresh set of the engine's topics (unique suffix), created with 3 partitions."""
    fresh = Topics(suffix=f".t{uuid.uuid4().hex[:10]}")
    create_topics({"bootstrap.servers": kafka_bootstrap}, fresh, partitions=TOPIC_PARTITIONS)
    return fresh


@pytest.fixture
def settings(redis_url: str, kafka_bootstrap: str, redis_cluster_mode: bool) -> Settings:
    """Settings pointing at the suite's Redis and broker, ignoring the developer's ATP_* env and atp.toml."""
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.upper().startswith("ATP_"):
                mp.delenv(name)
        mp.setenv("ATP_CONFIG", os.devnull)  # not a regular file, so no TOML is read
        return Settings(
            redis_url=redis_url,
            kafka_bootstrap=kafka_bootstrap,
            redis_cluster=redis_cluster_mode,
            topic_partitions=TOPIC_PARTITIONS,
        )
