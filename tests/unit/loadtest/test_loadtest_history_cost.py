"""Pure parts of P7 (loadtest/history_cost.py): sizes, the SKU's shape, splitting the server's time
between the hot client and the other one, the other client's latency windows, the target checks
with their ratios, the summary rows; and the script-command helpers of server_stats."""

from __future__ import annotations

from typing import Any

import pytest

from loadtest.__main__ import parse_names
from loadtest.history_cost import (
    OPS,
    HistoryCostConfig,
    Shape,
    attribute,
    evaluate,
    headline,
    parse_sizes,
    size_label,
    table_rows,
    window_latencies,
)
from loadtest.report import summary_rows
from loadtest.server_stats import CommandStat, is_script_command, parse_command_stats, script_totals

# --------------------------------------------------------------------------- sizes


def test_sizes_take_k_and_m_suffixes_in_any_case_sorted_without_repeats() -> None:
    assert parse_sizes("10k,100k") == (10_000, 100_000)
    assert parse_sizes("1M, 10K ,100k,10k") == (10_000, 100_000, 1_000_000)
    assert parse_sizes("2500,1.5k") == (1_500, 2_500)


@pytest.mark.parametrize("text", ["", "10x", "k", "-10k", "10k;100k", "1.2345k", "999", "11m"])
def test_bad_sizes_are_refused_naming_the_item(text: str) -> None:
    with pytest.raises(ValueError, match="P7 size"):
        parse_sizes(text)


def test_size_labels() -> None:
    assert [size_label(n) for n in (10_000, 100_000, 1_000_000, 2_500, 1_500_000)] == [
        "10k", "100k", "1m", "2500", "1500k"]


# --------------------------------------------------------------------------- the hot SKU's shape


@pytest.mark.parametrize("size", [1_000, 10_000, 100_000, 1_000_000, 12_345])
def test_a_shape_has_its_size_in_lines_at_least_half_live(size: int) -> None:
    sh = Shape.of(size, 0.5, 50_000, 100, 1_000)
    assert sh.live + sh.released + sh.expired + sh.shipped == size
    assert sh.live * 2 >= size
    # every live line has a unit: on hand, on the big lot, the cancelled lot or the tail lot
    assert sh.on_hand_live + sh.big + sh.cancel + sh.tail == sh.live
    assert sh.due == min(50_000, size // 2)
    # spare supply covers the refills and every hold the operations add
    assert sh.spare >= sh.cancel + sh.shed + sh.due + 4 * 100
    assert sh.shed <= sh.on_hand_live


def test_the_default_shape_at_100k_is_the_quality_bar_s() -> None:
    sh = Shape.of(100_000, HistoryCostConfig.live_fraction, HistoryCostConfig.due_max, 100, 1_000)
    assert sh.live >= 50_000 and sh.due == 50_000 and sh.big == 25_000
    assert sh.held == 37_500  # a quarter of the live lines are committed


def test_config_refuses_sizes_out_of_range_and_too_many_reps() -> None:
    assert HistoryCostConfig().sizes == (10_000, 100_000)
    with pytest.raises(ValueError, match="sizes"):
        HistoryCostConfig(sizes=(500,))
    with pytest.raises(ValueError, match="held lines"):
        HistoryCostConfig(sizes=(1_000,), reps=300)
    with pytest.raises(ValueError, match="live_fraction"):
        HistoryCostConfig(live_fraction=0.3)


# --------------------------------------------------------------------------- server time


def _entry(command: bytes, duration: int, client: bytes) -> dict[str, Any]:
    return {"id": 1, "start_time": 0, "duration": duration, "command": command, "client_name": client}


def test_the_other_clients_calls_are_taken_out_of_the_commandstats_delta() -> None:
    entries = [
        _entry(b"EVALSHA abc 10 k1", 900, b"p7-hot"),
        _entry(b"EVALSHA abc 10 k2", 40, b"p7-other"),
        _entry(b"evalsha abc 10 k2", 60, b"p7-other"),
        _entry(b"FCALL hold 10 k1", 300, b"p7-hot"),
        _entry(b"CONFIG SET slowlog-log-slower-than 0", 5000, b"p7-hot"),  # not a script
        _entry(b"EVALSHA abc 10 k9", 7000, b"someone"),  # neither client: stays in the total
    ]
    a = attribute(total_calls=5, total_usec=8300, entries=entries, hot="p7-hot", other="p7-other", max_len=100)
    assert (a.calls, a.usec) == (3, 8200)
    assert (a.slowlog_calls, a.slowlog_usec, a.longest_usec, a.other_calls) == (2, 1200, 900, 2)
    assert a.durations == (300, 900) and a.other_durations == (40, 60)
    assert a.complete
    # a script call SLOWLOG did not log (faster than the threshold) makes the split an estimate
    assert not attribute(6, 8310, entries, "p7-hot", "p7-other", max_len=100).complete


def test_a_full_slowlog_marks_the_split_as_incomplete() -> None:
    entries = [_entry(b"EVALSHA x", 10, b"p7-other")] * 3
    a = attribute(3, 30, entries, "p7-hot", "p7-other", max_len=3)
    assert not a.complete and a.calls == 0 and a.usec == 0


def test_script_commands_and_their_totals() -> None:
    assert is_script_command(b"EVALSHA") and is_script_command("fcall") and is_script_command("Eval")
    assert not is_script_command("hset") and not is_script_command(b"script")
    stats = parse_command_stats({"cmdstat_evalsha": {"calls": 10, "usec": 500, "usec_per_call": 50.0},
                                 "cmdstat_eval": {"calls": 1, "usec": 70}, "cmdstat_hget": {"calls": 9, "usec": 9}})
    assert stats["hget"] == CommandStat(9, 9)
    assert script_totals(stats) == CommandStat(11, 570)


# --------------------------------------------------------------------------- the other client's latency


def test_window_takes_every_hold_that_overlapped_the_operation() -> None:
    sched = [0.0, 1.0, 2.0, 3.0, 4.0]
    sent = [0.0, 1.0, 2.5, 3.0, 4.0]
    ends = [0.5, 2.9, 2.95, 3.1, 4.2]
    # the operation ran 2.0 .. 3.05: the hold scheduled at 1.0 waited through it, 4.0 came after
    assert window_latencies(sched, ends, 2.0, 3.05) == pytest.approx([1.9, 0.95, 0.1])
    assert window_latencies(sched, ends, 2.0, 3.05, sent=sent) == pytest.approx([1.9, 0.45, 0.1])
    assert window_latencies(sched, ends, 5.0, 6.0) == []


# --------------------------------------------------------------------------- targets and ratios


def _op(usec: float, longest_ms: float, p99: float, count: int = 10) -> dict[str, Any]:
    return {"server_usec_per_call": usec, "longest_call_ms": longest_ms, "other": {"p99_ms": p99, "count": count},
            "client_calls": 1, "script_calls": 1, "wall_ms_median": usec / 1000, "detail": {}}


def _runs() -> list[dict[str, Any]]:
    small = {"size": 10_000, "label": "10k", "other_idle": {"p99_ms": 1.0},
             "ops": {"hold": _op(50.0, 0.1, 1.0), "receipt": _op(20_000.0, 20.0, 21.0)}}
    large = {"size": 100_000, "label": "100k", "other_idle": {"p99_ms": 2.0},
             "ops": {"hold": _op(60.0, 0.2, 1.5), "receipt": _op(200_000.0, 200.0, 201.0, count=80)}}
    return [small, large]


def test_targets_are_checked_at_the_largest_size_with_ratios_to_their_baselines() -> None:
    ev = evaluate(_runs(), m1_usec=20.0, e1_usec=40.0)
    assert (ev["baseline_size"], ev["largest_size"]) == ("10k", "100k")
    hold = ev["ops"]["hold"]
    assert hold["server_usec_per_call"] == {"10k": 50.0, "100k": 60.0}
    assert hold["growth"] == 1.2 and hold["growth_met"] is True
    assert hold["longest_call_met"] is True and hold["longest_call_vs_target"] == 0.2
    assert hold["other_p99_ms"] == 1.5 and hold["other_p99_vs_idle"] == 0.75 and hold["other_p99_met"] is True
    assert hold["vs_m1"] == 3.0 and hold["vs_m1_met"] is False and hold["vs_e1"] == 1.5
    assert hold["missed"] == ["vs M1"] and hold["met"] is False
    receipt = ev["ops"]["receipt"]
    assert receipt["growth"] == 10.0
    assert receipt["missed"] == ["growth", "longest call", "other p99"]
    assert "vs_m1" not in receipt
    assert ev["missed"] == ["hold: vs M1", "receipt: growth", "receipt: longest call", "receipt: other p99"]
    assert ev["target_met"] is False


def test_with_one_size_growth_is_not_judged_and_without_m1_nor_the_hold_against_it() -> None:
    run = _runs()[1]
    run["ops"]["receipt"] = _op(500.0, 0.9, 3.0)
    ev = evaluate([run], m1_usec=None, e1_usec=None)
    assert ev["ops"]["hold"]["growth"] is None and ev["ops"]["hold"]["growth_met"] is None
    assert ev["ops"]["hold"]["vs_m1"] is None and ev["ops"]["hold"]["vs_m1_met"] is None
    assert ev["ops"]["receipt"]["met"] is True
    assert ev["target_met"] is True


def test_an_operation_without_samples_of_the_other_client_does_not_judge_its_p99() -> None:
    runs = _runs()
    runs[1]["ops"]["hold"]["other"] = {"p99_ms": 0.0, "count": 0}
    hold = evaluate(runs, 60.0, None)["ops"]["hold"]
    assert hold["other_p99_ms"] is None and hold["other_p99_met"] is None and hold["met"] is True


def test_headline_rows_go_into_the_summary_under_p7() -> None:
    runs = _runs()
    p7 = {"name": "P7", "runs": runs, "targets": evaluate(runs, 20.0, 40.0)}
    p7["headline"] = headline(p7)
    rows = summary_rows({"P7": p7})
    assert [r["bench"] for r in rows] == ["P7", "P7", "P7"]
    hold, receipt, vs_m1 = rows
    assert hold["value"] == [60.0, 0.2, 1.5] and hold["ratio"] == 1.2 and hold["vs"] == "at 10k"
    assert hold["met"] is False and "missed: vs M1" in hold["figure"]
    assert receipt["met"] is False and "missed: growth, longest call, other p99" in receipt["figure"]
    assert vs_m1["vs"] == "M1" and vs_m1["ratio"] == 3.0 and vs_m1["met"] is False


def test_table_has_a_row_per_size_and_operation_in_operation_order() -> None:
    runs = _runs()
    rows = table_rows(runs)
    assert [(r["size"], r["op"]) for r in rows] == [("10k", "hold"), ("10k", "receipt"), ("100k", "hold"),
                                                    ("100k", "receipt")]
    assert rows[3]["longest_call_ms"] == 200.0 and rows[3]["other_p99_ms"] == 201.0
    assert OPS.index("hold") < OPS.index("receipt") < OPS.index("purge")


# --------------------------------------------------------------------------- names, limits rows


def test_p7_names_and_the_minimal_script_rows() -> None:
    assert parse_names(["p7"]) == ["P7"] and parse_names(["history"]) == ["P7"]
    assert parse_names([])[-1] == "P7"
    rows = summary_rows({"limits": {"M1": {"rps": 50_000.0, "script_usec_per_call": 4.0}}})
    assert [(r["bench"], r["figure"]) for r in rows] == [
        ("M1", "minimal script calls/s (redis-benchmark)"), ("M1", "script time per call (commandstats)")]
