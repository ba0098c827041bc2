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
order somewhere other than its named/default location, it listed affected reservations, it
opened/closed a replenishment position, it started or broke a firing condition's resolve period,
or the SKU's policy had changed; every other missed outcome
is rebuilt from the command alone (status ``ok``, no position), which leaves the state exactly as
the first pass did. A duplicate the monitor did observe (offset at or below what it saw) is judged
as news: its position is today's, as any reply's.

**Killed mid-batch.** The memo is stored by the step after this one, so a process killed between
the store applying a batch and that step (SIGKILL; bytewax's own abort finishes the batch first)
leaves that batch without memos. The store closes this gap: ``apply.lua`` keeps each stream
command's reply in the same script call (the *reply stash*, ``engine.store.reply_stash``). A
missed outcome without a memo but with a stashed reply is judged as a first pass with that reply
(same observation, same messages, and memoised as a first pass would be); the publish step deletes
the stash of every outcome it stored the memo of (``Emitted.stash_of``), so only batches in flight
keep one. Without memo and stash (both past their TTL), the outcome replays from the command alone.

**Checkouts.** A ``Checkout`` (``engine.flow.checkouts``) carries a SKU's figures read after the
API changed them, with the reservation lines behind the read: their holds and confirms are counted
as demand, once per reservation id (a stream order of the same id later counts nothing more), and
the figures are judged as a ``checkout`` observation — the same rules, demand, replenishment. A
``Checkout`` without lines is a re-check of a SKU on the ``Watchlist`` (a condition that may
resolve without an event, such as a sell-out ended by expired holds), judged at the stream time.
A checkout is judged from a read made now, not from a stored reply, so it is not memoised: a
replay after a crash judges the positions it reads then. What it counted as demand is in the
SKU's state, snapshotted with the reservations topic's offsets, so a replay never counts a
reservation twice.

**Time.** ``inbound_late`` is judged in event time. A lot is due at the first instant past its
ETA + grace, and its lateness always fires *at* that instant, credited to no event: before an
observation whose event time has passed it (so a late receipt still yields its firing and resolved
pair), or at a tick of a quiet SKU once the stream time (``engine.flow.stream_clock``) has passed
it. Either way the message is the same, and a replay of the log fires it at the same point in
event time. Quiet SKUs with a lot to wait for are woken every ``tick_interval_s`` (not before the
wall clock reaches the due instant: live, stream time is about the wall clock); at the end of a
bounded run the stream time of the whole input is applied once more.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.operators import StatefulBatchLogic

from engine import metrics
from engine.domain import alerts as alert_rules
from engine.domain.ids import DEFAULT_LOCATION
from engine.domain.observation import Observation, ObservationError, PositionFigures
from engine.domain.outputs import Alert, ReplenishmentTrigger
from engine.domain.policy import Policy
from engine.domain.sku_monitor import RulePolicies, SkuMonitor, count_checkout, observe
from engine.domain.suppliers import SupplierReceipt
from engine.flow.checkouts import DEMAND_CHANGES, RECHECKED_KINDS, CheckoutLine, Watchlist
from engine.flow.records import Outcome
from engine.flow.stream_clock import StreamClock

log = logging.getLogger(__name__)

RETAIN = False
"""``StatefulBatchLogic`` "discard" flag: a SKU's rule state is kept for good (episode counters)."""


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
    policy knobs and, for a ``duplicate`` by offset, its memo and the store's reply as first applied
    (the reply stash; None when there is none)."""

    outcome: Outcome
    knobs: PolicyKnobs
    memo: Memo | None = None
    stashed: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Checkout:
    """A SKU's figures as read after changes made outside the stream, the reservation lines behind
    the read (in the order published; none for a re-check) and the SKU's policy knobs."""

    sku: str
    lines: tuple[CheckoutLine, ...]
    position: PositionFigures
    knobs: PolicyKnobs


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
    id before the messages are published; ``stash_of`` is an outcome whose stashed reply can go
    once that memo is stored (every outcome judged from the store's own reply, even a quiet one)."""

    alerts: tuple[Alert, ...] = ()
    triggers: tuple[ReplenishmentTrigger, ...] = ()
    supplier: tuple[SupplierMessage, ...] = ()
    memo: Memo | None = None
    memo_of: Outcome | None = None
    stash_of: Outcome | None = None


@dataclass
class MonitorState:
    """Everything one SKU's step keeps (pickled into bytewax snapshots)."""

    monitor: SkuMonitor
    offsets: dict[str, int] = field(default_factory=dict)
    """``topic:partition`` → the highest offset observed, to tell a missed duplicate from a known one."""
    knobs: PolicyKnobs = field(default_factory=PolicyKnobs)
    """The policy of the latest outcome (ticks and memo-less replays use it)."""


@dataclass
class MonitorConfig:
    """What every SKU's logic shares: engine settings, the stream clock and the tick options."""

    settings: Any
    stream: StreamClock = field(default_factory=StreamClock)
    ticks: bool = True
    tick_interval_s: float = 10.0
    watchlist: Watchlist | None = None
    """Where SKUs with a condition to re-check are listed (None: no re-checks)."""
    _policies: dict[PolicyKnobs, RulePolicies] = field(default_factory=dict, repr=False)

    def policies(self, knobs: PolicyKnobs) -> RulePolicies:
        """The rule policies for ``knobs`` over the settings' defaults (cached: few distinct knobs)."""
        found = self._policies.get(knobs)
        if found is None:
            found = self._policies[knobs] = RulePolicies.from_settings(self.settings, knobs.policy())
        return found


def is_offset_duplicate(outcome: Outcome) -> bool:
    """True for a command the store had applied already (a replay): ``duplicate`` by offset."""
    return outcome.status == "duplicate" and outcome.reply.get("reason") == "offset"


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


class SkuLogic(StatefulBatchLogic[Seen | Checkout, Emitted, bytes]):
    """The bytewax logic of one SKU. Build with ``SkuLogic.builder(config)``."""

    def __init__(self, config: MonitorConfig, state: MonitorState | None) -> None:
        self.cfg = config
        self.state = state
        # Process-local (not snapshotted): this process's share of the oversold-units gauge.
        self._oversold_counted = 0
        if state is not None:  # resumed: the watchlist of this process starts empty
            self._watch()

    @classmethod
    def builder(cls, config: MonitorConfig) -> Callable[[bytes | None], SkuLogic]:
        def build(resume: bytes | None) -> SkuLogic:
            return cls(config, pickle.loads(resume) if resume is not None else None)

        return build

    # --- bytewax hooks ---------------------------------------------------------------------

    def on_batch(self, values: list[Seen | Checkout]) -> tuple[Iterable[Emitted], bool]:
        out: list[Emitted] = []
        for seen in values:
            emitted = self._checkout(seen) if isinstance(seen, Checkout) else self._observe(seen)
            if emitted is not None:
                out.append(emitted)
        return out, RETAIN

    def on_notify(self) -> tuple[Iterable[Emitted], bool]:
        return self._tick(self.cfg.stream.now_ms()), RETAIN

    def on_eof(self) -> tuple[Iterable[Emitted], bool]:
        return self._tick(self.cfg.stream.now_ms(at_end=True)), RETAIN

    def notify_at(self) -> datetime | None:
        if not self.cfg.ticks or self.state is None:
            return None
        due = self._next_due()
        if due is None:
            return None
        wall = self.cfg.stream.wall_ms()
        wake = max(wall + int(self.cfg.tick_interval_s * 1000), due)
        return datetime.now(UTC) + timedelta(milliseconds=wake - wall)

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
        missed = is_offset_duplicate(o) and o.offset > last
        if o.offset > last:
            st.offsets[o.source] = o.offset
        if missed and seen.memo is None and seen.stashed is not None:
            # The first pass never got past the store (killed): this is the first pass.
            o, missed = replace(o, reply=seen.stashed), False
        stash_of = None if is_offset_duplicate(o) else o
        try:
            if missed:
                memo = seen.memo
                obs, knobs = (memo.observation, memo.knobs) if memo else (replay_observation(o), st.knobs)
            else:
                obs = Observation.from_reply(
                    sku=o.sku, command=o.cmd, args=o.payload, reply=o.reply,
                    occurred_ms=o.occurred_ms, event_id=o.event_id,
                )
                knobs = seen.knobs
        except ObservationError as exc:  # a reply the rules cannot read: log it, keep the stream going
            log.error("alert rules skip %s (%s): %s", o.outcome_id, o.cmd, exc)
            return Emitted(stash_of=stash_of) if stash_of is not None else None
        # A policy change is memoised, so a replay meets it at the same outcome.
        policy_changed = knobs != st.knobs
        previous, st.knobs = st.knobs, knobs
        policies = self.cfg.policies(knobs)

        late = self._fire_due(obs.occurred_ms, policies)
        mon = st.monitor
        lots_before = dict(mon.alerts.lots)
        open_before = _open_positions(mon)
        marks_before = mon.alerts.clear_marks()
        st.monitor, out = observe(mon, obs, policies)
        reopened = _open_positions(st.monitor) != open_before
        # a condition that started (or stopped) being clear changed state without a message
        remarked = st.monitor.alerts.clear_marks() != marks_before

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
            if out.alerts or out.triggers or reopened or remarked or policy_changed or _reply_mattered(obs, o):
                memo = Memo(obs, knobs)
        if out.alerts:
            self._watch()
        if not (late or out.alerts or out.triggers or supplier or memo or stash_of):
            return None
        return Emitted(
            alerts=(*late, *out.alerts),
            triggers=tuple(out.triggers),
            supplier=tuple(supplier),
            memo=memo,
            memo_of=o if memo is not None else None,
            stash_of=stash_of,
        )

    # --- one checkout or re-check ---------------------------------------------------------------

    def _checkout(self, c: Checkout) -> Emitted | None:
        st = self.state
        if st is None:
            if not c.lines:
                return None  # a re-check of a SKU with no rule state: nothing can be firing
            st = self.state = MonitorState(SkuMonitor.new(c.sku))
        # The checkout's policy is used, not kept: ``st.knobs`` is what the stream's memos compare to.
        policies = self.cfg.policies(c.knobs)
        mon = st.monitor
        for line in c.lines:
            if line.change in DEMAND_CHANGES:
                count_checkout(mon, line.rid, line.location, line.qty, line.occurred_ms, policies)
        if c.lines:
            latest = max(c.lines, key=lambda ln: ln.occurred_ms)
            now, event_id = latest.occurred_ms, latest.event_id
        else:
            now, event_id = max(self.cfg.stream.now_ms(), mon.alerts.clock_ms), ""
        late = self._fire_due(now, policies)
        obs = Observation.checkout(c.sku, now, c.position, event_id)
        st.monitor, out = observe(st.monitor, obs, policies)
        self._count_oversold(obs)
        self._watch()
        if not (late or out.alerts or out.triggers):
            return None
        return Emitted(alerts=(*late, *out.alerts), triggers=tuple(out.triggers))

    def _watch(self) -> None:
        """List this SKU for re-checks while a condition that may resolve without an event fires."""
        watchlist, st = self.cfg.watchlist, self.state
        if watchlist is None or st is None:
            return
        conditions = st.monitor.alerts.conditions
        firing = any(c.firing and kind in RECHECKED_KINDS for (kind, _loc, _subject), c in conditions.items())
        watchlist.mark(st.monitor.sku, firing)

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

    def _fire_due(self, now_ms: int, policies: RulePolicies) -> tuple[Alert, ...]:
        """Fire every open lot due by ``now_ms``, each at its own due instant (so the message is the
        same whichever observation or tick gets there first)."""
        st = self.state
        assert st is not None
        fired: list[Alert] = []
        for due in sorted({d for d in self._due_lots(policies.alerts.inbound_grace_ms) if d <= now_ms}):
            st.monitor.alerts, alerts = alert_rules.tick(st.monitor.alerts, due, policies.alerts)
            fired += alerts
        return tuple(fired)

    def _next_due(self) -> int | None:
        st = self.state
        assert st is not None
        dues = self._due_lots(self.cfg.policies(st.knobs).alerts.inbound_grace_ms)
        return min(dues) if dues else None

    def _tick(self, now_ms: int) -> list[Emitted]:
        st = self.state
        if st is None or not self.cfg.ticks:
            return []
        fired = self._fire_due(now_ms, self.cfg.policies(st.knobs))
        return [Emitted(alerts=fired)] if fired else []


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
