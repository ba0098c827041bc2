"""Pure parts of the benchmarks: percentile maths, time series, the oversell checker, parsing of
redis-benchmark output, the script-cost split and instrumentation, the summary table."""

from __future__ import annotations

import re

import pytest

from loadtest.__main__ import parse_names
from loadtest.history import ERROR, OK, REFUSED, History, check_oversell
from loadtest.http_driver import Step, _raw
from loadtest.limits import parse_csv
from loadtest.report import summary_rows
from loadtest.script_cost import fixed_and_marginal, instrument_entry, instrumented
from loadtest.stats import percentile, ratio, summarize, time_series

# --------------------------------------------------------------------------- percentiles


def test_percentile_is_nearest_rank_on_one_to_hundred() -> None:
    xs = list(range(1, 101))
    assert percentile(xs, 50) == 50
    assert percentile(xs, 99) == 99
    assert percentile(xs, 99.9) == 100
    assert percentile(xs, 100) == 100
    assert percentile(xs, 0.5) == 1


def test_percentile_never_interpolates_between_samples() -> None:
    assert percentile([1.0, 10.0], 50) == 1.0
    assert percentile([1.0, 10.0], 51) == 10.0
    assert percentile([7.0], 99) == 7.0


def test_percentile_rejects_empty_samples_and_bad_percentages() -> None:
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 50)
    for bad in (0, -1, 100.1):
        with pytest.raises(ValueError, match="must be in"):
            percentile([1.0], bad)


def test_summarize_reports_milliseconds_from_seconds() -> None:
    s = summarize([0.001 * i for i in range(1, 1001)])  # 1 ms .. 1000 ms
    assert s.count == 1000
    assert s.p50_ms == pytest.approx(500.0)
    assert s.p99_ms == pytest.approx(990.0)
    assert s.p999_ms == pytest.approx(999.0)
    assert s.max_ms == pytest.approx(1000.0)
    assert s.mean_ms == pytest.approx(500.5)


def test_summarize_of_nothing_is_all_zero() -> None:
    s = summarize([])
    assert s.count == 0 and s.p99_ms == 0.0 and s.max_ms == 0.0


def test_ratio_is_none_without_a_limit() -> None:
    assert ratio(5.0, 0.0) is None
    assert ratio(5.0, 10.0) == 0.5
    assert ratio(1.0, 3.0) == 0.333


# --------------------------------------------------------------------------- time series


def test_time_series_buckets_by_completion_time_and_keeps_empty_intervals() -> None:
    ends = [0.1, 0.2, 0.3, 1.6]
    lats = [0.001, 0.002, 0.003, 0.010]
    ok = [True, False, True, True]
    series = time_series(ends, lats, ok, t0_s=0.0, width_s=0.5)
    assert [i.t_s for i in series] == [0.0, 0.5, 1.0, 1.5]
    assert series[0].per_s == 6.0 and series[0].ok_per_s == 4.0
    assert series[0].p50_ms == pytest.approx(2.0) and series[0].p99_ms == pytest.approx(3.0)
    assert series[1].per_s == 0.0 and series[2].per_s == 0.0
    assert series[3].per_s == 2.0 and series[3].p99_ms == pytest.approx(10.0)


def test_time_series_ignores_completions_before_the_start() -> None:
    series = time_series([0.5, 2.0], [0.1, 0.1], [True, True], t0_s=1.0, width_s=1.0)
    assert len(series) == 2
    assert series[0].per_s == 0.0 and series[1].per_s == 1.0


def test_time_series_rejects_ragged_columns_and_bad_width() -> None:
    with pytest.raises(ValueError, match="same length"):
        time_series([1.0], [], [True], 0.0)
    with pytest.raises(ValueError, match="positive"):
        time_series([1.0], [1.0], [True], 0.0, width_s=0)


# --------------------------------------------------------------------------- history and oversell


def _position(held: int, atp: int, committed: int = 0, oversold: int = 0) -> dict[str, int]:
    return {"held": held, "committed": committed, "atp": atp, "oversold": oversold}


def test_history_records_and_counts_outcomes() -> None:
    h = History()
    h.record(1.0, 1.5, 2, OK)
    h.record(1.1, 1.2, 1, REFUSED)
    other = History()
    other.record(2.0, 2.25, 3, OK)
    h.extend(other)
    assert len(h) == 3
    assert h.count(OK) == 2 and h.qty_of(OK) == 5
    assert h.latencies(OK) == [0.5, 0.25]
    assert h.first_start() == 1.0 and h.last_end() == 2.25 and h.last_end(REFUSED) == 1.2
    with pytest.raises(ValueError, match="outcome"):
        h.record(0, 0, 1, 9)


def test_a_clean_sellout_passes_the_oversell_check() -> None:
    attempts = [(1, OK)] * 100 + [(1, REFUSED)] * 400
    check = check_oversell(100, attempts, _position(held=100, atp=0))
    assert check.ok, check.problems
    assert check.sold_qty == 100 and check.successes == 100 and check.refusals == 400


def test_more_successes_than_stock_is_an_oversell() -> None:
    check = check_oversell(100, [(1, OK)] * 101, _position(held=101, atp=-1))
    assert not check.ok
    assert any("oversell" in p for p in check.problems)
    assert any("negative ATP" in p for p in check.problems)


def test_a_success_missing_from_the_position_is_caught() -> None:
    check = check_oversell(100, [(2, OK)] * 10, _position(held=18, atp=82))
    assert not check.ok
    assert any("booked units 18" in p for p in check.problems)


def test_calls_without_answer_allow_bookings_up_to_their_qty() -> None:
    attempts = [(1, OK)] * 10 + [(3, ERROR)]
    assert check_oversell(100, attempts, _position(held=13, atp=87)).ok
    assert check_oversell(100, attempts, _position(held=10, atp=90)).ok
    assert not check_oversell(100, attempts, _position(held=14, atp=86)).ok


def test_atp_that_disagrees_with_the_bookings_is_caught() -> None:
    check = check_oversell(100, [(1, OK)] * 10, _position(held=10, atp=89))
    assert not check.ok
    assert any("final ATP 89" in p for p in check.problems)


def test_a_refusal_while_units_stay_unsold_is_an_undersell() -> None:
    attempts = [(1, OK)] * 50 + [(2, REFUSED)]
    check = check_oversell(100, attempts, _position(held=50, atp=50))
    assert not check.ok
    assert any("refused although 50 units" in p for p in check.problems)
    # a refusal of 5 when only 4 are left is right
    assert check_oversell(100, [(1, OK)] * 96 + [(5, REFUSED)], _position(held=96, atp=4)).ok


def test_oversold_flag_of_the_position_fails_the_check() -> None:
    assert not check_oversell(10, [(1, OK)] * 10, _position(held=10, atp=0, oversold=1)).ok


# --------------------------------------------------------------------------- redis-benchmark output

CSV = (
    '"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"\n'
    '"EVALSHA abc 12 k1 k2","10841.28","4.523","0.200","3.511","8.919","12.407","16.719"\n'
)


def test_parse_csv_reads_rate_and_percentiles() -> None:
    figures = parse_csv(CSV)
    assert figures == {"rps": 10841.28, "p50_ms": 3.511, "p99_ms": 12.407}


def test_parse_csv_rejects_output_without_data() -> None:
    with pytest.raises(ValueError, match="unexpected"):
        parse_csv("ERROR: connection refused\n")


# --------------------------------------------------------------------------- script cost


def test_fixed_and_marginal_split_a_linear_cost() -> None:
    # cost(n) = 40 + 5 n
    split = fixed_and_marginal({"usec": 45.0}, {"usec": 40.0 + 5 * 64}, 64)
    assert split["per_hold"]["usec"] == pytest.approx(5.0)
    assert split["fixed"]["usec"] == pytest.approx(40.0)


HOLD = """-- hold.lua
entry('hold', function()
  F.load_state()
  F.settle(HOLD_BURY)
  if S.more_due then return F.more() end
  local replies = {}
  flush()
  return cjson.encode(replies)
end)
"""


def test_an_instrumented_entry_marks_each_step_and_returns_the_marks() -> None:
    src = instrument_entry(HOLD)
    marks = re.findall(r"__P\.mark\('([^']*)'\)", src)
    assert marks == [
        "start", "(one clock reading)", "entry: expiry", "entry: requests (checks, allocation, line json)",
        "entry: write back (flush)", "entry: reply encoding",
    ]
    # the body still runs its statements in order, starts its marks afresh on every call, and
    # returns the marks instead of the reply
    assert src.index("__P.m = {}") < src.index("F.load_state()")
    assert src.index("settle(HOLD_BURY)") < src.index("'entry: expiry'") < src.index("\n  flush()")
    assert "local __reply = cjson.encode(replies)" in src
    assert src.rstrip().endswith("return __out\nend)")


def test_an_instrumented_entry_merges_steps_it_cannot_find() -> None:
    src = instrument_entry("entry('x', function()\n  local x = 1\n  return x\nend)\n")
    marks = re.findall(r"__P\.mark\('([^']*)'\)", src)
    assert "entry: expiry" not in marks and "entry: reply encoding" in marks


def test_the_instrumented_library_has_its_own_name_and_the_same_entries() -> None:
    from engine.store import scripts

    script = instrumented("hold")
    assert script.library.name.startswith("atpprof_") and script.function == script.library.name + "_hold"
    assert script.library.name != scripts.load_library().name
    for name in scripts.ENTRY_SCRIPTS:
        assert f"redis.register_function('{script.library.name}_{name}', ENTRIES.{name})" in script.library.source


# --------------------------------------------------------------------------- HTTP requests, names, summary


def test_http_request_bytes_carry_token_key_and_a_matching_length() -> None:
    step = Step(mode="open", duration_s=1, connections=1, sku="LT-x-P2", rid_prefix="r-x-", rate=10)
    raw = _raw("127.0.0.1", 8000, "tok", step, 42)
    head, body = raw.split(b"\r\n\r\n")
    assert b"Authorization: Bearer tok" in head and b"Idempotency-Key: r-x-42" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert body == b'{"lines":[{"sku":"LT-x-P2","qty":1}],"ttl_seconds":600}'


def test_steps_are_validated() -> None:
    with pytest.raises(ValueError, match="rate"):
        Step(mode="open", duration_s=1, connections=1, sku="S", rid_prefix="r-")
    with pytest.raises(ValueError, match="mode"):
        Step(mode="burst", duration_s=1, connections=1, sku="S", rid_prefix="r-")


def test_benchmark_names_and_aliases() -> None:
    assert parse_names([]) == ["P1", "P6", "P4", "P5", "P2", "P7"]
    assert parse_names(["p2", "flash_sale"]) == ["P1", "P2"]
    assert parse_names(["script_cost", "all"]) == ["P1", "P6", "P4", "P5", "P2", "P7"]
    with pytest.raises(ValueError, match="unknown benchmark 'p3'"):
        parse_names(["p3"])


def test_summary_rows_compare_with_limits_and_targets() -> None:
    results = {
        "limits": {"E1": {"rps": 10000.0, "script_usec_per_call": 80.0},
                   "E16": {"rps": 12000.0, "script_usec_per_call": 75.0}},
        "P4": {"latency": {"p50_ms": 1.0, "p99_ms": 3.0}, "target_met": False, "positions_per_s": 6000.0,
               "ratio_positions_vs_e16": 0.5},
    }
    rows = summary_rows(results)
    assert [r["bench"] for r in rows] == ["E1", "E1", "E16", "E16", "P4", "P4"]
    p4 = rows[4]
    assert p4["value"] == [1.0, 3.0] and p4["met"] is False and p4["target"] == "p99 <= 2 ms"
    assert rows[5]["vs"] == "E16" and rows[5]["ratio"] == 0.5


def test_an_instrumented_position_entry_marks_a_guarded_expiry_and_names_its_work() -> None:
    entry = ("local function settle() end\nentry('position', function()\n"
             "  if ARGV[4] ~= '1' then F.settle() end\n  local reply = position(nil)\n  flush()\n"
             "  return cjson.encode(reply)\nend)\n")
    src = instrument_entry(entry, work="position figures")
    marks = re.findall(r"__P\.mark\('([^']*)'\)", src)
    assert marks[-4:] == ["entry: expiry", "entry: position figures", "entry: write back (flush)",
                          "entry: reply encoding"]
    # the file's own definition of settle is not mistaken for the call
    assert src.count("__P.mark('entry: expiry')") == 1
    assert src.index("then F.settle() end") < src.index("'entry: expiry'")


def test_a_benchmark_that_could_not_run_is_one_row_with_its_error() -> None:
    rows = summary_rows({"P2": {"name": "P2", "error": "RuntimeError: the API exited with 1"}})
    assert rows == [{"bench": "P2", "figure": "could not run", "value": "RuntimeError: the API exited with 1",
                     "unit": "", "vs": None, "ratio": None, "target": None, "met": None}]
