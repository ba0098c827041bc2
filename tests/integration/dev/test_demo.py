"""`atp demo`, the README's main command, end to end with a short flash sale."""

import json
import os
import subprocess
import sys


def test_demo_runs_a_flash_sale_without_overselling(redis_cluster_mode: bool) -> None:
    # The demo starts its own embedded services; keep only the CI run marker of ours, and the
    # suite's Redis mode (a 3-primary cluster of the demo's own on a Cluster run).
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATP_") or k == "ATP_CI_RUN_ID"}
    env["ATP_REDIS_CLUSTER"] = "true" if redis_cluster_mode else "false"
    proc = subprocess.run(
        [sys.executable, "-c", "from engine.cli import main; main()", "demo", "--duration", "8", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["oversold"] == 0
    assert summary["invariant_violations"] == []
    for counter in ("reservations_ok", "reservations_refused", "reservations_confirmed", "reservations_released",
                    "alerts_emitted", "triggers_emitted", "events_sent"):
        assert summary[counter] > 0, (counter, summary)
    # alerts an operator would want: few pages, no flapping (per simulated day)
    assert summary["critical_firings_per_sku_day_max"] <= 5, summary["critical_most"]
    assert summary["episodes_per_condition_day_max"] <= 3, summary["episodes_most"]
    assert sum(summary["alerts_by_kind"].values()) == summary["alerts_emitted"]
    for sku, pos in summary["atp"].items():
        assert pos["atp"] >= 0, (sku, pos)
        assert pos["held"] == 0, f"{sku}: holds left after the sale should have expired or been confirmed"
