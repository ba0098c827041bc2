"""engine.metrics: bounded labels, the watch list, and the exposition the dashboards rely on."""

from __future__ import annotations

import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine import metrics


def _value(name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(metrics.render_latest().decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def test_record_event_counts_by_type_and_outcome() -> None:
    before = _value("atp_events_total", type="stock.counted", outcome="ok") or 0
    metrics.record_event("stock.counted", "ok", 3)
    assert _value("atp_events_total", type="stock.counted", outcome="ok") == before + 3


def test_known_label_combinations_export_zero_before_any_activity() -> None:
    assert _value("atp_events_total", type="inbound.cancelled", outcome="not_found") is not None
    assert _value("atp_reservations_total", op="extend", outcome="conflict") is not None
    assert _value("atp_alerts_firing", kind="supplier_unreliable") is not None


def test_malformed_label_value_is_counted_as_other_not_raised() -> None:
    before = _value("atp_dlq_total", reason="other") or 0
    metrics.record_dlq("bad json\n{")
    assert _value("atp_dlq_total", reason="other") == before + 1
    assert _value("atp_dlq_total", reason="bad json\n{") is None


def test_label_cardinality_is_capped() -> None:
    for i in range(metrics.SUPPLIER_LIMIT + 20):
        metrics.set_supplier_reliability(f"cap-test-supplier-{i}", 0.5)
    families = {f.name: f for f in text_string_to_metric_families(metrics.render_latest().decode())}
    suppliers = {s.labels["supplier"] for s in families["atp_supplier_reliability"].samples}
    assert len(suppliers) <= metrics.SUPPLIER_LIMIT + 1
    assert "other" in suppliers


def test_supplier_reliability_is_clamped_to_unit_interval() -> None:
    metrics.set_supplier_reliability("cap-test-supplier-0", 1.7)
    assert _value("atp_supplier_reliability", supplier="cap-test-supplier-0") == 1.0


def test_only_watched_skus_get_an_atp_series_and_unwatching_removes_it() -> None:
    metrics.configure_watch_list(["HOT-1"])
    metrics.set_watched_atp("HOT-1", "default", 42)
    metrics.set_watched_atp("COLD-1", "default", 7)
    assert _value("atp_watch_atp", sku="HOT-1", location="default") == 42
    assert _value("atp_watch_atp", sku="COLD-1") is None
    metrics.configure_watch_list([])
    assert _value("atp_watch_atp", sku="HOT-1") is None


def test_watch_list_refuses_too_many_or_malformed_skus() -> None:
    with pytest.raises(ValueError, match="at most"):
        metrics.configure_watch_list([f"S{i}" for i in range(metrics.WATCH_LIMIT + 1)])
    with pytest.raises(ValueError, match="malformed"):
        metrics.configure_watch_list(["ok", "bad sku"])


def test_stateful_alert_transitions_move_the_firing_gauge() -> None:
    before = _value("atp_alerts_firing", kind="stockout") or 0
    metrics.record_alert("stockout", "firing")
    metrics.record_alert("stockout", "firing")
    metrics.record_alert("stockout", "resolved")
    assert _value("atp_alerts_firing", kind="stockout") == before + 1
    # A follow-up firing of the same episode is no new firing alert.
    before = _value("atp_alerts_firing", kind="order_unfulfillable") or 0
    metrics.record_alert("order_unfulfillable", "firing")
    metrics.record_alert("order_unfulfillable", "firing", revision=1)
    assert _value("atp_alerts_firing", kind="order_unfulfillable") == before + 1
    # One-shot kinds are counted but never "firing".
    metrics.record_alert("promise_slipped", "firing")
    assert _value("atp_alerts_firing", kind="promise_slipped") is None


def test_http_route_template_is_a_label_and_method_is_upper_case() -> None:
    metrics.observe_http("/v1/atp/{sku}", "get", 200, 0.002)
    assert _value("atp_http_requests_total", route="/v1/atp/{sku}", method="GET", status="200") is not None


def test_flow_metrics_port_is_base_plus_process_id() -> None:
    assert metrics.flow_metrics_port(9101, 0) == 9101
    assert metrics.flow_metrics_port(9101, 3) == 9104
    assert metrics.flow_metrics_port(0, 3) == 0
    with pytest.raises(ValueError):
        metrics.flow_metrics_port(65535, 1)


def test_serve_metrics_serves_the_engine_registry() -> None:
    port = metrics.serve_metrics(0, addr="127.0.0.1")
    metrics.record_reservation("hold", "ok", 0.001)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'atp_reservations_total{op="hold",outcome="ok"}' in body
    assert "atp_reserve_seconds_bucket" in body
    assert "_created" not in body
