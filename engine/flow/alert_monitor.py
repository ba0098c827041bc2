"""The flow's per-SKU alert step: ``engine.domain.sku_monitor.observe`` over the outcome stream.

One ``SkuLogic`` per SKU (bytewax ``stateful_batch``, keyed by SKU) holds a ``MonitorState`` in
bytewax state, so it is snapshotted with the input offsets and restored on recovery. Each outcome
becomes an ``Observation``; the rules' alerts and triggers, the lots opened and closed, and the
supplier receipts come out as one ``Emitted`` per outcome.

**Replays.** After a crash the flow resumes from the last snapshot, but Redis kept every command
applied since then, so the store answers the replayed tail with ``duplicate`` (reason ``offset``)
and the *current* position — not the position each command produced the first time. Judging those
positions again would skip or move transitions, and a later crossing would then reuse an episode
number (an ``alert_id``) that was already published. So an outcome the monitor missed (a
``duplicate`` by offset beyond the last offset it observed for that partition) is replayed from
its **memo**: the observation recorded when it was first applied (``engine.flow.alert_memo``),
which gives back the same state and the same messages. An observation is memoised only when its
reply mattered — it produced a message, its status was not ``ok``, it closed a lot, it placed an
order somewhere other than its named/default location, it listed affected reservations, or it
opened/closed a replenishment position; every other missed outcome is rebuilt from the command
alone (status ``ok``, no position), which leaves the state exactly as the first pass did.

**Time.** ``inbound_late`` is judged in event time. Before each observation, open lots already
due at its event time fire first (so a late receipt still yields its firing and resolved pair
however the ticks fell), and a quiet SKU gets a tick (``notify_at``) at its next lot's due time
on the wall clock. A tick advances only the lateness clock, to the due time itself, so its effect
does not depend on when it ran. Ticks wait while a SKU is replaying (its last outcome was a missed
duplicate) until ``replay_quiet_s`` passed without one, so a replay of old history does not call
lots late that later events in the log will receive on time.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.operators import StatefulBatchLogic

from engine import metrics
from engine.domain import alerts as alert_rules
from engine.domain.ids import DEFAULT_LOCATION
from engine.domain.observation import TICK, Observation, ObservationError
from engine.domain.outputs import Alert, ReplenishmentTrigger
from engine.domain.policy import Policy
from engine.domain.sku_monitor import RulePolicies, SkuMonitor, observe
from engine.domain.suppliers import SupplierReceipt
from engine.flow.records import Outcome

log = logging.getLogger(__name__)

RETAIN = False
"""``StatefulBatchLogic`` "discard" flag: a SKU's rule state is kept for good (episode counters)."""


def wall_clock_ms() -> int:
    """Milliseconds since the epoch, from the system clock."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class PolicyKnobs:
    """The fields of a SKU's ``Policy`` that the rules read (the rest only matter to the scripts)."""

    low_stock: int = 0
    pack_size: int = 1
    lead_time_days: float = 0.0
    use_reliability: bool = False
    """Not a rule input: it tells the supplier step which SKUs want reliability write-backs."""

    @classmethod
    def of(cls, policy: Policy) -> PolicyKnobs:
        return cls(policy.low_stock, policy.pack_size, float(policy.lead_time_days), policy.use_reliability)

    def policy(self) -> Policy:
        return Policy(low_stock=self.low_stock, pack_size=self.pack_size, lead_time_days=self.lead_time_days)


@dataclass(frozen=True, slots=True)
class Memo:
    """An observation as first applied, with the policy it was judged under."""

    observation: Observation
    knobs: PolicyKnobs


@dataclass(frozen=True, slots=True)
class Seen:
    """One outcome on its way into the monitor, with what the prefetch step read for it: the SKU's
    policy knobs and, for a ``duplicate`` by offset, its memo (None when there is none)."""

    outcome: Outcome
    knobs: PolicyKnobs
    memo: Memo | None = None


@dataclass(frozen=True, slots=True)
class LotChange:
    """A lot of ``supplier`` opened or closed at ``sku``, and whether the SKU's policy uses supplier
    reliability (the supplier step writes its score back to the SKUs that hold its lots and use it).
    A policy that starts or stops using reliability re-announces the SKU's open lots."""

    supplier: str
    sku: str
    inbound_id: str
    open: bool
    uses_reliability: bool = False


SupplierMessage = LotChange | SupplierReceipt


@dataclass(frozen=True, slots=True)
class Emitted:
    """What one outcome (or tick) of a SKU produced. ``memo`` is to be stored under ``memo_of``'s
    id before the messages are published."""

    alerts: tuple[Alert, ...] = ()
    triggers: tuple[ReplenishmentTrigger, ...] = ()
    supplier: tuple[SupplierMessage, ...] = ()
    memo: Memo | None = None
    memo_of: Outcome | None = None


@dataclass
class MonitorState:
    """Everything one SKU's step keeps (pickled into bytewax snapshots)."""

    monitor: SkuMonitor
    offsets: dict[str, int] = field(default_factory=dict)
    """``topic:partition`` → the highest offset observed, to tell a missed duplicate from a known one."""
    knobs: PolicyKnobs = field(default_factory=PolicyKnobs)
    """The policy of the latest outcome (ticks and memo-less replays use it)."""
    replaying: bool = False
    replay_wall_ms: int = 0
    """Wall time of the latest missed duplicate."""


@dataclass
class MonitorConfig:
    """What every SKU's logic shares: engine settings and the tick options."""

    settings: Any
    ticks: bool = True
    replay_quiet_s: float = 60.0
    clock_ms: Callable[[], int] = wall_clock_ms
    _policies: dict[PolicyKnobs, RulePolicies] = field(default_factory=dict, repr=False)

    def policies(self, knobs: PolicyKnobs) -> RulePolicies:
        """The rule policies for ``knobs`` over the settings' defaults (cached: few distinct knobs)."""
        found = self._policies.get(knobs)
        if found is None:
            found = self._policies[knobs] = RulePolicies.from_settings(self.settings, knobs.policy())
        return found


def replay_observation(outcome: Outcome) -> Observation:
    """The observation of a missed outcome that has no memo: the command alone, status ``ok``, no
    position. Raises ``ObservationError`` for a command it cannot read."""
    return Observation.from_reply(
        sku=outcome.sku,
        command=outcome.cmd,
        args=outcome.payload,
        reply={"status": "ok"},
        occurred_ms=outcome.occurred_ms,
        event_id=outcome.event_id,
    )


class SkuLogic(StatefulBatchLogic[Seen, Emitted, bytes]):
    """The bytewax logic of one SKU. Build with ``SkuLogic.builder(config)``."""

    def __init__(self, config: MonitorConfig, state: MonitorState | None) -> None:
        self.cfg = config
        self.state = state
        # Process-local (not snapshotted): this process's share of the oversold-units gauge.
        self._oversold_counted = 0

    @classmethod
    def builder(cls, config: MonitorConfig) -> Callable[[bytes | None], SkuLogic]:
        def build(resume: bytes | None) -> SkuLogic:
            return cls(config, pickle.loads(resume) if resume is not None else None)

        return build

    # --- bytewax hooks ---------------------------------------------------------------------

    def on_batch(self, values: list[Seen]) -> tuple[Iterable[Emitted], bool]:
        out: list[Emitted] = []
        for seen in values:
            emitted = self._observe(seen)
            if emitted is not None:
                out.append(emitted)
        return out, RETAIN

    def on_notify(self) -> tuple[Iterable[Emitted], bool]:
        return self._tick(), RETAIN

    def on_eof(self) -> tuple[Iterable[Emitted], bool]:
        return (), RETAIN

    def notify_at(self) -> datetime | None:
        st = self.state
        if not self.cfg.ticks or st is None:
            return None
        due = self._next_due()
        if due is None:
            return None
        wake = due
        if st.replaying:
            wake = max(wake, st.replay_wall_ms + int(self.cfg.replay_quiet_s * 1000))
        return datetime.now(UTC) + timedelta(milliseconds=max(0, wake - self.cfg.clock_ms()))

    def snapshot(self) -> bytes:
        # Pickled bytes are immutable, as bytewax requires, and cheaper than a deep copy.
        return pickle.dumps(self.state, protocol=pickle.HIGHEST_PROTOCOL)

    # --- one outcome -------------------------------------------------------------------------

    def _observe(self, seen: Seen) -> Emitted | None:
        o = seen.outcome
        st = self.state
        if st is None:
            st = self.state = MonitorState(SkuMonitor.new(o.sku))
        last = st.offsets.get(o.source, -1)
        missed = o.status == "duplicate" and o.reply.get("reason") == "offset" and o.offset > last
        if o.offset > last:
            st.offsets[o.source] = o.offset
        try:
            if missed:
                memo = seen.memo
                obs, knobs = (memo.observation, memo.knobs) if memo else (replay_observation(o), st.knobs)
                st.replaying = True
                st.replay_wall_ms = self.cfg.clock_ms()
            else:
                obs = Observation.from_reply(
                    sku=o.sku, command=o.cmd, args=o.payload, reply=o.reply,
                    occurred_ms=o.occurred_ms, event_id=o.event_id,
                )
                knobs = seen.knobs
                st.replaying = False
        except ObservationError as exc:  # a reply the rules cannot read: log it, keep the stream going
            log.error("alert rules skip %s (%s): %s", o.outcome_id, o.cmd, exc)
            return None
        # A policy change is memoised, so a replay meets it at the same outcome.
        policy_changed = knobs != st.knobs
        previous, st.knobs = st.knobs, knobs
        policies = self.cfg.policies(knobs)

        late = self._late_before(obs, policies)
        mon = st.monitor
        lots_before = dict(mon.alerts.lots)
        open_before = _open_positions(mon)
        st.monitor, out = observe(mon, obs, policies)
        reopened = _open_positions(st.monitor) != open_before

        uses = knobs.use_reliability
        supplier: list[SupplierMessage] = []
        if uses != previous.use_reliability:
            supplier += [LotChange(lot.supplier, o.sku, lot_id, True, uses) for lot_id, lot in lots_before.items()]
        supplier += [
            LotChange(lot.supplier, o.sku, lot_id, False, uses)
            for lot_id, lot in lots_before.items()
            if lot_id not in st.monitor.alerts.lots
        ]
        supplier += [
            LotChange(lot.supplier, o.sku, lot_id, True, uses)
            for lot_id, lot in st.monitor.alerts.lots.items()
            if lot_id not in lots_before
        ]
        if out.receipt is not None:
            supplier.append(out.receipt)

        memo = None
        if not missed:
            self._count_oversold(obs)
            if out.alerts or out.triggers or reopened or policy_changed or _reply_mattered(obs, o):
                memo = Memo(obs, knobs)
        if not (late or out.alerts or out.triggers or supplier or memo):
            return None
        return Emitted(
            alerts=(*late, *out.alerts),
            triggers=tuple(out.triggers),
            supplier=tuple(supplier),
            memo=memo,
            memo_of=o if memo is not None else None,
        )

    def _count_oversold(self, obs: Observation) -> None:
        if obs.position is None:
            return
        delta = obs.position.oversold - self._oversold_counted
        if delta:
            metrics.add_oversold_units(delta)
            self._oversold_counted = obs.position.oversold

    # --- lateness and ticks -------------------------------------------------------------------

    def _due_lots(self, grace_ms: int) -> list[int]:
        """Due instants (first ms past ETA + grace) of the open lots that are not firing late."""
        st = self.state
        assert st is not None
        conds = st.monitor.alerts.conditions
        dues = []
        for lot_id, lot in st.monitor.alerts.lots.items():
            cond = conds.get(("inbound_late", lot.location, lot_id))
            if cond is None or not cond.firing:
                dues.append(lot.eta_ms + grace_ms + 1)
        return dues

    def _late_before(self, obs: Observation, policies: RulePolicies) -> tuple[Alert, ...]:
        """Fire the lots already due at ``obs``'s event time, ahead of ``obs`` (credited to its event)."""
        st = self.state
        assert st is not None
        at_ms = obs.occurred_ms
        if not any(due <= at_ms for due in self._due_lots(policies.alerts.inbound_grace_ms)):
            return ()
        clock = Observation(sku=obs.sku, command=TICK, occurred_ms=at_ms, event_id=obs.event_id)
        st.monitor.alerts, fired = alert_rules.evaluate(st.monitor.alerts, clock, at_ms, policies.alerts)
        return tuple(fired)

    def _next_due(self) -> int | None:
        st = self.state
        assert st is not None
        dues = self._due_lots(self.cfg.policies(st.knobs).alerts.inbound_grace_ms)
        return min(dues) if dues else None

    def _tick(self) -> list[Emitted]:
        st = self.state
        if st is None:
            return []
        now = self.cfg.clock_ms()
        if st.replaying:
            if now - st.replay_wall_ms < self.cfg.replay_quiet_s * 1000:
                return []
            st.replaying = False
        policy = self.cfg.policies(st.knobs).alerts
        due = [d for d in self._due_lots(policy.inbound_grace_ms) if d <= now]
        if not due:
            return []
        st.monitor.alerts, fired = alert_rules.tick(st.monitor.alerts, max(due), policy)
        return [Emitted(alerts=tuple(fired))] if fired else []


def _open_positions(mon: SkuMonitor) -> frozenset[tuple[str, int]]:
    repl = mon.replenishment
    if repl is None:
        return frozenset()
    return frozenset((loc, p.episode) for loc, p in repl.positions.items() if p.open)


def _reply_mattered(obs: Observation, o: Outcome) -> bool:
    """True when the reply told the rules something ``replay_observation`` could not rebuild."""
    if obs.status != "ok" or obs.reason or obs.lot is not None or obs.at_risk or obs.slipped:
        return True
    return obs.command == "order_placed" and not o.payload.get("loc") and obs.location != DEFAULT_LOCATION
