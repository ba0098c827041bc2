"""Redis clients built from the settings (URL, Cluster mode, credentials, TLS CA).

Used by the API (async) and the ``atp`` command, the flow, the relay and the observer (sync).
They pass ``engine.settings.Settings``; this module reads only the fields of ``RedisSettings``. Replies stay bytes; the
store decodes what it reads.

A command that fails on a broken connection is sent once more, at once, on a new connection
(``RECONNECT_RETRIES``; a Redis Cluster client keeps its own policy, see below): a connection
the pool kept across a Redis restart fails on first use, and that must not reach the caller as
an error once Redis is back. While Redis is down the second attempt fails as fast as the
first, so callers still get their error (the API's 503) without delay. ``UNREACHABLE`` lists what the clients raise when Redis cannot be reached.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import hiredis
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.connection import Encoder, HiredisRespSerializer, PythonRespSerializer
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    ClusterDownError,
    RedisClusterUnreachableError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry


class RedisSettings(Protocol):
    """What a Redis client is built from (``engine.settings.Settings`` has these fields)."""

    redis_url: str
    redis_cluster: bool
    redis_username: str | None
    redis_password: str | None
    redis_tls_ca: str | None

_SOCKET_TIMEOUT_S = 5.0
#: Connections the API keeps to one Redis; a burst beyond waits up to _POOL_WAIT_S for one.
POOL_SIZE = 128
_POOL_WAIT_S = 5.0


#: Times a command is sent again after a connection error, with no wait in between.
RECONNECT_RETRIES = 1

#: What the clients raise when Redis (or every node of the Cluster, or the node owning a key's
#: slot) cannot be reached: connection errors (refused, reset, the pool exhausted), timeouts, and
#: the Cluster client's own ``RedisClusterUnreachableError`` (no node answered a topology
#: refresh — also when the client is built) and ``SlotNotCoveredError``, which are not
#: ``RedisError`` subclasses.
UNREACHABLE: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    RedisClusterUnreachableError,
    SlotNotCoveredError,
)


#: What a long-running loop waits out rather than fails on: Redis away or a Cluster between
#: topologies (``retrying``).
TRANSIENT: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, ClusterDownError, TryAgainError)

log = logging.getLogger(__name__)
T = TypeVar("T")


def retrying(fn: Callable[[], T], retry_for_s: float) -> T:
    """``fn()``, called again after a ``TRANSIENT`` error with waits from 0.05 s doubling to 2 s,
    each logged, until ``retry_for_s`` seconds have passed: then the error is raised."""
    deadline = time.monotonic() + retry_for_s
    delay = 0.05
    while True:
        try:
            return fn()
        except TRANSIENT as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("Redis unavailable (%s); retrying in %.2fs", exc, delay)
            time.sleep(delay)
            delay = min(2.0, delay * 2)


class RedisNotConfigured(ValueError):
    """``ATP_REDIS_URL`` is empty where a running Redis is needed."""


def _worth_resending(error: Exception) -> bool:
    # Wrong credentials or missing ACL rights answer the same on a new connection.
    return not isinstance(error, (AuthenticationError, AuthorizationError))


# Resending is safe, because every command the engine sends may run twice. A connection error
# raised before the command went out (connection refused, a socket the server closed while it
# sat in the pool — the restart case) means it never ran; one raised while waiting for the reply
# (the connection dropped mid-command) leaves it unknown, so the resend may run it again, and:
#   * a hold is keyed by its reservation id: the hold script finds the line and answers
#     `duplicate` (hold_one in engine/store/lua/lib.lua), and the reservation-index claim sent
#     with it is a SET NX — the caller gets the reservation, as when a client repeats the call
#     with the same Idempotency-Key (201, Idempotent-Replayed: true);
#   * confirm and release answer `duplicate` for a line already in that state, rollback
#     `not_found` for a line already gone; extend sets the expiry from now again, revert and a
#     policy replace set the same values again (engine/store/lua/ops.lua, reservation.lua);
#   * supply commands are deduplicated by event id and input offset (engine/store/lua/apply.lua),
#     and the sweep expires and purges only what is due.
# Only connection errors are resent on a standalone Redis: a timeout means a slow or hung
# server, where a resend would double the wait.
def _standalone_retry() -> Retry:
    return Retry(NoBackoff(), RECONNECT_RETRIES, supported_errors=(RedisConnectionError,),
                 is_retryable=_worth_resending)


def _async_standalone_retry() -> AsyncRetry:
    return AsyncRetry(NoBackoff(), RECONNECT_RETRIES, supported_errors=(RedisConnectionError,),
                      is_retryable=_worth_resending)


# The Cluster client takes its retry policy as its own argument (it refuses one meant for the
# node connections, which it builds without retries) and applies it by error type: connection
# errors and timeouts, CLUSTERDOWN and an uncovered slot, refreshing the topology between
# attempts; MOVED/ASK redirections are not counted. Its default (10 attempts, growing waits)
# kept each API call to a Cluster whose nodes were all down waiting 1-2 s before it failed; one
# immediate resend fails it within milliseconds and still gets past a node's stale connections
# after a restart. The sync client keeps the default: the flow, which uses it, rides out short
# failovers on it, and the CLI fails at once anyway (the client connects as it is built).
def _async_cluster_retry() -> AsyncRetry:
    return AsyncRetry(NoBackoff(), RECONNECT_RETRIES)


_PLAIN_ARGS = frozenset({str, bytes, int})


class PlainArgsPacker(HiredisRespSerializer):
    """redis-py's hiredis packer, with commands of only ``str`` / ``bytes`` / ``int`` arguments (a
    script call: the flow sends a dozen keys and eight arguments per command) handed to hiredis
    whole: redis-py's packer calls its encoder once per argument in Python, which cost the flow
    more than any step of its own. Anything else (floats, bools, ``None``, memoryviews, a
    two-word command name) goes through redis-py's packer, so its errors and encodings stay."""

    def __init__(self) -> None:
        # what a connection of the clients below builds for itself (utf-8, strict, bytes replies)
        encoder = Encoder("utf-8", "strict", False)
        super().__init__(fallback=PythonRespSerializer(6000, encoder.encode).pack, encode=encoder.encode)

    def pack(self, *args: Any) -> list[bytes]:
        name = args[0]
        if (b" " not in name if isinstance(name, bytes) else " " not in name) and all(
            type(a) in _PLAIN_ARGS for a in args
        ):
            return [hiredis.pack_command(args)]
        return super().pack(*args)


def _kwargs(settings: RedisSettings) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "socket_connect_timeout": _SOCKET_TIMEOUT_S,
        "socket_timeout": _SOCKET_TIMEOUT_S,
        "health_check_interval": 30,
    }
    if settings.redis_username:
        kwargs["username"] = settings.redis_username
    if settings.redis_password:
        kwargs["password"] = settings.redis_password
    if settings.redis_tls_ca:
        kwargs["ssl_ca_certs"] = settings.redis_tls_ca
    return kwargs


def _url(settings: RedisSettings) -> str:
    if not settings.redis_url:
        raise RedisNotConfigured("no Redis configured: set ATP_REDIS_URL (e.g. redis://127.0.0.1:6379/0)")
    return settings.redis_url


def sync_redis(settings: RedisSettings) -> Any:
    """A ``redis.Redis`` (or ``RedisCluster`` when ``redis_cluster``) for ``settings.redis_url``.

    Raises ``RedisNotConfigured`` without a URL. A ``RedisCluster`` reads the topology as it
    is built, so building one raises ``RedisClusterUnreachableError`` (one of ``UNREACHABLE``)
    when no node answers.
    """
    url = _url(settings)
    kwargs = _kwargs(settings)
    if settings.redis_cluster:
        kwargs.pop("health_check_interval")
        return redis.RedisCluster.from_url(url, **kwargs)
    # (the Cluster client takes no packer: its node connections keep redis-py's)
    return redis.Redis.from_url(url, retry=_standalone_retry(), command_packer=PlainArgsPacker(), **kwargs)


def async_redis(settings: RedisSettings) -> Any:
    """The ``redis.asyncio`` twin of ``sync_redis``; it connects on its first command."""
    url = _url(settings)
    kwargs = _kwargs(settings)
    if settings.redis_cluster:
        kwargs.pop("health_check_interval")
        return aioredis.RedisCluster.from_url(url, retry=_async_cluster_retry(), **kwargs)
    # A blocking pool: a checkout burst waits briefly for a connection instead of failing.
    # The retry policy goes to the pool's connections: a client given a pool uses theirs.
    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=POOL_SIZE, timeout=_POOL_WAIT_S, retry=_async_standalone_retry(), **kwargs
    )
    return aioredis.Redis(connection_pool=pool)
