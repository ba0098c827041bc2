"""``AtpHttpClient`` and ``AsyncAtpHttpClient``: the checkout calls of the HTTP API, over httpx.

The twins only send requests and sleep; what they send, how replies are read and when a call
is retried is decided once, in ``engine.http.plan``. Both are safe to share between threads
(sync) or tasks (async) and keep their connections open: close them (or use ``with`` /
``async with``) when done.

A hold returns ``Reservation`` or ``Refused`` (409 ``refused``: not enough to promise, nothing
held): a refusal is a normal answer of a checkout, not a failure. Every other error reply
raises an ``AtpHttpError`` (``engine.http.errors``). Ids that go into the URL path are checked
here (``ValueError``); everything else is checked by the API (``InvalidRequest``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal, Self, TypeVar

import httpx

from engine.http import plan
from engine.http.plan import Call, Config, RetryPolicy, Send
from engine.http.types import Atp, HoldResult, Reservation

T = TypeVar("T")


class _Base:
    """What both twins are built from (see ``AtpHttpClient``)."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        connect_timeout: float = 3.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.config = Config(base_url, token, timeout, connect_timeout, retry or RetryPolicy())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> Self:
        """A client for ``ATP_API_URL`` with the bearer token ``ATP_API_TOKEN`` (optional);
        ``kwargs`` as for the constructor. Raises ``ValueError`` when ``ATP_API_URL`` is unset."""
        url, token = plan.env_config(os.environ if environ is None else environ)
        return cls(url, token, **kwargs)

    def _request_kwargs(self, send: Send) -> dict[str, Any]:
        return {"params": dict(send.params), "headers": dict(send.headers), "content": send.content,
                "timeout": send.timeout}


class AtpHttpClient(_Base):
    """Blocking client of the API at ``base_url`` (e.g. ``http://127.0.0.1:8000``).

    ``token``: bearer token (``reserve`` role to hold, ``read`` to read). ``timeout`` /
    ``connect_timeout``: seconds per attempt, cut to what is left of the retry deadline.
    ``retry``: ``RetryPolicy()`` by default; ``NO_RETRY`` sends each call once.
    ``http``: an ``httpx.Client`` to send with (TLS, proxies, pool limits); it stays the
    caller's to close.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        connect_timeout: float = 3.0,
        retry: RetryPolicy | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        super().__init__(base_url, token, timeout=timeout, connect_timeout=connect_timeout, retry=retry)
        self._own = http is None
        self._http = http if http is not None else httpx.Client()

    def _run(self, call: Call[T]) -> T:
        steps = plan.exchange(call, self.config)
        answer: httpx.Response | BaseException | None = None
        try:
            while True:
                action = steps.send(answer)
                if isinstance(action, plan.Sleep):
                    time.sleep(action.seconds)
                    answer = None
                    continue
                try:
                    answer = self._http.request(action.method, action.url, **self._request_kwargs(action))
                except httpx.TransportError as exc:
                    answer = exc
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        finally:
            steps.close()

    def atp(self, sku: str, location: str | None = None) -> Atp:
        """The SKU's position, at ``location`` or over all locations."""
        return self._run(plan.atp_call(sku, location))

    def atp_many(self, skus: Iterable[str], location: str | None = None) -> dict[str, Atp]:
        """Positions of up to 1000 SKUs in one request, by SKU in the order asked."""
        return self._run(plan.atp_many_call(skus, location))

    def hold(
        self,
        lines: Iterable[Any],
        *,
        reservation_id: str | None = None,
        ttl_seconds: int | None = None,
        channel: str | None = None,
        customer: str | None = None,
    ) -> HoldResult:
        """Hold every line or none: ``Reservation`` (``replayed`` when the id was already held
        with these lines) or ``Refused``. Lines: ``(sku, qty[, location])``, mappings or
        objects with those members. ``reservation_id`` defaults to a new uuid-based id; it is
        the ``Idempotency-Key``, sent unchanged on every retry. Raises ``IdempotencyConflict``
        when the id was used with other lines."""
        rid = reservation_id if reservation_id is not None else plan.new_reservation_id()
        return self._run(plan.hold_call(lines, rid, ttl_seconds, channel, customer))

    def get_reservation(self, reservation_id: str) -> Reservation:
        """The reservation as it is now; raises ``NotFound``."""
        return self._run(plan.get_call(reservation_id))

    def confirm(self, reservation_id: str) -> Reservation:
        """Held → committed (again: unchanged); raises ``NotAllowed`` after release or expiry."""
        return self._run(plan.lifecycle_call("confirm", reservation_id))

    def release(self, reservation_id: str) -> Reservation:
        """Held or committed → released (again: unchanged); raises ``NotAllowed`` once shipped."""
        return self._run(plan.lifecycle_call("release", reservation_id))

    def extend(self, reservation_id: str, ttl_seconds: int) -> Reservation:
        """A held reservation now expires ``ttl_seconds`` from now; other states: ``NotAllowed``."""
        return self._run(plan.lifecycle_call("extend", reservation_id, ttl_seconds))

    def close(self) -> None:
        """Close the connections (not those of an ``http`` client handed in)."""
        if self._own:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> Literal[False]:
        self.close()
        return False


class AsyncAtpHttpClient(_Base):
    """``AtpHttpClient`` for asyncio: the same constructor (``http``: an ``httpx.AsyncClient``),
    the same methods as coroutines, the same results and errors."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        connect_timeout: float = 3.0,
        retry: RetryPolicy | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(base_url, token, timeout=timeout, connect_timeout=connect_timeout, retry=retry)
        self._own = http is None
        self._http = http if http is not None else httpx.AsyncClient()

    async def _run(self, call: Call[T]) -> T:
        steps = plan.exchange(call, self.config)
        answer: httpx.Response | BaseException | None = None
        try:
            while True:
                action = steps.send(answer)
                if isinstance(action, plan.Sleep):
                    await asyncio.sleep(action.seconds)
                    answer = None
                    continue
                try:
                    answer = await self._http.request(action.method, action.url, **self._request_kwargs(action))
                except httpx.TransportError as exc:
                    answer = exc
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        finally:
            steps.close()

    async def atp(self, sku: str, location: str | None = None) -> Atp:
        """See ``AtpHttpClient.atp``."""
        return await self._run(plan.atp_call(sku, location))

    async def atp_many(self, skus: Iterable[str], location: str | None = None) -> dict[str, Atp]:
        """See ``AtpHttpClient.atp_many``."""
        return await self._run(plan.atp_many_call(skus, location))

    async def hold(
        self,
        lines: Iterable[Any],
        *,
        reservation_id: str | None = None,
        ttl_seconds: int | None = None,
        channel: str | None = None,
        customer: str | None = None,
    ) -> HoldResult:
        """See ``AtpHttpClient.hold``."""
        rid = reservation_id if reservation_id is not None else plan.new_reservation_id()
        return await self._run(plan.hold_call(lines, rid, ttl_seconds, channel, customer))

    async def get_reservation(self, reservation_id: str) -> Reservation:
        """See ``AtpHttpClient.get_reservation``."""
        return await self._run(plan.get_call(reservation_id))

    async def confirm(self, reservation_id: str) -> Reservation:
        """See ``AtpHttpClient.confirm``."""
        return await self._run(plan.lifecycle_call("confirm", reservation_id))

    async def release(self, reservation_id: str) -> Reservation:
        """See ``AtpHttpClient.release``."""
        return await self._run(plan.lifecycle_call("release", reservation_id))

    async def extend(self, reservation_id: str, ttl_seconds: int) -> Reservation:
        """See ``AtpHttpClient.extend``."""
        return await self._run(plan.lifecycle_call("extend", reservation_id, ttl_seconds))

    async def aclose(self) -> None:
        """Close the connections (not those of an ``http`` client handed in)."""
        if self._own:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> Literal[False]:
        await self.aclose()
        return False
