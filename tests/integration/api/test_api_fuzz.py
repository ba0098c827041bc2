"""R9 (docs/quality.md), schema-driven half: schemathesis generates requests from the app's own OpenAPI
document and sends them to a real uvicorn server. No reply may be a 5xx, every reply must
come back within the timeout, carry a documented status code and content type, and match the
documented schema.

Every operation gets a bounded number of examples (``EXAMPLES``) of valid and of invalid
(negative) requests, so the whole module stays well under two minutes; examples are
derandomised so a failure reproduces.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from connectors.topics import Topics, create_topics
from engine.settings import Settings
from engine.store.invariants import check_invariants
from tests.conftest import TOPIC_PARTITIONS, redis_client
from tests.integration.api_harness import ADMIN, bearer, make_app, seed, served, sync_store

EXAMPLES = 40
TIMEOUT_S = 10.0
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzz_target(redis_url: str, kafka_bootstrap: str, redis_cluster_mode: bool) -> Iterator[tuple[Any, str]]:
    """The OpenAPI schema of a served app and its base URL (one server for the whole module)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.upper().startswith("ATP_"):
                mp.delenv(name)
        mp.setenv("ATP_CONFIG", os.devnull)
        base = Settings(redis_url=redis_url, kafka_bootstrap=kafka_bootstrap, redis_cluster=redis_cluster_mode)
    topics = Topics(suffix=".fuzz")
    create_topics({"bootstrap.servers": kafka_bootstrap}, topics, partitions=TOPIC_PARTITIONS)
    store = sync_store(redis_url, base)
    store.redis.flushall()
    for sku in ("0", "A", "SKU-1"):  # short SKUs the generator is likely to hit
        seed(store, sku, 50)
    app = make_app(base, topics)
    with served(app) as base_url:
        yield schemathesis.openapi.from_dict(app.openapi()), base_url


def _fuzz_operation(operation: Any, mode: GenerationMode, base_url: str) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        case.call_and_validate(base_url=base_url, headers=bearer(ADMIN), checks=CHECKS, timeout=TIMEOUT_S)

    run()


def test_no_generated_request_gets_a_5xx_or_an_undocumented_reply(
    fuzz_target: tuple[Any, str], redis_url: str, redis_cluster_mode: bool
) -> None:
    # One loop rather than schemathesis' pytest plugin, whose lazy-fixture loader does not run on
    # pytest 9; every operation is still fuzzed, and every failure is reported, not only the first.
    schema, base_url = fuzz_target
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 13
    for operation in operations:
        has_input = any(True for _ in operation.iter_parameters()) or operation.get_request_payload_content_types()
        # An operation without parameters or body has no invalid request to make.
        modes = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if has_input else (GenerationMode.POSITIVE,)
        for mode in modes:
            try:
                _fuzz_operation(operation, mode, base_url)
            except Exception as exc:  # collect, then fail once with all of them
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
    assert not failures, "\n\n".join(failures)
    # Whatever the fuzzer managed to hold, confirm or release, the books still add up (R12).
    assert check_invariants(redis_client(redis_url, redis_cluster_mode)) == []
