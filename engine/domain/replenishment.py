"""Replenishment triggers per (SKU, location): the reorder-point / order-up-to rule of README "Alerts and replenishment".

    IP  = on_hand + in_transit − committed − held           (inventory position)
    ROP = d·L + z·σ·√L                                        (reorder point)
    S   = ROP + d·R                                           (order-up-to level)
    qty = ⌈(S − IP) / pack⌉ · pack                            (when IP ≤ ROP)

``d``, ``σ``: daily demand rate and spread (``engine.domain.demand``). ``L``: the policy's lead time
if it sets one (> 0), else the EWMA of this position's own lots (lot created → received, in days),
else the engine default. ``z`` = the standard normal quantile of the service level
(``statistics.NormalDist``). ``R``: the review period.

One open trigger per position: when IP ≤ ROP and qty > 0 a trigger is emitted and the position is
*open*; it emits nothing more until it closes — an inbound lot is created at the location, a lot of
it is received there, or IP rises above ROP — after which the rule is judged again (at once, so a
lot smaller than asked for yields a new trigger for the rest). ``trigger_id`` =
``sha1(replenishment|sku|location|episode)``, episode = triggers of this position so far.

State is plain picklable dataclasses; ``evaluate`` mutates and returns the state it is given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from statistics import NormalDist
from typing import TYPE_CHECKING, Any, Literal

from engine.domain.demand import DemandRate
from engine.domain.observation import LocationFigures, Observation
from engine.domain.outputs import ReplenishmentTrigger, rfc3339, stable_id
from engine.domain.suppliers import LeadTime, observe_lead_time

if TYPE_CHECKING:
    from engine.domain.policy import Policy

LeadSource = Literal["policy", "learned", "default"]
_NO_DEMAND = DemandRate(0.0, 0.0, 0)


@dataclass(frozen=True)
class ReplenishmentPolicy:
    """The inputs of the rule that are not measured."""

    service_level: float = 0.95
    review_period_days: float = 1.0
    lead_time_days: float = 0.0
    """Fixed lead time; 0 = learn it from the position's receipts."""
    default_lead_time_days: float = 7.0
    """Lead time until one has been learned."""
    pack_size: int = 1
    lead_alpha: float = 0.2
    """EWMA weight of a new lead-time sample."""

    def __post_init__(self) -> None:
        if not 0 < self.service_level < 1:
            raise ValueError(f"service_level must be in (0, 1), got {self.service_level}")
        if not self.review_period_days > 0 or not self.default_lead_time_days > 0:
            raise ValueError("review_period_days and default_lead_time_days must be > 0")
        if self.lead_time_days < 0:
            raise ValueError(f"lead_time_days must be ≥ 0, got {self.lead_time_days}")
        if self.pack_size < 1:
            raise ValueError(f"pack_size must be ≥ 1, got {self.pack_size}")
        if not 0 < self.lead_alpha <= 1:
            raise ValueError(f"lead_alpha must be in (0, 1], got {self.lead_alpha}")

    @property
    def z(self) -> float:
        return z_for(self.service_level)

    @classmethod
    def from_settings(cls, settings: Any, policy: Policy | None = None) -> ReplenishmentPolicy:
        """Engine defaults (``service_level``, ``review_period_days``, ``default_lead_time_days``)
        with the SKU policy's ``pack_size`` and ``lead_time_days`` (0 = learn)."""
        return cls(
            service_level=float(settings.service_level),
            review_period_days=float(settings.review_period_days),
            default_lead_time_days=float(settings.default_lead_time_days),
            lead_time_days=float(policy.lead_time_days) if policy is not None else 0.0,
            pack_size=int(policy.pack_size) if policy is not None else 1,
        )


@lru_cache(maxsize=64)
def z_for(service_level: float) -> float:
    """The standard normal quantile of ``service_level`` (0.95 → 1.6449); cached, as every
    observation asks for it."""
    return NormalDist().inv_cdf(service_level)


def reorder_point(d: float, sigma: float, lead_days: float, z: float) -> float:
    """ROP = d·L + z·σ·√L."""
    return d * lead_days + z * sigma * math.sqrt(lead_days)


def order_up_to(rop: float, d: float, review_days: float) -> float:
    """S = ROP + d·R."""
    return rop + d * review_days


def order_qty(s: float, ip: int, pack: int) -> int:
    """⌈(S − IP) / pack⌉ · pack, never negative. The quotient is rounded to 9 decimals first so float
    noise (59.000000000001) does not cost a whole extra pack."""
    if s <= ip:
        return 0
    return math.ceil(round((s - ip) / pack, 9)) * pack


@dataclass(frozen=True)
class Plan:
    """Every number of the rule for one position at one instant."""

    d: float
    sigma: float
    lead_days: float
    lead_source: LeadSource
    z: float
    review_days: float
    rop: float
    s: float
    ip: int
    pack: int
    qty: int

    @property
    def due(self) -> bool:
        """IP ≤ ROP with something to order."""
        return self.ip <= self.rop and self.qty > 0


def plan(
    figures: LocationFigures, rate: DemandRate, lead: tuple[float, LeadSource], policy: ReplenishmentPolicy
) -> Plan:
    """The rule's numbers for one position."""
    lead_days, source = lead
    z = policy.z
    rop = reorder_point(rate.d, rate.sigma, lead_days, z)
    s = order_up_to(rop, rate.d, policy.review_period_days)
    ip = figures.inventory_position
    return Plan(
        d=rate.d,
        sigma=rate.sigma,
        lead_days=lead_days,
        lead_source=source,
        z=z,
        review_days=policy.review_period_days,
        rop=rop,
        s=s,
        ip=ip,
        pack=policy.pack_size,
        qty=order_qty(s, ip, policy.pack_size),
    )


@dataclass
class PositionState:
    """Trigger state of one (SKU, location)."""

    episode: int = 0
    open: bool = False
    lots: dict[str, int] = field(default_factory=dict)
    """Open inbound lots created at this location: id → creation event time (for the lead time)."""
    lead: LeadTime = field(default_factory=LeadTime)

    def lead_time(self, policy: ReplenishmentPolicy) -> tuple[float, LeadSource]:
        """L and where it came from."""
        if policy.lead_time_days > 0:
            return policy.lead_time_days, "policy"
        if self.lead.samples > 0 and self.lead.days > 0:
            return self.lead.days, "learned"
        return policy.default_lead_time_days, "default"


@dataclass
class ReplenishmentState:
    """Trigger state of every location of one SKU (picklable; lives in the flow's state)."""

    sku: str
    positions: dict[str, PositionState] = field(default_factory=dict)

    def position(self, location: str) -> PositionState:
        pos = self.positions.get(location)
        if pos is None:
            pos = self.positions[location] = PositionState()
        return pos


def trigger_id(sku: str, location: str, episode: int) -> str:
    """The deterministic id of a position's ``episode``-th trigger."""
    return stable_id("replenishment", sku, location, episode)


def evaluate(
    state: ReplenishmentState | None,
    obs: Observation,
    rates: Mapping[str, DemandRate],
    policy: ReplenishmentPolicy,
) -> tuple[ReplenishmentState, list[ReplenishmentTrigger]]:
    """Apply one observation of ``obs.sku``: book its inbound lots, then judge every location of its
    position (sorted). ``rates`` maps location → demand rate (missing = no demand). Returns the
    state (mutated, or new when None) and the triggers emitted."""
    if state is None:
        state = ReplenishmentState(sku=obs.sku)
    elif state.sku != obs.sku:
        raise ValueError(f"observation of {obs.sku!r} given to the replenishment state of {state.sku!r}")
    _book_lots(state, obs, policy)
    out: list[ReplenishmentTrigger] = []
    if obs.position is None:
        return state, out
    for loc in sorted(obs.position.locations):
        figures = obs.position.locations[loc]
        pos = state.position(loc)
        rate = rates.get(loc) or _NO_DEMAND
        lead = pos.lead_time(policy)
        # The cheap test first: most observations leave the position on the same side of ROP.
        above = figures.inventory_position > reorder_point(rate.d, rate.sigma, lead[0], policy.z)
        if pos.open and above:
            pos.open = False
        if pos.open or above:
            continue
        p = plan(figures, rate, lead, policy)
        if p.due:
            pos.open = True
            pos.episode += 1
            out.append(_trigger(state.sku, loc, pos.episode, obs, figures, p, policy))
    return state, out


def _book_lots(state: ReplenishmentState, obs: Observation, policy: ReplenishmentPolicy) -> None:
    if not obs.applied:
        return
    if obs.command == "inbound_created":
        pos = state.position(obs.location)
        pos.lots[obs.inbound_id] = obs.occurred_ms
        pos.open = False  # a lot was ordered for this position: the trigger is answered
    elif obs.command == "inbound_cancelled":
        for pos in state.positions.values():
            pos.lots.pop(obs.inbound_id, None)
    elif obs.command == "receipt" and obs.lot is not None:
        for pos in state.positions.values():
            created = pos.lots.pop(obs.lot.inbound_id, None)
            if created is not None:
                observe_lead_time(pos.lead, created, obs.occurred_ms, policy.lead_alpha)
                pos.open = False
        state.position(obs.location).open = False


def _trigger(
    sku: str,
    loc: str,
    episode: int,
    obs: Observation,
    figures: LocationFigures,
    p: Plan,
    policy: ReplenishmentPolicy,
) -> ReplenishmentTrigger:
    return ReplenishmentTrigger(
        trigger_id=trigger_id(sku, loc, episode),
        sku=sku,
        location=loc,
        episode=episode,
        occurred_at=rfc3339(obs.occurred_ms),
        occurred_ms=obs.occurred_ms,
        event_id=obs.event_id,
        qty=p.qty,
        pack_size=p.pack,
        demand_per_day=p.d,
        demand_sigma=p.sigma,
        lead_time_days=p.lead_days,
        lead_time_source=p.lead_source,
        service_level=policy.service_level,
        z=p.z,
        review_period_days=p.review_days,
        reorder_point=p.rop,
        order_up_to=p.s,
        inventory_position=p.ip,
        on_hand=figures.on_hand,
        in_transit=figures.in_transit,
        committed=figures.committed,
        held=figures.held,
    )
