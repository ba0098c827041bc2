"""Pure parts of the loadtest's Redis Cluster comparison: sales over many SKUs (history, oversell
check per SKU, request SKUs), the side-by-side table and summary rows, the ``--cluster`` option."""

from __future__ import annotations

import pytest

from loadtest.__main__ import _configs, _parser, _shaped
from loadtest.atp_query import AtpQueryConfig
from loadtest.flash_sale import FlashSaleConfig
from loadtest.history import ERROR, OK, REFUSED, History, check_oversell, check_oversell_many
from loadtest.http_driver import Step, StepResult, _raw
from loadtest.http_sale import HttpSaleConfig
from loadtest.report import HOT, WIDE, cluster_table, summary_rows
from loadtest.target import Target


def _position(held: int, atp: int) -> dict[str, int]:
    return {"held": held, "committed": 0, "atp": atp, "oversold": 0}


def test_a_history_keeps_each_attempts_sku_through_extend() -> None:
    h = History()
    h.record(1.0, 1.1, 1, OK)  # a sale of one SKU: index 0
    other = History()
    other.record(2.0, 2.1, 2, REFUSED, 7)
    h.extend(other)
    assert list(h.sku) == [0, 7] and len(h) == 2


def test_each_sku_of_a_wide_sale_is_checked_on_its_own() -> None:
    # SKU 0 sold out cleanly; SKU 1 refused a unit it still had: only SKU 1 is named
    attempts = [(0, 1, OK)] * 3 + [(0, 1, REFUSED)] + [(1, 1, OK)] * 2 + [(1, 1, REFUSED)]
    check = check_oversell_many(3, attempts, [_position(held=3, atp=0), _position(held=2, atp=1)])
    assert not check.ok
    assert check.problems == ("SKU #1: a hold of 1 was refused although 1 units were never sold",)
    assert (check.stock, check.sold_qty, check.successes, check.refusals) == (6, 5, 5, 2)
    assert (check.final_held, check.final_atp) == (5, 1)


def test_a_sold_out_sku_may_refuse_while_another_still_sells() -> None:
    # SKU 0 sold out and refused; SKU 1 has units left and refused nothing: a clean sale, which the
    # sum over both SKUs would take for a refusal with units unsold
    attempts = [(0, 1, OK)] * 3 + [(0, 1, REFUSED)] + [(1, 1, OK)]
    assert check_oversell_many(3, attempts, [_position(held=3, atp=0), _position(held=1, atp=2)]).ok
    assert not check_oversell(6, [(q, o) for _k, q, o in attempts], _position(held=4, atp=2)).ok


def test_a_wide_sale_within_stock_everywhere_passes_and_one_sku_is_the_plain_check() -> None:
    attempts = [(k, 1, OK) for k in range(4)] + [(2, 1, ERROR)]
    positions = [_position(held=1, atp=1)] * 4
    assert check_oversell_many(2, attempts, positions).ok
    one = check_oversell_many(5, [(0, 2, OK), (0, 4, REFUSED)], [_position(held=2, atp=3)])
    assert one == check_oversell(5, [(2, OK), (4, REFUSED)], _position(held=2, atp=3))


def test_problems_of_many_skus_are_capped() -> None:
    positions = [_position(held=0, atp=5)] * 15
    check = check_oversell_many(5, [(k, 1, OK) for k in range(15)], positions)  # every booking is missing
    assert len(check.problems) == 11 and check.problems[-1].startswith("… and ")


def test_requests_of_a_wide_step_go_round_the_skus() -> None:
    step = Step(mode="open", duration_s=1, connections=1, sku="A", rid_prefix="r-", rate=10, skus=("A", "B", "C"))
    assert [step.sku_index(i) for i in range(5)] == [0, 1, 2, 0, 1]
    assert b'"sku":"B"' in _raw("127.0.0.1", 80, "t", step, 4)
    plain = Step(mode="open", duration_s=1, connections=1, sku="A", rid_prefix="r-", rate=10)
    assert plain.sku_index(4) == 0 and b'"sku":"A"' in _raw("127.0.0.1", 80, "t", plain, 4)
    res = StepResult()
    res.record(0.0, 0.0, 0.0, 0.1, 201, 2)
    assert list(res.sku) == [2] and list(res.status) == [201]


def test_a_target_names_one_sku_or_numbered_skus_and_configs_split_the_stock() -> None:
    target = Target(url="redis://127.0.0.1:1", embedded=True, token="abc")
    assert target.skus("P1-hot", 1) == ["LT-abc-P1-hot"]
    assert target.skus("P1-hot", 3) == ["LT-abc-P1-hot-0000", "LT-abc-P1-hot-0001", "LT-abc-P1-hot-0002"]
    assert FlashSaleConfig(stock=1000, skus=3).stock_per_sku == 334
    with pytest.raises(ValueError, match="skus"):
        FlashSaleConfig(skus=0)
    with pytest.raises(ValueError, match="skus"):
        HttpSaleConfig(skus=0)
    assert _shaped("P4", AtpQueryConfig(), 1000) == AtpQueryConfig(skus=1000, profile=False)
    assert _shaped("P1", FlashSaleConfig(), 1000).skus == 1000


def test_the_cluster_option_follows_atp_redis_cluster_and_bounds_the_wide_skus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATP_REDIS_CLUSTER", raising=False)
    assert _configs(_parser().parse_args(["p1"]))["cluster"] is False
    assert _configs(_parser().parse_args(["p1", "--cluster"]))["cluster"] is True
    monkeypatch.setenv("ATP_REDIS_CLUSTER", "true")
    cfg = _configs(_parser().parse_args(["p4"]))
    assert cfg["cluster"] is True and cfg["wide_skus"] == 1000
    assert _configs(_parser().parse_args(["p4", "--no-cluster"]))["cluster"] is False
    with pytest.raises(ValueError, match="wide-skus"):
        _configs(_parser().parse_args(["p4", "--wide-skus", "1001"]))


def _p4(p50: float, p99: float, rate: float) -> dict[str, object]:
    return {"latency": {"p50_ms": p50, "p99_ms": p99}, "positions_per_s": rate}


def test_the_cluster_table_sets_each_figure_side_by_side_with_the_ratio() -> None:
    runs = {"P4": {HOT: {"standalone": _p4(1.0, 2.0, 1000.0), "cluster": _p4(1.5, 4.0, 800.0)},
                   WIDE: {"standalone": _p4(10.0, 20.0, 90_000.0), "cluster": {"name": "cluster", "error": "boom"}}}}
    rows = cluster_table(runs, 1000)
    assert [(r["shape"], r["figure"], r["standalone"], r["cluster"], r["ratio"]) for r in rows[:3]] == [
        ("1 SKU", "atp_many latency p50", 1.0, 1.5, 1.5),
        ("1 SKU", "atp_many latency p99", 2.0, 4.0, 2.0),
        ("1 SKU", "positions/s", 1000.0, 800.0, 0.8),
    ]
    assert {(r["shape"], r["error"]) for r in rows[3:]} == {("1,000 SKUs", "cluster: boom")}
    summary = summary_rows({"cluster": {"table": rows}})
    assert [(r["bench"], r["figure"]) for r in summary] == [
        ("P4 1 SKU", "atp_many latency p50, standalone / cluster"),
        ("P4 1 SKU", "atp_many latency p99, standalone / cluster"),
        ("P4 1 SKU", "positions/s, standalone / cluster"),
        ("P4 1,000 SKUs", "could not run"),  # once, not once per figure
    ]
    assert summary[2]["value"] == [1000.0, 800.0] and summary[2]["vs"] == "standalone" and summary[2]["ratio"] == 0.8


def test_an_oversell_flag_is_met_only_when_both_redis_shapes_held() -> None:
    def p1(ok: bool) -> dict[str, object]:
        return {"successes_per_s": 1.0, "attempts_per_s": 2.0, "latency": {"p50_ms": 1.0, "p99_ms": 2.0},
                "oversell_check": {"ok": ok}}

    rows = cluster_table({"P1": {HOT: {"standalone": p1(True), "cluster": p1(False)}}}, 1000)
    flag = [r for r in summary_rows({"cluster": {"table": rows}}) if r["figure"].startswith("zero oversell")]
    assert [(f["value"], f["met"], f["ratio"]) for f in flag] == [(False, False, None)]
