"""The flow's per-supplier step: supplier statistics in bytewax state, and reliability write-backs.

Keyed by supplier id, it receives from the SKU steps every receipt that closed one of the
supplier's lots (``SupplierReceipt``) and every lot of the supplier opened or closed at a SKU
(``LotChange``). Receipts feed ``engine.domain.suppliers.record_receipt`` (on-time and fill rate,
``supplier_unreliable``); the score is exported as ``atp_supplier_reliability``.

Write-back: whenever the score's per-mille figure (``reliability_pm``) differs from the one last
sent to a SKU that holds open lots of the supplier and whose policy has ``use_reliability`` (as the
SKU step saw it), a ``ReliabilityWrite`` goes out; the writer step checks the policy in Redis once
more and applies it with the store's ``reliability`` command (the hold script then discounts the
supplier's lots). Only those SKUs are tracked, so a receipt costs writes for the SKUs that asked for
them, not for every SKU holding the supplier's lots. A SKU that opens a lot of an already-scored
supplier (or starts using reliability) gets the current figure at once. Each write carries a
deterministic event id, so a write replayed after a crash is a duplicate in the store.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from bytewax.operators import StatefulBatchLogic

from engine import metrics
from engine.domain.outputs import Alert
from engine.domain.suppliers import (
    SupplierParams,
    SupplierReceipt,
    SupplierStats,
    record_receipt,
    reliability_pm,
)
from engine.flow.alert_monitor import RETAIN, LotChange, SupplierMessage

FULL_PM = 1000
"""What the scripts assume for a supplier without a stored figure."""


@dataclass(frozen=True, slots=True)
class ReliabilityWrite:
    """Set ``supplier``'s reliability at ``sku`` to ``rel_pm`` (if the SKU's policy uses it)."""

    supplier: str
    sku: str
    rel_pm: int
    event_id: str


@dataclass
class SupplierState:
    """Everything one supplier's step keeps (pickled into bytewax snapshots)."""

    supplier: str
    stats: SupplierStats | None = None
    lots: dict[str, set[str]] = field(default_factory=dict)
    """SKU → ids of its open lots from this supplier, for the SKUs whose policy uses reliability."""
    written: dict[str, int] = field(default_factory=dict)
    """SKU → the last per-mille figure sent to it."""

    @property
    def rel_pm(self) -> int:
        return reliability_pm(self.stats.score) if self.stats is not None else FULL_PM


class SupplierLogic(StatefulBatchLogic[SupplierMessage, Alert | ReliabilityWrite, bytes]):
    """The bytewax logic of one supplier. Build with ``SupplierLogic.builder(params)``."""

    def __init__(self, params: SupplierParams, state: SupplierState | None) -> None:
        self.params = params
        self.state = state

    @classmethod
    def builder(cls, params: SupplierParams) -> Callable[[bytes | None], SupplierLogic]:
        def build(resume: bytes | None) -> SupplierLogic:
            return cls(params, pickle.loads(resume) if resume is not None else None)

        return build

    def on_batch(self, values: list[SupplierMessage]) -> tuple[Iterable[Alert | ReliabilityWrite], bool]:
        out: list[Alert | ReliabilityWrite] = []
        for msg in values:
            st = self.state
            if st is None:
                st = self.state = SupplierState(msg.supplier)
            if isinstance(msg, LotChange):
                out += self._lot(st, msg)
            else:
                out += self._receipt(st, msg)
        return out, RETAIN

    def snapshot(self) -> bytes:
        return pickle.dumps(self.state, protocol=pickle.HIGHEST_PROTOCOL)

    def _lot(self, st: SupplierState, msg: LotChange) -> list[ReliabilityWrite]:
        if not (msg.open and msg.uses_reliability):
            ids = st.lots.get(msg.sku)
            if ids is not None:
                ids.discard(msg.inbound_id)
                if not ids:
                    del st.lots[msg.sku]
            return []
        st.lots.setdefault(msg.sku, set()).add(msg.inbound_id)
        return self._writes(st, [msg.sku])

    def _receipt(self, st: SupplierState, receipt: SupplierReceipt) -> list[Alert | ReliabilityWrite]:
        st.stats, alerts = record_receipt(st.stats, receipt, self.params)
        metrics.set_supplier_reliability(st.supplier, st.stats.score)
        return [*alerts, *self._writes(st, sorted(st.lots))]

    @staticmethod
    def _writes(st: SupplierState, skus: list[str]) -> list[ReliabilityWrite]:
        pm = st.rel_pm
        receipts = st.stats.receipts if st.stats is not None else 0
        out = []
        for sku in skus:
            if st.written.get(sku, FULL_PM) != pm:
                st.written[sku] = pm
                out.append(ReliabilityWrite(st.supplier, sku, pm, f"rel.{st.supplier}.{receipts}.{pm}"))
        return out
