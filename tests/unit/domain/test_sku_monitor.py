"""The whole per-SKU rule chain on the oracle's real replies: a flash sale, a slipping and short lot,
recovery — and a replay from a snapshot that reproduces the same message ids."""

import pickle

import pytest

from engine.domain.observation import Observation
from engine.domain.oracle import DAY_MS, SkuBook
from engine.domain.policy import Policy
from engine.domain.sku_monitor import RulePolicies, SkuMonitor, SkuOutput, observe
from engine.domain.suppliers import SupplierParams, SupplierStats, record_receipt
from engine.settings import Settings

T0 = 1_735_689_600_000  # 2025-01-01T00:00:00Z
HOUR = 3_600_000
SKU = "SKU-1"
POLICY = Policy(mode="presell", low_stock=20, pack_size=10, lead_time_days=4)
# resolve as soon as clear: the hand-checked trace below is about levels (time: tests/unit/domain/test_alerts.py)
POLICIES = RulePolicies.from_settings(Settings(alert_resolve_after_s=0), POLICY)


def script() -> list[tuple[str, dict, int]]:
    """(command, args, event time) — the input stream of one SKU."""
    steps: list[tuple[str, dict, int]] = [("count", {"loc": "WH1", "on_hand": 500}, T0 - 8 * DAY_MS)]
    for k in range(7, 0, -1):  # a week of 10 units a day: d = 10, σ = 0
        steps.append(
            ("order_placed", {"rid": f"hist-{k}", "qty": 10, "loc": "WH1"}, T0 - k * DAY_MS + 12 * HOUR)
        )
    for i in range(44):  # the flash sale: 43 orders of 10 drain ATP 430 to 0, the 44th is refused
        steps.append(
            ("order_placed", {"rid": f"sale-{i}", "qty": 10, "loc": "WH1"}, T0 + 10 * HOUR + i * 60_000)
        )
    lot = {"inbound_id": "PO-1", "loc": "WH1", "qty": 200, "eta_ms": T0 + 3 * DAY_MS, "supplier": "ACME"}
    steps += [
        ("inbound_created", lot, T0 + 12 * HOUR),
        ("order_placed", {"rid": "pre-a", "qty": 30, "loc": "WH1"}, T0 + 13 * HOUR),
        ("order_placed", {"rid": "pre-b", "qty": 30, "loc": "WH1"}, T0 + 14 * HOUR),
        ("inbound_updated", {"inbound_id": "PO-1", "eta_ms": T0 + 5 * DAY_MS}, T0 + 2 * DAY_MS),
        ("tick", {}, T0 + 5 * DAY_MS + HOUR),
        ("receipt", {"loc": "WH1", "qty": 50, "inbound_id": "PO-1"}, T0 + 6 * DAY_MS),
        ("receipt", {"loc": "WH1", "qty": 100}, T0 + 7 * DAY_MS),
    ]
    return steps


def run(steps, book=None, state=None, suppliers=None):
    book = book or SkuBook(SKU, policy=POLICY)
    outputs: list[SkuOutput] = []
    for cmd, args, t in steps:
        if cmd == "tick":
            obs = Observation.tick(SKU, t)
        else:
            event_id = f"ev-{t}"
            reply = book.apply(cmd, args, t, event_id=event_id)
            obs = Observation.from_reply(
                sku=SKU, command=cmd, args=args, reply=reply, occurred_ms=t, event_id=event_id
            )
        state, out = observe(state, obs, POLICIES)
        if out.receipt is not None:
            suppliers, extra = record_receipt(suppliers, out.receipt, SupplierParams())
            out = SkuOutput(out.alerts + extra, out.triggers, out.receipt)
        outputs.append(out)
    return book, state, suppliers, outputs


def messages(outputs: list[SkuOutput]) -> list[tuple]:
    rows: list[tuple] = []
    for out in outputs:
        rows += [(a.kind, a.status, a.location or a.subject) for a in out.alerts]
        rows += [("trigger", t.qty, t.inventory_position) for t in out.triggers]
    return rows


def test_flash_sale_slip_short_receipt_and_recovery_raise_exactly_the_expected_messages():
    _, state, suppliers, outputs = run(script())
    assert messages(outputs) == [
        ("demand_surge", "firing", "WH1"),  # 20 units in 24 h vs 10.07/day over 5.96 days: ≥ 15.1
        ("trigger", 10, 40),  # IP 40 ≤ ROP 10·4 = 40: S = 50, qty 10
        ("low_stock", "firing", "WH1"),  # ATP 20
        ("stockout", "firing", "WH1"),  # ATP 0
        ("order_unfulfillable", "firing", "WH1"),  # the 44th order
        ("low_stock", "resolved", "WH1"),  # PO-1 (200, presell) counts in ATP: 200
        ("stockout", "resolved", "WH1"),
        ("order_unfulfillable", "resolved", "WH1"),  # the slip comes 8 h after the last refusal
        # Two days later the lot's ETA moves: both presold orders slip; the sale day has closed, so
        # demand is back to normal, and its 500 units now weigh in d — a new trigger (see below).
        ("promise_slipped", "firing", "PO-1"),
        ("demand_surge", "resolved", "WH1"),
        ("trigger", 1000, 140),
        ("inbound_late", "firing", "WH1"),  # the tick passes the new ETA
        ("inbound_late", "resolved", "WH1"),  # received late and short: 50 of 200 …
        ("promise_at_risk", "firing", ""),  # … pre-b loses 10 units
        ("low_stock", "firing", "WH1"),  # ATP 550 − 560 = −10
        ("stockout", "firing", "WH1"),
        ("oversold", "firing", "WH1"),
        ("supplier_unreliable", "firing", "ACME"),  # late and short: 0.8 · 0.85 = 0.68
        ("trigger", 560, -10),  # the receipt answered trigger 2; IP −10 ≤ ROP: trigger 3
        ("promise_at_risk", "resolved", ""),  # 100 more received: pre-b re-supplied
        ("low_stock", "resolved", "WH1"),  # ATP 90
        ("stockout", "resolved", "WH1"),
        ("oversold", "resolved", "WH1"),
    ]
    alerts = [a for out in outputs for a in out.alerts]
    slipped = next(a for a in alerts if a.kind == "promise_slipped")
    assert [(r.rid, r.new_promised_at) for r in slipped.reservations] == [
        ("pre-b", "2025-01-06T00:00:00.000Z"),
        ("pre-a", "2025-01-06T00:00:00.000Z"),
    ]
    at_risk = next(a for a in alerts if a.kind == "promise_at_risk")
    assert [(r.rid, r.short) for r in at_risk.reservations] == [("pre-b", 10)]
    first, second, third = [t for out in outputs for t in out.triggers]
    assert (first.demand_per_day, first.demand_sigma, first.lead_time_source) == (10.0, 0.0, "policy")
    assert (first.reorder_point, first.order_up_to, first.qty, first.episode) == (40.0, 50.0, 10, 1)
    # Day 0 (500 units) and day 1 (0) fold into d = 10 → 132.5 → 99.375,
    # var = 0.75·(490·122.5) = 45018.75 → 0.75·(45018.75 + 132.5·33.125) = 37055.859375
    assert second.demand_per_day == pytest.approx(99.375)
    assert second.demand_sigma == pytest.approx(37055.859375**0.5)
    assert second.reorder_point == pytest.approx(99.375 * 4 + second.z * 37055.859375**0.5 * 2)
    assert second.qty == 1000 and second.episode == 2 and third.episode == 3
    assert isinstance(suppliers, SupplierStats)
    assert suppliers.fill == pytest.approx(0.85) and suppliers.on_time == pytest.approx(0.8)
    assert suppliers.lead.days == pytest.approx(6 - 0.5)  # created T0 + 12 h, received T0 + 6 d
    assert state.alerts.firing() == []


def test_replay_from_a_snapshot_after_a_crash_repeats_the_same_ids():
    steps = script()
    _, _, _, straight = run(steps)
    ids = [(a.alert_id, a.status, a.revision) for out in straight for a in out.alerts]
    ids += [(t.trigger_id, "trigger", 0) for out in straight for t in out.triggers]

    cut, crash = 40, 58  # snapshot after step 40, crash after step 58, replay from 41
    book, state, suppliers, first = run(steps[: cut + 1])
    snap = pickle.dumps((book, state, suppliers))
    _, _, _, lost = run(steps[cut + 1 : crash + 1], *pickle.loads(snap))
    book, state, suppliers = pickle.loads(snap)
    _, _, _, rest = run(steps[cut + 1 :], book, state, suppliers)

    seen = [(a.alert_id, a.status, a.revision) for out in first + lost + rest for a in out.alerts]
    seen += [(t.trigger_id, "trigger", 0) for out in first + lost + rest for t in out.triggers]
    assert set(seen) == set(ids)  # duplicates only, never a new id
    assert len(seen) > len(ids)  # the replayed stretch did emit its messages twice


def test_a_monitor_refuses_another_skus_observation():
    state, _ = observe(None, Observation.tick(SKU, T0), POLICIES)
    assert isinstance(state, SkuMonitor)
    with pytest.raises(ValueError, match="SKU-2"):
        observe(state, Observation.tick("SKU-2", T0), POLICIES)
