"""The API's event publisher against a real broker that goes away: publishing never waits for
it, nothing within the backlog bound is lost, a full backlog drops loudly, and the publisher
comes back by itself (engine/api/publisher.py). The broker is of the kind the suite runs on
(ATP_TEST_BROKER): Tansu comes back empty, Apache Kafka with its log."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from connectors.embedded import EmbeddedBroker, EmbeddedKafka
from connectors.kafka import producer_config
from connectors.topics import create_topics
from engine import metrics
from engine.api.publisher import EventPublisher
from engine.settings import Settings
from tests.conftest import APACHE_KAFKA
from tests.integration.flowkit import read_topic

pytestmark = pytest.mark.kafka_compat  # also run on Apache Kafka (README, tests)

TOPIC = "pub.events"
# small queues and short timeouts: the outbox and the put-back path carry the test, in seconds
FAST = {"queue.buffering.max.messages": 50, "message.timeout.ms": 2000, "reconnect.backoff.max.ms": 300,
        "socket.timeout.ms": 1000, "retry.backoff.max.ms": 200}


Broker = EmbeddedBroker | EmbeddedKafka


@pytest.fixture
def broker(broker_kind: str) -> Iterator[Broker]:
    own: Broker = EmbeddedKafka() if broker_kind == APACHE_KAFKA else EmbeddedBroker()
    with own:  # its own: this test stops it
        create_topics({"bootstrap.servers": own.bootstrap}, [TOPIC], 1)
        yield own


def _publisher(broker: Broker, max_backlog: int = 100_000) -> EventPublisher:
    conf = producer_config(Settings(kafka_bootstrap=broker.bootstrap), overrides=FAST)
    return EventPublisher(conf, max_backlog=max_backlog).start()


def _until(done: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _dropped(reason: str) -> float:
    return metrics.REGISTRY.get_sample_value("atp_publish_dropped_total", {"reason": reason}) or 0.0


def test_events_published_while_the_broker_is_away_arrive_once_it_is_back(broker: Broker) -> None:
    pub = _publisher(broker)
    try:
        for i in range(100):
            assert pub.publish(TOPIC, f"k{i}", b"before")
        _until(lambda: pub.delivered == 100, 30, "the first events are delivered")
        broker.kill()  # away: nothing answers on its port
        started = time.monotonic()
        for i in range(100, 1100):
            assert pub.publish(TOPIC, f"k{i}", b"during")
        # 1000 events with the broker gone: each call only hands its event over (the old
        # publisher slept up to 0.5 s per event once librdkafka's queue was full)
        assert time.monotonic() - started < 2.0
        assert pub.backlog() > 0
        _until(lambda: pub.requeued > 0, 30, "undelivered events are put back, not dropped")
        broker.restart()  # back: Tansu empty (memory only), so the topic must be made again
        create_topics({"bootstrap.servers": broker.bootstrap}, [TOPIC], 1)
        _until(lambda: pub.backlog() == 0, 90, f"the backlog drains ({pub.backlog()} left, {pub.last_error})")
        keys = {r.key for r in read_topic(broker.bootstrap, TOPIC)}
        missing = {f"k{i}".encode() for i in range(100, 1100)} - keys
        assert not missing, f"{len(missing)} events published while the broker was away never arrived"
        assert pub.dropped == 0
        ok, why = pub.healthy()
        assert ok, why
        if isinstance(broker, EmbeddedKafka):
            # Kafka came back with its log: what was delivered before the crash is still there
            assert {f"k{i}".encode() for i in range(100)} <= keys
        else:
            # the broker came back without its data, so it no longer knew the idempotent producer:
            # a fatal error, after which the old publisher stayed dead; this one made a new producer
            assert pub.rebuilds >= 1
        assert (metrics.REGISTRY.get_sample_value("atp_producer_rebuilds_total") or 0) >= pub.rebuilds
    finally:
        pub.close(5)


def test_a_full_backlog_drops_loudly_and_readiness_says_why(broker: Broker) -> None:
    pub = _publisher(broker, max_backlog=200)
    before = _dropped("backlog_full")
    try:
        broker.kill()
        results = [pub.publish(TOPIC, f"k{i}", b"x") for i in range(600)]
        refused = results.count(False)
        # librdkafka's queue (50) and the outbox (200) hold what they can; the rest is dropped
        assert refused >= 600 - 50 - 200
        assert pub.dropped >= refused
        assert _dropped("backlog_full") - before >= refused
        ok, why = pub.healthy()
        assert not ok and "wait for the broker" in why
    finally:
        pub.close(0.5)
