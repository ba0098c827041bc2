"""The per-supplier logic of the flow, driven directly: statistics, alerts and reliability writes."""

from __future__ import annotations

from engine import metrics
from engine.domain.outputs import Alert
from engine.domain.suppliers import SupplierParams, SupplierReceipt
from engine.flow.alert_monitor import LotChange
from engine.flow.supplier_monitor import ReliabilityWrite, SupplierLogic

T0 = 1_893_456_000_000


def receipt(sku: str, expected: int, received: int, late: bool = False) -> SupplierReceipt:
    return SupplierReceipt(supplier="S1", sku=sku, location="WH1", inbound_id=f"L-{sku}", expected_qty=expected,
                           received_qty=received, eta_ms=T0, received_ms=T0 + (1 if late else 0), event_id="ev")


def lot(sku: str, lot_id: str, open_: bool = True, uses: bool = True) -> LotChange:
    return LotChange("S1", sku, lot_id, open_, uses)


def run(lg: SupplierLogic, *messages: object) -> list[Alert | ReliabilityWrite]:
    out, discard = lg.on_batch(list(messages))  # type: ignore[arg-type]
    assert discard is False
    return list(out)


def test_a_short_receipt_lowers_the_score_and_writes_it_to_the_skus_holding_open_lots(monkeypatch) -> None:
    # Other tests may have filled the bounded supplier label set; start from an empty one.
    monkeypatch.setattr(metrics, "_suppliers", metrics._BoundedLabel(metrics.SUPPLIER_LIMIT))
    lg = SupplierLogic.builder(SupplierParams())(None)
    opened = run(lg, lot("A", "LA"), lot("B", "LB"), lot("C", "LC"), lot("C", "LC", open_=False),
                 lot("N", "LN", uses=False))
    assert opened == []  # an unscored supplier is at 1000 ‰, what the scripts assume anyway

    out = run(lg, receipt("D", expected=80, received=10))  # fill 1 + 0.2·(0.125 − 1) = 0.825

    # Not C (its lot closed), not N (its policy does not use reliability).
    assert out == [ReliabilityWrite("S1", "A", 825, "rel.S1.1.825"), ReliabilityWrite("S1", "B", 825, "rel.S1.1.825")]
    assert metrics.SUPPLIER_RELIABILITY.labels("S1")._value.get() == 0.825


def test_a_sku_opening_a_lot_of_a_scored_supplier_gets_the_figure_once() -> None:
    lg = SupplierLogic.builder(SupplierParams())(None)
    run(lg, receipt("D", expected=80, received=10))

    first = run(lg, lot("E", "LE1"))
    second = run(lg, lot("E", "LE2"))
    stopped = run(lg, lot("E", "LE1", uses=False), lot("E", "LE2", uses=False))  # policy stops using it
    later = run(lg, receipt("D", expected=80, received=80))

    assert first == [ReliabilityWrite("S1", "E", 825, "rel.S1.1.825")]
    assert second == [] and stopped == []
    assert [w for w in later if isinstance(w, ReliabilityWrite)] == []


def test_late_and_short_receipts_fire_supplier_unreliable_under_an_id_of_the_supplier_alone() -> None:
    lg = SupplierLogic.builder(SupplierParams(unreliable_below=0.8))(None)
    out = run(lg, receipt("X", expected=40, received=10, late=True))  # 0.8 × 0.85 = 0.68
    alerts = [a for a in out if isinstance(a, Alert)]

    assert [(a.kind, a.status, a.subject, a.sku) for a in alerts] == [("supplier_unreliable", "firing", "S1", "X")]
    other = SupplierLogic.builder(SupplierParams(unreliable_below=0.8))(None)
    again = [a for a in run(other, receipt("Y", expected=40, received=10, late=True)) if isinstance(a, Alert)]
    assert again[0].alert_id == alerts[0].alert_id  # the same episode of S1, whichever SKU reported it


def test_a_snapshot_restores_stats_lots_and_what_was_written() -> None:
    lg = SupplierLogic.builder(SupplierParams())(None)
    run(lg, lot("A", "LA"), receipt("D", expected=80, received=10))
    restored = SupplierLogic.builder(SupplierParams())(lg.snapshot())

    assert restored.state == lg.state
    assert run(restored, lot("A", "LA2")) == []  # A already holds 825
