"""The bytewax dataflow: input → parse → (DLQ | per-SKU commands) → apply in batches → outcomes.

```
input (RawMessage) ─► parse ─┬─► DLQ records ─────────────────────────────┬─► dlq_sink
                             └─► commands ─► apply (one pipelined round trip per batch)
                                               ├─► DLQ records (apply_failed) ┘
                                               └─► outcomes (sku, Outcome) ─► outcome_sink, extras
```

Keyed by SKU: the source hands each SKU's events to one worker (see ``engine.flow.source``), and
the apply step runs on that worker without an exchange, so one SKU's commands reach the store in
log order. The outcome stream is a keyed stream ``(sku, Outcome)``; a stateful step attached to it
(the alert rules) is routed by SKU by bytewax itself.

``build_flow`` takes its I/O as arguments, so tests run it on bytewax's ``TestingSource`` /
``TestingSink`` as well as on the real broker; ``add_pipeline`` builds into a given ``Dataflow``
and returns the streams, for callers that attach more steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import bytewax.operators as op
from bytewax.dataflow import Dataflow, Stream
from bytewax.inputs import Source
from bytewax.outputs import Sink

from connectors.dlq import DlqRecord
from engine.domain.events import MAX_EVENT_BYTES
from engine.flow.apply import Applier
from engine.flow.parse import Parser
from engine.flow.records import Command, Outcome
from engine.flow.source import RawMessage
from engine.store.reply_stash import STASH_TTL_S
from engine.store.store import Store

OutcomeItem = tuple[str, Outcome]


@dataclass(frozen=True)
class FlowStreams:
    """The streams a caller can attach steps to."""

    outcomes: Stream[OutcomeItem]
    """``(sku, Outcome)`` for every command applied (keyed by SKU)."""
    dlq: Stream[DlqRecord]
    """Every message that went to the DLQ (bad input, or a command the store rejected)."""


Extra = Callable[[FlowStreams], None]
"""A function that attaches more steps (e.g. the alert rules) to the flow's streams."""


def _is_dlq(item: object) -> bool:
    return isinstance(item, DlqRecord)


def add_pipeline(
    flow: Dataflow,
    source: Source[RawMessage],
    store_factory: Callable[[], Store],
    topic_bases: Mapping[str, str],
    *,
    max_event_bytes: int = MAX_EVENT_BYTES,
    retry_for_s: float = 60.0,
    keep_replies_s: int = STASH_TTL_S,
) -> FlowStreams:
    """Build input, parse and apply into ``flow``; returns the outcome and DLQ streams.

    ``topic_bases`` maps every full input topic name to its base name (``Topics.base_of``).
    ``keep_replies_s``: how long the store keeps each command's reply for the alert step to read
    after a crash (``engine.store.reply_stash``); 0 when no alert step runs.
    """
    raw = op.input("input", flow, source)
    parsed = op.flat_map_batch("parse", raw, Parser(topic_bases, max_event_bytes))
    split = op.branch("split_parsed", parsed, _is_dlq)
    commands: Stream[Command] = split.falses  # type: ignore[assignment]
    applier = Applier(store_factory, retry_for_s=retry_for_s, keep_replies_s=keep_replies_s)
    applied = op.flat_map_batch("apply", commands, applier)
    split_applied = op.branch("split_applied", applied, _is_dlq)
    dlq = op.merge("dlq", split.trues, split_applied.trues)
    return FlowStreams(outcomes=split_applied.falses, dlq=dlq)  # type: ignore[arg-type]


def build_flow(
    flow_id: str,
    source: Source[RawMessage],
    store_factory: Callable[[], Store],
    topic_bases: Mapping[str, str],
    dlq_sink: Sink[DlqRecord] | None,
    outcome_sink: Sink[OutcomeItem] | None = None,
    *,
    extras: Sequence[Extra] = (),
    max_event_bytes: int = MAX_EVENT_BYTES,
    retry_for_s: float = 60.0,
    keep_replies_s: int = STASH_TTL_S,
) -> Dataflow:
    """The whole dataflow. ``dlq_sink`` None drops DLQ records after counting them (tests only);
    ``outcome_sink`` receives ``(sku, Outcome)``; each of ``extras`` is called with the streams.
    ``keep_replies_s``: see ``add_pipeline``.
    """
    flow = Dataflow(flow_id)
    streams = add_pipeline(
        flow, source, store_factory, topic_bases, max_event_bytes=max_event_bytes, retry_for_s=retry_for_s,
        keep_replies_s=keep_replies_s,
    )
    if dlq_sink is not None:
        op.output("dlq_out", streams.dlq, dlq_sink)
    if outcome_sink is not None:
        op.output("outcomes_out", streams.outcomes, outcome_sink)
    for extra in extras:
        extra(streams)
    return flow
