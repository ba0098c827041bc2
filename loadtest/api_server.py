"""The HTTP API under test: ``atp serve`` in a child process on a free loopback port, talking to
the benchmark's Redis and a broker (the embedded Tansu broker, or ``ATP_KAFKA_BOOTSTRAP``).

A bearer token with the ``reserve`` role is made for the run; the server runs with the
benchmark's key prefix and logs only warnings (no access log).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from loadtest.target import Target, require_loopback


def _die_with_parent() -> None:
    """preexec_fn: the server gets SIGKILL when the benchmark dies, even by SIGKILL (Linux)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return s.recv(32).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process, from /proc (0.0 where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class RunningApi:
    host: str
    port: int
    token: str
    pid: int
    log: Path


@contextlib.contextmanager
def broker_bootstrap() -> Iterator[str]:
    """``ATP_KAFKA_BOOTSTRAP`` (loopback only), else an embedded broker for the run; the topics
    the API writes to are created."""
    from connectors.topics import Topics, create_topics

    given = os.environ.get("ATP_KAFKA_BOOTSTRAP", "")
    with contextlib.ExitStack() as stack:
        if given:
            for hostport in given.split(","):
                require_loopback(hostport.rsplit(":", 1)[0])
            bootstrap = given
        else:
            from connectors.embedded import EmbeddedBroker

            bootstrap = stack.enter_context(EmbeddedBroker()).bootstrap
        create_topics({"bootstrap.servers": bootstrap}, Topics(), partitions=1)
        yield bootstrap


@contextlib.contextmanager
def api_server(target: Target, bootstrap: str, start_timeout_s: float = 60.0) -> Iterator[RunningApi]:
    """Start ``atp serve`` against ``target`` and ``bootstrap``; stop it on exit."""
    from engine.api.auth import token_digest

    token = secrets.token_urlsafe(24)
    port = _free_port()
    logdir = Path(tempfile.mkdtemp(prefix="atp-loadtest-api-"))
    log = logdir / "api.log"
    env = {
        **os.environ,
        "ATP_REDIS_URL": target.url,
        "ATP_REDIS_CLUSTER": "true" if target.cluster else "false",
        "ATP_KAFKA_BOOTSTRAP": bootstrap,
        "ATP_KEY_PREFIX": target.prefix,
        "ATP_API_TOKENS": json.dumps({token_digest(token): ["reserve"]}),
        "ATP_CONFIG": str(logdir / "none.toml"),  # no stray atp.toml from the working directory
    }
    cmd = [sys.executable, "-m", "engine.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_die_with_parent)
    try:
        deadline = time.monotonic() + start_timeout_s
        while not _healthy(port):
            if proc.poll() is not None:
                raise RuntimeError(f"the API exited with {proc.returncode}: {log.read_text(errors='replace')[-500:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API did not answer /healthz within {start_timeout_s} s; log: {log}")
            time.sleep(0.2)
        yield RunningApi("127.0.0.1", port, token, proc.pid, log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
