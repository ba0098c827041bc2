"""A SKU's journal over HTTP: GET /v1/skus/{sku}/journal."""

from __future__ import annotations

from typing import Any

import pytest

from connectors.topics import Topics
from engine.settings import Settings
from engine.store.wire import SupplyCommand
from tests.integration.api_harness import ADMIN, READER, bearer, in_process, make_app, sync_store

pytestmark = pytest.mark.anyio


@pytest.fixture
def store(redis: Any, redis_url: str, settings: Settings) -> Any:
    return sync_store(redis_url, settings)


def movements(store: Any, sku: str) -> None:
    store.apply([
        SupplyCommand(sku, "count", {"loc": "WH1", "on_hand": 10}, event_id="c-1", reason="cycle_count"),
        SupplyCommand(sku, "adjust", {"loc": "WH1", "delta": -3}, event_id="a-1", reason="damage", ref="RMA|7"),
        SupplyCommand(sku, "receipt", {"loc": "WH1", "qty": 5}, event_id="r-1"),
    ])


async def test_the_journal_pages_newest_first_over_http(store: Any, settings: Settings, topics: Topics) -> None:
    movements(store, "JRN-1")
    async with in_process(make_app(settings, topics)) as api:
        first = await api.get("/v1/skus/JRN-1/journal", params={"limit": 2}, headers=bearer(READER))
        assert first.status_code == 200, first.text
        body = first.json()
        assert [(e["cmd"], e["qty"], e["event_id"]) for e in body["entries"]] == [
            ("receipt", 5, "r-1"), ("adjust", -3, "a-1")]
        assert body["entries"][1]["reason"] == "damage" and body["entries"][1]["ref"] == "RMA|7"
        assert body["entries"][0]["at"].endswith("Z") and body["next_before"] == 2
        rest = await api.get("/v1/skus/JRN-1/journal", params={"limit": 2, "before": 2}, headers=bearer(READER))
        assert [(e["cmd"], e["qty"]) for e in rest.json()["entries"]] == [("count", 10)]
        assert rest.json()["next_before"] is None
        unknown = await api.get("/v1/skus/NEVER-SEEN/journal", headers=bearer(ADMIN))
        assert unknown.json() == {"sku": "NEVER-SEEN", "entries": [], "next_before": None}
        for params in ({"limit": 0}, {"limit": 201}, {"before": 0}):
            bad = await api.get("/v1/skus/JRN-1/journal", params=params, headers=bearer(READER))
            assert bad.status_code == 422, params
        assert (await api.get("/v1/skus/JRN-1/journal")).status_code == 401
