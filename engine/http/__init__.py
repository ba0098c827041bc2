"""The HTTP client of the API, for checkout services: ``AtpHttpClient`` (blocking) and
``AsyncAtpHttpClient`` (asyncio), with typed replies and errors and safe retries.

    from engine.http import AtpHttpClient

    with AtpHttpClient("http://127.0.0.1:8000", token) as atp:
        result = atp.hold([("SKU-1", 2)], ttl_seconds=600)
        if result.ok:
            atp.confirm(result.reservation_id)

``engine.reservations.client`` is a different thing: the store client the API itself runs on (Redis).
"""

from engine.http.client import AsyncAtpHttpClient, AtpHttpClient
from engine.http.errors import (
    ApiUnreachable,
    AtpHttpError,
    Conflict,
    Forbidden,
    IdempotencyConflict,
    InvalidRequest,
    NotAllowed,
    NotFound,
    ServerError,
    Unauthorized,
    Unavailable,
    UnexpectedReply,
)
from engine.http.plan import API_TOKEN_ENV, API_URL_ENV, NO_RETRY, RetryPolicy, new_reservation_id
from engine.http.types import (
    Allocation,
    Atp,
    Guard,
    HoldResult,
    LocationFigures,
    Refused,
    RefusedLine,
    Reservation,
    ReservationLine,
)

__all__ = [
    "API_TOKEN_ENV",
    "API_URL_ENV",
    "NO_RETRY",
    "Allocation",
    "ApiUnreachable",
    "AsyncAtpHttpClient",
    "AtpHttpClient",
    "AtpHttpError",
    "Atp",
    "Conflict",
    "Forbidden",
    "Guard",
    "HoldResult",
    "IdempotencyConflict",
    "InvalidRequest",
    "LocationFigures",
    "NotAllowed",
    "NotFound",
    "Refused",
    "RefusedLine",
    "Reservation",
    "ReservationLine",
    "RetryPolicy",
    "ServerError",
    "Unauthorized",
    "Unavailable",
    "UnexpectedReply",
    "new_reservation_id",
]
