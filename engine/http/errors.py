"""The exceptions of the HTTP client, and how an error reply becomes one.

Every error the API returns carries a stable code in its ``error`` member, whether the body is
``application/json`` (``{"error", "detail", ...}``) or an RFC 9457 ``application/problem+json``
document (``{"type", "title", "status", "detail", "error", ...}``). The class is chosen by that
code first and by the HTTP status when the code is unknown or absent (a proxy's HTML page, a
newer server's new code), so callers can branch on classes or on ``exc.error``.

    AtpHttpError                       status, error, detail, body, attempts
    ├── InvalidRequest                 400 / 413 / 415 / 422 (``reasons`` per field)
    │   └── IdempotencyConflict        422: the key was used with other lines
    ├── Unauthorized                   401
    ├── Forbidden                      403: the token lacks the role
    ├── NotFound                       404
    ├── Conflict                       409
    │   └── NotAllowed                 409: the reservation's state forbids it (``state``)
    ├── ServerError                    5xx
    │   └── Unavailable                503, retried first (``retry_after``)
    │       └── ApiUnreachable         no answer at all (refused, reset, timed out)
    └── UnexpectedReply                a 2xx the client cannot read

A refused hold is not an exception: ``hold`` returns ``Refused``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from engine.http.types import Reservation


class AtpHttpError(Exception):
    """An answer (or the lack of one) the call cannot turn into its result.

    ``status`` is the HTTP status (None when no answer came), ``error`` the body's ``error``
    code (None when the body had none), ``detail`` the human text, ``body`` the parsed JSON
    object (or the text of a body that is not JSON), ``attempts`` how many requests were sent.
    """

    def __init__(
        self,
        status: int | None,
        error: str | None,
        detail: Any,
        body: Any = None,
        *,
        method: str = "",
        url: str = "",
        attempts: int = 1,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status = status
        self.error = error
        self.detail = detail
        self.body = body
        self.method = method
        self.url = url
        self.attempts = attempts
        self.headers: Mapping[str, str] = dict(headers or {})
        super().__init__(self._message())

    def _message(self) -> str:
        head = " ".join(str(p) for p in (self.status, self.error) if p is not None) or "no answer"
        where = f" ({self.method} {self.url})" if self.url else ""
        tries = f" after {self.attempts} attempts" if self.attempts > 1 else ""
        return f"{head}: {self.detail}{where}{tries}"

    def _member(self, name: str, default: Any = None) -> Any:
        return self.body.get(name, default) if isinstance(self.body, Mapping) else default


class InvalidRequest(AtpHttpError):
    """The request was refused as malformed (400, 413, 415, 422); sending it again won't help.

    ``reasons`` lists ``{field, reason, message}`` per problem when the API gave them."""

    @property
    def reasons(self) -> tuple[Mapping[str, Any], ...]:
        return tuple(r for r in self._member("reasons", ()) or () if isinstance(r, Mapping))


class IdempotencyConflict(InvalidRequest):
    """422 ``idempotency_conflict``: this reservation id was already used with other lines;
    nothing changed."""


class Unauthorized(AtpHttpError):
    """401: no token, or one the API does not know."""


class Forbidden(AtpHttpError):
    """403: the token lacks the role (``read`` / ``reserve`` / ``operate``)."""


class NotFound(AtpHttpError):
    """404: no such reservation (or no such route: check the base URL)."""


class Conflict(AtpHttpError):
    """409 with a code this client has no narrower class for."""


class NotAllowed(Conflict):
    """409 ``not_allowed``: the reservation's ``state`` forbids the call (confirm after release
    or expiry, extend of a committed hold…); ``reservation`` is the reservation as it is, when
    the API sent it."""

    @property
    def state(self) -> str | None:
        state = self._member("state")
        return None if state is None else str(state)

    @property
    def reservation(self) -> Reservation | None:
        body = self._member("reservation")
        return Reservation.from_body(body) if isinstance(body, Mapping) else None


class ServerError(AtpHttpError):
    """5xx: the API failed."""


class Unavailable(ServerError):
    """503 ``unavailable`` after the retries the policy allowed: a backend (Redis, the broker)
    is down or the server is at its connection limit. ``retry_after`` is the wait the API
    asked for, in seconds, when it gave one."""

    retry_after: float | None = None


class ApiUnreachable(Unavailable):
    """No answer: the connection was refused or reset, or timed out, on every attempt until the
    policy gave up. ``status`` and ``error`` are None; the last transport error is the
    ``__cause__``."""


class UnexpectedReply(AtpHttpError):
    """A success status whose body is not what the call returns (not JSON, a member missing)."""


_BY_CODE: dict[str, type[AtpHttpError]] = {
    "invalid_request": InvalidRequest,
    "missing_idempotency_key": InvalidRequest,
    "bad_request": InvalidRequest,
    "payload_too_large": InvalidRequest,
    "unsupported_media_type": InvalidRequest,
    "idempotency_conflict": IdempotencyConflict,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "not_found": NotFound,
    "not_allowed": NotAllowed,
    "unavailable": Unavailable,
}

_BY_STATUS: dict[int, type[AtpHttpError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: InvalidRequest,
    415: InvalidRequest,
    422: InvalidRequest,
    503: Unavailable,
}

#: Media types whose body is parsed as JSON (RFC 9457 problem details included).
_JSON_TYPES = ("application/json", "application/problem+json")


def is_json(content_type: str | None) -> bool:
    """True for ``application/json``, ``application/problem+json`` and other ``+json`` types."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media in _JSON_TYPES or media.endswith("+json")


def parse_body(content_type: str | None, content: bytes) -> Any:
    """The body as a JSON value when its type says JSON and it parses; else its text."""
    if is_json(content_type):
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError:
            pass
    return content.decode("utf-8", errors="replace")


def error_class(status: int | None, code: str | None) -> type[AtpHttpError]:
    """The exception class for an error reply: by ``code``, else by ``status``."""
    if code in _BY_CODE:
        return _BY_CODE[code]
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status is not None and status >= 500:
        return ServerError
    return AtpHttpError


def error_from_reply(
    status: int,
    headers: Mapping[str, str],
    content: bytes,
    *,
    method: str = "",
    url: str = "",
    attempts: int = 1,
    retry_after: float | None = None,
) -> AtpHttpError:
    """The exception for an error reply (``headers`` looked up case-insensitively by the caller's
    mapping, e.g. ``httpx.Headers``)."""
    body = parse_body(headers.get("content-type"), content)
    code: str | None = None
    detail: Any
    if isinstance(body, Mapping):
        raw_code = body.get("error")
        code = raw_code if isinstance(raw_code, str) else None
        detail = body.get("detail")
        if detail is None:
            detail = body.get("title")  # a problem document may leave detail out
    else:
        detail = body.strip()[:500] if isinstance(body, str) else body
    if detail in (None, ""):
        detail = f"HTTP {status}"
    cls = error_class(status, code)
    exc = cls(status, code, detail, body, method=method, url=url, attempts=attempts, headers=headers)
    if isinstance(exc, Unavailable):
        exc.retry_after = retry_after
        if retry_after is None and isinstance(body, Mapping) and isinstance(body.get("retry_after"), int | float):
            exc.retry_after = float(body["retry_after"])
    return exc
