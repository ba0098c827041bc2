"""The HTTP client (``engine.http``) against the real API behind a real uvicorn over real Redis,
sync and async; its retries against a small scripted HTTP server on a loopback port that answers
503 before passing requests on to that API; and against an API that was stopped."""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

import httpx
import orjson
import pytest

from connectors.topics import Topics
from engine.http import (
    ApiUnreachable,
    AsyncAtpHttpClient,
    AtpHttpClient,
    AtpHttpError,
    Forbidden,
    IdempotencyConflict,
    InvalidRequest,
    NotAllowed,
    NotFound,
    Refused,
    Reservation,
    RetryPolicy,
    Unauthorized,
    Unavailable,
)
from engine.settings import Settings
from tests.integration.api_harness import (
    ADMIN,
    READER,
    RESERVER,
    figures,
    make_app,
    seed,
    served,
    sync_store,
)


@pytest.fixture
def store(redis: Any, redis_url: str, settings: Settings) -> Any:
    return sync_store(redis_url, settings)


@pytest.fixture
def api_url(redis: Any, settings: Settings, topics: Topics) -> Iterator[str]:
    with served(make_app(settings, topics)) as url:
        yield url


# --- against the API ---------------------------------------------------------------------------


def test_sync_hold_get_extend_confirm_release_round_trip(store: Any, api_url: str) -> None:
    seed(store, "HC-1", 10)
    seed(store, "HC-2", 4, "WH1")
    with AtpHttpClient(api_url, ADMIN) as atp:
        made = atp.hold([("HC-1", 3), {"sku": "HC-2", "qty": 2, "location": "WH1"}], reservation_id="hc-life-1",
                        ttl_seconds=120, channel="web", customer="cust-1")
        assert isinstance(made, Reservation) and made.ok and not made.replayed
        assert (made.reservation_id, made.state) == ("hc-life-1", "held")
        assert [(ln.sku, ln.qty, ln.location, ln.state) for ln in made.lines] == [
            ("HC-1", 3, None, "held"), ("HC-2", 2, "WH1", "held")]
        assert [(a.kind, a.location, a.qty) for a in made.lines[1].allocations] == [("oh", "WH1", 2)]
        assert made.promised_ms > 0 and made.promised_at and made.promised_at.endswith("Z")
        assert made.expires_ms > 0 and made.lines[0].atp_after == 7

        assert atp.get_reservation("hc-life-1") == made
        position = atp.atp("HC-1")
        assert (position.sku, position.held, position.atp) == ("HC-1", 3, 7)
        assert atp.atp("HC-2", "WH1").locations["WH1"].held == 2
        many = atp.atp_many(["HC-2", "HC-1", "HC-NONE"])
        assert list(many) == ["HC-2", "HC-1", "HC-NONE"] and many["HC-NONE"].atp == 0 and many["HC-1"].atp == 7

        extended = atp.extend("hc-life-1", 3600)
        assert extended.expires_ms > made.expires_ms
        assert atp.confirm("hc-life-1").state == "committed"
        assert atp.confirm("hc-life-1").state == "committed"  # again: unchanged
        assert figures(store, "HC-1")["committed"] == 3
        assert atp.release("hc-life-1").state == "released"
        assert figures(store, "HC-1") == {"on_hand": 10, "held": 0, "committed": 0, "atp": 10, "in_transit": 0}

        with pytest.raises(NotAllowed) as late:
            atp.confirm("hc-life-1")
        assert late.value.status == 409 and late.value.error == "not_allowed" and late.value.state == "released"
        assert late.value.reservation is not None and late.value.reservation.state == "released"


def test_sync_refusal_not_found_replay_conflict_and_auth_are_typed(store: Any, api_url: str) -> None:
    seed(store, "HC-3", 2)
    with AtpHttpClient(api_url, RESERVER) as atp:
        refused = atp.hold([("HC-3", 5)], reservation_id="hc-ref-1")
        assert isinstance(refused, Refused) and not refused.ok
        assert (refused.reservation_id, refused.reason, refused.sku, refused.guard) == (
            "hc-ref-1", "insufficient", "HC-3", None)
        assert [(ln.sku, ln.requested, ln.available, ln.reason) for ln in refused.lines] == [
            ("HC-3", 5, 2, "insufficient")]
        assert figures(store, "HC-3")["held"] == 0

        with pytest.raises(NotFound) as missing:
            atp.get_reservation("hc-nobody")
        assert (missing.value.status, missing.value.error, missing.value.attempts) == (404, "not_found", 1)
        with pytest.raises(NotFound):
            atp.release("hc-nobody")

        first = atp.hold([("HC-3", 1)], reservation_id="hc-idem-1", ttl_seconds=60)
        again = atp.hold([("HC-3", 1)], reservation_id="hc-idem-1", ttl_seconds=600)
        assert isinstance(first, Reservation) and isinstance(again, Reservation)
        assert not first.replayed and again.replayed and again == first
        assert figures(store, "HC-3")["held"] == 1
        with pytest.raises(IdempotencyConflict) as conflict:
            atp.hold([("HC-3", 2)], reservation_id="hc-idem-1")
        assert conflict.value.status == 422 and conflict.value.error == "idempotency_conflict"
        with pytest.raises(InvalidRequest) as invalid:
            atp.hold([("HC-3", 0)])
        assert any(r["field"].endswith("qty") for r in invalid.value.reasons)

        generated = atp.hold([("HC-3", 1)])
        assert isinstance(generated, Reservation) and generated.reservation_id.startswith("res-")
        assert atp.get_reservation(generated.reservation_id).lines[0].qty == 1

    with AtpHttpClient(api_url, READER) as reader, pytest.raises(Forbidden):
        reader.hold([("HC-3", 1)])
    with AtpHttpClient(api_url, "not-a-token") as stranger, pytest.raises(Unauthorized) as who:
        stranger.atp("HC-3")
    assert who.value.status == 401


@pytest.mark.anyio
async def test_async_twin_gives_the_same_results_and_errors(store: Any, api_url: str) -> None:
    seed(store, "HCA-1", 5)
    async with AsyncAtpHttpClient(api_url, RESERVER) as atp:
        made = await atp.hold([("HCA-1", 2)], reservation_id="hca-1", channel="app")
        assert isinstance(made, Reservation) and made.state == "held"
        again = await atp.hold([("HCA-1", 2)], reservation_id="hca-1")
        assert isinstance(again, Reservation) and again.replayed and again == made
        assert await atp.get_reservation("hca-1") == made
        assert (await atp.atp("HCA-1")).atp == 3
        assert (await atp.atp_many(["HCA-1"]))["HCA-1"].held == 2
        assert (await atp.extend("hca-1", 900)).expires_ms >= made.expires_ms
        assert (await atp.confirm("hca-1")).state == "committed"
        assert (await atp.release("hca-1")).state == "released"
        refused = await atp.hold([("HCA-1", 6)], reservation_id="hca-2")
        assert isinstance(refused, Refused) and refused.lines[0].available == 5
        with pytest.raises(NotFound):
            await atp.get_reservation("hca-nobody")
        with pytest.raises(NotAllowed):
            await atp.extend("hca-1", 60)
    # the sync client reads the same reservation the async one made
    with AtpHttpClient(api_url, READER) as reader:
        assert reader.get_reservation("hca-1").state == "released"
    assert figures(store, "HCA-1")["held"] == 0


# --- retries against a scripted server ----------------------------------------------------------


@dataclass
class Seen:
    """One request the scripted server received, and when its answer left."""

    method: str
    path: str
    headers: dict[str, str]
    arrived: float  # time.time()
    answered: float = 0.0


Answer = tuple[int, dict[str, str], bytes]
Script = Callable[[int, Seen, bytes], Answer]


@contextlib.contextmanager
def scripted_server(script: Script) -> Iterator[tuple[str, list[Seen]]]:
    """A stdlib HTTP/1.1 server on a free loopback port answering request n (0-based) with
    ``script(n, seen, body)``; yields its base URL and the requests seen."""
    seen: list[Seen] = []
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            request = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, time.time())
            with lock:
                number = len(seen)
                seen.append(request)
            status, headers, content = script(number, request, body)
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(content))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(content)
            self.wfile.flush()
            request.answered = time.time()

        do_GET = do_POST = _answer

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="scripted-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def unavailable(retry_after: str) -> Answer:
    body = {"type": "about:blank", "title": "Service Unavailable", "status": 503, "error": "unavailable",
            "detail": "the state store is unavailable; retry later"}
    return 503, {"Content-Type": "application/problem+json", "Retry-After": retry_after}, orjson.dumps(body)


class LossyProxy:
    """Passes request 0 on to the API but answers it 503 ``Retry-After: 1`` (the hold is made, its
    reply lost); answers request 1 503 with an HTTP-date ``Retry-After`` (not passed on); passes
    every later request on and relays the API's answer."""

    def __init__(self, api_url: str) -> None:
        self.api = httpx.Client(base_url=api_url, timeout=30.0)
        self.date_target = 0

    def forward(self, seen: Seen, body: bytes) -> Answer:
        keep = {k: v for k, v in seen.headers.items() if k in ("authorization", "content-type", "idempotency-key")}
        reply = self.api.request(seen.method, seen.path, headers=keep, content=body)
        relay = {k: v for k, v in reply.headers.items() if k in ("content-type", "idempotent-replayed", "location")}
        return reply.status_code, relay, reply.content

    def __call__(self, number: int, seen: Seen, body: bytes) -> Answer:
        if number == 0:
            self.forward(seen, body)
            return unavailable("1")
        if number == 1:
            # an HTTP-date has whole seconds: at least 1 s from now, at most 2
            self.date_target = int(time.time()) + 2
            return unavailable(formatdate(self.date_target, usegmt=True))
        return self.forward(seen, body)


def check_retried_hold(result: Any, seen: list[Seen], proxy: LossyProxy, elapsed: float, store: Any, sku: str) -> None:
    assert isinstance(result, Reservation) and result.state == "held"
    assert result.replayed  # the first attempt made the hold; the last one got it back
    assert len(seen) == 3
    assert {s.headers["idempotency-key"] for s in seen} == {result.reservation_id}
    assert seen[1].arrived - seen[0].answered >= 1.0 - 0.01  # Retry-After: 1
    assert seen[2].arrived >= proxy.date_target - 0.01  # Retry-After: <HTTP-date>
    assert elapsed >= 2.0 - 0.02
    assert figures(store, sku)["held"] == 2  # held once


def test_sync_hold_retries_503s_honouring_retry_after_with_the_same_key(store: Any, api_url: str) -> None:
    seed(store, "HCR-1", 5)
    proxy = LossyProxy(api_url)
    with scripted_server(proxy) as (url, seen), AtpHttpClient(url, RESERVER) as atp:
        started = time.monotonic()
        result = atp.hold([("HCR-1", 2)])
        elapsed = time.monotonic() - started
    proxy.api.close()
    check_retried_hold(result, seen, proxy, elapsed, store, "HCR-1")


@pytest.mark.anyio
async def test_async_hold_retries_503s_honouring_retry_after_with_the_same_key(store: Any, api_url: str) -> None:
    seed(store, "HCR-2", 5)
    proxy = LossyProxy(api_url)
    with scripted_server(proxy) as (url, seen):
        async with AsyncAtpHttpClient(url, RESERVER) as atp:
            started = time.monotonic()
            result = await atp.hold([("HCR-2", 2)], reservation_id="hcr-2")
            elapsed = time.monotonic() - started
    proxy.api.close()
    check_retried_hold(result, seen, proxy, elapsed, store, "HCR-2")
    assert result.reservation_id == "hcr-2"


def test_a_4xx_is_never_retried_even_with_retry_after() -> None:
    def script(number: int, seen: Seen, body: bytes) -> Answer:
        if seen.path.startswith("/v1/atp/"):
            return 429, {"Content-Type": "application/json", "Retry-After": "1"}, orjson.dumps(
                {"error": "too_many_requests", "detail": "slow down"})
        problem = {"type": "about:blank", "title": "Unprocessable", "status": 422, "error": "invalid_request",
                   "detail": "body.lines.0.qty: too small",
                   "reasons": [{"field": "body.lines.0.qty", "reason": "greater_than_equal", "message": "too small"}]}
        return 422, {"Content-Type": "application/problem+json"}, orjson.dumps(problem)

    with scripted_server(script) as (url, seen), AtpHttpClient(url, RESERVER) as atp:
        started = time.monotonic()
        with pytest.raises(AtpHttpError) as limited:
            atp.atp("SKU-1")
        with pytest.raises(InvalidRequest) as invalid:
            atp.hold([("SKU-1", 1)])
        elapsed = time.monotonic() - started
    assert len(seen) == 2 and elapsed < 1.0
    assert (limited.value.status, limited.value.error, limited.value.attempts) == (429, "too_many_requests", 1)
    assert invalid.value.reasons[0]["field"] == "body.lines.0.qty" and invalid.value.attempts == 1


def test_503_past_the_attempt_bound_raises_unavailable_with_what_the_api_said() -> None:
    with scripted_server(lambda n, seen, body: unavailable("0")) as (url, seen), \
            AtpHttpClient(url, READER, retry=RetryPolicy(attempts=3)) as atp, pytest.raises(Unavailable) as down:
        atp.get_reservation("r-1")
    assert len(seen) == 3
    exc = down.value
    assert (exc.status, exc.error, exc.attempts, exc.retry_after) == (503, "unavailable", 3, 0.0)
    assert exc.detail == "the state store is unavailable; retry later"


# --- a stopped API ------------------------------------------------------------------------------

DEADLINE = RetryPolicy(attempts=1000, deadline_s=1.5, backoff_base_s=0.05, backoff_max_s=0.2)


@pytest.fixture
def stopped_api_url(redis: Any, settings: Settings, topics: Topics) -> str:
    """The URL of an API that answered, then stopped: its port refuses connections."""
    with served(make_app(settings, topics)) as url:
        assert httpx.get(f"{url}/healthz", timeout=5.0).status_code == 200
    return url


def check_gave_up(exc: ApiUnreachable, elapsed: float, url: str) -> None:
    assert exc.status is None and exc.error is None
    assert isinstance(exc.__cause__, httpx.ConnectError)
    assert exc.attempts > 3
    # it gave up when the next attempt would have started after the deadline, and not later
    assert DEADLINE.deadline_s - DEADLINE.backoff_max_s - 0.1 <= elapsed < DEADLINE.deadline_s + 1.0
    message = str(exc)
    assert f"GET {url}/v1/reservations/r-1" in message and "ConnectError" in message and "deadline" in message


def test_sync_client_gives_up_on_a_stopped_api_after_the_deadline(stopped_api_url: str) -> None:
    with AtpHttpClient(stopped_api_url, READER, retry=DEADLINE) as atp:
        started = time.monotonic()
        with pytest.raises(ApiUnreachable) as raised:
            atp.get_reservation("r-1")
        elapsed = time.monotonic() - started
    check_gave_up(raised.value, elapsed, stopped_api_url)


@pytest.mark.anyio
async def test_async_client_gives_up_on_a_stopped_api_after_the_deadline(stopped_api_url: str) -> None:
    async with AsyncAtpHttpClient(stopped_api_url, READER, retry=DEADLINE) as atp:
        started = time.monotonic()
        with pytest.raises(ApiUnreachable) as raised:
            await atp.get_reservation("r-1")
        elapsed = time.monotonic() - started
    check_gave_up(raised.value, elapsed, stopped_api_url)
