"""The scaling bench's arguments (loadtest/scale_bench.py); its runs are benchmarks, not tests."""

from __future__ import annotations

import argparse

import pytest

from loadtest.scale_bench import Shape, _parser, main


def test_shapes_parse_as_processes_by_workers() -> None:
    args = _parser().parse_args(["--configs", "1x1,2x4", "--primaries", "1,3"])
    assert args.configs == [Shape(1, 1), Shape(2, 4)] and [s.name for s in args.configs] == ["1x1", "2x4"]
    assert args.primaries == [1, 3]


@pytest.mark.parametrize("text", ["2", "x2", "2x", "0x1", "1x0", "9x1", "1x17", "ax1", "1x1x1"])
def test_a_bad_shape_is_refused_with_the_form_expected(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="expected PxW"):
        Shape.parse(text)


def test_bad_sizes_exit_2_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--events", "0"]) == 2
    assert main(["--primaries", "1,17"]) == 2
    assert "--primaries" in capsys.readouterr().err
