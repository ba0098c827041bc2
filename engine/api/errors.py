"""Every error the API returns, as an RFC 9457 problem (``application/problem+json``)::

    {"type": "urn:atp-engine:problem:<code>", "title": ..., "status": 409, "detail": ...,
     "error": "<code>", ...code-specific members}

Callers branch on ``error`` (a stable, machine-readable code, the last part of ``type``);
``title`` is the code's fixed summary, ``detail`` this occurrence's explanation, for humans.
Bad input is always a 4xx. A backend that cannot be reached (Redis down, broker not
answering) is a 503 with ``retry_after`` seconds and a ``Retry-After`` header, so clients
know the call may be retried.

Codes: ``missing_idempotency_key`` / ``bad_request`` 400 · ``unauthorized`` 401 ·
``forbidden`` 403 · ``not_found`` 404 · ``method_not_allowed`` 405 · ``refused`` /
``not_allowed`` 409 · ``payload_too_large`` 413 · ``uri_too_long`` 414 ·
``unsupported_media_type`` 415 · ``invalid_request`` / ``idempotency_conflict`` 422 ·
``headers_too_large`` 431 · ``internal`` 500 (a bug) · ``unavailable`` 503.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from redis.exceptions import (
    CrossSlotTransactionError,
    InvalidPipelineStack,
    RedisClusterException,
    RedisError,
)
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

log = logging.getLogger(__name__)

#: Seconds a client should wait before retrying after a 503.
RETRY_AFTER_S = 1

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    503: "unavailable",
}


class OrjsonResponse(JSONResponse):
    """A JSON response serialised with orjson (non-str dict keys allowed)."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)


PROBLEM_JSON = "application/problem+json"
#: The problem type of an error code: a URN, since it names a kind of problem rather than a page.
PROBLEM_TYPE_PREFIX = "urn:atp-engine:problem:"


class ProblemResponse(OrjsonResponse):
    """An RFC 9457 problem reply."""

    media_type = PROBLEM_JSON


def problem(status: int, code: str, detail: Any, **extra: Any) -> dict[str, Any]:
    """The problem body of an error: the RFC 9457 members, then ``error`` (the code) and the
    code's own members."""
    return {
        "type": PROBLEM_TYPE_PREFIX + code,
        "title": code.replace("_", " ").capitalize(),
        "status": status,
        "detail": detail,
        "error": code,
        **extra,
    }


def problem_bytes(status: int, code: str, detail: Any, **extra: Any) -> bytes:
    """``problem(...)`` serialised, for the replies sent below the ASGI app (engine.api.edge)."""
    return orjson.dumps(problem(status, code, detail, **extra))


class ApiError(Exception):
    """An error reply: HTTP ``status``, machine-readable ``code``, human ``detail``, extra fields."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers
        self.extra = extra

    def response(self) -> OrjsonResponse:
        """The problem response for this error."""
        return error_response(self.status, self.code, self.detail, self.headers, **self.extra)


class BackendUnavailable(ApiError):
    """A dependency (Redis, the broker) did not answer: 503, retry later."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            503,
            "unavailable",
            detail,
            headers={"Retry-After": str(RETRY_AFTER_S)},
            retry_after=RETRY_AFTER_S,
        )


def error_response(
    status: int, code: str, detail: Any, headers: dict[str, str] | None = None, **extra: Any
) -> OrjsonResponse:
    """The problem response of an error (``problem``)."""
    return ProblemResponse(problem(status, code, detail, **extra), status_code=status, headers=headers)


def validation_reasons(errors: Any) -> list[dict[str, Any]]:
    """Pydantic/FastAPI validation errors as ``[{"field", "reason", "message"}]``.

    ``field`` is a dotted path (``body.lines.0.qty``, ``header.idempotency-key``); ``reason``
    is pydantic's error type (``missing``, ``greater_than_equal``, ``string_pattern_mismatch``…).
    The offending input is left out: it may be large or sensitive.
    """
    reasons: list[dict[str, Any]] = []
    for err in errors:
        loc = err.get("loc", ())
        reasons.append(
            {
                "field": ".".join(str(p) for p in loc),
                "reason": str(err.get("type", "invalid")),
                "message": str(err.get("msg", "invalid value")),
            }
        )
    return reasons


def invalid_request(reasons: list[dict[str, Any]]) -> OrjsonResponse:
    """A 422 ``invalid_request`` listing every reason."""
    first = reasons[0] if reasons else {"field": "", "message": "invalid request"}
    where = f"{first['field']}: " if first.get("field") else ""
    return error_response(422, "invalid_request", f"{where}{first['message']}", reasons=reasons)


async def _on_validation(request: Request, exc: Exception) -> OrjsonResponse:
    assert isinstance(exc, RequestValidationError)
    reasons = validation_reasons(exc.errors())
    if any(r["field"] == "header.Idempotency-Key" and r["reason"] == "missing" for r in reasons):
        # no key at all is a malformed request (400, as the IETF Idempotency-Key draft says);
        # a key that is there but invalid stays a 422 like any other invalid value
        return error_response(400, "missing_idempotency_key",
                              "header.Idempotency-Key: required (the reservation id)")
    return invalid_request(reasons)


async def _on_http(request: Request, exc: Exception) -> OrjsonResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        # FastAPI's answer to a body it cannot decode (not UTF-8, broken multipart): that is
        # invalid input like any other, so it gets the same 422 shape.
        return invalid_request(
            [{"field": "body", "reason": "body_unreadable", "message": str(exc.detail)}]
        )
    code = _STATUS_CODES.get(exc.status_code, "error")
    detail = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, detail, getattr(exc, "headers", None))


def _redis_unavailable(exc: Exception, method: str, path: str) -> OrjsonResponse:
    # The reason goes to the log, not to the caller: it may name hosts. Logged as type and
    # message: redis-py's repr of its errors leaves the message out.
    log.warning("redis error on %s %s: %s: %s", method, path, type(exc).__name__, exc)
    return BackendUnavailable("the state store is unavailable; retry later").response()


def _backend_unavailable(exc: Exception, method: str, path: str) -> OrjsonResponse:
    log.warning("backend connection error on %s %s: %s: %s", method, path, type(exc).__name__, exc)
    return BackendUnavailable("a backend is unavailable; retry later").response()


def _api_error(exc: Exception, method: str, path: str) -> OrjsonResponse:
    assert isinstance(exc, ApiError)
    return exc.response()


Reply = Callable[[Exception, str, str], OrjsonResponse]

#: Errors a route may raise once its input is valid, and their replies; None marks a bug (the
#: app's 500) under a class that has a reply. Timeouts and refused connections surface as
#: OSError subclasses in some clients.
_RUNTIME_REPLIES: dict[type[Exception], Reply | None] = {
    ApiError: _api_error,
    RedisError: _redis_unavailable,
    # The Redis Cluster client's own errors are not RedisErrors. It raises them when no node
    # answers (RedisClusterUnreachableError, on the first command after every node went down
    # or as the client connects), when no node serves a key's slot, when the nodes disagree
    # on the slots or refuse the credentials: the store is unavailable, as for a standalone
    # Redis that refuses connections.
    RedisClusterException: _redis_unavailable,
    # ...except those only a bug in the engine raises: a transaction across slots, a pipeline
    # reply of the wrong length.
    CrossSlotTransactionError: None,
    InvalidPipelineStack: None,
    ConnectionError: _backend_unavailable,
    TimeoutError: _backend_unavailable,
}


def runtime_error_reply(exc: Exception, method: str, path: str) -> OrjsonResponse | None:
    """The reply the app gives ``exc`` raised by a route or the hot path — an ``ApiError``, or a
    503 when Redis or another backend failed — found like Starlette finds a handler (the closest
    class in the exception's MRO). None for anything else: a bug, answered by the app's 500
    handler."""
    for cls in type(exc).__mro__:
        if cls in _RUNTIME_REPLIES:
            reply = _RUNTIME_REPLIES[cls]
            return None if reply is None else reply(exc, method, path)
    return None


async def _on_runtime_error(request: Request, exc: Exception) -> OrjsonResponse:
    reply = runtime_error_reply(exc, request.method, request.url.path)
    if reply is None:
        # A bug under a mapped class (a cross-slot transaction under RedisClusterException):
        # on to the app's 500 handler, which answers and lets the server log the traceback.
        raise exc
    return reply


async def _on_unexpected(request: Request, exc: Exception) -> OrjsonResponse:
    # A bug, not bad input: answered as JSON too; Starlette logs the traceback.
    return error_response(500, "internal", "unexpected server error")


def document_problems(openapi: dict[str, Any]) -> None:
    """Move every 4xx/5xx reply of an OpenAPI document from ``application/json`` to
    ``application/problem+json``, what the app sends (FastAPI files every model under the
    route's own media type)."""
    for operations in openapi.get("paths", {}).values():
        for operation in operations.values():
            for status, reply in operation.get("responses", {}).items():
                content = reply.get("content", {})
                if status[:1] in ("4", "5") and "application/json" in content:
                    content[PROBLEM_JSON] = content.pop("application/json")


def install_error_handlers(app: FastAPI) -> None:
    """Route every error the app can raise to a JSON reply of the shape above."""
    for cls, reply in _RUNTIME_REPLIES.items():
        if reply is not None:
            app.add_exception_handler(cls, _on_runtime_error)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    app.add_exception_handler(Exception, _on_unexpected)
