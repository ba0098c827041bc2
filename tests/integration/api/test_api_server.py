"""``atp serve --workers N``: N uvicorn worker processes on one port, each serving the API over
the same Redis."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from connectors.embedded import free_port
from engine.api.auth import token_digest
from engine.settings import Settings
from tests.integration.api_harness import seed, sync_store

TOKEN = "worker-test-token"


def _workers(pid: int) -> list[int]:
    """The worker processes uvicorn's supervisor ``pid`` spawned (not multiprocessing's trackers)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    children = [int(p) for p in path.read_text().split()] if path.exists() else []
    workers = []
    for child in children:
        try:
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.append(child)
        except OSError:
            continue
    return workers


def test_serve_with_two_workers_answers_from_two_processes(redis: Any, redis_url: str, settings: Settings) -> None:
    store = sync_store(redis_url, settings)
    seed(store, "WORKERS-1", 7)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.upper().startswith("ATP_")},
        "ATP_CONFIG": os.devnull,
        "ATP_REDIS_URL": redis_url,
        "ATP_REDIS_CLUSTER": "true" if settings.redis_cluster else "false",
        "ATP_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "ATP_KEY_PREFIX": settings.key_prefix,
        "ATP_API_TOKENS": json.dumps({token_digest(TOKEN): ["read"]}),
        "ATP_MAX_HEADER_BYTES": "4096",
        "ATP_HEADER_TIMEOUT_S": "1",
    }
    cmd = [sys.executable, "-m", "engine.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "2", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        ready = False
        while not ready:
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            assert time.monotonic() < deadline, "the workers did not answer within 60 s"
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.2)
        deadline = time.monotonic() + 30
        while len(_workers(proc.pid)) < 2:  # the supervisor starts both before either is ready
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert len(_workers(proc.pid)) == 2
        for _ in range(20):  # new connections each time: the kernel hands them to either worker
            reply = httpx.get(f"http://127.0.0.1:{port}/v1/atp/WORKERS-1", headers={"Authorization": f"Bearer {TOKEN}"})
            assert reply.status_code == 200, reply.text
            assert reply.json()["atp"] == 7
        assert httpx.get(f"http://127.0.0.1:{port}/v1/atp/WORKERS-1").status_code == 401
        # Every worker serves through the edge protocol with the environment's limits.
        for _ in range(6):
            reply = httpx.get(f"http://127.0.0.1:{port}/healthz", headers={"X-Big": "b" * 5000})
            assert reply.status_code == 431 and reply.json()["error"] == "headers_too_large"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as idle:
            started = time.monotonic()
            assert idle.recv(1) == b""  # closed by the worker's header timeout
            assert time.monotonic() - started < 4
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode is not None
