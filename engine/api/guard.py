"""The FastAPI dependency that enforces bearer-token roles on a route."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from engine.api.auth import Role, TokenTable
from engine.api.errors import ApiError

# auto_error=False: a missing header is answered by ``require`` with our JSON 401, and the
# scheme still appears in the OpenAPI document.
_bearer = HTTPBearer(auto_error=False, description="API token; its sha256 is configured in settings")

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def require(role: Role) -> Callable[..., Awaitable[frozenset[Role]]]:
    """A dependency that passes when the request's token has ``role``; returns the token's roles.

    No token or an unknown token → 401 ``unauthorized``; a known token without the role →
    403 ``forbidden``. It runs before the route touches any state.
    """

    async def check(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
    ) -> frozenset[Role]:
        table: TokenTable = request.app.state.tokens
        if credentials is None or not credentials.credentials:
            raise ApiError(401, "unauthorized", "missing bearer token", headers=_CHALLENGE)
        roles = table.roles_for(credentials.credentials)
        if roles is None:
            raise ApiError(401, "unauthorized", "unknown bearer token", headers=_CHALLENGE)
        if role not in roles:
            raise ApiError(
                403, "forbidden", f"this token lacks the {role.value!r} role", required_role=role.value
            )
        return roles

    check.role = role  # type: ignore[attr-defined]  # what the hot path checks it against
    return check
