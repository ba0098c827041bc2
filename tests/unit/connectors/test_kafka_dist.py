"""The Apache Kafka fetch (connectors/kafka_dist.py): where it caches, what it needs, and that only a
whole fetch counts. Java and Maven are stand-in scripts here; the real fetch runs in CI's Kafka pass."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from connectors import kafka_dist
from connectors.kafka_dist import KAFKA_VERSION, DistError

ROOT = Path(__file__).resolve().parents[3]


def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def _java_home(tmp_path: Path, version: str) -> Path:
    home = tmp_path / f"jdk-{version}"
    _script(home / "bin" / "java", f'echo \'openjdk version "{version}" 2025-04-15\' >&2\n')
    return home


def test_the_fetched_version_is_the_one_compose_runs() -> None:
    images = re.findall(r"image:\s*apache/kafka:(\S+)", (ROOT / "docker-compose.yml").read_text())
    assert images == [KAFKA_VERSION]


def test_the_cache_is_the_env_folder_else_under_the_xdg_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(kafka_dist.DIST_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert kafka_dist.dist_dir() == tmp_path / "xdg" / "atp-engine" / f"kafka-{KAFKA_VERSION}"
    monkeypatch.setenv(kafka_dist.DIST_ENV, str(tmp_path / "mine"))
    assert kafka_dist.dist_dir() == tmp_path / "mine"
    assert kafka_dist.libs_dir() == tmp_path / "mine" / "libs"


def test_java_must_be_there_and_11_or_later(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JAVA_HOME", str(_java_home(tmp_path, "17.0.15")))
    assert kafka_dist.java_bin() == str(tmp_path / "jdk-17.0.15" / "bin" / "java")
    monkeypatch.setenv("JAVA_HOME", str(_java_home(tmp_path, "1.8.0_392")))
    with pytest.raises(DistError, match="needs Java 11 or later; .* is Java 8"):
        kafka_dist.java_bin()
    monkeypatch.delenv("JAVA_HOME")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(DistError, match="no `java` on PATH"):
        kafka_dist.java_bin()


def test_without_maven_the_fetch_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(DistError, match="needs Maven: no `mvn` on PATH"):
        kafka_dist.fetch(tmp_path / "kafka")
    assert not kafka_dist.is_fetched(tmp_path / "kafka")


def _fake_tools(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mvn_body: str) -> Path:
    """java 17 and an ``mvn`` running ``mvn_body`` on PATH; returns the file mvn counts its runs in."""
    bin_dir = tmp_path / "bin"
    runs = tmp_path / "mvn-runs"
    monkeypatch.delenv("JAVA_HOME", raising=False)
    _script(bin_dir / "java", "echo 'openjdk version \"17.0.15\"' >&2\n")
    _script(bin_dir / "mvn", f'echo run >> {runs}\nfor a in "$@"; do case "$a" in -DoutputDirectory=*) out="${{a#*=}}";; esac; done\n'
            + mvn_body)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return runs


def test_a_failed_fetch_leaves_nothing_that_counts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_tools(monkeypatch, tmp_path, 'mkdir -p "$out" && touch "$out/half.jar" && echo "no network" && exit 1\n')
    home = tmp_path / "cache" / "kafka"
    with pytest.raises(DistError, match=r"(?s)mvn could not fetch .*exit 1.*no network"):
        kafka_dist.fetch(home, quiet=True)
    assert not kafka_dist.is_fetched(home)
    assert list((tmp_path / "cache").iterdir()) == [], "the staging folder is removed"


def test_a_fetch_moves_the_jars_in_whole_and_the_next_one_does_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    runs = _fake_tools(monkeypatch, tmp_path, f'mkdir -p "$out" && touch "$out/kafka_2.13-{KAFKA_VERSION}.jar"\n')
    home = tmp_path / "kafka"
    assert kafka_dist.fetch(home, quiet=True) == home
    assert kafka_dist.is_fetched(home)
    assert (home / "libs" / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file()
    assert "log4j.rootLogger" in (home / "config" / "log4j.properties").read_text()
    assert kafka_dist.main(["--dest", str(home)]) == 0
    assert kafka_dist.main(["--dest", str(home), "--check"]) == 0
    assert runs.read_text().count("run") == 1, "an existing fetch is not fetched again"

    (home / ".complete").write_text("0.0.1\n")  # another version's folder does not count
    assert not kafka_dist.is_fetched(home)
    assert kafka_dist.main(["--dest", str(home), "--check"]) == 1


def test_a_maven_run_without_the_kafka_jar_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _fake_tools(monkeypatch, tmp_path, 'mkdir -p "$out" && touch "$out/other.jar"\n')
    with pytest.raises(DistError, match="holds no kafka_2.13"):
        kafka_dist.fetch(tmp_path / "kafka", quiet=True)
    assert not kafka_dist.is_fetched(tmp_path / "kafka")
