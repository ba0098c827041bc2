"""Leases: one holder at a time of a duty over the whole keyspace — the change log relay, the
hold sweeper — however many processes could do it.

A lease is a key taken with ``SET NX PX`` and a token naming its holder (host, pid, a random
part). The holder renews it before its time to live runs out; one that dies or stalls frees it
when the time runs out, and another process takes it over. Renewing and releasing check the token
in one script call, so nobody renews or releases a lease another took meanwhile.

``Lease`` (redis-py) and ``AsyncLease`` (redis.asyncio) differ only in I/O.
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any

from engine.store.keys import validate_prefix

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

#: What a lease is for: its key is ``<prefix>:<duty>:lock``.
DUTIES = ("relay", "sweeper")


def lease_key(prefix: str, duty: str) -> str:
    """The key of the lease on ``duty`` (one of ``DUTIES``) in the keyspace of ``prefix``."""
    if duty not in DUTIES:
        raise ValueError(f"unknown duty {duty!r}; known: {', '.join(DUTIES)}")
    return f"{validate_prefix(prefix)}:{duty}:lock"


def _text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


class _LeaseBase:
    def __init__(self, client: Any, prefix: str, duty: str, ttl_ms: int, token: str | None = None) -> None:
        if ttl_ms < 100:
            raise ValueError("ttl_ms must be at least 100")
        self.client = client
        self.key = lease_key(prefix, duty)
        self.ttl_ms = ttl_ms
        self.token = token or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)


class Lease(_LeaseBase):
    """A lease over a redis-py client: ``acquire`` (or renew, when held), ``renew``, ``release``,
    ``holder``."""

    def acquire(self) -> bool:
        """Take the lease if it is free, renew it if this holder has it; False: another holds it."""
        if self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
            return True
        return self.renew()

    def renew(self) -> bool:
        """Extend the lease by its time to live; False when this holder has lost it."""
        return bool(self._renew(keys=[self.key], args=[self.token, self.ttl_ms]))

    def release(self) -> bool:
        """Give the lease up (only if this holder has it)."""
        return bool(self._release(keys=[self.key], args=[self.token]))

    def holder(self) -> str | None:
        """Who holds the lease now (None: nobody)."""
        raw = self.client.get(self.key)
        return None if raw is None else _text(raw)


class AsyncLease(_LeaseBase):
    """``Lease`` over a redis.asyncio client."""

    async def acquire(self) -> bool:
        """See ``Lease.acquire``."""
        if await self.client.set(self.key, self.token, nx=True, px=self.ttl_ms):
            return True
        return await self.renew()

    async def renew(self) -> bool:
        """See ``Lease.renew``."""
        return bool(await self._renew(keys=[self.key], args=[self.token, self.ttl_ms]))

    async def release(self) -> bool:
        """See ``Lease.release``."""
        return bool(await self._release(keys=[self.key], args=[self.token]))

    async def holder(self) -> str | None:
        """See ``Lease.holder``."""
        raw = await self.client.get(self.key)
        return None if raw is None else _text(raw)
