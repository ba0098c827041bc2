"""The API's HTTP edge against abusive clients: raw sockets on a real ``atp serve`` process.

One server for the module, with small limits (8 KiB of head, 20 header fields, a 1 s header
timeout, 320 connections) and a soft open-files limit of 256 at start, as on a host whose
default is low: ``serve`` must raise it to hold the idle sockets below.
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from connectors.embedded import free_port
from engine.api.auth import token_digest

HEADER_TIMEOUT_S = 1.0
MAX_HEADER_BYTES = 8192
MAX_HEADERS = 20
MAX_CONNECTIONS = 320
START_NOFILE = 256
SLACK_S = 2.0
MB = 1024 * 1024


class Api:
    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc = proc
        self.port = port

    def connect(self, timeout: float = 5.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def status(self, field: str) -> int:
        """A kB figure from /proc/<pid>/status (VmRSS, VmHWM), in bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {field} for the server")

    def open_files_limit(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return int(line.split()[3])
        raise AssertionError("no open-files limit for the server")

    def held_connections(self) -> int:
        """Client connections the server still holds open (its side ESTABLISHED or CLOSE_WAIT)."""
        held = 0
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                lines = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == self.port and fields[3] in ("01", "08"):
                    held += 1
        return held

    def settle(self, timeout: float = 10.0) -> None:
        """Wait until earlier tests' connections are gone from the server."""
        deadline = time.monotonic() + timeout
        while self.held_connections():
            assert time.monotonic() < deadline, f"{self.held_connections()} connections still held"
            time.sleep(0.05)


def _limit_open_files() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (START_NOFILE, hard))


@pytest.fixture(scope="module")
def api(redis_url: str, kafka_bootstrap: str, redis_cluster_mode: bool) -> Iterator[Api]:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.upper().startswith("ATP_")},
        "ATP_CONFIG": os.devnull,
        "ATP_REDIS_URL": redis_url,
        "ATP_REDIS_CLUSTER": "true" if redis_cluster_mode else "false",
        "ATP_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "ATP_API_TOKENS": json.dumps({token_digest("edge-test-token"): ["read"]}),
        "ATP_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "ATP_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
        "ATP_MAX_HEADERS": str(MAX_HEADERS),
        "ATP_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    }
    cmd = [sys.executable, "-m", "engine.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "error"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, preexec_fn=_limit_open_files)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            assert time.monotonic() < deadline, "the API did not answer within 60 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield Api(proc, port)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _read_response(sock: socket.socket, buffered: bytes = b"") -> tuple[int, dict[str, str], bytes, bytes]:
    """One HTTP response off ``sock``: status, headers, body, and bytes read past it."""
    data = buffered
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a full response head: {data[:200]!r}"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside a response body"
        rest += chunk
    return status, headers, rest[:length], rest[length:]


def _get(path: str = "/healthz", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: atp.test\r\n{extra}\r\n".encode()


def _closed_within(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the server closes ``sock`` (EOF or reset), or None if it is still open."""
    start = time.monotonic()
    sock.settimeout(timeout)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    except TimeoutError:
        return None
    return time.monotonic() - start


def _send_until_refused(sock: socket.socket, head: bytes, filler_bytes: int) -> None:
    """``head`` then ``filler_bytes`` of one header's value, never finished; stops if the server hangs up."""
    chunk = b"a" * (256 * 1024)
    try:
        sock.sendall(head)
        sent = 0
        while sent < filler_bytes:
            sock.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass


def _refusal(sock: socket.socket) -> tuple[int, dict[str, Any], bool]:
    """Status and JSON body of the server's answer, and whether it then closed the connection."""
    sock.settimeout(10)
    try:
        status, headers, body, _ = _read_response(sock)
    except ConnectionResetError as exc:
        raise AssertionError("reset before an answer was read") from exc
    assert headers.get("connection") == "close"
    assert headers["content-type"] == "application/problem+json"
    problem = json.loads(body)
    assert (problem["status"], problem["type"]) == (status, f"urn:atp-engine:problem:{problem['error']}")
    return status, problem, _closed_within(sock, 5) is not None


def test_a_50_mb_header_is_answered_431_and_the_connection_closed(api: Api) -> None:
    with api.connect() as sock:
        _send_until_refused(sock, _get()[:-2] + b"X-Big: ", 50 * MB)
        status, body, closed = _refusal(sock)
    assert status == 431
    assert body["error"] == "headers_too_large" and str(MAX_HEADER_BYTES) in body["detail"]
    assert closed


def test_an_over_long_url_is_answered_414(api: Api) -> None:
    with api.connect() as sock:
        _send_until_refused(sock, b"GET /healthz?q=", 2 * MB)
        status, body, closed = _refusal(sock)
    assert (status, body["error"], closed) == (414, "uri_too_long", True)


def test_unfinished_headers_do_not_grow_the_server(api: Api) -> None:
    api.settle()
    rss_before, peak_before = api.status("VmRSS"), api.status("VmHWM")
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(api.status("VmRSS"))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    socks = [api.connect() for _ in range(30)]
    try:
        for sock in socks:
            _send_until_refused(sock, _get()[:-2] + b"X-Big: ", 8 * MB)  # 240 MB in all, never finished
        samples.append(api.status("VmRSS"))
    finally:
        stop.set()
        sampler.join()
        for sock in socks:
            sock.close()
    growth = max(samples) - rss_before
    assert growth < 50 * MB, f"RSS grew {growth / MB:.0f} MB"
    assert api.status("VmHWM") - peak_before < 50 * MB
    assert api.proc.poll() is None


def test_an_endless_trailer_after_a_chunked_body_is_cut_off(api: Api) -> None:
    api.settle()
    rss_before = api.status("VmRSS")
    head = b"POST /healthz HTTP/1.1\r\nHost: atp.test\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX-T: "
    with api.connect() as sock:
        _send_until_refused(sock, head, 40 * MB)
        rss_after = api.status("VmRSS")
        assert _closed_within(sock, 5) is not None
    assert rss_after - rss_before < 20 * MB, f"RSS grew {(rss_after - rss_before) / MB:.0f} MB"


def test_too_many_header_fields_are_answered_431(api: Api) -> None:
    fields = "".join(f"X-F{i}: {i}\r\n" for i in range(MAX_HEADERS - 1))  # with Host: the most allowed
    with api.connect() as sock:
        sock.sendall(_get(extra=fields))
        status, _, _, _ = _read_response(sock)
        assert status == 200
        sock.sendall(_get(extra=fields + "X-One-More: 1\r\n"))
        status, body, closed = _refusal(sock)
    assert (status, body["error"], closed) == (431, "headers_too_large", True)
    assert str(MAX_HEADERS) in body["detail"]


def test_a_silent_connection_is_closed_after_the_header_timeout(api: Api) -> None:
    with api.connect() as sock:
        took = _closed_within(sock, HEADER_TIMEOUT_S + SLACK_S)
    assert took is not None, "the server kept a silent connection open"
    assert took >= HEADER_TIMEOUT_S - 0.2


def test_a_slowloris_is_closed_after_the_header_timeout_however_steady_its_bytes(api: Api) -> None:
    with api.connect() as sock:
        start = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: atp.test\r\nX-Slow: ")
        closed_after = None
        while time.monotonic() - start < HEADER_TIMEOUT_S + SLACK_S:
            readable, _, _ = select.select([sock], [], [], 0.3)
            if readable:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                assert not data, f"answered instead of closed: {data[:100]!r}"
                closed_after = time.monotonic() - start
                break
            try:
                sock.sendall(b"a")
            except (BrokenPipeError, ConnectionResetError):
                closed_after = time.monotonic() - start
                break
    assert closed_after is not None, "a client trickling a header byte every 0.3 s was kept"
    assert closed_after >= HEADER_TIMEOUT_S - 0.2


def test_idle_sockets_neither_starve_customers_nor_stay(api: Api) -> None:
    api.settle()
    idle = [api.connect() for _ in range(300)]  # more than the server's starting descriptor limit
    try:
        with api.connect() as sock:
            sock.sendall(_get())
            status, _, body, _ = _read_response(sock)
        assert status == 200 and json.loads(body)["status"] == "ok"
        assert api.open_files_limit() > 300 + 64, "serve did not raise its open-files limit"

        # Over max_connections the answer is a loud 503, not a reset.
        more = [api.connect() for _ in range(MAX_CONNECTIONS - 300)]
        idle += more
        with api.connect() as sock:
            sock.sendall(_get())
            status, headers, body, _ = _read_response(sock)
        assert status == 503
        assert json.loads(body)["error"] == "unavailable" and headers["retry-after"] == "1"

        deadline = time.monotonic() + HEADER_TIMEOUT_S + SLACK_S
        still_open = [s for s in idle if _closed_within(s, max(0.01, deadline - time.monotonic())) is None]
        assert not still_open, f"{len(still_open)} of {len(idle)} idle sockets still open"
        api.settle(timeout=2)
        with api.connect() as sock:
            sock.sendall(_get())
            assert _read_response(sock)[0] == 200
    finally:
        for s in idle:
            s.close()


def test_ordinary_requests_keep_alive_and_pipeline(api: Api) -> None:
    cookie = "Cookie: session=" + "c" * 6000 + "\r\nUser-Agent: browser/1.0\r\nAccept: */*\r\n"
    with api.connect() as sock:
        for _ in range(3):  # one connection, request after request
            sock.sendall(_get(extra=cookie))
            status, headers, body, rest = _read_response(sock)
            assert status == 200 and rest == b""
            assert headers.get("connection") != "close"
            time.sleep(HEADER_TIMEOUT_S / 3)  # idle between requests, within the timeout
        # Pipelined in one write, the first carrying a body: the heads behind it are counted too.
        body_bytes = b"x" * 100_000
        first = _get(extra=f"Content-Length: {len(body_bytes)}\r\n") + body_bytes
        sock.sendall(first + _get(extra=cookie) + _get())
        rest = b""
        for _ in range(3):
            status, _, _, rest = _read_response(sock, rest)
            assert status == 200
        # After the last response the header timeout runs again.
        assert _closed_within(sock, HEADER_TIMEOUT_S + SLACK_S) is not None
