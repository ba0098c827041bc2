"""Supplier statistics on hand-computed cases: on-time and fill EWMAs, score, alert, lead time."""

import hashlib
import pickle

import pytest

from engine.domain.observation import ClosedLot, Observation
from engine.domain.suppliers import (
    LeadTime,
    SupplierParams,
    SupplierReceipt,
    SupplierStats,
    observe_lead_time,
    record_receipt,
    reliability_pm,
)
from engine.settings import Settings

T0 = 1_735_689_600_000
DAY = 86_400_000
P = SupplierParams()  # alpha 0.2, unreliable below 0.8, resolves at ≥ 0.85


def receipt(received: int = 100, expected: int = 100, late_ms: int = 0, n: int = 1) -> SupplierReceipt:
    eta = T0 + n * DAY
    return SupplierReceipt(
        supplier="ACME",
        sku="SKU-1",
        location="WH1",
        inbound_id=f"PO-{n}",
        expected_qty=expected,
        received_qty=received,
        eta_ms=eta,
        received_ms=eta + late_ms,
        created_ms=eta - 4 * DAY,
        event_id=f"rc-{n}",
    )


def test_scores_follow_the_ewma_by_hand_and_the_alert_fires_then_resolves_with_hysteresis():
    stats, alerts = record_receipt(None, receipt(late_ms=1, n=1), P)
    # late, full: on_time = 1 + 0.2·(0 − 1) = 0.8, fill = 1 → score 0.8, not below 0.8
    assert (stats.on_time, stats.fill, stats.score) == (pytest.approx(0.8), 1.0, pytest.approx(0.8))
    assert alerts == []

    stats, alerts = record_receipt(stats, receipt(received=50, n=2), P)
    # on time, half: on_time = 0.8 + 0.2·0.2 = 0.84, fill = 1 + 0.2·(0.5 − 1) = 0.9 → 0.756
    assert stats.score == pytest.approx(0.756)
    [fired] = alerts
    assert (fired.kind, fired.status, fired.episode, fired.severity) == (
        "supplier_unreliable",
        "firing",
        1,
        "warning",
    )
    assert (fired.sku, fired.location, fired.subject, fired.supplier) == ("SKU-1", "", "ACME", "ACME")
    assert fired.alert_id == hashlib.sha1(b"supplier_unreliable|||ACME|1").hexdigest()
    assert fired.values["on_time_rate"] == pytest.approx(0.84)
    assert fired.values["fill_rate"] == pytest.approx(0.9)
    assert fired.values["reliability_pm"] == 756
    assert fired.event_id == "rc-2" and fired.occurred_ms == T0 + 2 * DAY

    # Good receipts: 0.872·0.92 = 0.80224, 0.8976·0.936 = 0.8401536 — above 0.8 but below 0.85: still firing
    for n in (3, 4):
        stats, alerts = record_receipt(stats, receipt(n=n), P)
        assert alerts == []
    assert stats.score == pytest.approx(0.8401536)
    stats, alerts = record_receipt(stats, receipt(n=5), P)  # 0.91808·0.9488 = 0.871074…
    [resolved] = alerts
    assert (resolved.status, resolved.alert_id) == ("resolved", fired.alert_id)
    assert resolved.values["score"] == round(0.91808 * 0.9488, 2)  # alert values are rounded to what they mean
    assert (stats.receipts, stats.late, stats.short) == (5, 1, 1)


def test_on_time_at_exactly_the_eta_and_fill_capped_at_one():
    stats, _ = record_receipt(None, receipt(received=130, late_ms=0), P)
    assert (stats.on_time, stats.fill) == (1.0, 1.0)


def test_a_second_episode_gets_a_new_id():
    stats = None
    statuses = []
    # bad → 0.8·0.8 = 0.64; good ×5 → 0.934464² = 0.8732 ≥ 0.85 (the 4th, 0.91808² = 0.8429, is not)
    for n, (received, late) in enumerate([(0, DAY)] + [(100, 0)] * 5 + [(0, DAY)], 1):
        stats, alerts = record_receipt(stats, receipt(received=received, late_ms=late, n=n), P)
        statuses += [(a.status, a.episode) for a in alerts]
    assert statuses == [("firing", 1), ("resolved", 1), ("firing", 2)]


def test_reliability_per_mille():
    assert reliability_pm(0.8) == 800
    assert reliability_pm(0.8401536) == 840
    assert reliability_pm(0.9996) == 1000
    assert reliability_pm(1.2) == 1000 and reliability_pm(-0.1) == 0
    assert reliability_pm(SupplierStats("X").score) == 1000  # a new supplier is trusted
    with pytest.raises(ValueError):
        reliability_pm(float("nan"))


def test_lead_time_is_an_ewma_in_days_and_unknown_creation_teaches_nothing():
    lead = observe_lead_time(LeadTime(), T0, T0 + 4 * DAY, 0.2)
    assert (lead.days, lead.samples) == (4.0, 1)
    observe_lead_time(lead, T0, T0 + 6 * DAY, 0.2)
    assert lead.days == pytest.approx(4.4)
    observe_lead_time(lead, 0, T0 + 60 * DAY, 0.2)
    assert (lead.days, lead.samples) == (pytest.approx(4.4), 2)
    stats, _ = record_receipt(None, receipt(), P)
    assert stats.lead.days == pytest.approx(4.0)


def test_receipt_from_an_observation_only_when_a_lot_was_closed():
    obs = Observation(
        sku="SKU-1",
        command="receipt",
        occurred_ms=T0 + DAY,
        event_id="rc-1",
        location="WH1",
        qty=80,
        inbound_id="PO-1",
        lot=ClosedLot("PO-1", 100, T0, "ACME"),
    )
    r = SupplierReceipt.from_observation(obs, created_ms=T0 - DAY)
    assert r == SupplierReceipt("ACME", "SKU-1", "WH1", "PO-1", 100, 80, T0, T0 + DAY, T0 - DAY, "rc-1")
    plain = Observation(sku="SKU-1", command="receipt", occurred_ms=T0, location="WH1", qty=5)
    assert SupplierReceipt.from_observation(plain) is None
    dup = Observation(sku="SKU-1", command="receipt", occurred_ms=T0, status="duplicate", lot=obs.lot)
    assert SupplierReceipt.from_observation(dup) is None


def test_stats_pickle_and_bad_input_is_refused():
    stats, _ = record_receipt(None, receipt(received=10), P)
    assert pickle.loads(pickle.dumps(stats)) == stats
    with pytest.raises(ValueError, match="OTHER"):
        record_receipt(stats, SupplierReceipt("OTHER", "S", "L", "I", 1, 1, T0, T0), P)
    with pytest.raises(ValueError):
        record_receipt(None, receipt(expected=0), P)
    with pytest.raises(ValueError):
        SupplierParams(alpha=1.5)
    assert SupplierParams.from_settings(Settings(supplier_unreliable_below=0.6)).unreliable_below == 0.6
