"""What the flow process reports about itself at startup and while it runs (one call in ``run_flow``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from engine import metrics
from engine.observability.probes import DependencyProbe
from engine.settings import Settings


@contextlib.contextmanager
def observe_flow(settings: Settings, probes: bool = True) -> Iterator[None]:
    """Around a running flow: the watch list from ``settings.watch_skus`` (the apply step exports
    the ATP of watched SKUs from the positions it sees), drift at 0, and — with ``probes`` — a
    ``DependencyProbe`` keeping ``atp_dependency_up`` fresh until the flow stops."""
    metrics.configure_watch_list(settings.watch_skus)
    # No reconcile command exists yet, so nothing measures drift: the flow exports the gauges at 0
    # ("no drift found") from its start, so the Supply dashboard's drift panels show a value
    # rather than nothing. A reconcile, once written, sets them with metrics.set_drift.
    metrics.set_drift(0, 0)
    if not probes:
        yield
        return
    with DependencyProbe(settings):
        yield
