"""The performance bar, one home: every P target the benchmarks check and report, as
``docs/quality.md`` ("Performance") states it. ``tests/unit/loadtest/test_loadtest_targets.py`` holds this
module and that table together."""

from __future__ import annotations

#: P1: successes/s while stock lasted, as a multiple of M16 (and zero oversell).
P1_M16_RATIO = 0.5
#: P2: the API's rate as a multiple of the naive FastAPI peer's; its p99 at 80 % of saturation.
P2_PEER_RATIO = 3.0
P2_P99_MS = 10.0
#: P3: the flow's events/s as a multiple of the naive stream applier's, without and with alerting.
P3_NAIVE_RATIO = 1.0
P3_NAIVE_RATIO_ALERTING = 0.7
#: P3's moonshot: events/s per worker, and at least this share of E16.
P3_MOONSHOT_EVENTS_PER_S = 50_000
P3_MOONSHOT_E16_RATIO = 0.2
#: P3 burst: seconds until the lag is back to 0.
P3_CATCH_UP_S = 10.0
#: P4: p99 of an ATP query of many SKUs.
P4_P99_MS = 2.0
#: P5: Redis bytes per idle SKU position.
P5_BYTES = 200
#: P6: server time of one single-hold call, as a multiple of M1's.
P6_M1_RATIO = 2.0
#: P7, at the largest size: the longest call, the cost against the smallest size, and another
#: SKU's hold p99 meanwhile.
P7_MAX_CALL_MS = 1.0
P7_MAX_GROWTH = 1.5
P7_OTHER_P99_MS = 5.0
