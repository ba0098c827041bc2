"""``atp up``: one command runs a single node — Redis and the broker, the topics, the flow and the
API — whose API and stream are wired together, whose API relays the change log, keeps Redis in its
data dir, and stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from connectors.embedded import free_port
from connectors.topics import CHANGES
from engine.store.changelog import Record
from tests.integration.flowkit import read_topic


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATP_") or k == "ATP_CI_RUN_ID"}
    env["ATP_CONFIG"] = os.devnull
    return env


def _start(data_dir: Path, port: int) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", "from engine.cli import main; main()", "up", "--json", "--port", str(port),
         "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # printed once everything answers
    if not line:
        proc.kill()
        raise AssertionError(f"atp up printed nothing: {proc.communicate(timeout=30)[1][-2000:]}")
    return proc, json.loads(line)


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, proc.communicate()[1][-2000:]


def _changes_of(bootstrap: str, sku: str) -> list[int]:
    """The change numbers of ``sku`` on the change log topic, in order."""
    return [Record.from_json(m.value or b"").q for m in sorted(read_topic(bootstrap, CHANGES), key=lambda m: m.offset)
            if m.key == sku.encode()]


def _atp(api: httpx.Client, sku: str) -> int:
    reply = api.get(f"/v1/atp/{sku}")
    assert reply.status_code == 200, reply.text
    return int(reply.json()["atp"])


def test_up_wires_the_api_to_the_stream_and_keeps_redis_in_its_data_dir(tmp_path: Path) -> None:
    port = free_port()
    proc, info = _start(tmp_path, port)
    try:
        assert info["api_url"] == f"http://127.0.0.1:{port}" and info["token"]
        headers = {"Authorization": f"Bearer {info['token']}"}
        with httpx.Client(base_url=info["api_url"], headers=headers, timeout=10) as api:
            counted = api.post("/v1/counts", json={"sku": "UP-1", "location": "WH1", "on_hand": 7})
            assert counted.status_code == 202, counted.text
            deadline = time.monotonic() + 60
            while _atp(api, "UP-1") != 7:  # the count went through the broker and the flow
                assert time.monotonic() < deadline, "the count POSTed to the API never reached Redis"
                time.sleep(0.2)
            while _changes_of(info["kafka_bootstrap"], "UP-1") != [1]:  # the API's relay shipped its record
                assert time.monotonic() < deadline, "the count's change record never reached inventory.changes"
                time.sleep(0.2)
    finally:
        _stop(proc)
    assert any((tmp_path / "redis" / "appendonlydir").glob("*.aof"))
    proc, info = _start(tmp_path, port)  # the same data dir: Redis comes back with the stock
    try:
        headers = {"Authorization": f"Bearer {info['token']}"}
        with httpx.Client(base_url=info["api_url"], headers=headers, timeout=10) as api:
            assert _atp(api, "UP-1") == 7
            # the embedded broker came back empty, its offsets from 0 again: a new count of the
            # same SKU is applied, not taken for one seen before
            counted = api.post("/v1/counts", json={"sku": "UP-1", "location": "WH1", "on_hand": 9})
            assert counted.status_code == 202, counted.text
            deadline = time.monotonic() + 60
            while _atp(api, "UP-1") != 9:
                assert time.monotonic() < deadline, "a count after the restart was dropped"
                time.sleep(0.2)
            # the broker's log started again empty, the relay's saved offsets were past its end:
            # the next record goes all the same, numbered on from the kept state
            while _changes_of(info["kafka_bootstrap"], "UP-1") != [2]:
                assert time.monotonic() < deadline, "the change record after the restart never reached the topic"
                time.sleep(0.2)
    finally:
        _stop(proc)
