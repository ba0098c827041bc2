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


def test_open_files_limit_is_raised_towards_the_hard_limit_and_never_lowered() -> None:
    import resource

    from engine.api.server import raise_open_files_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, soft)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
        want = low + 1000
        expected = want if hard == resource.RLIM_INFINITY else min(want, hard)
        assert raise_open_files_limit(want) == (low, expected)
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (expected, hard)
        assert raise_open_files_limit(low) == (expected, expected)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_serving_process_takes_the_edge_limits_from_its_settings() -> None:
    import resource

    from engine.api.edge import EdgeLimits, EdgeProtocol
    from engine.api.server import prepare_serving_process

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    kept = EdgeProtocol.limits
    try:
        prepare_serving_process(Settings(max_header_bytes=4096, max_headers=30, header_timeout_s=2.0))
        assert EdgeProtocol.limits == EdgeLimits(max_header_bytes=4096, max_headers=30, header_timeout_s=2.0)
    finally:
        EdgeProtocol.use_limits(kept)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
