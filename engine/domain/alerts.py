"""Alert rules: a per-SKU state machine that turns observations into alert transitions.

``evaluate(state, observation, now_ms, policy, demand=…)`` returns the new state and the alerts that
changed status. A *condition* (kind, location, subject) fires once when it becomes true and resolves
once when it is clearly false again; between the two it is silent, however often it is re-observed.
Each firing starts a new *episode*; ``alert_id = sha1(kind|sku|location|subject|episode)`` is shared
by the firing and the resolved message of that episode, so replaying the same observations from the
same (recovered) state yields the same ids.

| kind | location | fires when | resolves when |
|---|---|---|---|
| low_stock | each in use | ATP ≤ T (T = policy threshold, > 0) | ATP > T + band, band = max(1, ⌈T/10⌉) |
| stockout | each in use | ATP + backorder room ≤ 0 | ATP + backorder room > band (the low-stock band) |
| oversold | each | short > 0 (live reservations without supply) | short = 0 |
| order_unfulfillable | order's | an order_placed was refused | no refusal there for a quiet period |
| promise_at_risk | "" | a reply lists lines the command left short | a reply lists none and no line is short (oversold = 0) |
| promise_slipped | "" | a reply lists lines whose promised date moved later | one-shot |
| inbound_late | lot's | time > lot ETA + grace, lot still open | the lot is received or cancelled, or its ETA moves past the clock |
| demand_surge | each | recent/day ≥ max(M, baseline·(1 + P/100)) | recent/day < max(M/2, baseline·(1 + P/200)) |

low_stock, stockout, oversold, promise_at_risk and demand_surge resolve only once clear for
``resolve_after_ms`` without a break. A location is *in use* with stock, inbound, reservations or
recent demand; one without any is not judged (and resolves if it was firing). ATP is the
location's (safety holds back only stock that is there; backordered units take nothing). The
backorder room (mode backorder: the allowance left, which a hold at any location may take) keeps a
location selling, so stockout waits until it is used up; low_stock does not count it, as stock is
low whether or not sales go on as backorders. order_unfulfillable gathers the refused orders of a SKU and location into one
episode: the firing names the first, follow-up firings (``revision`` + 1, at most one an hour)
and the resolution carry the count, the units and the latest orders.
(P = demand_surge_pct, M = surge_min_units; ``supplier_unreliable`` lives in ``engine.domain.suppliers``
since its state is keyed by supplier, but uses the same ``Condition`` and ``build_alert``.)

``promise_at_risk`` is one condition per SKU: while it fires, a reply that names a reservation the
episode had not named yet emits another ``firing`` message of the same episode with ``revision`` + 1,
so every affected reservation is announced. One-shot alerts take their id from the triggering
``event_id`` in place of an episode number (``episode`` = 1).

Time: ``inbound_late`` is judged against the SKU's clock, the latest of the event times and tick
times seen — so a periodic ``tick`` makes a quiet SKU's late lot fire. Positions are judged per
location in sorted order, so replies from Lua and from the oracle (different key order) give the
same alerts in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from engine.domain.demand import DemandReading
from engine.domain.observation import LocationFigures, Observation, PositionFigures
from engine.domain.outputs import Alert, AlertKind, ReservationImpact, Severity, rfc3339, stable_id

if TYPE_CHECKING:
    from engine.domain.policy import Policy

#: critical = someone should act now: a promise made to a customer is broken or at risk. A SKU
#: that sells out, or orders refused for want of stock, are what a sale is expected to bring.
SEVERITY: dict[AlertKind, Severity] = {
    "low_stock": "warning",
    "stockout": "warning",
    "oversold": "critical",
    "order_unfulfillable": "warning",
    "promise_at_risk": "critical",
    "promise_slipped": "warning",
    "inbound_late": "warning",
    "demand_surge": "info",
    "supplier_unreliable": "warning",
}


@dataclass(frozen=True)
class AlertPolicy:
    """Thresholds of the per-SKU rules."""

    low_stock: int = 10
    """Threshold T of low_stock; 0 turns the rule off (stockout still covers ATP ≤ 0)."""
    demand_surge_pct: float = 50.0
    surge_min_units: int = 10
    """A surge needs at least this many units per day, so 1 → 2 units is no surge."""
    inbound_grace_ms: int = 0
    """A lot is late once the clock passes ETA + grace."""
    resolve_after_ms: int = 60 * 60_000
    """low_stock, stockout, oversold, promise_at_risk and demand_surge resolve only once clear for
    this long without a break (SKU clock): a SKU sold out again within the hour is still the same
    episode, not a new page."""
    unfulfillable_quiet_ms: int = 8 * 60 * 60_000
    """Refused orders of one SKU and location are one order_unfulfillable episode until this long
    passes without one (8 h: at most three episodes a day); while they go on, the episode's totals
    are sent again at most once per ``UNFULFILLABLE_UPDATE_MS``."""

    def __post_init__(self) -> None:
        if min(self.low_stock, self.surge_min_units, self.inbound_grace_ms, self.resolve_after_ms) < 0:
            raise ValueError("low_stock, surge_min_units, inbound_grace_ms and resolve_after_ms must be ≥ 0")
        if self.unfulfillable_quiet_ms < 1:
            raise ValueError(f"unfulfillable_quiet_ms must be ≥ 1, got {self.unfulfillable_quiet_ms}")
        if not self.demand_surge_pct > 0:
            raise ValueError(f"demand_surge_pct must be > 0, got {self.demand_surge_pct}")

    @property
    def low_stock_band(self) -> int:
        """Hysteresis of low_stock: it resolves only above T + band."""
        return max(1, math.ceil(self.low_stock / 10))

    @classmethod
    def from_settings(cls, settings: Any, policy: Policy | None = None) -> AlertPolicy:
        """Defaults from ``Settings`` (``low_stock_threshold``, ``demand_surge_pct``); a SKU policy's
        ``low_stock`` > 0 overrides the threshold (its default 0 means "use the engine default")."""
        low = (
            policy.low_stock if policy is not None and policy.low_stock > 0 else settings.low_stock_threshold
        )
        return cls(
            low_stock=int(low),
            demand_surge_pct=float(settings.demand_surge_pct),
            resolve_after_ms=int(settings.alert_resolve_after_s * 1000),
            unfulfillable_quiet_ms=int(settings.unfulfillable_quiet_s * 1000),
        )


@dataclass
class Condition:
    """Transition state of one alert condition."""

    episode: int = 0
    """Firings so far (the current or last episode)."""
    firing: bool = False
    revision: int = 0
    named: dict[str, int] = field(default_factory=dict)
    """promise_at_risk: reservation → short, as announced in the current episode."""
    clear_since_ms: int = -1
    """Since when the firing condition has been clear without a break (SKU clock); -1: it is not."""
    count: int = 0
    units: int = 0
    orders: list[str] = field(default_factory=list)
    last_ms: int = 0
    sent_ms: int = 0
    """order_unfulfillable: refused orders, their units, their ids (newest first, bounded), when the
    last was refused and when the episode's totals were last sent."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a snapshot taken before a field existed resumes with the field's default
        self.__dict__.update({**_CONDITION_DEFAULTS, **state})


_CONDITION_DEFAULTS: dict[str, Any] = {"clear_since_ms": -1, "count": 0, "units": 0, "orders": [], "last_ms": 0, "sent_ms": 0}

#: The orders an order_unfulfillable alert names (newest first).
UNFULFILLABLE_ORDERS_SHOWN = 20
#: How often, at most, a going order_unfulfillable episode sends its totals again (SKU clock).
UNFULFILLABLE_UPDATE_MS = 60 * 60_000


def transition(
    cond: Condition, fire: bool, clear: bool, now_ms: int = 0, clear_for_ms: int = 0
) -> Literal["firing", "resolved"] | None:
    """Move ``cond``: fire when idle and ``fire``; resolve when firing and ``clear`` has held,
    observation after observation, for ``clear_for_ms`` by ``now_ms``; else nothing.

    ``fire`` and ``clear`` are separate predicates so the gap between them is the hysteresis in
    level, ``clear_for_ms`` the one in time.
    """
    if not cond.firing:
        if not fire:
            return None
        cond.firing = True
        cond.episode += 1
        cond.revision = 0
        cond.named = {}
        cond.clear_since_ms = -1
        return "firing"
    if not clear:
        cond.clear_since_ms = -1
        return None
    if cond.clear_since_ms < 0:
        cond.clear_since_ms = now_ms
    if now_ms - cond.clear_since_ms < clear_for_ms:
        return None
    cond.firing = False
    cond.clear_since_ms = -1
    return "resolved"


def alert_id(kind: str, sku: str, location: str, subject: str, episode: int | str) -> str:
    """The deterministic id of an alert episode (or of a one-shot alert, with its event token)."""
    return stable_id(kind, sku, location, subject, episode)


def build_alert(
    *,
    kind: str,
    status: Literal["firing", "resolved"],
    sku: str,
    location: str,
    subject: str,
    episode: int,
    occurred_ms: int,
    event_id: str,
    summary: str,
    values: Mapping[str, int | float],
    revision: int = 0,
    reservations: Iterable[ReservationImpact] = (),
    supplier: str = "",
    id_override: str = "",
) -> Alert:
    """An ``Alert`` with its id computed from (kind, sku, location, subject, episode) unless
    ``id_override`` is given."""
    return Alert(
        alert_id=id_override or alert_id(kind, sku, location, subject, episode),
        kind=kind,  # type: ignore[arg-type]  # pydantic validates the literal
        status=status,
        severity=SEVERITY[kind],
        sku=sku,
        location=location,
        subject=subject,
        episode=episode,
        revision=revision,
        occurred_at=rfc3339(occurred_ms),
        occurred_ms=occurred_ms,
        event_id=event_id,
        supplier=supplier,
        summary=summary,
        values={k: round(v, 2) if isinstance(v, float) else v for k, v in values.items()},
        reservations=list(reservations),
    )


@dataclass
class OpenLot:
    """An inbound lot of the SKU that has not been received or cancelled."""

    location: str
    qty: int
    eta_ms: int
    supplier: str
    created_ms: int


@dataclass
class AlertState:
    """Everything the rules remember about one SKU (picklable; lives in the flow's state)."""

    sku: str
    conditions: dict[tuple[str, str, str], Condition] = field(default_factory=dict)
    """(kind, location, subject) → its transition state. Kept after resolving: the episode counter
    must survive for the next firing's id."""
    lots: dict[str, OpenLot] = field(default_factory=dict)
    clock_ms: int = 0

    def condition(self, kind: str, location: str = "", subject: str = "") -> Condition:
        """The condition of (kind, location, subject), created idle when new."""
        key = (kind, location, subject)
        cond = self.conditions.get(key)
        if cond is None:
            cond = self.conditions[key] = Condition()
        return cond

    def firing(self) -> list[tuple[str, str, str]]:
        """Keys of the conditions firing now, sorted."""
        return sorted(k for k, c in self.conditions.items() if c.firing)

    def clear_marks(self) -> frozenset[tuple[tuple[str, str, str], int]]:
        """Since when each firing condition has been clear: what judging a position can change
        without sending anything (so a replay must see that position again)."""
        return frozenset((k, c.clear_since_ms) for k, c in self.conditions.items() if c.firing and c.clear_since_ms >= 0)


@dataclass(frozen=True)
class _Ctx:
    sku: str
    occurred_ms: int
    event_id: str

    def alert(self, kind: str, status: Literal["firing", "resolved"], cond: Condition, **kw: Any) -> Alert:
        return build_alert(
            kind=kind,
            status=status,
            sku=self.sku,
            episode=cond.episode,
            revision=cond.revision,
            occurred_ms=self.occurred_ms,
            event_id=self.event_id,
            **kw,
        )

    def one_shot(self, kind: str, location: str, subject: str, **kw: Any) -> Alert:
        token = f"event:{self.event_id}" if self.event_id else f"ms:{self.occurred_ms}"
        return build_alert(
            kind=kind,
            status="firing",
            sku=self.sku,
            location=location,
            subject=subject,
            episode=1,
            occurred_ms=self.occurred_ms,
            event_id=self.event_id,
            id_override=alert_id(kind, self.sku, location, subject, token),
            **kw,
        )


def evaluate(
    state: AlertState | None,
    obs: Observation,
    now_ms: int,
    policy: AlertPolicy,
    *,
    demand: Mapping[str, DemandReading] | None = None,
) -> tuple[AlertState, list[Alert]]:
    """Apply one observation of ``obs.sku``; returns the state (``state`` mutated, or a new one when
    None) and the alert transitions it caused, in a deterministic order.

    ``now_ms`` is the caller's clock for lateness (normally the event time; the SKU's clock never
    goes back). ``demand`` maps location → the demand reading after this observation.
    """
    if state is None:
        state = AlertState(sku=obs.sku)
    elif state.sku != obs.sku:
        raise ValueError(f"observation of {obs.sku!r} given to the alert state of {state.sku!r}")
    state.clock_ms = max(state.clock_ms, now_ms, obs.occurred_ms)
    ctx = _Ctx(state.sku, obs.occurred_ms, obs.event_id)
    out: list[Alert] = []
    out += _book_lots(state, obs, ctx)
    out += _order_unfulfillable(state, obs, policy, ctx)
    out += _promise_slipped(obs, ctx)
    out += _promise_at_risk(state, obs, policy, ctx)
    if obs.position is not None:
        out += _position_rules(state, obs.position, policy, ctx, demand or {})
    for loc, reading in sorted((demand or {}).items()):
        out += _demand_surge(state, loc, reading, policy, ctx)
    out += _late_lots(state, policy, ctx)
    return state, out


def tick(
    state: AlertState,
    now_ms: int,
    policy: AlertPolicy,
    *,
    position: PositionFigures | None = None,
    demand: Mapping[str, DemandReading] | None = None,
) -> tuple[AlertState, list[Alert]]:
    """A periodic observation of a (possibly quiet) SKU: lets its clock reach ``now_ms`` so late lots
    fire, and judges a freshly read ``position`` / ``demand`` if the caller has them."""
    return evaluate(state, Observation.tick(state.sku, now_ms, position), now_ms, policy, demand=demand)


# --- rules ----------------------------------------------------------------------------------------


def _in_use(f: LocationFigures, demand: DemandReading | None) -> bool:
    """A location with stock, inbound or reservations now, or with recent demand. One with none (a
    warehouse the SKU is not stocked at, or written off with no one asking) sells nothing: its ATP
    of 0 is no sell-out, so low_stock and stockout are not judged there. Only the
    figures and the demand count, never what came before: a replay after a crash judges alike."""
    busy = f.on_hand or f.in_transit or f.held or f.committed or f.short
    return bool(busy) or (demand is not None and demand.recent_units > 0)


def _position_rules(
    state: AlertState, pos: PositionFigures, policy: AlertPolicy, ctx: _Ctx, demand: Mapping[str, DemandReading]
) -> list[Alert]:
    out: list[Alert] = []
    threshold, band = policy.low_stock, policy.low_stock_band
    now, least = state.clock_ms, policy.resolve_after_ms
    room = pos.backorder_room
    for loc in sorted(pos.locations):
        f = pos.locations[loc]
        used = _in_use(f, demand.get(loc))

        cond = state.condition("low_stock", loc)
        status = transition(
            cond, used and threshold > 0 and f.atp <= threshold,
            not used or threshold == 0 or f.atp > threshold + band, now, least,
        )
        if status:
            what = "at or below" if status == "firing" else "back above"
            limit = threshold if status == "firing" else threshold + band
            out.append(
                ctx.alert(
                    "low_stock",
                    status,
                    cond,
                    location=loc,
                    subject="",
                    summary=f"ATP {f.atp} at {loc} is {what} {limit} (low-stock threshold {threshold})",
                    values={**_figures(f), "threshold": threshold, "resolve_above": threshold + band},
                )
            )

        # resolves above the low-stock band, so a single unit released does not end a sell-out; a
        # hold here may still take the backorder room, so a location selling on backorder is not out
        cond = state.condition("stockout", loc)
        sellable = f.atp + room
        status = transition(cond, used and sellable <= 0, not used or sellable > band, now, least)
        if status:
            text = "nothing left to promise" if status == "firing" else "units to promise again"
            out.append(
                ctx.alert(
                    "stockout",
                    status,
                    cond,
                    location=loc,
                    subject="",
                    summary=f"{text} at {loc}: ATP {f.atp}" + (f", backorder room {room}" if room else ""),
                    values={**_figures(f), "backorder_room": room, "resolve_above": band},
                )
            )

        cond = state.condition("oversold", loc)
        status = transition(cond, f.short > 0, f.short == 0, now, least)
        if status:
            text = (
                f"{f.short} promised units at {loc} have no supply"
                if status == "firing"
                else f"every promise at {loc} has supply again"
            )
            out.append(
                ctx.alert(
                    "oversold",
                    status,
                    cond,
                    location=loc,
                    subject="",
                    summary=text,
                    values={**_figures(f), "short": f.short},
                )
            )
    return out


def _figures(f: LocationFigures) -> dict[str, int]:
    return {
        "atp": f.atp,
        "on_hand": f.on_hand,
        "promisable_in_transit": f.promisable_in_transit,
        "committed": f.committed,
        "held": f.held,
        "safety": f.safety,
        "backordered": f.backordered,
    }


def _order_unfulfillable(state: AlertState, obs: Observation, policy: AlertPolicy, ctx: _Ctx) -> list[Alert]:
    """Refused stream orders of one SKU and location are one episode: it fires at the first,
    sends its totals again at most hourly while refusals go on, and resolves (with the totals) at
    the first observation after a quiet period without one."""
    out: list[Alert] = []
    quiet, clock = policy.unfulfillable_quiet_ms, state.clock_ms
    for (kind, loc, _subject), cond in sorted(state.conditions.items()):
        if kind == "order_unfulfillable" and cond.firing and clock >= cond.last_ms + quiet:
            cond.firing = False
            out.append(_unfulfillable_alert("resolved", cond, loc, ctx, f"no order refused at {loc} for "
                                            f"{quiet // 60_000} min"))
    if obs.command != "order_placed" or obs.status != "refused":
        return out
    cond = state.condition("order_unfulfillable", obs.location)
    fresh = transition(cond, True, False, clock)
    if fresh:
        cond.count, cond.units, cond.orders, cond.sent_ms = 0, 0, [], clock
    cond.count += 1
    cond.units += obs.qty
    cond.orders = [obs.rid, *(o for o in cond.orders if o != obs.rid)][:UNFULFILLABLE_ORDERS_SHOWN]
    cond.last_ms = clock
    if not fresh and clock - cond.sent_ms < min(quiet, UNFULFILLABLE_UPDATE_MS):
        return out
    if not fresh:
        cond.revision += 1
        cond.sent_ms = clock
    latest = f"latest: {obs.rid} for {obs.qty} units ({obs.reason or 'refused'}), {obs.available} available"
    out.append(_unfulfillable_alert("firing", cond, obs.location, ctx, latest, obs))
    return out


def _unfulfillable_alert(status: Literal["firing", "resolved"], cond: Condition, loc: str, ctx: _Ctx,
                         detail: str, obs: Observation | None = None) -> Alert:
    values: dict[str, int | float] = {"orders": cond.count, "units": cond.units}
    if obs is not None:
        values.update(qty=obs.qty, available=obs.available)
    return ctx.alert(
        "order_unfulfillable",
        status,
        cond,
        location=loc,
        subject="",
        summary=f"{cond.count} order(s) for {cond.units} units could not be reserved at {loc}; {detail}",
        values=values,
        reservations=[ReservationImpact(rid=rid) for rid in cond.orders],
    )


def _promise_slipped(obs: Observation, ctx: _Ctx) -> list[Alert]:
    slips = [s for s in obs.slipped if s.new_ms > s.old_ms]
    if not slips:
        return []
    impacts = [
        ReservationImpact(
            rid=s.rid,
            old_promised_ms=s.old_ms,
            new_promised_ms=s.new_ms,
            old_promised_at=rfc3339(s.old_ms) if s.old_ms else "",
            new_promised_at=rfc3339(s.new_ms) if s.new_ms else "",
        )
        for s in slips
    ]
    subject = obs.inbound_id if obs.command.startswith("inbound_") or obs.command == "receipt" else ""
    cause = f" after {obs.command} of lot {subject}" if subject else f" after {obs.command}"
    return [
        ctx.one_shot(
            "promise_slipped",
            "",
            subject,
            summary=f"{len(slips)} reservation(s) promised later{cause}",
            values={"reservations": len(slips), "max_delay_ms": max(s.new_ms - s.old_ms for s in slips)},
            reservations=impacts,
        )
    ]


def _promise_at_risk(state: AlertState, obs: Observation, policy: AlertPolicy, ctx: _Ctx) -> list[Alert]:
    if obs.position is None:  # a tick without a position knows nothing of the reservations
        return []
    at_risk = {a.rid: a.short for a in obs.at_risk}
    cond = state.condition("promise_at_risk")
    status = transition(cond, bool(at_risk), not at_risk and obs.position.oversold == 0, state.clock_ms,
                        policy.resolve_after_ms)
    if status is None and cond.firing and any(rid not in cond.named for rid in at_risk):
        cond.revision += 1
        status = "firing"
    if status is None:
        return []
    if status == "firing":
        cond.named.update(at_risk)
        impacts = [ReservationImpact(rid=a.rid, short=a.short) for a in obs.at_risk]
        short = sum(at_risk.values())
        text = f"{len(impacts)} reservation(s) lack {short} units of supply"
    else:
        impacts = [ReservationImpact(rid=rid, short=0) for rid in cond.named]
        short = 0
        text = f"the {len(impacts)} reservation(s) at risk have supply again or are gone"
    return [
        ctx.alert(
            "promise_at_risk",
            status,
            cond,
            location="",
            subject="",
            summary=text,
            values={"reservations": len(impacts), "short": short, "oversold": obs.position.oversold},
            reservations=impacts,
        )
    ]


def _demand_surge(
    state: AlertState, loc: str, r: DemandReading, policy: AlertPolicy, ctx: _Ctx
) -> list[Alert]:
    if not r.has_baseline:
        return []
    pct, least = policy.demand_surge_pct, policy.surge_min_units
    fire_level = max(least, r.baseline_per_day * (1 + pct / 100))
    clear_level = max(least / 2, r.baseline_per_day * (1 + pct / 200))
    cond = state.condition("demand_surge", loc)
    status = transition(cond, r.recent_per_day >= fire_level, r.recent_per_day < clear_level, state.clock_ms,
                        policy.resolve_after_ms)
    if status is None:
        return []
    values: dict[str, int | float] = {
        "recent_units": r.recent_units,
        "window_hours": r.window_hours,
        "baseline_per_day": r.baseline_per_day,
        "baseline_days": r.baseline_days,
        "threshold_pct": pct,
        "fire_level": fire_level,
        "resolve_below": clear_level,
    }
    growth = r.growth_pct
    if growth is not None:
        values["growth_pct"] = growth
    shown = f"{growth:+.0f}%" if growth is not None else "from nothing"
    what = "surged" if status == "firing" else "is back to normal"
    return [
        ctx.alert(
            "demand_surge",
            status,
            cond,
            location=loc,
            subject="",
            summary=f"demand at {loc} {what}: {r.recent_units} units in {r.window_hours} h vs "
            f"{r.baseline_per_day:.1f}/day before ({shown})",
            values=values,
        )
    ]


def _book_lots(state: AlertState, obs: Observation, ctx: _Ctx) -> list[Alert]:
    """Keep the open-lot book; a lot that closes resolves its inbound_late."""
    if not obs.applied:
        return []
    if obs.command == "inbound_created":
        state.lots[obs.inbound_id] = OpenLot(obs.location, obs.qty, obs.eta_ms, obs.supplier, obs.occurred_ms)
    elif obs.command == "inbound_updated" and obs.inbound_id in state.lots:
        lot = state.lots[obs.inbound_id]
        lot.eta_ms = obs.eta_ms or lot.eta_ms
        lot.qty = obs.qty or lot.qty
    elif obs.command == "inbound_cancelled" and obs.inbound_id in state.lots:
        return _close_lot(state, obs.inbound_id, "cancelled", {}, ctx)
    elif obs.command == "receipt":
        lot_id = obs.lot.inbound_id if obs.lot is not None else obs.inbound_id
        if lot_id in state.lots:
            return _close_lot(state, lot_id, "received", {"received_qty": obs.qty}, ctx)
    return []


def _close_lot(state: AlertState, lot_id: str, how: str, extra: dict[str, int], ctx: _Ctx) -> list[Alert]:
    lot = state.lots.pop(lot_id)
    key = ("inbound_late", lot.location, lot_id)
    cond = state.conditions.pop(key, None)  # a closed lot never fires again: forget its condition
    if cond is None or transition(cond, False, True) is None:
        return []
    return [
        ctx.alert(
            "inbound_late",
            "resolved",
            cond,
            location=lot.location,
            subject=lot_id,
            supplier=lot.supplier,
            summary=f"late inbound lot {lot_id} was {how}",
            values={
                "eta_ms": lot.eta_ms,
                "qty": lot.qty,
                "late_by_ms": max(0, ctx.occurred_ms - lot.eta_ms),
                **extra,
            },
        )
    ]


def _late_lots(state: AlertState, policy: AlertPolicy, ctx: _Ctx) -> list[Alert]:
    out: list[Alert] = []
    clock = state.clock_ms
    for lot_id, lot in sorted(state.lots.items(), key=lambda item: (item[1].eta_ms, item[0])):
        due = lot.eta_ms + policy.inbound_grace_ms
        cond = state.condition("inbound_late", lot.location, lot_id)
        status = transition(cond, clock > due, clock <= due)
        if status is None:
            continue
        text = (
            f"inbound lot {lot_id} ({lot.qty} units from {lot.supplier}) is past its ETA {rfc3339(lot.eta_ms)}"
            if status == "firing"
            else f"inbound lot {lot_id} is no longer late: ETA moved to {rfc3339(lot.eta_ms)}"
        )
        out.append(
            ctx.alert(
                "inbound_late",
                status,
                cond,
                location=lot.location,
                subject=lot_id,
                supplier=lot.supplier,
                summary=text,
                values={"eta_ms": lot.eta_ms, "qty": lot.qty, "late_by_ms": max(0, clock - lot.eta_ms)},
            )
        )
    return out
