"""The records that travel between the flow's steps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.domain.commands import SkuCommand
from engine.flow.source import RawMessage
from engine.store.wire import SupplyCommand


@dataclass(frozen=True, slots=True)
class Command:
    """One per-SKU store command of one input event, with the message it came from.

    ``supply`` is the validated store command; it is None only for an ``order.cancelled``
    without lines, whose SKUs the apply step looks up in the reservation index.
    """

    sku_command: SkuCommand
    supply: SupplyCommand | None
    raw: RawMessage

    @property
    def event_type(self) -> str:
        return self.sku_command.event_type


@dataclass(frozen=True, slots=True)
class Outcome:
    """What applying one command did: the command, where it came from, and the store's reply.

    ``reply`` is the supply reply of docs/semantics.md: ``{status, reason?, at_risk, slipped,
    lot?, clamped?, line?, position}``. A replayed command comes back with status ``duplicate``
    (reason ``offset`` or ``event_id``). An ``order.cancelled`` whose reservation is unknown has
    ``sku == ""`` and ``reply == {"status": "not_found", "reason": "unknown_reservation"}``.
    """

    sku: str
    event_id: str
    event_type: str
    cmd: str
    payload: dict[str, Any]
    source: str
    offset: int
    occurred_ms: int
    reply: dict[str, Any]

    @property
    def status(self) -> str:
        return str(self.reply.get("status", ""))

    @property
    def outcome_id(self) -> str:
        """``source:offset:sku``: the same for the same command on every replay."""
        return f"{self.source}:{self.offset}:{self.sku}"
