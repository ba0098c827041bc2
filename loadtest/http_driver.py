"""A small HTTP/1.1 load driver for the reservations endpoint: keep-alive connections over
asyncio streams, closed loop (N connections back to back) or open loop (a fixed arrival rate).

Why not httpx: on a 2-core machine the driver shares the CPU with the API server and Redis,
and httpx spends several times more CPU per request than these few lines, so the driver, not
the server, would saturate first. Open-loop latency is measured from each request's scheduled
send time, so waiting for a free connection counts (no coordinated omission).

Runs inside a worker process (``run_step``), so the parent's progress display and the driver
do not share a GIL.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from collections import deque
from dataclasses import dataclass, field

from loadtest.target import require_loopback

REQUEST_TIMEOUT_S = 10.0
GRACE_S = 5.0


@dataclass(frozen=True)
class Step:
    """One load step: ``mode`` closed (``connections`` back to back) or open (``rate``/s).
    Request i holds ``sku``, or ``skus[i % len(skus)]`` when ``skus`` are given."""

    mode: str
    duration_s: float
    connections: int
    sku: str
    rid_prefix: str
    rate: float = 0.0
    qty: int = 1
    skus: tuple[str, ...] = ()

    def sku_index(self, i: int) -> int:
        """The index in ``skus`` of request i's SKU (0 without ``skus``)."""
        return i % len(self.skus) if self.skus else 0

    def __post_init__(self) -> None:
        if self.mode not in ("closed", "open"):
            raise ValueError("mode must be closed or open")
        if self.mode == "open" and self.rate <= 0:
            raise ValueError("an open-loop step needs a positive rate")
        if self.duration_s <= 0 or self.connections < 1:
            raise ValueError("duration_s and connections must be positive")


@dataclass
class StepResult:
    """Per request: scheduled time (open loop; = start in closed loop), when the driver got to
    it (``began``: late when the driver itself was starved of CPU), when it was sent (``start``,
    after waiting for a free connection), ``end`` (all ``time.monotonic()``), the HTTP status
    (0 = no answer) and the index of its SKU (``Step.sku_index``)."""

    t0: float = 0.0
    sched: array = field(default_factory=lambda: array("d"))
    began: array = field(default_factory=lambda: array("d"))
    start: array = field(default_factory=lambda: array("d"))
    end: array = field(default_factory=lambda: array("d"))
    status: array = field(default_factory=lambda: array("h"))
    sku: array = field(default_factory=lambda: array("l"))
    errors: dict[str, int] = field(default_factory=dict)

    def record(self, sched: float, began: float, start: float, end: float, status: int, sku: int = 0) -> None:
        self.sched.append(sched)
        self.began.append(began)
        self.start.append(start)
        self.end.append(end)
        self.status.append(status)
        self.sku.append(sku)

    def error(self, exc: BaseException) -> None:
        kind = f"{type(exc).__name__}: {exc}"[:160]
        self.errors[kind] = self.errors.get(kind, 0) + 1


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def request(self, raw: bytes) -> tuple[int, bool]:
        """Send one request, read one response: (status, keep-alive)."""
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = None
        chunked = False
        keep = True
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                keep = False
        if chunked:
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        elif length:
            await self.reader.readexactly(length)
        return status, keep

    def close(self) -> None:
        self.writer.close()


class _Pool:
    """Up to ``limit`` keep-alive connections; callers queue (FIFO) when all are busy."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port, self.limit = host, port, limit
        self.idle: list[_Conn] = []
        self.opened = 0
        self.waiters: deque[asyncio.Future[_Conn]] = deque()

    async def _open(self) -> _Conn:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return _Conn(reader, writer)

    async def get(self) -> _Conn:
        if self.idle:
            return self.idle.pop()
        if self.opened < self.limit:
            self.opened += 1
            try:
                return await self._open()
            except BaseException:
                self.opened -= 1
                raise
        fut: asyncio.Future[_Conn] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        return await fut

    def put(self, conn: _Conn) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        self.idle.append(conn)

    def discard(self, conn: _Conn) -> None:
        conn.close()
        self.opened -= 1
        if self.waiters:  # someone waits for a connection we no longer have: open one for them
            asyncio.get_running_loop().create_task(self._replace())

    async def _replace(self) -> None:
        self.opened += 1
        try:
            conn = await self._open()
        except Exception:
            self.opened -= 1
            return
        self.put(conn)

    def close(self) -> None:
        for conn in self.idle:
            conn.close()


def _raw(host: str, port: int, token: str, step: Step, i: int) -> bytes:
    sku = step.skus[step.sku_index(i)] if step.skus else step.sku
    body = b'{"lines":[{"sku":"%s","qty":%d}],"ttl_seconds":600}' % (sku.encode(), step.qty)
    return (
        b"POST /v1/reservations HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
        b"Idempotency-Key: %s%d\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (host.encode(), port, token.encode(), step.rid_prefix.encode(), i, len(body), body)
    )


async def _one(pool: _Pool, raw: bytes, sched: float, out: StepResult, sku: int) -> None:
    began = start = time.monotonic()
    try:
        conn = await pool.get()
    except Exception as exc:
        out.error(exc)
        out.record(sched, began, start, time.monotonic(), 0, sku)
        return
    start = time.monotonic()
    try:
        status, keep = await asyncio.wait_for(conn.request(raw), REQUEST_TIMEOUT_S)
    except Exception as exc:
        out.error(exc)
        pool.discard(conn)
        out.record(sched, began, start, time.monotonic(), 0, sku)
        return
    out.record(sched, began, start, time.monotonic(), status, sku)
    if keep:
        pool.put(conn)
    else:
        pool.discard(conn)


async def _open_loop(host: str, port: int, token: str, step: Step) -> StepResult:
    out = StepResult()
    pool = _Pool(host, port, step.connections)
    loop = asyncio.get_running_loop()
    total = int(step.rate * step.duration_s)
    interval = 1.0 / step.rate
    tasks: set[asyncio.Task[None]] = set()
    out.t0 = t0 = time.monotonic() + 0.05
    for i in range(total):
        sched = t0 + i * interval
        delay = sched - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = loop.create_task(_one(pool, _raw(host, port, token, step, i), sched, out, step.sku_index(i)))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        _done, pending = await asyncio.wait(set(tasks), timeout=GRACE_S)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            out.errors["no answer within the grace period"] = len(pending)
    pool.close()
    return out


async def _closed_loop(host: str, port: int, token: str, step: Step) -> StepResult:
    out = StepResult()
    out.t0 = time.monotonic()
    deadline = out.t0 + step.duration_s
    counter = iter(range(10**12))

    async def worker() -> None:
        conn: _Conn | None = None
        while time.monotonic() < deadline:
            if conn is None:
                try:
                    reader, writer = await asyncio.open_connection(host, port)
                except Exception as exc:
                    out.error(exc)
                    await asyncio.sleep(0.05)
                    continue
                conn = _Conn(reader, writer)
            i = next(counter)
            raw = _raw(host, port, token, step, i)
            start = time.monotonic()
            try:
                status, keep = await asyncio.wait_for(conn.request(raw), REQUEST_TIMEOUT_S)
            except Exception as exc:
                out.error(exc)
                out.record(start, start, start, time.monotonic(), 0, step.sku_index(i))
                conn.close()
                conn = None
                continue
            out.record(start, start, start, time.monotonic(), status, step.sku_index(i))
            if not keep:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    await asyncio.gather(*(worker() for _ in range(step.connections)))
    return out


def run_step(host: str, port: int, token: str, step: Step) -> StepResult:
    """Run one step against ``host:port`` (loopback only) and return every request's record."""
    require_loopback(host)
    runner = _open_loop if step.mode == "open" else _closed_loop
    return asyncio.run(runner(host, port, token, step))
