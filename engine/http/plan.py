"""Everything the HTTP clients decide, with no I/O: the requests, reading the replies, and when
to retry.

``AtpHttpClient`` and ``AsyncAtpHttpClient`` (``engine.http.client``) only carry out what
``exchange`` asks for: it is a generator that yields ``Send`` (make this request, send me the
``httpx.Response`` or the ``httpx.TransportError``) and ``Sleep`` (wait this long, send me
None), and returns the call's result or raises its ``AtpHttpError``. So the sync and async
twins cannot differ in what they send, retry or return.

Retries (``RetryPolicy``): a 503 and a transport failure (connection refused or reset,
timeout) are retried with exponential backoff and jitter, or after the ``Retry-After`` the
reply asked for (delay-seconds or an HTTP-date, capped at ``retry_after_max_s``), until
``attempts`` requests were sent or the next one would start after ``deadline_s``. A 4xx is
never retried. Every call of the API is safe to repeat: a hold carries its reservation id as
``Idempotency-Key`` (the same key on every attempt, so a repeat answers the same reservation
with ``Idempotent-Replayed: true``), a second confirm or release changes nothing, and an
extend sets the same expiry from the moment it lands.
"""

from __future__ import annotations

import random
import re
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any, Generic, Literal, TypeVar

import httpx
import orjson

from engine.domain.ids import require_id
from engine.http.errors import (
    ApiUnreachable,
    AtpHttpError,
    UnexpectedReply,
    error_from_reply,
    parse_body,
)
from engine.http.types import Atp, HoldResult, Refused, Reservation

T = TypeVar("T")

#: Env vars ``from_env`` reads: the API's base URL (as ``atp up`` prints it) and a bearer token
#: in plain text. The server side keeps only digests of tokens, in ``ATP_API_TOKENS``.
API_URL_ENV = "ATP_API_URL"
API_TOKEN_ENV = "ATP_API_TOKEN"

#: The header that carries a hold's reservation id, and the one marking a repeat's answer
#: (``engine.api.checkout.REPLAYED_HEADER`` on the server side).
IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"

#: The shortest timeout an attempt gets when the deadline is nearly spent.
_MIN_ATTEMPT_TIMEOUT_S = 0.05
_DELAY_SECONDS = re.compile(r"\d+(\.\d+)?")
#: The jitter's source when a caller names none (one per process, not one per call).
_JITTER = random.Random()


# --- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """When a call is sent again.

    ``attempts``: most requests per call (1 = never retry). ``deadline_s``: no attempt starts
    later than this after the first one did (each attempt's timeout is cut to what is left).
    Backoff before attempt n+1 is drawn from [d/2, d] with d = min(``backoff_max_s``,
    ``backoff_base_s`` · 2^(n−1)); a ``Retry-After`` replaces it, capped at ``retry_after_max_s``.
    ``retry_statuses``: the statuses retried (never a 4xx).
    """

    attempts: int = 4
    deadline_s: float = 10.0
    backoff_base_s: float = 0.1
    backoff_max_s: float = 2.0
    retry_after_max_s: float = 10.0
    retry_statuses: frozenset[int] = frozenset({503})

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.deadline_s <= 0:
            raise ValueError("deadline_s must be positive")
        if self.backoff_base_s < 0 or self.backoff_max_s < 0 or self.retry_after_max_s < 0:
            raise ValueError("backoff and Retry-After bounds must not be negative")
        if any(400 <= s < 500 for s in self.retry_statuses):
            raise ValueError("a 4xx is never retried: the same request would be refused again")


#: One attempt only.
NO_RETRY = RetryPolicy(attempts=1)


@dataclass(frozen=True)
class Config:
    """What a client was built with: the API's base URL (no trailing slash), the bearer token,
    the per-attempt timeouts and the retry policy."""

    base_url: str
    token: str | None = None
    timeout_s: float = 10.0
    connect_timeout_s: float = 3.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        url = self.base_url.rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http:// or https:// URL, not {self.base_url!r}")
        object.__setattr__(self, "base_url", url)
        if self.timeout_s <= 0 or self.connect_timeout_s <= 0:
            raise ValueError("timeouts must be positive")

    def headers(self) -> dict[str, str]:
        """Headers every request carries."""
        headers = {"Accept": "application/json, application/problem+json", "User-Agent": "atp-engine-http"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers


def env_config(environ: Mapping[str, str]) -> tuple[str, str | None]:
    """(base URL, token) from ``ATP_API_URL`` and ``ATP_API_TOKEN``; raises ``ValueError`` when
    the URL is not set."""
    url = (environ.get(API_URL_ENV) or "").strip()
    if not url:
        raise ValueError(f"{API_URL_ENV} is not set: the API's base URL, e.g. http://127.0.0.1:8000")
    token = (environ.get(API_TOKEN_ENV) or "").strip() or None
    return url, token


# --- retry decisions ---------------------------------------------------------------------------


def retry_after_s(value: str | None, now: float) -> float | None:
    """Seconds to wait by a ``Retry-After`` value (delay-seconds or an HTTP-date, RFC 9110
    §10.2.3) at wall-clock time ``now``; 0 for a date in the past, None when absent or
    unreadable."""
    if value is None:
        return None
    text = value.strip()
    if _DELAY_SECONDS.fullmatch(text):
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP-date is always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def backoff_s(policy: RetryPolicy, attempt: int, rng: random.Random) -> float:
    """The pause after failed attempt ``attempt`` (1-based) when no ``Retry-After`` was given:
    half the exponential step, plus up to the other half at random, so clients that failed
    together spread out and none retries at once."""
    step = min(policy.backoff_max_s, policy.backoff_base_s * 2 ** (attempt - 1))
    return step / 2 + rng.uniform(0, step / 2)


def is_transient(exc: BaseException) -> bool:
    """True for transport failures that may pass: no connection, a reset or a timeout. A bad URL
    or a request httpx could not send is a bug, not an outage."""
    return isinstance(exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError)


@dataclass(frozen=True)
class Decision:
    """Whether to send again, after how long, and otherwise why not (for the error message)."""

    retry: bool
    delay_s: float = 0.0
    why: str = ""
    retry_after_s: float | None = None


def decide(
    policy: RetryPolicy,
    attempt: int,
    elapsed_s: float,
    outcome: httpx.Response | BaseException,
    rng: random.Random,
    now: float,
) -> Decision:
    """What to do after attempt ``attempt`` (1-based) ended with ``outcome``, ``elapsed_s`` after
    the first attempt started (``now``: wall-clock seconds, for an HTTP-date ``Retry-After``)."""
    asked: float | None = None
    if isinstance(outcome, BaseException):
        if not is_transient(outcome):
            return Decision(False, why="not retryable")
    else:
        if outcome.status_code not in policy.retry_statuses:
            return Decision(False, why="final")
        asked = retry_after_s(outcome.headers.get("retry-after"), now)
    if attempt >= policy.attempts:
        return Decision(False, why="no attempts left", retry_after_s=asked)
    delay = min(asked, policy.retry_after_max_s) if asked is not None else backoff_s(policy, attempt, rng)
    if elapsed_s + delay >= policy.deadline_s:
        return Decision(False, why=f"the next attempt would start after the {policy.deadline_s:g} s deadline",
                        retry_after_s=asked)
    return Decision(True, delay, retry_after_s=asked)


# --- requests and replies ----------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """A final answer: status, headers (case-insensitive) and the body, parsed when JSON."""

    status: int
    headers: httpx.Headers
    body: Any


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API call: the request and how its reply becomes the result.

    ``parse`` reads a 2xx; ``outcome`` may turn an error reply into a result (a hold's 409
    ``refused``) by returning it, or return None to have it raised as an ``AtpHttpError``."""

    method: Literal["GET", "POST"]
    path: str
    parse: Callable[[Reply], T]
    json: Any = None
    params: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    outcome: Callable[[Reply], T | None] | None = None


@dataclass(frozen=True)
class Send:
    """Send this request; answer with the ``httpx.Response`` or the ``httpx.TransportError``."""

    method: str
    url: str
    params: Mapping[str, str]
    headers: Mapping[str, str]
    content: bytes | None
    timeout: httpx.Timeout
    attempt: int


@dataclass(frozen=True)
class Sleep:
    """Wait ``seconds``; answer with None."""

    seconds: float


Action = Send | Sleep


def new_reservation_id(prefix: str = "res") -> str:
    """A fresh reservation id: ``<prefix>-<uuid4 hex>`` (``engine.domain.ids`` long-id pattern)."""
    return require_id("reservation_id", f"{prefix}-{uuid.uuid4().hex}")


def line_body(line: Any) -> dict[str, Any]:
    """A hold line as the API takes it, from ``(sku, qty)``, ``(sku, qty, location)``, a mapping
    with ``sku`` / ``qty`` / ``location``, or an object with those attributes (such as
    ``engine.reservations.client.LineRequest``). Location None = any location. The API checks the values."""
    if isinstance(line, Mapping):
        sku, qty, location = line["sku"], line["qty"], line.get("location")
    elif isinstance(line, tuple | list):
        if len(line) not in (2, 3):
            raise ValueError(f"a line is (sku, qty) or (sku, qty, location), not {line!r}")
        sku, qty, location = line[0], line[1], line[2] if len(line) == 3 else None
    else:
        sku, qty, location = line.sku, line.qty, getattr(line, "location", None)
    body: dict[str, Any] = {"sku": sku, "qty": qty}
    if location is not None:
        body["location"] = location
    return body


def _object(reply: Reply) -> Mapping[str, Any]:
    if not isinstance(reply.body, Mapping):
        raise ValueError("the body is not a JSON object")
    return reply.body


def _reservation(reply: Reply) -> Reservation:
    replayed = reply.headers.get(REPLAYED_HEADER, "").strip().lower() == "true"
    return Reservation.from_body(_object(reply), replayed=replayed)


def _refused(reply: Reply) -> Refused | None:
    body = reply.body
    if reply.status == 409 and isinstance(body, Mapping) and body.get("error") == "refused":
        return Refused.from_body(body)
    return None


def _rid_path(rid: str) -> str:
    # the id goes into the URL path: checked here, so no id can reach another route
    return f"/v1/reservations/{require_id('reservation_id', rid)}"


def atp_call(sku: str, location: str | None = None) -> Call[Atp]:
    """GET /v1/atp/{sku}: the SKU's position (at ``location``, or over all locations)."""
    params = {} if location is None else {"location": location}
    return Call("GET", f"/v1/atp/{require_id('sku', sku)}", lambda r: Atp.from_body(_object(r)), params=params)


def _positions(reply: Reply) -> dict[str, Atp]:
    positions = (Atp.from_body(p) for p in _object(reply)["positions"])
    return {p.sku: p for p in positions}


def atp_many_call(skus: Iterable[str], location: str | None = None) -> Call[dict[str, Atp]]:
    """POST /v1/atp/query: positions by SKU, in the order asked (a SKU asked twice, once)."""
    if isinstance(skus, str):
        raise TypeError("skus is a list of SKUs, not one SKU")
    body: dict[str, Any] = {"skus": list(dict.fromkeys(skus))}
    if location is not None:
        body["location"] = location
    return Call("POST", "/v1/atp/query", _positions, json=body)


def hold_call(
    lines: Iterable[Any],
    reservation_id: str,
    ttl_seconds: int | None = None,
    channel: str | None = None,
    customer: str | None = None,
) -> Call[HoldResult]:
    """POST /v1/reservations with ``Idempotency-Key: reservation_id``."""
    body: dict[str, Any] = {"lines": [line_body(line) for line in lines]}
    for name, value in (("ttl_seconds", ttl_seconds), ("channel", channel), ("customer_id", customer)):
        if value is not None:
            body[name] = value
    key = require_id("reservation_id", reservation_id)
    return Call("POST", "/v1/reservations", _reservation, json=body,
                headers={IDEMPOTENCY_HEADER: key}, outcome=_refused)


def get_call(reservation_id: str) -> Call[Reservation]:
    """GET /v1/reservations/{id}."""
    return Call("GET", _rid_path(reservation_id), _reservation)


def lifecycle_call(op: Literal["confirm", "release", "extend"], reservation_id: str,
                   ttl_seconds: int | None = None) -> Call[Reservation]:
    """POST /v1/reservations/{id}/confirm | release | extend (``ttl_seconds`` for extend)."""
    body = {"ttl_seconds": ttl_seconds} if op == "extend" else None
    return Call("POST", f"{_rid_path(reservation_id)}/{op}", _reservation, json=body)


# --- the exchange ------------------------------------------------------------------------------


def attempt_timeout(config: Config, remaining_s: float) -> httpx.Timeout:
    """The configured timeouts, cut to what is left of the deadline."""
    left = max(_MIN_ATTEMPT_TIMEOUT_S, remaining_s)
    return httpx.Timeout(min(config.timeout_s, left), connect=min(config.connect_timeout_s, left))


def _final(call: Call[T], response: httpx.Response, method: str, url: str, attempts: int,
           decision: Decision) -> T:
    reply = Reply(response.status_code, response.headers,
                  parse_body(response.headers.get("content-type"), response.content))
    context: dict[str, Any] = {"method": method, "url": url, "attempts": attempts}
    try:
        if response.is_success:
            return call.parse(reply)
        result = call.outcome(reply) if call.outcome is not None else None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UnexpectedReply(response.status_code, None, f"unreadable reply: {exc}", reply.body,
                              headers=response.headers, **context) from exc
    if result is not None:
        return result
    raise error_from_reply(response.status_code, response.headers, response.content,
                           retry_after=decision.retry_after_s, **context)


def exchange(
    call: Call[T],
    config: Config,
    *,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
    rng: random.Random | None = None,
) -> Generator[Action, httpx.Response | BaseException | None, T]:
    """Carry out ``call`` under ``config``'s retry policy (see the module docstring).

    ``clock`` measures the deadline, ``wall`` dates a ``Retry-After`` HTTP-date, ``rng`` draws
    the jitter."""
    rng = rng or _JITTER
    policy = config.retry
    url = config.base_url + call.path
    headers = config.headers()
    content: bytes | None = None
    if call.json is not None:
        content = orjson.dumps(call.json)
        headers["Content-Type"] = "application/json"
    headers.update(call.headers)
    started = clock()
    attempt = 0
    while True:
        attempt += 1
        timeout = attempt_timeout(config, policy.deadline_s - (clock() - started))
        outcome = yield Send(call.method, url, call.params, headers, content, timeout, attempt)
        if outcome is None:
            raise TypeError("a Send is answered with the response or the transport error")
        elapsed = clock() - started
        decision = decide(policy, attempt, elapsed, outcome, rng, wall())
        if decision.retry:
            yield Sleep(decision.delay_s)
            continue
        if isinstance(outcome, httpx.Response):
            return _final(call, outcome, call.method, url, attempt, decision)
        failure = f"{type(outcome).__name__}: {outcome}".rstrip(": ")
        if not is_transient(outcome):
            raise AtpHttpError(None, None, failure, method=call.method, url=url, attempts=attempt) from outcome
        raise ApiUnreachable(
            None, None, f"{failure}; gave up after {elapsed:.1f} s: {decision.why}",
            method=call.method, url=url, attempts=attempt,
        ) from outcome

