"""Shared fixtures: the real Redis and broker, clean state per test, invariant checks.

Servers are session-scoped: ``ATP_REDIS_URL`` / ``ATP_KAFKA_BOOTSTRAP`` point the suite at
external ones, otherwise embedded ones are started on free loopback ports and stopped at the
end of the session, whatever happens. The embedded broker is Tansu unless ``ATP_TEST_BROKER=kafka``
asks for Apache Kafka (KRaft, one node, from the jars ``python -m connectors.kafka_dist`` fetches;
needs Java 11+, and Maven for the one-time fetch): without them that run stops at once with the reason. ``ATP_REDIS_CLUSTER=true`` runs the suite against a
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

Any further client of the suite's Redis comes from ``redis_client(url, cluster)``, which builds a
Cluster client on a Cluster run, so every test runs unchanged on either.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from connectors import kafka_dist
from connectors.embedded import EmbeddedBroker, EmbeddedKafka, EmbeddedRedis, EmbeddedRedisCluster, stop_all
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


def redis_client(url: str, cluster: bool, *, asyncio: bool = False, **kwargs: Any) -> Any:
    """A new client of the suite's Redis at ``url``: a ``RedisCluster`` when ``cluster`` (the
    ``redis_cluster_mode`` fixture, or ``Settings.redis_cluster``), else a ``Redis``; their
    ``redis.asyncio`` twins with ``asyncio=True``. ``kwargs`` go to ``from_url`` (e.g.
    ``decode_responses=True``). Test code builds its clients here, so every test runs unchanged
    on a Cluster: a plain client there reaches one primary and gets MOVED for most keys."""
    if asyncio:
        import redis.asyncio as aioredis

        return (aioredis.RedisCluster if cluster else aioredis.Redis).from_url(url, **kwargs)
    return (redis_lib.RedisCluster if cluster else redis_lib.Redis).from_url(url, **kwargs)


#: Which embedded broker the suite starts when ATP_KAFKA_BOOTSTRAP is unset.
TEST_BROKER_ENV = "ATP_TEST_BROKER"
TANSU, APACHE_KAFKA, EXTERNAL = "tansu", "kafka", "external"


def _embedded_broker_choice() -> str:
    choice = (os.environ.get(TEST_BROKER_ENV) or TANSU).strip().lower()
    if choice not in (TANSU, APACHE_KAFKA):
        raise pytest.UsageError(f"{TEST_BROKER_ENV}={choice!r}: expected {TANSU!r} (default) or {APACHE_KAFKA!r}")
    return choice


def apache_kafka_missing() -> str | None:
    """Why Apache Kafka cannot run on this machine (no Java 11+, or not fetched and no Maven), else None."""
    try:
        kafka_dist.java_bin()
        if not kafka_dist.is_fetched():
            kafka_dist.mvn_bin()
    except kafka_dist.DistError as exc:
        return str(exc)
    return None


def _start_apache_kafka() -> EmbeddedKafka:
    kafka_dist.ensure_fetched()  # a no-op once fetched; CI fetches before the tests
    return EmbeddedKafka().start()


def pytest_configure(config: pytest.Config) -> None:
    # Fail before collecting anything: a run that asked for Apache Kafka must not quietly use another broker.
    if _embedded_broker_choice() == APACHE_KAFKA and not os.environ.get("ATP_KAFKA_BOOTSTRAP"):
        missing = apache_kafka_missing()
        if missing:
            raise pytest.UsageError(f"{TEST_BROKER_ENV}={APACHE_KAFKA}: {missing}")


@pytest.fixture(scope="session")
def broker_kind() -> str:
    """The broker behind ``kafka_bootstrap``: ``external`` (ATP_KAFKA_BOOTSTRAP), else the embedded
    one ATP_TEST_BROKER names, ``tansu`` (default) or ``kafka`` (Apache Kafka)."""
    return EXTERNAL if os.environ.get("ATP_KAFKA_BOOTSTRAP") else _embedded_broker_choice()


@pytest.fixture(scope="session")
def kafka_bootstrap(broker_kind: str) -> Iterator[str]:
    """host:port of the broker the suite uses (external from ATP_KAFKA_BOOTSTRAP, else embedded)."""
    if broker_kind == EXTERNAL:
        yield os.environ["ATP_KAFKA_BOOTSTRAP"]
        return
    broker: EmbeddedBroker | EmbeddedKafka
    if broker_kind == APACHE_KAFKA:
        broker = _start_apache_kafka()
    else:
        broker = EmbeddedBroker().start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def apache_kafka_home() -> Path:
    """The fetched Apache Kafka (fetched now if needed), for tests that need real Kafka. Without
    Java 11+ (or Maven for the fetch) they are skipped with the reason, except under CI (``CI``
    set), where they fail."""
    missing = apache_kafka_missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Apache Kafka tests: {missing}")
        pytest.skip(missing)  # a developer machine without a JDK: said, not hidden
    return kafka_dist.ensure_fetched()


@pytest.fixture(scope="session")
def apache_kafka_bootstrap(broker_kind: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """host:port of an Apache Kafka, for tests of what only real Kafka shows: the suite's broker
    under ATP_TEST_BROKER=kafka, else one started for them (skipped or failed as ``apache_kafka_home`` says)."""
    if broker_kind == APACHE_KAFKA:
        yield request.getfixturevalue("kafka_bootstrap")
        return
    request.getfixturevalue("apache_kafka_home")
    broker = _start_apache_kafka()
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
    client = redis_client(redis_url, redis_cluster_mode, decode_responses=True)
    client.flushall()  # a Cluster client sends FLUSHALL to every primary
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
