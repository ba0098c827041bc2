"""Redis clients built from the settings (URL, Cluster mode, credentials, TLS CA).

Used by the API (async) and the ``atp`` command (sync). Replies stay bytes; the store
decodes what it reads.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis

from engine.settings import Settings

_SOCKET_TIMEOUT_S = 5.0
#: Connections the API keeps to one Redis; a burst beyond waits up to _POOL_WAIT_S for one.
POOL_SIZE = 128
_POOL_WAIT_S = 5.0


class RedisNotConfigured(ValueError):
    """``ATP_REDIS_URL`` is empty where a running Redis is needed."""


def _kwargs(settings: Settings) -> dict[str, Any]:
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


def _url(settings: Settings) -> str:
    if not settings.redis_url:
        raise RedisNotConfigured("no Redis configured: set ATP_REDIS_URL (e.g. redis://127.0.0.1:6379/0)")
    return settings.redis_url


def sync_redis(settings: Settings) -> Any:
    """A ``redis.Redis`` (or ``RedisCluster`` when ``redis_cluster``) for ``settings.redis_url``."""
    url = _url(settings)
    kwargs = _kwargs(settings)
    if settings.redis_cluster:
        kwargs.pop("health_check_interval")
        return redis.RedisCluster.from_url(url, **kwargs)
    return redis.Redis.from_url(url, **kwargs)


def async_redis(settings: Settings) -> Any:
    """The ``redis.asyncio`` twin of ``sync_redis``."""
    url = _url(settings)
    kwargs = _kwargs(settings)
    if settings.redis_cluster:
        kwargs.pop("health_check_interval")
        return aioredis.RedisCluster.from_url(url, **kwargs)
    # A blocking pool: a checkout burst waits briefly for a connection instead of failing.
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=POOL_SIZE, timeout=_POOL_WAIT_S, **kwargs)
    return aioredis.Redis(connection_pool=pool)
