"""The package installs only where its pinned dependencies have wheels."""

from __future__ import annotations

import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[3]


def test_requires_python_admits_the_pythons_bytewax_ships_wheels_for_and_no_other() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "bytewax==0.21.1" in project["dependencies"] and version("bytewax") == "0.21.1"
    spec = SpecifierSet(project["requires-python"])
    assert [v for v in ("3.10", "3.11", "3.12", "3.13") if v in spec] == ["3.11", "3.12"]
