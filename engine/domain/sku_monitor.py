"""All per-SKU rules in one step, for the flow's SKU-keyed stateful operator.

``observe(state, observation, policies)`` feeds one observation through, in this order:

1. the supplier receipt it carries, if any (built first, while the alert state still knows when
   the lot was created — the lead-time sample needs it);
2. demand statistics (orders add demand, once per reservation id; every observation lets time pass);
3. the alert rules, with the demand readings after step 2;
4. the replenishment rule, with the demand rates after step 2.

It returns the state and a ``SkuOutput``: alerts and triggers to publish (key = SKU), and the
``SupplierReceipt`` to route to the supplier-keyed step (``engine.domain.suppliers.record_receipt``).
A tick (``Observation.tick``) goes through the same path, so late lots fire and demand decays on a
quiet SKU; so does a checkout observation (``Observation.checkout``: a position read after changes
made through the API), after ``count_checkout`` has added the demand of those changes. Everything is
plain picklable dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.domain import alerts, demand, replenishment
from engine.domain.alerts import AlertPolicy, AlertState
from engine.domain.demand import CountedOrders, DemandParams, DemandStats
from engine.domain.observation import Observation
from engine.domain.outputs import Alert, ReplenishmentTrigger
from engine.domain.replenishment import ReplenishmentPolicy, ReplenishmentState
from engine.domain.suppliers import SupplierReceipt

if TYPE_CHECKING:
    from engine.domain.policy import Policy


@dataclass(frozen=True)
class RulePolicies:
    """The thresholds and parameters of every per-SKU rule."""

    alerts: AlertPolicy = field(default_factory=AlertPolicy)
    demand: DemandParams = field(default_factory=DemandParams)
    replenishment: ReplenishmentPolicy = field(default_factory=ReplenishmentPolicy)

    @classmethod
    def from_settings(cls, settings: Any, policy: Policy | None = None) -> RulePolicies:
        """Engine defaults from ``Settings``, overridden where the SKU's ``Policy`` sets a value."""
        return cls(
            alerts=AlertPolicy.from_settings(settings, policy),
            demand=DemandParams.from_settings(settings),
            replenishment=ReplenishmentPolicy.from_settings(settings, policy),
        )


@dataclass
class SkuMonitor:
    """Rule state of one SKU."""

    sku: str
    alerts: AlertState
    demand: dict[str, DemandStats] = field(default_factory=dict)
    replenishment: ReplenishmentState | None = None
    counted: CountedOrders = field(default_factory=CountedOrders)
    """Reservation ids already counted as demand (stream orders and checkouts alike)."""

    @classmethod
    def new(cls, sku: str) -> SkuMonitor:
        return cls(sku=sku, alerts=AlertState(sku=sku), replenishment=ReplenishmentState(sku=sku))

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a snapshot taken before ``counted`` existed resumes with nothing counted
        self.__dict__.update(state)
        if "counted" not in state:
            self.counted = CountedOrders()


@dataclass(frozen=True)
class SkuOutput:
    """What one observation produced."""

    alerts: list[Alert]
    triggers: list[ReplenishmentTrigger]
    receipt: SupplierReceipt | None = None


def observe(
    state: SkuMonitor | None, obs: Observation, policies: RulePolicies, now_ms: int | None = None
) -> tuple[SkuMonitor, SkuOutput]:
    """Run every per-SKU rule on one observation (``now_ms`` defaults to its event time)."""
    if state is None:
        state = SkuMonitor.new(obs.sku)
    elif state.sku != obs.sku:
        raise ValueError(f"observation of {obs.sku!r} given to the monitor of {state.sku!r}")
    now = obs.occurred_ms if now_ms is None else now_ms

    lot_id = obs.lot.inbound_id if obs.lot is not None else ""
    open_lot = state.alerts.lots.get(lot_id)
    receipt = SupplierReceipt.from_observation(obs, open_lot.created_ms if open_lot is not None else 0)

    state.demand = demand.observe(state.demand, obs, policies.demand, state.counted)
    readings = demand.readings(state.demand, now, policies.demand)
    state.alerts, fired = alerts.evaluate(state.alerts, obs, now, policies.alerts, demand=readings)
    state.replenishment, triggers = replenishment.evaluate(
        state.replenishment, obs, demand.rates(state.demand), policies.replenishment
    )
    return state, SkuOutput(alerts=fired, triggers=triggers, receipt=receipt)


def count_checkout(
    state: SkuMonitor, rid: str, location: str, qty: int, occurred_ms: int, policies: RulePolicies
) -> bool:
    """Count a checkout hold or confirm of ``qty`` units as demand at ``location``, unless reservation
    ``rid`` was counted already (by its hold, or by its stream order); True when it counted. Time
    passes and the rules are judged by the ``observe`` of the position read that follows."""
    return demand.count_order(state.demand, state.counted, rid, location, qty, occurred_ms, policies.demand)
