"""The committed JSON Schemas match the models, and they accept what the parser accepts."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import jsonschema_rs
import orjson
import pytest
from pydantic import BaseModel

from engine.dev.simulate import Simulator
from engine.domain import schemas
from engine.domain.events import EVENT_TYPES, ParseError, parse_event


def test_committed_schema_files_are_up_to_date() -> None:
    stale = schemas.stale_files()
    assert stale == [], (
        f"stale schema files {stale}: run `python -m engine.domain.schemas` and commit schemas/"
    )


def test_check_mode_reports_a_stale_and_an_orphan_file(tmp_path: Path) -> None:
    schemas.write_all(tmp_path)
    assert schemas.stale_files(tmp_path) == []
    (tmp_path / "stock.counted.schema.json").write_text("{}\n")
    (tmp_path / "gone.schema.json").write_text("{}\n")
    assert schemas.stale_files(tmp_path) == ["stock.counted.schema.json", "gone.schema.json"]
    changed = schemas.write_all(tmp_path)
    assert sorted(changed) == ["gone.schema.json", "stock.counted.schema.json"]
    assert not (tmp_path / "gone.schema.json").exists()
    assert schemas.stale_files(tmp_path) == []


def test_there_is_one_file_per_event_type_and_one_for_the_union() -> None:
    names = set(schemas.render_all())
    assert {f"{t}.schema.json" for t in EVENT_TYPES} | {"event.schema.json"} <= names


def test_register_schema_adds_a_file_and_refuses_a_clash() -> None:
    class Probe(BaseModel):
        x: int

    try:
        schemas.register_schema("zz-probe", Probe)
        schemas.register_schema("zz-probe", Probe)  # same model again: fine
        rendered = json.loads(schemas.render_all()["zz-probe.schema.json"])
        assert rendered["properties"]["x"]["type"] == "integer"
        assert rendered["$id"] == "zz-probe.schema.json"

        class Other(BaseModel):
            y: str

        with pytest.raises(ValueError, match="already registered"):
            schemas.register_schema("zz-probe", Other)
        with pytest.raises(ValueError, match="lower-case"):
            schemas.register_schema("Bad Name", Other)
    finally:
        schemas._REGISTRY.pop("zz-probe", None)


def _validator(name: str) -> jsonschema_rs.Draft202012Validator:
    text = (schemas.SCHEMA_DIR / f"{name}.schema.json").read_text()
    return jsonschema_rs.Draft202012Validator(json.loads(text))


def test_the_schemas_accept_every_simulated_event_and_refuse_the_schema_level_bad_ones() -> None:
    union = _validator("event")
    per_type = {t: _validator(t) for t in EVENT_TYPES}
    sim = Simulator(2000, seed=9, bad_fraction=0.2, start_time=datetime(2025, 3, 1, tzinfo=UTC))
    checked_bad = 0
    for item in sim.labeled():
        parsed = parse_event(item.message.value)
        if item.bad in ("bad_json", "oversize"):
            continue  # not a schema matter (bytes and size)
        data = orjson.loads(item.message.value.replace(b"1" + b"0" * 30, b"1e30"))
        if isinstance(parsed, ParseError):
            assert not union.is_valid(data), (item.bad, data)
            checked_bad += 1
        else:
            assert union.is_valid(data), data
            assert per_type[parsed.type].is_valid(data), data
    assert checked_bad > 100
