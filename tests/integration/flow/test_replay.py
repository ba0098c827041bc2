"""R6 (docs/quality.md): the input topics consumed from offset 0 twice — the second pass changes nothing."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from bytewax.testing import TestingSink

from connectors.dlq import decode_dlq_value
from connectors.topics import Topics
from engine.dev.simulate import produce
from engine.flow.records import Outcome
from engine.flow.runner import run_flow
from engine.settings import Settings
from tests.integration.flowkit import digest, engine_state, mask_clock_fields, read_topic, state_diff

pytestmark = pytest.mark.kafka_compat  # also run on Apache Kafka (README, tests)


def replay(settings: Settings, topics: Topics, workers: int = 1) -> list[tuple[str, Outcome]]:
    outcomes: list[tuple[str, Outcome]] = []
    run_flow(settings.model_copy(update={"workers": workers}), topics, until_end=True,
             outcome_sink=TestingSink(outcomes), serve_metrics=False)
    return outcomes


def test_reading_the_log_again_on_top_changes_no_key_and_a_fresh_replay_gives_the_same_state(
    settings: Settings, topics: Topics, redis: Any, kafka_bootstrap: str
) -> None:
    report = produce(settings, topics, 3000, seed=7, bad_fraction=0.02, duplicate_fraction=0.02, progress=False)
    assert report.ok and report.bad and report.duplicates

    first = replay(settings, topics)
    after_first = engine_state(redis, logs=True)
    state_first = engine_state(redis)
    statuses = Counter(o.status for _, o in first)
    assert statuses["ok"] > 2000 and statuses["duplicate"] >= report.duplicates  # re-sent events

    again = replay(settings, topics, workers=2)  # on top, and with the other source layout
    after_again = engine_state(redis, logs=True)  # duplicates leave no change record either

    assert digest(after_again) == digest(after_first), state_diff(after_first, after_again)
    assert len(again) == len(first)
    assert {o.status for k, o in again if k} == {"duplicate"}
    assert {o.reply.get("reason") for _, o in again if not o.sku} <= {"unknown_reservation"}

    redis.flushall()
    fresh = replay(settings, topics)
    after_fresh = engine_state(redis, mask_clock=True)

    masked_first = mask_clock_fields(state_first)
    assert digest(after_fresh) == digest(masked_first), state_diff(masked_first, after_fresh)
    assert [(k, o.cmd, o.status) for k, o in fresh] == [(k, o.cmd, o.status) for k, o in first]

    # The DLQ got every bad message once per pass, each time the same record under the same id.
    dlq = [decode_dlq_value(m.value) for m in read_topic(kafka_bootstrap, topics.dlq)]
    copies = Counter(r.dlq_id for r in dlq)
    assert len(copies) == sum(report.bad.values())
    assert set(copies.values()) == {3}
    assert len({(r.dlq_id, r.reason, r.original) for r in dlq}) == len(copies)

