"""The layering of docs/architecture.md holds: import-linter checks the contracts of
pyproject.toml, and those contracts name the layers the document describes."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _contracts() -> list[dict]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def test_no_import_crosses_the_layers() -> None:
    linter = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(linter)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert f"Contracts: {len(_contracts())} kept, 0 broken." in done.stdout


def test_the_contract_layers_are_the_documented_ones() -> None:
    doc = (ROOT / "docs" / "architecture.md").read_text()
    drawn = doc.split("```")[1].splitlines()
    layers = next(c for c in _contracts() if c["type"] == "layers")["layers"]
    documented = [" | ".join(w for w in line.split() if w.startswith("engine.")) for line in drawn if line.strip()]
    assert documented == layers
