"""The atp command against the real Redis: ``--json`` output keys and values, exit codes, and an
unreachable server reported in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.embedded import free_port
from engine import cli
from engine.settings import Settings
from engine.store.changelog import read_log
from engine.store.wire import SupplyCommand
from tests.integration.api_harness import seed, sync_store

GET_KEYS = {
    "sku", "location", "on_hand", "in_transit", "promisable_in_transit", "committed", "held", "safety", "atp",
    "promisable_now", "next_promise_ms", "next_promise_at", "oversold", "backordered", "locations",
}
RESERVATION_KEYS = {"reservation_id", "state", "promised_ms", "promised_at", "expires_ms", "expires_at", "lines"}
LINE_KEYS = {"sku", "qty", "location", "state", "expires_ms", "expires_at", "promised_ms", "promised_at",
             "atp_after", "allocations"}


@pytest.fixture
def cli_env(redis: Any, redis_url: str, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The process env for the command: only the suite's Redis, no developer ATP_* or atp.toml."""
    for name in list(os.environ):
        if name.upper().startswith("ATP_"):
            monkeypatch.delenv(name)
    env = {"ATP_CONFIG": os.devnull, "ATP_REDIS_URL": redis_url,
           "ATP_REDIS_CLUSTER": "true" if settings.redis_cluster else "false"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    store = sync_store(redis_url, settings)
    seed(store, "CLI-1", 12, "WH1")
    seed(store, "CLI-1", 3, "WH2")
    return env


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def test_get_json_prints_one_object_with_the_published_keys(
    cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["get", "CLI-1", "--json"], capsys)
    assert code == 0, err
    assert out.count("\n") == 1
    body = orjson.loads(out)
    assert set(body) == GET_KEYS
    assert (body["sku"], body["on_hand"], body["held"], body["committed"], body["atp"]) == ("CLI-1", 15, 0, 0, 15)
    assert set(body["locations"]) == {"WH1", "WH2"}

    code, out, _ = run(["get", "CLI-1", "--location", "WH2", "--json"], capsys)
    assert code == 0
    at_wh2 = orjson.loads(out)
    assert (at_wh2["location"], at_wh2["on_hand"], at_wh2["atp"]) == ("WH2", 3, 3)


def test_console_script_get_json_in_a_fresh_process(cli_env: dict[str, str]) -> None:
    script = Path(sys.executable).parent / "atp"
    env = {"PATH": os.environ.get("PATH", ""), **cli_env}
    done = subprocess.run([str(script), "get", "CLI-1", "--json"], env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    body = orjson.loads(done.stdout)
    assert set(body) >= {"sku", "on_hand", "in_transit", "committed", "held", "safety", "atp"}
    assert body["atp"] == 15


def test_reserve_confirm_release_json_and_exit_codes(
    cli_env: dict[str, str], redis: Any, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["reserve", "CLI-1:4@WH1", "--id", "cli-r1", "--ttl", "300", "--json"], capsys)
    assert code == 0, err
    made = orjson.loads(out)
    assert set(made) == RESERVATION_KEYS and set(made["lines"][0]) == LINE_KEYS
    assert (made["reservation_id"], made["state"], made["lines"][0]["qty"]) == ("cli-r1", "held", 4)

    code, out, _ = run(["reserve", "CLI-1:4@WH1", "--id", "cli-r1", "--json"], capsys)
    assert code == 0 and orjson.loads(out) == made  # the same call again: the same answer

    code, out, _ = run(["reserve", "CLI-1:5@WH1", "--id", "cli-r1", "--json"], capsys)
    assert code == cli.EXIT_REFUSED and orjson.loads(out)["error"] == "idempotency_conflict"

    code, out, _ = run(["reserve", "CLI-1:100", "--json"], capsys)
    assert code == cli.EXIT_REFUSED
    refused = orjson.loads(out)
    assert refused["error"] == "refused" and refused["lines"][0]["available"] == 11

    code, out, _ = run(["confirm", "cli-r1", "--json"], capsys)
    assert code == 0 and orjson.loads(out)["state"] == "committed"
    code, out, _ = run(["release", "cli-r1", "--json"], capsys)
    assert code == 0 and orjson.loads(out)["state"] == "released"
    code, out, _ = run(["confirm", "cli-r1", "--json"], capsys)
    assert code == cli.EXIT_REFUSED
    assert orjson.loads(out)["error"] == "not_allowed" and orjson.loads(out)["state"] == "released"
    code, out, _ = run(["show", "missing-1", "--json"], capsys)
    assert code == cli.EXIT_REFUSED and orjson.loads(out)["error"] == "not_found"

    # each change's reservation event waits in the SKU's change log for a relay, as the API's do;
    # the repeat, the conflict, the refusal and the late confirm changed nothing and left none
    kept = [orjson.loads(e) for r in read_log(redis, "CLI-1", settings.key_prefix, 1000) if r.fn == "publish"
            for e in r.args[2::3]]
    assert [(e["event_id"], e["type"], e["state"]) for e in kept] == [
        ("res:cli-r1:held", "reservation.held", "held"),
        ("res:cli-r1:confirmed", "reservation.confirmed", "committed"),
        ("res:cli-r1:released", "reservation.released", "released"),
    ]
    assert kept[0]["lines"][0]["qty"] == 4 and kept[0]["lines"][0]["location"] == "WH1"


def test_policy_set_changes_only_the_given_fields(cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["policy", "set", "CLI-1", "--safety", "2", "--quota", "web=5", "--json"], capsys)
    assert code == 0, err
    body = orjson.loads(out)
    assert body["sku"] == "CLI-1"
    assert body["policy"]["safety"] == 2 and body["policy"]["quotas"] == {"web": 5}
    code, out, _ = run(["policy", "set", "CLI-1", "--mode", "presell", "--json"], capsys)
    assert orjson.loads(out)["policy"]["safety"] == 2 and orjson.loads(out)["policy"]["mode"] == "presell"
    code, out, _ = run(["policy", "get", "CLI-1", "--json"], capsys)
    assert code == 0 and orjson.loads(out)["policy"]["mode"] == "presell"
    code, out, _ = run(["get", "CLI-1", "--json"], capsys)
    body = orjson.loads(out)
    assert body["atp"] == 15 - 2 * 2 and body["safety"] == 4  # safety applies at each of the two locations

    code, _, err = run(["policy", "set", "CLI-1", "--cap-pm", "2000"], capsys)
    assert code == cli.EXIT_BAD_ARGUMENT and "--cap-pm" in err and len(err.strip().splitlines()) == 1


def test_unreachable_redis_is_one_line_and_exit_1(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ATP_REDIS_URL", f"redis://:hunter2@127.0.0.1:{free_port()}/0")
    for argv in (["get", "CLI-1", "--json"], ["reserve", "CLI-1:1"], ["policy", "get", "CLI-1"]):
        code, out, err = run(argv, capsys)
        assert code == cli.EXIT_ERROR
        # --json: the failure is {error, detail} on stdout too; without it stdout stays empty
        assert (orjson.loads(out)["error"] == "error") if "--json" in argv else out == ""
        assert "hunter2" not in out
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("atp: error: cannot reach Redis at redis://:***@127.0.0.1:")
        assert "hunter2" not in err


def test_atp_journal_json_prints_the_same_page(
    cli_env: dict[str, str], redis_url: str, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    sync_store(redis_url, settings).apply([
        SupplyCommand("JRN-2", "count", {"loc": "WH1", "on_hand": 10}, event_id="c-1"),
        SupplyCommand("JRN-2", "receipt", {"loc": "WH1", "qty": 5}, event_id="r-1"),
    ])
    code, out, err = run(["journal", "JRN-2", "--limit", "1", "--json"], capsys)
    assert code == 0, err
    body = orjson.loads(out)
    assert [(e["cmd"], e["qty"]) for e in body["entries"]] == [("receipt", 5)] and body["next_before"] == 2
    code, out, err = run(["journal", "bad sku", "--json"], capsys)
    assert code == 2 and orjson.loads(out)["error"] == "bad_argument"
