"""``engine.api.server.serve`` refuses bad options before starting anything."""

from __future__ import annotations

import pytest

from engine.api.server import serve
from engine.settings import Settings


@pytest.mark.parametrize(
    ("options", "message"),
    [({"log_level": "loud"}, "bad log level"), ({"workers": 0}, "workers"), ({"workers": 65}, "workers")],
)
def test_bad_options_are_refused(options: dict[str, object], message: str) -> None:
    settings = Settings(redis_url="redis://127.0.0.1:1/0", kafka_bootstrap="127.0.0.1:1")
    with pytest.raises(ValueError, match=message):
        serve(settings, "127.0.0.1", 0, **options)  # type: ignore[arg-type]


def test_startup_heap_is_frozen_out_of_the_collectors_way() -> None:
    import gc

    from engine.api.server import freeze_startup_heap

    gc.unfreeze()
    before = len(gc.get_objects())
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() >= before // 2
        assert len(gc.get_objects()) < before // 2  # a full collection no longer walks them
    finally:
        gc.unfreeze()
