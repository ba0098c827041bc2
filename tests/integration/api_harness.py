"""Support for the HTTP API tests: tokens, the app in-process or behind a real uvicorn, seeding.

Not a conftest: the API tests import what they need from here, so the shared fixtures in
``tests/conftest.py`` stay the only implicit ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from connectors.embedded import free_port
from connectors.topics import Topics
from engine.api import create_app
from engine.api.auth import token_digest
from engine.settings import Settings
from engine.store.store import Store
from engine.store.wire import SupplyCommand
from tests.conftest import redis_client

#: Plain tokens by role set; settings carry only their digests.
READER = "reader-token"
RESERVER = "reserver-token"
OPERATOR = "operator-token"
ADMIN = "admin-token"
TOKENS: dict[str, list[str]] = {
    READER: ["read"],
    RESERVER: ["reserve"],
    OPERATOR: ["operate"],
    ADMIN: ["read", "reserve", "operate"],
}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def api_settings(settings: Settings, **overrides: Any) -> Settings:
    """The suite's settings plus the test tokens (validated like any settings)."""
    data = settings.model_dump()
    data.update({"api_tokens": {token_digest(t): roles for t, roles in TOKENS.items()}, **overrides})
    return Settings.model_validate(data)


def make_app(settings: Settings, topics: Topics, **kwargs: Any) -> FastAPI:
    return create_app(api_settings(settings), topics=topics, sweep=False, **kwargs)


@contextlib.asynccontextmanager
async def in_process(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client calling ``app`` in this event loop, with its lifespan running."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://atp.test") as client:
            yield client


@contextlib.contextmanager
def served(app: FastAPI) -> Iterator[str]:
    """Run ``app`` under a real uvicorn on a free loopback port (own thread); yields its base URL."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def sync_store(redis_url: str, settings: Settings) -> Store:
    """A store on the suite's Redis (a Cluster client when ``settings.redis_cluster``)."""
    return Store(redis_client(redis_url, settings.redis_cluster), prefix=settings.key_prefix)


def seed(store: Store, sku: str, on_hand: int, location: str = "default") -> None:
    """Set ``sku``'s on-hand at ``location`` by an operator count."""
    replies = store.apply([SupplyCommand(sku, "count", {"loc": location, "on_hand": on_hand})])
    assert replies[0]["status"] == "ok", replies


def figures(store: Store, sku: str) -> dict[str, int]:
    """The SKU-level buckets that a refused or unauthorised call must leave unchanged."""
    position = store.position(sku)
    return {k: position[k] for k in ("on_hand", "held", "committed", "atp", "in_transit")}


class ApiProcess:
    """One ``atp serve`` child of ``api_process_handles``: its base URL, its process (a test may
    SIGKILL it: ``kill``) and its log (stderr, a temp file)."""

    def __init__(self, url: str, proc: subprocess.Popen[bytes], log: Any) -> None:
        self.url = url
        self.proc = proc
        self._log = log

    def kill(self) -> None:
        """SIGKILL the server (a crash: no shutdown, its relay lock is left to expire)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def log_text(self) -> str:
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode(errors="replace")


@contextlib.contextmanager
def api_processes(
    settings: Settings, count: int = 2, args: Sequence[str] = (), **env_extra: str
) -> Iterator[list[str]]:
    """``count`` separate ``atp serve`` processes over the suite's Redis and broker, each on its own
    free loopback port, with the test tokens and ``args`` (more ``atp serve`` options); yields their
    base URLs and stops them at the end."""
    with api_process_handles(settings, count, args, **env_extra) as procs:
        yield [p.url for p in procs]


@contextlib.contextmanager
def api_process_handles(
    settings: Settings, count: int = 2, args: Sequence[str] = (), **env_extra: str
) -> Iterator[list[ApiProcess]]:
    """``api_processes``, yielding the processes themselves (``ApiProcess``)."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.upper().startswith("ATP_")},
        "ATP_CONFIG": os.devnull,
        "ATP_REDIS_URL": settings.redis_url,
        "ATP_REDIS_CLUSTER": "true" if settings.redis_cluster else "false",
        "ATP_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "ATP_KEY_PREFIX": settings.key_prefix,
        "ATP_API_TOKENS": json.dumps({token_digest(t): roles for t, roles in TOKENS.items()}),
        **env_extra,
    }
    ports = [free_port() for _ in range(count)]
    # the servers' logs go to files: a pipe nobody reads would block a server once it fills
    logs = [tempfile.TemporaryFile() for _ in ports]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--log-level", "warning", *args],
            env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
        )
        for port, log in zip(ports, logs, strict=True)
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        deadline = time.monotonic() + 60
        for proc, url, log in zip(procs, urls, logs, strict=True):
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"atp serve exited: {log.read().decode(errors='replace')}")
                if time.monotonic() > deadline:
                    raise RuntimeError("atp serve did not answer within 60 s")
                try:
                    if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        yield [ApiProcess(u, p, lg) for u, p, lg in zip(urls, procs, logs, strict=True)]
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for log in logs:
            log.close()
