"""The parse step: raw input messages → per-SKU commands, or DLQ records for what is unusable."""

from __future__ import annotations

from collections.abc import Mapping

from connectors.dlq import DlqRecord
from engine import metrics
from engine.domain.commands import SkuCommand, to_commands
from engine.domain.events import MAX_EVENT_BYTES, ParseError, parse_event
from engine.domain.ids import QTY_MAX
from engine.flow.records import Command
from engine.flow.source import RawMessage
from engine.store.wire import MAX_OFFSET, MAX_SOURCE, SupplyCommand

_TEXT_MAX = 256  # the store's limit for reason / ref


def dead_letter(raw: RawMessage, reason: str, detail: str, event_type: str | None = None,
                event_id: str | None = None) -> DlqRecord:
    """A DLQ record for ``raw`` (and one more in ``atp_dlq_total{reason}``)."""
    metrics.record_dlq(reason)
    return DlqRecord(
        topic=raw.topic,
        partition=raw.partition,
        offset=raw.offset,
        reason=reason,
        detail=detail,
        original=raw.value,
        key=raw.key,
        timestamp_ms=raw.timestamp_ms,
        event_type=event_type,
        event_id=event_id,
    )


def supply_command(c: SkuCommand, sku: str, raw: RawMessage) -> SupplyCommand:
    """The store command of ``c`` for ``sku``, carrying ``raw``'s source and offset; ``ValueError`` if invalid.

    ``c`` comes from a validated event (``to_commands``) and ``sku`` is a valid SKU, so only what
    the event models cannot vouch for is checked here: a quantity summed over an order's lines,
    and the input position. Whatever fails those goes through ``SupplyCommand``'s own checks,
    which raise with the reason.
    """
    source = raw.source
    offset = raw.offset
    if (c.payload.get("qty", 0) <= QTY_MAX and len(source) <= MAX_SOURCE and "\n" not in source
            and 0 <= offset <= MAX_OFFSET):
        return SupplyCommand.checked(sku, c.cmd, c.payload, c.event_id, source, offset, c.reason[:_TEXT_MAX],
                                     c.ref[:_TEXT_MAX])
    return SupplyCommand(
        sku=sku,
        cmd=c.cmd,
        payload=c.payload,
        event_id=c.event_id,
        source=source,
        offset=offset,
        reason=c.reason[:_TEXT_MAX],
        ref=c.ref[:_TEXT_MAX],
    )


class Parser:
    """``flat_map_batch`` mapper: each message becomes its commands, or one DLQ record.

    ``topic_bases`` maps each full input topic name to its base name (``inventory.orders``…), so
    an event on the wrong topic is refused (``wrong_topic``). An event whose commands the store
    would refuse to encode goes to the DLQ whole (reason ``invalid_command``): none of its
    commands is applied.
    """

    def __init__(self, topic_bases: Mapping[str, str], max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._bases = dict(topic_bases)
        self._max_bytes = max_event_bytes

    def __call__(self, batch: list[RawMessage]) -> list[Command | DlqRecord]:
        out: list[Command | DlqRecord] = []
        for raw in batch:
            base = self._bases.get(raw.topic)
            if base is None:
                out.append(dead_letter(raw, "unknown_topic", f"{raw.topic!r} is not an input topic of this flow"))
                continue
            event = parse_event(raw.value, base, self._max_bytes)
            if isinstance(event, ParseError):
                out.append(dead_letter(raw, event.reason, event.detail, event.event_type, event.event_id))
                continue
            try:
                commands = [
                    Command(c, supply_command(c, c.sku, raw) if c.sku is not None else None, raw)
                    for c in to_commands(event)
                ]
            except ValueError as exc:
                out.append(dead_letter(raw, "invalid_command", str(exc)[:300], event.type, event.event_id))
                continue
            out.extend(commands)
        return out
