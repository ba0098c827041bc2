"""Supplier statistics from receipts against their inbound lots, and the ``supplier_unreliable`` alert.

Per supplier, each receipt that closes a lot is one observation:

* on time: 1 when the receipt's event time ≤ the lot's ETA, else 0;
* fill: received / expected units, capped at 1;

each folded into an EWMA (weight ``alpha``) that starts at 1.0 — a new supplier is trusted until
its receipts say otherwise, matching the scripts' default reliability of 1000 ‰. The
**score** = on_time × fill. ``supplier_unreliable`` fires when the score drops below
``unreliable_below`` and resolves when it is back at or above ``unreliable_below + band``.
``reliability_pm(score)`` is the per-mille figure the hold script uses to discount the supplier's
lots (``reliability`` command).

**Lead time** = receipt time − the lot's creation (event) time, in days, as an EWMA (the first
sample initialises it). ``LeadTime`` is also what replenishment learns per (SKU, location).

The state is keyed by supplier (a separate stateful step in the flow); its alerts carry the SKU
whose receipt moved the score and ``subject`` = ``supplier`` = the supplier id, and their id is
``sha1(supplier_unreliable|||supplier|episode)`` — independent of that SKU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from engine.domain.alerts import Condition, alert_id, build_alert, transition
from engine.domain.observation import Observation
from engine.domain.outputs import Alert

DAY_MS = 86_400_000


@dataclass(frozen=True)
class SupplierParams:
    """Tuning of the supplier statistics and their alert."""

    alpha: float = 0.2
    unreliable_below: float = 0.8
    band: float = 0.05

    def __post_init__(self) -> None:
        if not 0 < self.alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")
        if not 0 <= self.unreliable_below <= 1:
            raise ValueError(f"unreliable_below must be in [0, 1], got {self.unreliable_below}")
        if not 0 <= self.band <= 1:
            raise ValueError(f"band must be in [0, 1], got {self.band}")

    @classmethod
    def from_settings(cls, settings: Any) -> SupplierParams:
        """From ``Settings.supplier_alpha``, ``supplier_unreliable_below``, ``supplier_resolve_band``."""
        return cls(alpha=float(settings.supplier_alpha), unreliable_below=float(settings.supplier_unreliable_below),
                   band=float(settings.supplier_resolve_band))


@dataclass
class LeadTime:
    """EWMA of observed lead times in days."""

    days: float = 0.0
    samples: int = 0


def observe_lead_time(lead: LeadTime, created_ms: int, received_ms: int, alpha: float) -> LeadTime:
    """Fold one lot's lead time (``received_ms − created_ms``, never negative) into ``lead``; a lot
    whose creation time is unknown (``created_ms`` ≤ 0) teaches nothing."""
    if created_ms <= 0:
        return lead
    sample = max(0, received_ms - created_ms) / DAY_MS
    lead.days = sample if lead.samples == 0 else lead.days + alpha * (sample - lead.days)
    lead.samples += 1
    return lead


@dataclass(frozen=True)
class SupplierReceipt:
    """One receipt that closed a lot of ``supplier``."""

    supplier: str
    sku: str
    location: str
    inbound_id: str
    expected_qty: int
    received_qty: int
    eta_ms: int
    received_ms: int
    created_ms: int = 0
    """Event time of the lot's creation, 0 when unknown (then no lead-time sample)."""
    event_id: str = ""

    @classmethod
    def from_observation(cls, obs: Observation, created_ms: int = 0) -> SupplierReceipt | None:
        """The receipt in an applied ``receipt`` observation that closed a lot, else None."""
        if obs.command != "receipt" or not obs.applied or obs.lot is None:
            return None
        return cls(
            supplier=obs.lot.supplier,
            sku=obs.sku,
            location=obs.location,
            inbound_id=obs.lot.inbound_id,
            expected_qty=obs.lot.qty,
            received_qty=obs.qty,
            eta_ms=obs.lot.eta_ms,
            received_ms=obs.occurred_ms,
            created_ms=created_ms,
            event_id=obs.event_id,
        )


@dataclass
class SupplierStats:
    """What is known of one supplier (picklable; lives in the flow's supplier-keyed state)."""

    supplier: str
    on_time: float = 1.0
    fill: float = 1.0
    receipts: int = 0
    late: int = 0
    short: int = 0
    lead: LeadTime = field(default_factory=LeadTime)
    unreliable: Condition = field(default_factory=Condition)

    @property
    def score(self) -> float:
        """on_time × fill, in [0, 1]."""
        return self.on_time * self.fill


def reliability_pm(score: float) -> int:
    """A score in [0, 1] as per mille (0..1000), rounded to the nearest; out-of-range scores clamp."""
    if math.isnan(score):
        raise ValueError("score is NaN")
    return max(0, min(1000, round(score * 1000)))


def record_receipt(
    stats: SupplierStats | None, receipt: SupplierReceipt, params: SupplierParams
) -> tuple[SupplierStats, list[Alert]]:
    """Fold one receipt into its supplier's statistics; returns the stats (mutated, or new when None)
    and the ``supplier_unreliable`` transition it caused, if any."""
    if stats is None:
        stats = SupplierStats(supplier=receipt.supplier)
    elif stats.supplier != receipt.supplier:
        raise ValueError(f"receipt of {receipt.supplier!r} given to the stats of {stats.supplier!r}")
    if receipt.expected_qty <= 0 or receipt.received_qty < 0:
        raise ValueError("expected_qty must be > 0 and received_qty ≥ 0")
    on_time = 1.0 if receipt.received_ms <= receipt.eta_ms else 0.0
    fill = min(1.0, receipt.received_qty / receipt.expected_qty)
    a = params.alpha
    stats.on_time += a * (on_time - stats.on_time)
    stats.fill += a * (fill - stats.fill)
    stats.receipts += 1
    stats.late += on_time == 0.0
    stats.short += fill < 1.0
    observe_lead_time(stats.lead, receipt.created_ms, receipt.received_ms, a)

    score = stats.score
    clear_at = params.unreliable_below + params.band
    status = transition(stats.unreliable, score < params.unreliable_below, score >= clear_at)
    if status is None:
        return stats, []
    what = f"below {params.unreliable_below:g}" if status == "firing" else f"back at or above {clear_at:g}"
    alert = build_alert(
        kind="supplier_unreliable",
        status=status,
        sku=receipt.sku,
        location="",
        subject=stats.supplier,
        supplier=stats.supplier,
        episode=stats.unreliable.episode,
        occurred_ms=receipt.received_ms,
        event_id=receipt.event_id,
        id_override=alert_id("supplier_unreliable", "", "", stats.supplier, stats.unreliable.episode),
        summary=f"supplier {stats.supplier} score {score:.3f} (on time {stats.on_time:.3f} × fill "
        f"{stats.fill:.3f}) is {what}",
        values={
            "score": score,
            "on_time_rate": stats.on_time,
            "fill_rate": stats.fill,
            "threshold": params.unreliable_below,
            "resolve_at": clear_at,
            "receipts": stats.receipts,
            "reliability_pm": reliability_pm(score),
            "last_received_qty": receipt.received_qty,
            "last_expected_qty": receipt.expected_qty,
            "last_late_by_ms": max(0, receipt.received_ms - receipt.eta_ms),
        },
    )
    return stats, [alert]
