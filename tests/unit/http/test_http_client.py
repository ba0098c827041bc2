"""The HTTP client's pure parts (``engine.http.plan``, ``errors``, ``types``): requests built,
replies read, retries decided — no sockets. The exchange is driven by hand with a fake clock."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

import httpx
import orjson
import pytest

from engine.api.errors import problem
from engine.api.models import AtpOut, NotAllowedOut, RefusedOut, ReservationOut
from engine.domain.ids import LONG_ID_PATTERN
from engine.http import (
    API_TOKEN_ENV,
    API_URL_ENV,
    ApiUnreachable,
    AtpHttpClient,
    AtpHttpError,
    Conflict,
    Forbidden,
    Guard,
    IdempotencyConflict,
    InvalidRequest,
    NotAllowed,
    NotFound,
    Refused,
    Reservation,
    RetryPolicy,
    ServerError,
    Unauthorized,
    Unavailable,
    UnexpectedReply,
    plan,
)
from engine.http.errors import error_from_reply, is_json
from engine.http.types import Atp
from engine.reservations.types import Allocation as StoreAllocation
from engine.reservations.types import LineRequest, ReservedLine
from engine.reservations.types import Refusal as StoreRefusal
from engine.reservations.types import Reservation as StoreReservation
from engine.reservations.views import position_view, refusal_view, reservation_view
from engine.settings import Settings

T0 = 1_735_718_400_000  # 2025-01-01T08:00:00Z
NOW = 1_735_718_400.0  # the wall clock of these tests, in seconds


def store_reservation(state: str = "held") -> StoreReservation:
    lines = [
        ReservedLine("B", 2, "WH1", state, T0 + 60_000, T0, 5, [StoreAllocation("oh", "WH1", "WH1", 2)]),
        ReservedLine("A", 3, None, state, T0 + 60_000, T0 + 86_400_000, 0,
                     [StoreAllocation("oh", "WH1", "WH1", 1), StoreAllocation("lot", "PO-7", "WH2", 2)]),
    ]
    return StoreReservation("ok", "R1", state, lines, T0 + 86_400_000, T0 + 60_000, {"A": 0, "B": 5})


def reply(status: int, body: Any = None, *, content_type: str = "application/json",
          headers: dict[str, str] | None = None) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body) if body is not None else b""
    return httpx.Response(status, headers={"content-type": content_type, **(headers or {})}, content=content)


#: A guard's refusal of two lines of SKU A (held as one) beside a line of B, as the server writes it.
_VIEW = refusal_view(
    StoreRefusal("refused", "R1", "customer_limit", sku="A", available={"A": 7}, limit=4, used=2),
    [("A", 2, None), ("A", 1, None), ("B", 1, "WH1")], {"B": 9}, customer="c-1",
)
#: the 409 problem the API makes of it (engine.api.checkout)
REFUSED = problem(409, _VIEW.pop("error"), _VIEW.pop("detail"), **_VIEW)


# --- replies: the client reads what the server's views write ----------------------------------


def test_a_reservation_body_of_the_server_reads_back_field_for_field() -> None:
    body = reservation_view(store_reservation())
    ReservationOut.model_validate(body)  # the documented shape
    got = Reservation.from_body(orjson.loads(orjson.dumps(body)))
    assert got.reservation_id == "R1" and got.state == "held" and got.ok
    assert [line.sku for line in got.lines] == ["A", "B"]
    a, b = got.lines
    assert a.location is None and b.location == "WH1"
    assert [(x.kind, x.ref, x.location, x.qty) for x in a.allocations] == [("oh", "WH1", "WH1", 1),
                                                                           ("lot", "PO-7", "WH2", 2)]
    assert got.promised_ms == T0 + 86_400_000 and got.promised_at == "2025-01-02T08:00:00.000Z"
    assert got.expires_ms == T0 + 60_000 and got.expires_at == "2025-01-01T08:01:00.000Z"
    assert b.atp_after == 5 and b.promised_at == "2025-01-01T08:00:00.000Z"
    # a replay is the same reservation; the flag takes no part in equality
    assert Reservation.from_body(body, replayed=True) == got


def test_a_position_body_of_the_server_reads_back_and_newer_members_are_ignored() -> None:
    position = {"sku": "S1", "on_hand": 10, "safety": 1, "held": 2, "committed": 3, "in_transit": 40,
                "promisable_in_transit": 20, "atp": 24, "promisable_now": 4, "next_promise_ms": T0, "oversold": 0,
                "locations": {"WH1": {"on_hand": 10, "safety": 1, "held": 2, "committed": 3, "in_transit": 40,
                                      "promisable_in_transit": 20, "atp": 24, "oh_alloc": 5, "bo_alloc": 0,
                                      "short": 0}}}
    body = position_view(position, "WH1")
    AtpOut.model_validate(body)
    got = Atp.from_body({**body, "added_later": 1})
    assert (got.sku, got.location, got.atp, got.promisable_now, got.next_promise_at) == (
        "S1", "WH1", 24, 4, "2025-01-01T08:00:00.000Z")
    assert got.locations["WH1"].oh_alloc == 5 and got.locations["WH1"].promisable_in_transit == 20


def test_a_position_reads_backordered_units_also_from_a_server_that_predates_them() -> None:
    figures = {"on_hand": 0, "safety": 0, "held": 3, "committed": 0, "in_transit": 0, "promisable_in_transit": 0,
               "atp": 0, "oh_alloc": 0, "bo_alloc": 3, "short": 0}
    body = {"sku": "S1", "location": None, "on_hand": 0, "safety": 0, "held": 3, "committed": 0, "in_transit": 0,
            "promisable_in_transit": 0, "atp": 2, "promisable_now": 0, "next_promise_ms": 0,
            "next_promise_at": None, "oversold": 0, "locations": {"WH1": figures}}
    old = Atp.from_body(body)
    assert old.backordered == 0 and old.locations["WH1"].backordered == 3
    new = Atp.from_body(position_view({**body, "backordered": 3}))
    assert new.backordered == 3 and new.locations["WH1"].backordered == 3 and new.atp == 2


def test_a_refusal_of_the_server_reads_back_with_its_guard_and_lines() -> None:
    RefusedOut.model_validate(REFUSED)
    refused = Refused.from_body({**REFUSED, "added_later": {"x": 1}})
    assert not refused.ok and (refused.reservation_id, refused.reason, refused.sku) == ("R1", "customer_limit", "A")
    assert refused.guard == Guard("customer_limit", 4, 2, 2)
    assert refused.detail == REFUSED["detail"]
    assert [(ln.sku, ln.qty, ln.location, ln.requested, ln.available, ln.stock, ln.reason) for ln in refused.lines] == [
        ("A", 2, None, 3, 2, 7, "customer_limit"),
        ("A", 1, None, 3, 2, 7, "customer_limit"),
        ("B", 1, "WH1", 1, 9, 9, None),
    ]
    assert refused.body["added_later"] == {"x": 1}  # members beyond these types stay reachable


def test_a_refusal_from_a_server_without_the_guard_members_still_reads() -> None:
    older = {"error": "refused", "detail": "not enough", "reservation_id": "R1", "reason": "insufficient",
             "lines": [{"sku": "A", "qty": 5, "location": None, "available": 2, "reason": "insufficient"}]}
    refused = Refused.from_body(older)
    assert refused.guard is None and refused.sku is None
    assert refused.lines[0].available == 2 and refused.lines[0].requested is None and refused.lines[0].stock is None


# --- error replies -----------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["application/json", "application/problem+json; charset=utf-8"])
@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "missing_idempotency_key", InvalidRequest),
        (401, "unauthorized", Unauthorized),
        (403, "forbidden", Forbidden),
        (404, "not_found", NotFound),
        (409, "not_allowed", NotAllowed),
        (413, "payload_too_large", InvalidRequest),
        (422, "invalid_request", InvalidRequest),
        (422, "idempotency_conflict", IdempotencyConflict),
        (503, "unavailable", Unavailable),
        (409, "some_new_code", Conflict),  # unknown code: by status
        (418, "teapot", AtpHttpError),
        (500, "internal", ServerError),
    ],
)
def test_error_replies_map_on_the_error_member_in_json_and_problem_json(
    status: int, code: str, cls: type[AtpHttpError], content_type: str
) -> None:
    body = {"error": code, "detail": "what went wrong", "extra": 1}
    if "problem" in content_type:
        body = {"type": f"https://atp.example/problems/{code}", "title": "Title", "status": status, **body}
    resp = reply(status, body, content_type=content_type)
    exc = error_from_reply(resp.status_code, resp.headers, resp.content, method="GET", url="http://x/v1/y")
    assert type(exc) is cls
    assert (exc.status, exc.error, exc.detail, exc.body["extra"]) == (status, code, "what went wrong", 1)
    assert str(exc).startswith(f"{status} {code}: what went wrong (GET http://x/v1/y)")


def test_a_problem_without_detail_uses_its_title_and_a_non_json_body_its_text() -> None:
    problem = reply(404, {"type": "about:blank", "title": "Not Found", "status": 404, "error": "not_found"},
                    content_type="application/problem+json")
    exc = error_from_reply(404, problem.headers, problem.content)
    assert isinstance(exc, NotFound) and exc.detail == "Not Found"
    html = reply(502, b"<html>bad gateway</html>", content_type="text/html")
    exc = error_from_reply(502, html.headers, html.content)
    assert type(exc) is ServerError and exc.error is None and exc.detail == "<html>bad gateway</html>"
    broken = reply(422, b"{not json", content_type="application/json")
    exc = error_from_reply(422, broken.headers, broken.content)
    assert type(exc) is InvalidRequest and exc.error is None and exc.body == "{not json"
    assert is_json("application/vnd.atp+json") and not is_json("text/plain") and not is_json(None)


def test_typed_errors_expose_their_members() -> None:
    invalid = reply(422, {"error": "invalid_request", "detail": "body.lines.0.qty: too small",
                          "reasons": [{"field": "body.lines.0.qty", "reason": "greater_than_equal",
                                       "message": "too small"}]})
    exc = error_from_reply(422, invalid.headers, invalid.content)
    assert isinstance(exc, InvalidRequest) and exc.reasons[0]["field"] == "body.lines.0.qty"
    not_allowed = problem(409, "not_allowed", "the reservation is released", reservation_id="R1",
                          state="released", reservation=reservation_view(store_reservation("released")))
    NotAllowedOut.model_validate(not_allowed)
    resp = reply(409, not_allowed)
    exc = error_from_reply(409, resp.headers, resp.content)
    assert isinstance(exc, NotAllowed) and exc.state == "released"
    assert exc.reservation is not None and exc.reservation.state == "released" and len(exc.reservation.lines) == 2
    busy = reply(503, {"error": "unavailable", "detail": "retry", "retry_after": 1})
    exc = error_from_reply(503, busy.headers, busy.content)
    assert isinstance(exc, Unavailable) and exc.retry_after == 1.0


# --- requests ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OtherLine:
    sku: str
    qty: int


def test_hold_takes_lines_in_every_form_and_sends_only_the_options_given() -> None:
    call = plan.hold_call([("A", 1), ("B", 2, "WH1"), {"sku": "C", "qty": 3}, LineRequest("D", 4, "WH2"),
                           OtherLine("E", 5)], "order-1", customer="c-9")
    assert (call.method, call.path) == ("POST", "/v1/reservations")
    assert call.json == {"lines": [{"sku": "A", "qty": 1}, {"sku": "B", "qty": 2, "location": "WH1"},
                                   {"sku": "C", "qty": 3}, {"sku": "D", "qty": 4, "location": "WH2"},
                                   {"sku": "E", "qty": 5}],
                         "customer_id": "c-9"}
    assert call.headers == {"Idempotency-Key": "order-1"}
    full = plan.hold_call([("A", 1)], "order-2", ttl_seconds=60, channel="web")
    assert full.json == {"lines": [{"sku": "A", "qty": 1}], "ttl_seconds": 60, "channel": "web"}
    with pytest.raises(ValueError, match="sku, qty"):
        plan.hold_call([("A",)], "order-3")


@pytest.mark.parametrize("rid", ["../atp/X", "a/b", "", "x" * 129, "bad id", "order-1?x=1"])
def test_ids_that_would_leave_their_path_segment_are_refused_before_sending(rid: str) -> None:
    with pytest.raises(ValueError):
        plan.get_call(rid)
    with pytest.raises(ValueError):
        plan.lifecycle_call("confirm", rid)
    with pytest.raises(ValueError):
        plan.hold_call([("A", 1)], rid)
    with pytest.raises(ValueError):
        plan.atp_call(rid if rid else "/")


def test_paths_bodies_and_generated_ids() -> None:
    assert plan.get_call("r-1").path == "/v1/reservations/r-1"
    extend = plan.lifecycle_call("extend", "r-1", 90)
    assert (extend.path, extend.json) == ("/v1/reservations/r-1/extend", {"ttl_seconds": 90})
    assert plan.lifecycle_call("release", "r-1").json is None
    atp = plan.atp_call("S1", "WH1")
    assert (atp.method, atp.path, dict(atp.params)) == ("GET", "/v1/atp/S1", {"location": "WH1"})
    many = plan.atp_many_call(["S2", "S1", "S2"])
    assert (many.path, many.json) == ("/v1/atp/query", {"skus": ["S2", "S1"]})
    with pytest.raises(TypeError):
        plan.atp_many_call("S1")
    ids = {plan.new_reservation_id() for _ in range(100)}
    assert len(ids) == 100 and all(re.fullmatch(LONG_ID_PATTERN[1:-1], i) and i.startswith("res-") for i in ids)


def test_configuration_from_arguments_and_env() -> None:
    assert plan.Config("http://h:1/").base_url == "http://h:1"
    with pytest.raises(ValueError, match="http"):
        plan.Config("h:1")
    client = AtpHttpClient.from_env({API_URL_ENV: "http://api:8000", API_TOKEN_ENV: "tok"}, timeout=2.0)
    try:
        assert client.config.base_url == "http://api:8000" and client.config.timeout_s == 2.0
        assert client.config.headers()["Authorization"] == "Bearer tok"
    finally:
        client.close()
    assert plan.env_config({API_URL_ENV: "http://api"}) == ("http://api", None)
    with pytest.raises(ValueError, match=API_URL_ENV):
        plan.env_config({API_TOKEN_ENV: "tok"})
    # the client's variables are not server settings (ATP_API_TOKENS holds digests, not tokens)
    for env in (API_URL_ENV, API_TOKEN_ENV):
        assert env.removeprefix("ATP_").lower() not in Settings.model_fields


# --- retry decisions ---------------------------------------------------------------------------


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert plan.retry_after_s("1", NOW) == 1.0
    assert plan.retry_after_s(" 2 ", NOW) == 2.0
    assert plan.retry_after_s("0.5", NOW) == 0.5
    assert plan.retry_after_s(formatdate(NOW + 7, usegmt=True), NOW) == pytest.approx(7.0)
    assert plan.retry_after_s("Wed, 01 Jan 2025 08:00:30 GMT", NOW) == pytest.approx(30.0)
    assert plan.retry_after_s("Wednesday, 01-Jan-25 08:00:30 GMT", NOW) == pytest.approx(30.0)  # RFC 850
    assert plan.retry_after_s(formatdate(NOW - 60, usegmt=True), NOW) == 0.0
    for bad in (None, "", "soon", "-1", "1e3"):
        assert plan.retry_after_s(bad, NOW) is None


def test_backoff_grows_exponentially_to_its_cap_with_jitter() -> None:
    policy = RetryPolicy(backoff_base_s=0.1, backoff_max_s=1.0)
    rng = random.Random(3)
    for attempt, step in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)]:
        draws = [plan.backoff_s(policy, attempt, rng) for _ in range(200)]
        assert all(step / 2 <= d <= step for d in draws), attempt
        assert max(draws) - min(draws) > step / 4  # jittered, not one value


def decide(outcome: httpx.Response | Exception, attempt: int = 1, elapsed: float = 0.0,
           policy: RetryPolicy | None = None) -> plan.Decision:
    return plan.decide(policy or RetryPolicy(), attempt, elapsed, outcome, random.Random(1), NOW)


def test_503_and_transport_failures_are_retried_4xx_and_other_errors_never() -> None:
    assert decide(reply(503, {}, headers={"Retry-After": "1"})) == plan.Decision(True, 1.0, retry_after_s=1.0)
    capped = decide(reply(503, {}, headers={"Retry-After": "3600"}), policy=RetryPolicy(deadline_s=60))
    assert capped.delay_s == 10.0 and capped.retry_after_s == 3600.0
    assert 0.05 <= decide(reply(503, {})).delay_s <= 0.1
    for exc in (httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("closed"),
                httpx.ReadError("reset")):
        assert decide(exc).retry, exc
    for status in (400, 401, 404, 409, 422, 429, 500, 502):
        assert not decide(reply(status, {}, headers={"Retry-After": "1"})).retry, status
    assert not decide(httpx.UnsupportedProtocol("ftp://")).retry
    with pytest.raises(ValueError, match="4xx"):
        RetryPolicy(retry_statuses=frozenset({503, 429}))
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


def test_retries_stop_at_the_attempt_bound_and_before_the_deadline() -> None:
    policy = RetryPolicy(attempts=3, deadline_s=5.0)
    busy = reply(503, {}, headers={"Retry-After": "2"})
    assert decide(busy, attempt=2, policy=policy).retry
    assert decide(busy, attempt=3, policy=policy).why == "no attempts left"
    late = decide(busy, attempt=1, elapsed=3.5, policy=policy)
    assert not late.retry and "deadline" in late.why and late.retry_after_s == 2.0


# --- the exchange, driven by hand ----------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def drive(call: plan.Call[Any], answers: list[httpx.Response | Exception], config: plan.Config,
          clock: FakeClock) -> tuple[Any, list[plan.Action]]:
    """Run ``exchange`` as a client would, answering each Send with the next of ``answers`` and
    letting each Sleep pass on ``clock``; returns the result and the actions seen."""
    steps = plan.exchange(call, config, clock=clock, wall=lambda: NOW + clock.now, rng=random.Random(7))
    actions: list[plan.Action] = []
    answer: Any = None
    try:
        while True:
            action = steps.send(answer)
            actions.append(action)
            if isinstance(action, plan.Sleep):
                clock.now += action.seconds
                answer = None
            else:
                clock.now += 0.01
                answer = answers.pop(0)
    except StopIteration as done:
        return done.value, actions


def test_a_hold_retried_after_503s_sends_the_same_key_and_returns_the_replayed_reservation() -> None:
    clock = FakeClock()
    config = plan.Config("http://api", "tok", timeout_s=4.0)
    body = reservation_view(store_reservation())
    answers: list[httpx.Response | Exception] = [
        reply(503, {"error": "unavailable", "detail": "retry", "retry_after": 1}, headers={"Retry-After": "1"},
              content_type="application/problem+json"),
        httpx.ConnectError("refused"),
        reply(201, body, headers={"Idempotent-Replayed": "true"}),
    ]
    result, actions = drive(plan.hold_call([("A", 3)], "R1"), answers, config, clock)
    sends = [a for a in actions if isinstance(a, plan.Send)]
    sleeps = [a for a in actions if isinstance(a, plan.Sleep)]
    assert [s.attempt for s in sends] == [1, 2, 3]
    assert {(s.method, s.url, s.headers["Idempotency-Key"], s.headers["Authorization"], s.content)
            for s in sends} == {("POST", "http://api/v1/reservations", "R1", "Bearer tok",
                                 b'{"lines":[{"sku":"A","qty":3}]}')}
    assert sleeps[0].seconds == 1.0  # as asked
    assert 0.1 <= sleeps[1].seconds <= 0.2  # the backoff after the second attempt
    assert isinstance(result, Reservation) and result.replayed and result.reservation_id == "R1"


def test_the_deadline_cuts_attempt_timeouts_and_ends_with_unreachable() -> None:
    clock = FakeClock()
    config = plan.Config("http://api", timeout_s=4.0, connect_timeout_s=3.0,
                         retry=RetryPolicy(attempts=100, deadline_s=2.0, backoff_base_s=0.4, backoff_max_s=0.4))
    steps = plan.exchange(plan.get_call("R1"), config, clock=clock, wall=lambda: NOW, rng=random.Random(1))
    action = next(steps)
    assert isinstance(action, plan.Send) and action.timeout.read == 2.0 and action.timeout.connect == 2.0
    starts: list[float] = []
    with pytest.raises(ApiUnreachable) as raised:
        while True:
            if isinstance(action, plan.Send):
                starts.append(clock.now - 100.0)
                assert action.timeout.read <= max(0.05, 2.0 - (clock.now - 100.0)) + 1e-9
                clock.now += 0.1
                action = steps.send(httpx.ConnectError("[Errno 111] Connection refused"))
            else:
                clock.now += action.seconds
                action = steps.send(None)
    exc = raised.value
    assert exc.status is None and exc.attempts == len(starts) > 3
    assert max(starts) < 2.0 <= max(starts) + 0.1 + 0.4  # the last one that could start did
    assert isinstance(exc.__cause__, httpx.ConnectError)
    assert "deadline" in str(exc) and "Connection refused" in str(exc) and "GET http://api/v1/reservations/R1" in str(exc)


def test_final_replies_become_results_or_typed_errors() -> None:
    config = plan.Config("http://api", retry=RetryPolicy(attempts=2))
    refused, _ = drive(plan.hold_call([("A", 5)], "R1"), [reply(409, REFUSED)], config, FakeClock())
    assert isinstance(refused, Refused) and refused.guard == Guard("customer_limit", 4, 2, 2)
    with pytest.raises(NotAllowed):  # a 409 that is not a refusal is not a result
        drive(plan.lifecycle_call("confirm", "R1"),
              [reply(409, {"error": "not_allowed", "detail": "released", "state": "released"})], config, FakeClock())
    with pytest.raises(Unavailable) as busy:
        drive(plan.get_call("R1"), [reply(503, {"error": "unavailable", "detail": "down"},
                                          headers={"Retry-After": "1"})] * 2, config, FakeClock())
    assert busy.value.attempts == 2 and busy.value.retry_after == 1.0
    with pytest.raises(UnexpectedReply):
        drive(plan.get_call("R1"), [reply(200, {"reservation_id": "R1"})], config, FakeClock())
    with pytest.raises(UnexpectedReply):
        drive(plan.get_call("R1"), [reply(200, b"<html/>", content_type="text/html")], config, FakeClock())
    with pytest.raises(AtpHttpError) as bad_url:
        drive(plan.get_call("R1"), [httpx.UnsupportedProtocol("no")], config, FakeClock())
    assert type(bad_url.value) is AtpHttpError and bad_url.value.attempts == 1
