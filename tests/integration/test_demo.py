"""`atp demo`, the README's main command, end to end with a short flash sale."""

import json
import os
import subprocess
import sys


def test_demo_runs_a_flash_sale_without_overselling():
    proc = subprocess.run(
        [sys.executable, "-c", "from engine.cli import main; main()", "demo", "--duration", "8", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        # The demo starts its own embedded services; keep only the CI run marker of ours.
        env={k: v for k, v in os.environ.items() if not k.startswith("ATP_") or k == "ATP_CI_RUN_ID"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["oversold"] == 0
    assert summary["invariant_violations"] == []
    for counter in ("reservations_ok", "reservations_refused", "reservations_confirmed", "reservations_released",
                    "alerts_emitted", "triggers_emitted", "events_sent"):
        assert summary[counter] > 0, (counter, summary)
    for sku, pos in summary["atp"].items():
        assert pos["atp"] >= 0, (sku, pos)
        assert pos["held"] == 0, f"{sku}: holds left after the sale should have expired or been confirmed"
