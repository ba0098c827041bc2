"""The checkout calls served without the FastAPI stack: hold, confirm, release, extend, read a
reservation, the ATP of one SKU.

Why: under a flash sale, FastAPI's middleware chain, routing, dependency solving and exception
handling cost several times the work of the call itself. ``HotPath`` answers these calls
before the app sees them — but only requests that are well-formed and authorised. The FastAPI
app stays the reference: every other request (no or unknown token, a missing role, bad input,
a body over the size limit, a repeated or unusual header, a body that is not plain UTF-8 JSON,
any other route) goes to it unchanged — with its body replayed when the hot path had read it
— so every error reply keeps exactly the shape the app gives it.

What the hot path accepts, the app accepts too, with the same values: it validates with the
same pydantic models (python mode, as FastAPI does after parsing the JSON) and identifier
patterns, takes only the header forms FastAPI reads the same way, and computes the reply with
the same functions as the routes (``engine.api.checkout``). So both answer such a request with
the same status, headers and body, and count it in the same metrics under the same route
template. A bug (an exception other than the ones the app maps to a reply) gets the app's 500
reply and is re-raised for the server to log, as the app does.
"""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine import metrics
from engine.api import checkout
from engine.api.auth import Role, TokenTable
from engine.api.errors import OrjsonResponse, error_response, runtime_error_reply
from engine.api.models import ExtendIn, ReservationIn
from engine.domain.ids import SHORT_ID_PATTERN, is_valid_id

_RESERVATIONS = "/v1/reservations"
_ONE_RESERVATION = "/v1/reservations/"
_ONE_ATP = "/v1/atp/"

#: The app's route templates of the calls served here (the metrics' ``route`` label).
TEMPLATES = {
    "hold": _RESERVATIONS,
    "read": _ONE_RESERVATION + "{rid}",
    "confirm": _ONE_RESERVATION + "{rid}/confirm",
    "release": _ONE_RESERVATION + "{rid}/release",
    "extend": _ONE_RESERVATION + "{rid}/extend",
    "atp": _ONE_ATP + "{sku}",
}

_AUTHORIZATION = b"authorization"
_CONTENT_TYPE = b"content-type"
_CONTENT_LENGTH = b"content-length"
_IDEMPOTENCY_KEY = b"idempotency-key"
_WANTED = frozenset({_AUTHORIZATION, _CONTENT_TYPE, _CONTENT_LENGTH, _IDEMPOTENCY_KEY})

# ``?location=<id>`` and nothing else: ids need no percent-encoding, so the raw query string
# holds the value FastAPI would decode.
Body = TypeVar("Body", bound=BaseModel)

_LOCATION_QUERY = re.compile(rb"location=(" + SHORT_ID_PATTERN[1:-1].encode() + rb")\Z")


def request_headers(scope: Scope) -> dict[bytes, bytes] | None:
    """The headers the hot path reads (lower-case names), or None when one of them is repeated
    (which value counts is then the app's business)."""
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in _WANTED:
            if name in found:
                return None
            found[name] = value
    return found


def bearer_token(headers: dict[bytes, bytes]) -> str | None:
    """The token of ``Authorization: Bearer <token>`` when FastAPI's ``HTTPBearer`` reads the
    same token from it (scheme in any case, one space, no surrounding blanks); else None."""
    raw = headers.get(_AUTHORIZATION)
    if raw is None or len(raw) <= 7 or raw[:7].lower() != b"bearer ":
        return None
    token = raw[7:].decode("latin-1")  # how Starlette decodes header values
    if token != token.strip() or " " in token:
        return None
    return token


def is_json(headers: dict[bytes, bytes]) -> bool:
    """True for ``Content-Type: application/json`` (parameters such as charset allowed)."""
    value = headers.get(_CONTENT_TYPE)
    return value is not None and value.split(b";", 1)[0].strip().lower() == b"application/json"


def body_may_fit(headers: dict[bytes, bytes], max_bytes: int) -> bool:
    """False when a ``Content-Length`` declares more than ``max_bytes`` or is not a plain decimal
    (the app's size limit then decides)."""
    value = headers.get(_CONTENT_LENGTH)
    return value is None or (value.isdigit() and int(value) <= max_bytes)


def replaying(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that first hands out ``messages`` (already read), then reads on."""
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


def valid_body(raw: bytes, model: type[Body]) -> Body | None:
    """``raw`` as ``model`` when it is JSON the app reads the same way and it validates; else None.

    orjson refuses what ``json.loads`` would read differently or not at all (UTF-16/32, NaN,
    integers beyond 64 bits, lone surrogates): those go to the app, the reference.
    """
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    try:
        return model.model_validate(data)
    except ValidationError:
        return None


class HotPath:
    """Serves the checkout calls over ``state`` (the app's ``app.state``) and hands every other
    request to ``app`` (the FastAPI app's own ASGI entry)."""

    def __init__(self, app: ASGIApp, state: Any, max_body_bytes: int) -> None:
        self.app = app
        self.state = state
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        path: str = scope["path"]
        if path == _RESERVATIONS:
            if method == "POST":
                await self._hold(scope, receive, send)
                return
        elif path.startswith(_ONE_RESERVATION):
            rid, slash, op = path[len(_ONE_RESERVATION):].partition("/")
            if is_valid_id("reservation_id", rid):
                if not slash and method == "GET":
                    await self._reservation_call(scope, receive, send, "read", rid)
                    return
                if slash and method == "POST" and op in ("confirm", "release"):
                    await self._reservation_call(scope, receive, send, op, rid)
                    return
                if slash and method == "POST" and op == "extend":
                    await self._extend(scope, receive, send, rid)
                    return
        elif path.startswith(_ONE_ATP) and method == "GET":
            await self._atp(scope, receive, send, path[len(_ONE_ATP):])
            return
        await self.app(scope, receive, send)

    def _allowed(self, headers: dict[bytes, bytes], role: Role) -> bool:
        token = bearer_token(headers)
        if token is None:
            return False
        tokens: TokenTable = self.state.tokens
        roles = tokens.roles_for(token)
        return roles is not None and role in roles

    def _json_call_allowed(self, headers: dict[bytes, bytes] | None) -> bool:
        return (
            headers is not None
            and is_json(headers)
            and body_may_fit(headers, self.max_body_bytes)
            and self._allowed(headers, Role.RESERVE)
        )

    async def _read_body(self, receive: Receive) -> tuple[bytes | None, list[Message]]:
        """The whole body and the messages it came in; None for the body when the client left
        or the body passed the size limit (the app then says what follows, and its size limit
        refuses the body at the same point)."""
        messages: list[Message] = []
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return None, messages
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_body_bytes:
                return None, messages
            more = message.get("more_body", False)
        return b"".join(chunks), messages

    async def _hold(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        headers = request_headers(scope)
        rid = "" if headers is None else headers.get(_IDEMPOTENCY_KEY, b"").decode("latin-1")
        if not self._json_call_allowed(headers) or not is_valid_id("reservation_id", rid):
            await self.app(scope, receive, send)
            return
        raw, messages = await self._read_body(receive)
        body = None if raw is None else valid_body(raw, ReservationIn)
        if body is None:
            await self.app(scope, replaying(messages, receive), send)
            return
        await self._reply(scope, receive, send, "hold", started, checkout.hold(self.state, rid, body))

    async def _extend(self, scope: Scope, receive: Receive, send: Send, rid: str) -> None:
        started = time.perf_counter()
        if not self._json_call_allowed(request_headers(scope)):
            await self.app(scope, receive, send)
            return
        raw, messages = await self._read_body(receive)
        body = None if raw is None else valid_body(raw, ExtendIn)
        if body is None:
            await self.app(scope, replaying(messages, receive), send)
            return
        call = checkout.lifecycle(self.state, "extend", rid, body.ttl_seconds)
        await self._reply(scope, receive, send, "extend", started, call)

    async def _reservation_call(self, scope: Scope, receive: Receive, send: Send, op: str, rid: str) -> None:
        started = time.perf_counter()
        headers = request_headers(scope)
        role = Role.READ if op == "read" else Role.RESERVE
        if headers is None or not body_may_fit(headers, self.max_body_bytes) or not self._allowed(
            headers, role
        ):
            await self.app(scope, receive, send)
            return
        if op == "read":
            call = checkout.read_reservation(self.state, rid)
        else:
            call = checkout.lifecycle(self.state, "confirm" if op == "confirm" else "release", rid)
        await self._reply(scope, receive, send, op, started, call)

    async def _atp(self, scope: Scope, receive: Receive, send: Send, sku: str) -> None:
        started = time.perf_counter()
        query: bytes = scope.get("query_string", b"")
        found = _LOCATION_QUERY.match(query) if query else None
        headers = request_headers(scope)
        if (
            not is_valid_id("sku", sku)
            or (query and found is None)
            or headers is None
            or not body_may_fit(headers, self.max_body_bytes)
            or not self._allowed(headers, Role.READ)
        ):
            await self.app(scope, receive, send)
            return
        location = found.group(1).decode("ascii") if found is not None else None
        if location is not None and not is_valid_id("location", location):
            await self.app(scope, receive, send)  # its 422 says why
            return
        await self._reply(scope, receive, send, "atp", started, checkout.position(self.state, sku, location))

    async def _reply(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        name: str,
        started: float,
        call: Awaitable[OrjsonResponse],
    ) -> None:
        method: str = scope["method"]
        status = 500
        try:
            try:
                response = await call
            except Exception as exc:
                reply = runtime_error_reply(exc, method, scope["path"])
                if reply is None:  # a bug: the app's 500 reply, and the server logs the traceback
                    await error_response(500, "internal", "unexpected server error")(scope, receive, send)
                    raise
                response = reply
            status = response.status_code
            await response(scope, receive, send)
        finally:
            metrics.observe_http(TEMPLATES[name], method, status, time.perf_counter() - started)
