"""The checkout calls on a short path inside the app: hold, confirm, release, extend, read a
reservation, the ATP of one SKU.

Why: under a flash sale, FastAPI's routing (a regular expression per route), dependency solving
and request parsing cost several times the work of the call itself. ``HotPath`` is a pure-ASGI
middleware around the app's router — inside Starlette's chain, so the server-error handler, the
exception handlers, the body size limit and the request metrics are the app's own — that
answers those calls itself when a request is well-formed and authorised. Every other request (no
or unknown token, a missing role, bad input, a repeated or unusual header, a body that is not
plain UTF-8 JSON, any other route) goes on to the router unchanged, with its body replayed when
it was read, so every error reply keeps the shape the app gives it.

What it serves, the routes serve the same way: it finds them in the router by name
(``SERVED``), reads the same parameters, validates with the same pydantic models and identifier
patterns, takes only the header forms FastAPI reads the same way, calls the same functions
(``engine.api.checkout``) and marks the request with the matched route, so the metrics count it
under the route's template. ``hot_routes`` refuses to build when a served route has a parameter
or dependency this module does not read, so a route cannot gain one and be served without it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ValidationError
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.api import checkout
from engine.api.auth import Role, TokenTable
from engine.api.errors import OrjsonResponse
from engine.api.models import ExtendIn, ReservationIn
from engine.domain.ids import SHORT_ID_PATTERN, is_valid_id

_AUTHORIZATION = b"authorization"
_CONTENT_TYPE = b"content-type"
_IDEMPOTENCY_KEY = b"idempotency-key"
_WANTED = frozenset({_AUTHORIZATION, _CONTENT_TYPE, _IDEMPOTENCY_KEY})

Body = TypeVar("Body", bound=BaseModel)

# ``?location=<id>`` and nothing else: ids need no percent-encoding, so the raw query string
# holds the value FastAPI would decode.
_LOCATION_QUERY = re.compile(rb"location=(" + SHORT_ID_PATTERN[1:-1].encode() + rb")\Z")


@dataclass(frozen=True)
class Served:
    """What the short path reads of one route: its method, path / query / header parameters, body
    model and the role its one dependency requires."""

    method: str
    path: tuple[str, ...] = ()
    query: tuple[str, ...] = ()
    headers: tuple[str, ...] = ()
    body: type[BaseModel] | None = None
    role: Role = Role.READ


#: The routes served here, by route name.
SERVED: dict[str, Served] = {
    "create_reservation": Served("POST", headers=("Idempotency-Key",), body=ReservationIn, role=Role.RESERVE),
    "get_reservation": Served("GET", path=("rid",)),
    "confirm_reservation": Served("POST", path=("rid",), role=Role.RESERVE),
    "release_reservation": Served("POST", path=("rid",), role=Role.RESERVE),
    "extend_reservation": Served("POST", path=("rid",), body=ExtendIn, role=Role.RESERVE),
    "get_atp": Served("GET", path=("sku",), query=("location",)),
}


def _reads(route: APIRoute) -> Served:
    """What ``route`` takes, in ``Served`` terms; ``ValueError`` for anything a ``Served`` cannot
    say (cookies, several methods, several bodies, any dependency but one role check)."""
    d = route.dependant
    checks = [s for s in d.dependencies if s.call is not None]
    roles = [getattr(s.call, "role", None) for s in checks]
    if (len(route.methods) != 1 or d.cookie_params or len(d.body_params) > 1 or len(checks) != 1
            or roles[0] is None or any(not isinstance(x.call, HTTPBearer) for x in checks[0].dependencies)):
        raise ValueError(f"route {route.name!r} takes more than the hot path reads")
    body = d.body_params[0].field_info.annotation if d.body_params else None
    return Served(
        method=next(iter(route.methods)),
        path=tuple(p.name for p in d.path_params),
        query=tuple(p.name for p in d.query_params),
        headers=tuple(p.alias for p in d.header_params),
        body=body,
        role=roles[0],
    )


@dataclass(frozen=True)
class HotRoute:
    """One served route and the two parts of its template around its one path parameter
    (``head`` ``{rid}`` ``tail``; a template without one is all ``head``)."""

    route: APIRoute
    served: Served
    head: str
    tail: str

    def match(self, method: str, path: str) -> str | None:
        """The path parameter's value when ``method`` and ``path`` are this route's ('' for a
        route without one); None otherwise."""
        if method != self.served.method:
            return None
        if not self.served.path:
            return "" if path == self.head else None
        if not (path.startswith(self.head) and path.endswith(self.tail)):
            return None
        value = path[len(self.head):len(path) - len(self.tail)]
        return value if value and "/" not in value else None


def hot_routes(routes: Iterable[BaseRoute]) -> list[HotRoute]:
    """The routes of ``SERVED`` among ``routes``; ``ValueError`` when one is missing or takes
    other parameters or dependencies than ``SERVED`` says it does."""
    by_name = {r.name: r for r in routes if isinstance(r, APIRoute)}
    found = []
    for name, served in SERVED.items():
        route = by_name.get(name)
        if route is None:
            raise ValueError(f"the hot path serves {name!r}, which the app has no route for")
        takes = _reads(route)
        if takes != served:
            raise ValueError(f"route {name!r} takes {takes}, the hot path reads {served}")
        head, _, tail = route.path.partition("{")
        found.append(HotRoute(route, served, head, tail.partition("}")[2]))
    return found


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


async def _read_body(receive: Receive) -> tuple[bytes | None, list[Message]]:
    """The whole body and the messages it came in; None for the body when the client left. (The
    app's size limit sits outside: a body past it ends in its 413 from ``receive``.)"""
    messages: list[Message] = []
    chunks: list[bytes] = []
    more = True
    while more:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return None, messages
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks), messages


@dataclass(frozen=True)
class Inputs:
    """A served request's checked inputs."""

    value: str  # the path parameter ('' for none)
    key: str  # the Idempotency-Key ('' for none)
    body: Any  # the body model (None for none)
    location: str | None  # the ``location`` query parameter


#: What each served route does with its checked inputs (``engine.api.checkout``, as the route).
_CALLS: dict[str, Callable[[Any, Inputs], Awaitable[OrjsonResponse]]] = {
    "create_reservation": lambda state, i: checkout.hold(state, i.key, i.body),
    "get_reservation": lambda state, i: checkout.read_reservation(state, i.value),
    "confirm_reservation": lambda state, i: checkout.lifecycle(state, "confirm", i.value),
    "release_reservation": lambda state, i: checkout.lifecycle(state, "release", i.value),
    "extend_reservation": lambda state, i: checkout.lifecycle(state, "extend", i.value, i.body.ttl_seconds),
    "get_atp": lambda state, i: checkout.position(state, i.value, i.location),
}

#: Which identifier pattern each path parameter follows (``engine.domain.ids``).
_PATH_IDS = {"rid": "reservation_id", "sku": "sku"}


class HotPath:
    """Serves the routes of ``SERVED`` over ``state`` (the app's ``app.state``) and hands every
    other request to ``app`` (the router's own ASGI entry)."""

    def __init__(self, app: ASGIApp, state: Any, routes: Iterable[BaseRoute]) -> None:
        self.app = app
        self.state = state
        self.routes = hot_routes(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            method: str = scope["method"]
            path: str = scope["path"]
            for hot in self.routes:
                value = hot.match(method, path)
                if value is not None:
                    if await self._serve(hot, value, scope, receive, send):
                        return
                    break
        await self.app(scope, receive, send)

    def _allowed(self, headers: dict[bytes, bytes], role: Role) -> bool:
        token = bearer_token(headers)
        if token is None:
            return False
        tokens: TokenTable = self.state.tokens
        roles = tokens.roles_for(token)
        return roles is not None and role in roles

    async def _serve(self, hot: HotRoute, value: str, scope: Scope, receive: Receive, send: Send) -> bool:
        """Answer the request, or return False (nothing read) for the router to answer it; a
        body read and found wanting goes on to the router here, replayed."""
        served = hot.served
        headers = request_headers(scope)
        if headers is None or not self._allowed(headers, served.role):
            return False
        if served.path and not is_valid_id(_PATH_IDS[served.path[0]], value):
            return False
        location = None
        query: bytes = scope.get("query_string", b"")
        if query:
            found = _LOCATION_QUERY.match(query) if served.query else None
            if found is None:
                return False
            location = found.group(1).decode("ascii")
            if not is_valid_id("location", location):
                return False  # the router's 422 says why
        key = ""
        if served.headers:  # the only header a served route reads: the hold's Idempotency-Key
            key = headers.get(_IDEMPOTENCY_KEY, b"").decode("latin-1")
            if not is_valid_id("reservation_id", key):
                return False
        body = None
        if served.body is not None:
            if not is_json(headers):
                return False
            raw, messages = await _read_body(receive)
            body = None if raw is None else valid_body(raw, served.body)
            if body is None:
                await self.app(scope, replaying(messages, receive), send)
                return True
        scope["route"] = hot.route  # what the router would set: the metrics read its template
        response = await _CALLS[hot.route.name](self.state, Inputs(value, key, body, location))
        await response(scope, receive, send)
        return True
