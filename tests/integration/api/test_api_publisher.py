"""The API's producer for the ops endpoints' stock events, against a real broker
(engine/api/publisher.py): ``publish_and_wait`` returns once the broker acknowledged the message,
fails within its timeout while the broker is away instead of hanging, and works again once the
broker is back (on Tansu, which comes back empty, only through the producer replaced after the
fatal error). The broker is of the kind the suite runs on (ATP_TEST_BROKER): Tansu comes back
empty, Apache Kafka with its log."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from connectors.embedded import EmbeddedBroker, EmbeddedKafka
from connectors.kafka import producer_config
from connectors.topics import create_topics
from engine import metrics
from engine.api.publisher import EventPublisher, PublishError
from engine.settings import Settings
from tests.conftest import APACHE_KAFKA
from tests.integration.flowkit import read_topic

pytestmark = pytest.mark.kafka_compat  # also run on Apache Kafka (README, tests)

TOPIC = "pub.events"
# short timeouts: a broker that is away shows in seconds
FAST = {"message.timeout.ms": 2000, "reconnect.backoff.max.ms": 300, "socket.timeout.ms": 1000,
        "retry.backoff.max.ms": 200}


Broker = EmbeddedBroker | EmbeddedKafka


@pytest.fixture
def broker(broker_kind: str) -> Iterator[Broker]:
    own: Broker = EmbeddedKafka() if broker_kind == APACHE_KAFKA else EmbeddedBroker()
    with own:  # its own: this test stops it
        create_topics({"bootstrap.servers": own.bootstrap}, [TOPIC], 1)
        yield own


@pytest.fixture
def pub(broker: Broker) -> Iterator[EventPublisher]:
    conf = producer_config(Settings(kafka_bootstrap=broker.bootstrap), overrides=FAST)
    publisher = EventPublisher(conf).start()
    try:
        yield publisher
    finally:
        publisher.close(5)


def _on_topic(broker: Broker) -> list[tuple[bytes | None, bytes | None]]:
    return [(r.key, r.value) for r in read_topic(broker.bootstrap, TOPIC)]


def test_publish_and_wait_returns_once_the_message_is_on_the_topic(
    broker: Broker, pub: EventPublisher
) -> None:
    sent: list[tuple[bytes | None, bytes | None]] = []
    for i in range(3):
        asyncio.run(pub.publish_and_wait(TOPIC, f"sku-{i}", f'{{"n": {i}}}'.encode(), timeout_s=10))
        sent.append((f"sku-{i}".encode(), f'{{"n": {i}}}'.encode()))
        # no flush in between: the return itself means the broker has it
        assert _on_topic(broker) == sent
    assert pub.delivered == 3 and pub.failed == 0
    assert pub.healthy() == (True, "")


async def _publish_while_ticking(
    pub: EventPublisher, timeout_s: float
) -> tuple[BaseException | None, float, int]:
    """publish_and_wait beside a task that ticks every 10 ms: (what it raised, seconds, ticks)."""
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticker = asyncio.create_task(tick())
    started = time.monotonic()
    raised: BaseException | None = None
    try:
        await pub.publish_and_wait(TOPIC, "away", b"while the broker is away", timeout_s=timeout_s)
    except Exception as exc:  # the test asserts what it was
        raised = exc
    elapsed = time.monotonic() - started
    ticker.cancel()
    return raised, elapsed, ticks


def test_a_broker_away_fails_the_wait_in_time_and_a_broker_back_takes_messages_again(
    broker: Broker, pub: EventPublisher
) -> None:
    asyncio.run(pub.publish_and_wait(TOPIC, "before", b"before the crash", timeout_s=10))
    broker.kill()  # away: nothing answers on its port

    timeout_s = 6.0
    raised, elapsed, ticks = asyncio.run(_publish_while_ticking(pub, timeout_s))
    assert isinstance(raised, PublishError), repr(raised)
    assert elapsed < timeout_s + 1.0, f"publish_and_wait took {elapsed:.1f} s with a {timeout_s:g} s timeout"
    # the wait is an await: a loop that blocked on it would tick once or not at all
    assert ticks >= elapsed / 0.01 / 10, f"the event loop stalled ({ticks} ticks in {elapsed:.1f} s)"
    # message.timeout.ms (2 s) ends it before timeout_s does: the delivery report says so
    assert pub.failed == 1 and "timed out" in str(raised).lower(), str(raised)

    broker.restart()  # back: Tansu empty (memory only), so the topic must be made again
    create_topics({"bootstrap.servers": broker.bootstrap}, [TOPIC], 1)
    deadline = time.monotonic() + 90
    attempts: list[str] = []
    while True:
        try:
            asyncio.run(pub.publish_and_wait(TOPIC, "after", b"after the restart", timeout_s=5))
            break
        except PublishError as exc:  # the producer is still finding the broker (or being replaced)
            attempts.append(str(exc))
            assert time.monotonic() < deadline, f"no message taken after the restart: {attempts[-3:]}"
            time.sleep(0.2)

    on_topic = _on_topic(broker)
    assert (b"after", b"after the restart") in on_topic
    assert (b"away", b"while the broker is away") not in on_topic  # failed means not sent later
    if isinstance(broker, EmbeddedKafka):
        # Kafka came back with its log: what was acknowledged before the crash is still there
        assert on_topic[0] == (b"before", b"before the crash")
    else:
        # the broker came back without its data, so it did not know the idempotent producer: a
        # fatal error, after which only a new producer gets messages through
        assert pub.rebuilds >= 1
        assert (b"before", b"before the crash") not in on_topic
    assert (metrics.REGISTRY.get_sample_value("atp_producer_rebuilds_total") or 0) >= pub.rebuilds
    ok, why = pub.healthy()
    assert ok, why
