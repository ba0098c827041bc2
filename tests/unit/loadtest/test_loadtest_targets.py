"""The benchmarks judge themselves by the bar ``docs/quality.md`` sets: ``loadtest.targets`` and
that document's performance table say the same numbers, and the reports use them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from loadtest import targets
from loadtest.report import summary_rows

QUALITY = Path(__file__).resolve().parents[3] / "docs" / "quality.md"

#: each row of the table, and the constants that state its target
ROWS = {
    "P1": ("P1_M16_RATIO",),
    "P2": ("P2_P99_MS",),
    "P3": ("P3_NAIVE_RATIO", "P3_NAIVE_RATIO_ALERTING"),
    "P4": ("P4_P99_MS",),
    "P5": ("P5_BYTES",),
    "P6": ("P6_M1_RATIO",),
    "P7": ("P7_MAX_CALL_MS", "P7_MAX_GROWTH", "P7_OTHER_P99_MS"),
}


def _target_cells() -> dict[str, str]:
    cells = {}
    for line in QUALITY.read_text().splitlines():
        parts = [p.strip() for p in line.strip().strip("|").split("|")]
        if len(parts) == 3 and re.fullmatch(r"P\d", parts[0]):
            cells[parts[0]] = parts[2]
    return cells


@pytest.mark.parametrize("row", sorted(ROWS))
def test_every_target_is_the_number_docs_quality_states(row: str) -> None:
    cell = _target_cells()[row]
    # "10k" in P7's cell names a size, not a target
    numbers = {float(n) for n in re.findall(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])", cell)}
    for name in ROWS[row]:
        assert float(getattr(targets, name)) in numbers, f"{name} = {getattr(targets, name)} is not in {cell!r}"


def test_the_summary_judges_p5_and_p6_by_the_documented_bar() -> None:
    results = {
        "limits": {"M1": {"rps": 20000.0, "script_usec_per_call": 4.0},
                   "F1": {"rps": 15000.0, "script_usec_per_call": 9.0}},
        "P5": {"bytes_per_position": 250.0, "target_met": False,
               "operator_counts": {"bytes_per_position": 180.0, "target_met": True},
               "stream_counts": {"bytes_per_waiting_record": 300.0}},
        "P6": {"e1_usec_per_hold_call": 60.0, "ratio_e1_vs_m1": 15.0, "target_met": False,
               "f1_usec_per_call": 9.0, "ratio_f1_vs_m1": 2.25},
    }
    rows = {(r["bench"], r["figure"]): r for r in summary_rows(results)}
    assert rows[("P5", "bytes per idle position (stream counts)")]["target"] == f"<= {targets.P5_BYTES}"
    hold = rows[("P6", "script time per hold call (E1)")]
    assert (hold["vs"], hold["ratio"], hold["target"], hold["met"]) == ("M1", 15.0, "<= 2 x M1", False)
    floor = rows[("P6", "script time of the floor of any engine hold (F1)")]
    assert (floor["ratio"], floor["met"]) == (2.25, False)
    assert rows[("F1", "script time per call (commandstats)")]["value"] == 9.0
