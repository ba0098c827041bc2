"""The Redis server a benchmark run talks to: the embedded one (default) or ``ATP_REDIS_URL``;
or, for the Cluster comparison (``--cluster``), an embedded Redis Cluster of ``CLUSTER_PRIMARIES``.

Benchmark keys live under their own key prefix (``lt``) and every SKU name carries the run's
token, so a run against a shared server never touches the engine's own keys; ``cleanup()``
deletes them afterwards. Only loopback servers are accepted: a benchmark is load, and load
goes nowhere but this machine.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

PREFIX = "lt"
#: Primaries of the embedded Redis Cluster the Cluster comparison runs on.
CLUSTER_PRIMARIES = 3


class TargetError(RuntimeError):
    """The target server is not usable for a benchmark (not loopback, unreachable, a cluster)."""


def require_loopback(host: str) -> None:
    """Raise ``TargetError`` unless ``host`` resolves only to loopback addresses."""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError as exc:
        raise TargetError(f"cannot resolve {host!r}: {exc}") from exc
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        if not addr.is_loopback:
            raise TargetError(f"{host} is {addr}: benchmarks only send load to loopback addresses")


@dataclass
class Target:
    """A reachable Redis (standalone, or a Cluster when ``cluster``) plus the run's naming scheme."""

    url: str
    embedded: bool
    token: str
    prefix: str = PREFIX
    cluster: bool = False

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        return urlparse(self.url).port or 6379

    @property
    def password(self) -> str | None:
        return urlparse(self.url).password

    def sku(self, name: str) -> str:
        """A SKU of this run: ``LT-<token>-<name>`` (a valid SKU id for names of [A-Za-z0-9-])."""
        return f"LT-{self.token}-{name}"

    def skus(self, name: str, count: int) -> list[str]:
        """``count`` SKUs of this run: ``[sku(name)]`` for one, else ``sku(name)-0000`` …"""
        if count == 1:
            return [self.sku(name)]
        return [self.sku(f"{name}-{k:04d}") for k in range(count)]

    def rid(self, name: str) -> str:
        """A reservation id of this run: ``r-<token>-<name>``."""
        return f"r-{self.token}-{name}"

    def client(self, **kwargs: Any) -> Any:
        """A new sync ``redis.Redis`` (``redis.RedisCluster`` on a Cluster) for this server,
        replies as bytes."""
        import redis

        return (redis.RedisCluster if self.cluster else redis.Redis).from_url(self.url, **kwargs)

    def async_client(self, **kwargs: Any) -> Any:
        """A new ``redis.asyncio.Redis`` (``RedisCluster`` on a Cluster) for this server."""
        import redis.asyncio as aioredis

        return (aioredis.RedisCluster if self.cluster else aioredis.Redis).from_url(self.url, **kwargs)

    def cleanup(self) -> int:
        """Delete every key of this run (SCAN + UNLINK, on every primary of a Cluster); returns
        how many were deleted."""
        client = self.client()
        deleted = 0
        try:
            for pattern in (f"{self.prefix}:{{LT-{self.token}-*", f"{self.prefix}:rid:{{r-{self.token}-*"):
                batch = []
                for key in client.scan_iter(match=pattern, count=1000):
                    batch.append(key)
                    if len(batch) >= 1000:
                        deleted += client.unlink(*batch)
                        batch = []
                if batch:
                    deleted += client.unlink(*batch)
        finally:
            client.close()
        return deleted


@contextlib.contextmanager
def redis_target(url: str | None = None, *, cluster: bool = False) -> Iterator[Target]:
    """The Redis to benchmark: ``url``, else ``ATP_REDIS_URL``, else an embedded server that is
    stopped on exit. A given server must be a loopback standalone Redis; the run's keys are
    deleted from it on exit. ``cluster``: an embedded Redis Cluster of ``CLUSTER_PRIMARIES``
    (``url`` is not used)."""
    if cluster:
        from connectors.embedded import EmbeddedRedisCluster

        with EmbeddedRedisCluster(CLUSTER_PRIMARIES) as nodes:
            yield Target(url=nodes.url, embedded=True, token=secrets.token_hex(3), cluster=True)
        return
    url = url or os.environ.get("ATP_REDIS_URL") or ""
    token = secrets.token_hex(3)
    if url:
        target = Target(url=url, embedded=False, token=token)
        require_loopback(target.host)
        client = target.client(socket_connect_timeout=3)
        try:
            client.ping()
            if client.info("cluster").get("cluster_enabled"):
                raise TargetError("benchmarks need a standalone Redis (one SKU = one server anyway); "
                                  "--cluster compares it with an embedded Redis Cluster")
        except TargetError:
            raise
        except Exception as exc:
            raise TargetError(f"cannot reach Redis at {url}: {exc}") from exc
        finally:
            client.close()
        try:
            yield target
        finally:
            target.cleanup()
        return
    from connectors.embedded import EmbeddedRedis

    with EmbeddedRedis() as server:
        yield Target(url=server.url, embedded=True, token=token)
