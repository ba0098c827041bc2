"""The atp command refuses bad arguments and bad configuration with one line and a non-zero exit."""

from __future__ import annotations

import json
import os

import pytest

from engine import cli


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No developer ATP_* variables or atp.toml leak into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("ATP_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ATP_CONFIG", os.devnull)


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("atp: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["get", "bad sku!"], ["bad sku"]),
        (["get", "A", "--location", "-x"], ["location"]),
        (["get"], ["Missing argument"]),
        (["get", "A", "--nope"], ["No such option: --nope"]),
        (["reserve", "A:0"], ["quantity must be between 1 and"]),
        (["reserve", "A:x"], ["is not an integer"]),
        (["reserve", "A"], ["expected SKU:QTY"]),
        (["reserve", "A:1@"], ["empty location"]),
        (["reserve", "A:1", "--id", "has space"], ["--id"]),
        (["reserve", "A:1", "--channel", "@@"], ["--channel"]),
        (["reserve", "A:1", "--ttl", "0"], ["--ttl"]),
        (["extend", "R1", "--ttl", "99999999"], ["--ttl"]),
        (["confirm", "bad id!"], ["reservation_id"]),
        (["policy", "get", "no/slash"], ["bad sku"]),
        (["policy", "set", "A", "--quota", "web"], ["expected CHANNEL=UNITS"]),
        (["token", "new", "--role", "admin"], ["bad --role admin"]),
        (["topics", "create", "--suffix", "bad name"], ["topic suffix"]),
        (["simulate", "--count", "0"], ["--count"]),
        (["nonsense"], ["No such command"]),
        (["flow", "-i", "0"], ["--process-id", "go together"]),
        (["flow", "-i", "2", "-a", "127.0.0.1:9001;127.0.0.1:9002"], ["between 0 and 1"]),
        (["flow", "-i", "0", "-a", "127.0.0.1"], ["host:port"]),
    ],
)
def test_bad_argument_is_one_line_and_exit_2(
    argv: list[str], fragments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(argv, capsys)
    assert code == cli.EXIT_BAD_ARGUMENT
    assert out == ""
    assert_one_line_error(err, *fragments)


def test_bad_configuration_names_the_setting_and_exits_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ATP_API_PORT", "99999")
    code, out, err = run(["get", "SKU-1"], capsys)
    assert code == cli.EXIT_ERROR
    assert_one_line_error(err, "bad configuration", "ATP_API_PORT")


def test_bad_token_table_in_configuration_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ATP_API_TOKENS", '{"not-a-digest": ["read"]}')
    code, _out, err = run(["get", "SKU-1"], capsys)
    assert code == cli.EXIT_ERROR
    assert_one_line_error(err, "ATP_API_TOKENS", "sha256")


def test_missing_redis_url_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(["get", "SKU-1"], capsys)
    assert code == cli.EXIT_ERROR
    assert_one_line_error(err, "ATP_REDIS_URL")


def test_token_new_prints_a_token_whose_digest_is_configured(capsys: pytest.CaptureFixture[str]) -> None:
    import orjson

    from engine.api.auth import token_digest

    code, out, _err = run(["token", "new", "--role", "reserve", "--role", "read", "--json"], capsys)
    assert code == 0
    body = orjson.loads(out)
    assert body["sha256"] == token_digest(body["token"])
    assert body["api_tokens_entry"] == {body["sha256"]: ["read", "reserve"]}


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("SKU-1:3", ("SKU-1", 3, None)),
        ("SKU-1:3@WH1", ("SKU-1", 3, "WH1")),
        ("a.b_c:1000000000", ("a.b_c", 1_000_000_000, None)),
    ],
)
def test_reserve_line_syntax(text: str, parsed: tuple[str, int, str | None]) -> None:
    assert cli._parse_line(text) == parsed


def test_bare_atp_prints_its_help_and_no_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run([], capsys)
    assert code == 0 and "Commands" in out and "flow" in out
    assert "error" not in err


def test_version_names_the_installed_package(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    code, out, _err = run(["--version"], capsys)
    assert code == 0 and out.strip() == f"atp-engine {version('atp-engine')}"


def test_a_bad_argument_with_json_is_one_json_object_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["get", "BAD SKU", "--json"], capsys)
    assert code == cli.EXIT_BAD_ARGUMENT
    body = json.loads(out)
    assert body["error"] == "bad_argument" and "bad sku" in body["detail"]
    assert_one_line_error(err, "bad sku")


def test_topics_create_against_a_dead_broker_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ATP_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # nothing listens on port 1
    with pytest.raises(SystemExit) as exited:
        cli.main(["topics", "create", "--timeout", "1"])
    _out, err = capfd.readouterr()  # file descriptors: librdkafka writes from C threads
    assert exited.value.code == cli.EXIT_ERROR
    assert_one_line_error(err, "cannot create topics on 127.0.0.1:1")


def test_shell_completion_completes_command_names(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # name the shell instead of detecting it from the parent processes (a CI runner has none)
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    code, out, err = run(["--show-completion", "bash"], capsys)
    assert code == 0 and "_atp_completion" in out, (code, out, err)
    monkeypatch.setenv("_ATP_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "atp fl")
    monkeypatch.setenv("COMP_CWORD", "1")
    code, out, _err = run([], capsys)
    assert code == 0 and out.split() == ["flow"]
