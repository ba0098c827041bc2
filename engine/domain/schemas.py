"""JSON Schema files generated from the models; ``python -m engine.domain.schemas`` writes ``schemas/``.

Each registered model becomes ``schemas/<name>.schema.json``. The input events are registered
here (one file per type plus ``event.schema.json``, the union). Other modules register their
own published records — alerts, replenishment triggers, DLQ records — by calling
``register_schema(name, model)`` at import time; every module under ``engine.domain`` is
imported before the files are rendered, so a new module needs no edit here. A module outside
``engine.domain`` adds its dotted name to ``SCHEMA_MODULES``.

``python -m engine.domain.schemas --check`` exits 1 and names the stale files instead of
writing them (``tests/unit/domain/test_schemas.py`` does the same check).
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter

from engine.domain import events

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
"""The committed schema folder at the repository root."""

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

SCHEMA_MODULES: list[str] = []
"""Extra modules (outside engine.domain) that call ``register_schema`` when imported."""

_REGISTRY: dict[str, Any] = {}


def register_schema(name: str, model: Any) -> None:
    """Publish ``model`` (a pydantic model class, or any type ``TypeAdapter`` accepts) as ``<name>.schema.json``.

    Registering the same name again with the same model is a no-op; with another model it
    raises ``ValueError`` (two records must not share a file).
    """
    if not name or any(c not in "abcdefghijklmnopqrstuvwxyz0123456789._-" for c in name):
        raise ValueError(f"schema name {name!r}: use lower-case letters, digits, . _ -")
    known = _REGISTRY.get(name)
    if known is not None and known is not model:
        raise ValueError(f"schema name {name!r} is already registered for {known!r}")
    _REGISTRY[name] = model


for _type, _model in events.MODEL_OF_TYPE.items():
    register_schema(_type, _model)
register_schema("event", events.Event)


def _load_providers() -> None:
    import engine.domain as domain

    for info in pkgutil.iter_modules(domain.__path__, prefix="engine.domain."):
        importlib.import_module(info.name)
    for name in SCHEMA_MODULES:
        importlib.import_module(name)


def _schema_of(name: str, model: Any) -> dict[str, Any]:
    if isinstance(model, type) and issubclass(model, BaseModel):
        body = model.model_json_schema(mode="validation")
    else:
        body = TypeAdapter(model).json_schema(mode="validation")
    head = {"$schema": JSON_SCHEMA_DIALECT, "$id": f"{name}.schema.json"}
    if name == "event":
        head["title"] = "Event"
        head["description"] = "Any input event; `type` selects the payload."
    return {**head, **body}


def render_all() -> dict[str, str]:
    """File name → file text for every registered schema (providers imported first)."""
    _load_providers()
    return {
        f"{name}.schema.json": json.dumps(_schema_of(name, model), indent=2, ensure_ascii=False) + "\n"
        for name, model in sorted(_REGISTRY.items())
    }


def write_all(directory: Path = SCHEMA_DIR) -> list[str]:
    """Write every schema into ``directory`` and delete stale ``*.schema.json``; returns the changed file names."""
    directory.mkdir(parents=True, exist_ok=True)
    wanted = render_all()
    changed: list[str] = []
    for file_name, text in wanted.items():
        path = directory / file_name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(file_name)
    for path in sorted(directory.glob("*.schema.json")):
        if path.name not in wanted:
            path.unlink()
            changed.append(path.name)
    return changed


def stale_files(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of schema files that are missing, differ from the models, or belong to no model."""
    wanted = render_all()
    stale = [
        name
        for name, text in wanted.items()
        if not (directory / name).exists() or (directory / name).read_text(encoding="utf-8") != text
    ]
    stale += [p.name for p in sorted(directory.glob("*.schema.json")) if p.name not in wanted]
    return stale


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--check"]:
        stale = stale_files()
        for name in stale:
            print(f"stale: schemas/{name}", file=sys.stderr)
        if stale:
            print("run: python -m engine.domain.schemas", file=sys.stderr)
        return 1 if stale else 0
    if args:
        print("usage: python -m engine.domain.schemas [--check]", file=sys.stderr)
        return 2
    for name in write_all():
        print(f"wrote schemas/{name}")
    return 0


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: providers register into the
    # registry of `engine.domain.schemas`, which is a different module object from __main__.
    from engine.domain.schemas import main as _main

    sys.exit(_main())
