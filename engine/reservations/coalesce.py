"""Hold coalescing: concurrent holds on one SKU go to the store in one script call
(README, "Serving a flash sale"); each reservation in a batch is still all-or-nothing.
``SyncCoalescer`` for threads, ``AsyncCoalescer`` for the tasks of one event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from engine.store.wire import HoldRequest


@dataclass(frozen=True)
class HoldItem:
    """One hold waiting for its batch: the request, and the reservation-index key to claim
    (``SET NX``) in the same round trip — None when the caller claimed it already (sagas)."""

    req: HoldRequest
    claim: tuple[str, bytes] | None = None


# (whether the claim created the index key — None without a claim, the hold reply)
HoldOutcome = tuple[bool | None, dict[str, Any]]
_Item = TypeVar("_Item")
_Outcome = TypeVar("_Outcome")


class _Waiter:
    __slots__ = ("item", "event", "outcome", "error", "lead")

    def __init__(self, item: HoldItem) -> None:
        self.item = item
        self.event = threading.Event()
        self.outcome: HoldOutcome | None = None
        self.error: BaseException | None = None
        self.lead = False

    def result(self) -> HoldOutcome:
        if self.error is not None:
            raise self.error
        assert self.outcome is not None
        return self.outcome


class _SkuQueue:
    __slots__ = ("pending", "busy")

    def __init__(self) -> None:
        self.pending: list[_Waiter] = []
        self.busy = False


class SyncCoalescer:
    """Leader/follower batching of holds per SKU across threads.

    The first caller on an idle SKU leads: it sends every waiting item (up to ``max_batch``) with
    one ``send(sku, items)`` call; items arriving meanwhile wait, and the oldest of them is
    promoted to lead the next batch. So at most one batch per SKU is in flight per client.
    """

    def __init__(self, send: Callable[[str, list[HoldItem]], list[HoldOutcome]], max_batch: int = 256) -> None:
        self._send = send
        self._max = max_batch
        self._lock = threading.Lock()
        self._queues: dict[str, _SkuQueue] = {}

    def submit(self, sku: str, item: HoldItem) -> HoldOutcome:
        """The outcome of ``item``, sent together with concurrent holds of the same SKU."""
        me = _Waiter(item)
        with self._lock:
            q = self._queues.get(sku)
            if q is None:
                q = self._queues[sku] = _SkuQueue()
            q.pending.append(me)
            if not q.busy:
                q.busy = True
                me.lead = True
        if not me.lead:
            me.event.wait()
            if not me.lead:
                return me.result()
        self._lead(sku, q)
        return me.result()

    def _lead(self, sku: str, q: _SkuQueue) -> None:
        with self._lock:
            batch = q.pending[: self._max]
            del q.pending[: self._max]
        try:
            outcomes = self._send(sku, [w.item for w in batch])
        except BaseException as exc:  # every waiter of the batch sees the failure
            for w in batch:
                w.error = exc
        else:
            for w, outcome in zip(batch, outcomes, strict=True):
                w.outcome = outcome
        with self._lock:
            if q.pending:
                successor = q.pending[0]
                successor.lead = True
                successor.event.set()
            else:
                q.busy = False
                if self._queues.get(sku) is q:
                    del self._queues[sku]
        for w in batch:
            w.lead = False
            w.event.set()


class AsyncCoalescer(Generic[_Item, _Outcome]):
    """Per-SKU queues of items (holds, reservation events), drained by one task per SKU while
    requests keep coming: each ``send(sku, items)`` carries what waited for that SKU, up to
    ``max_batch``, and gives one outcome per item."""

    def __init__(self, send: Callable[[str, list[_Item]], Awaitable[list[_Outcome]]],
                 max_batch: int = 256) -> None:
        self._send = send
        self._max = max_batch
        self._queues: dict[str, list[tuple[_Item, asyncio.Future[_Outcome]]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, sku: str, item: _Item) -> _Outcome:
        """The outcome of ``item``, sent together with the concurrent items of the same SKU."""
        fut: asyncio.Future[_Outcome] = asyncio.get_running_loop().create_future()
        queue = self._queues.get(sku)
        if queue is None:
            # no batch in flight: this caller starts the drain
            queue = self._queues[sku] = []
            task = asyncio.create_task(self._drain(sku, queue))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        queue.append((item, fut))
        return await fut

    async def _drain(self, sku: str, queue: list[tuple[_Item, asyncio.Future[_Outcome]]]) -> None:
        try:
            while queue:
                batch = queue[: self._max]
                del queue[: self._max]
                try:
                    outcomes = await self._send(sku, [item for item, _ in batch])
                except Exception as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                else:
                    for (_, fut), outcome in zip(batch, outcomes, strict=True):
                        if not fut.done():
                            fut.set_result(outcome)
        finally:
            if self._queues.get(sku) is queue:
                del self._queues[sku]
            for _, fut in queue:  # only after a cancellation of the drain itself
                if not fut.done():
                    fut.set_exception(RuntimeError("batch cancelled"))


def _claims_of(items: list[HoldItem]) -> list[tuple[str, bytes]]:
    return [it.claim for it in items if it.claim is not None]


def _outcomes(items: list[HoldItem], created: list[bool], replies: list[dict[str, Any]]) -> list[HoldOutcome]:
    flags = iter(created)
    return [(next(flags) if it.claim is not None else None, reply) for it, reply in zip(items, replies, strict=True)]


def _unclaim(items: list[HoldItem], outcomes: list[HoldOutcome]) -> list[str]:
    """Index keys this batch created for holds that were refused: a refusal leaves no trace."""
    return [
        it.claim[0]
        for it, (created, reply) in zip(items, outcomes, strict=True)
        if created and it.claim is not None and reply["status"] in ("refused", "conflict")
    ]
