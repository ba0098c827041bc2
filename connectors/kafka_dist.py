"""Apache Kafka assembled from its Maven Central jars, so the tests can run on real Kafka (KRaft, one
node) where only a JDK and Maven are at hand.

``python -m connectors.kafka_dist`` resolves ``org.apache.kafka:kafka_2.13`` at the version compose
runs and its runtime dependency closure (``mvn dependency:copy-dependencies`` over a generated pom)
into ``<cache>/kafka-<version>/libs``, then prints that folder's parent. A second run finds the
folder complete and does nothing. The cache is ``$ATP_KAFKA_DIST_DIR`` if set, else
``${XDG_CACHE_HOME:-~/.cache}/atp-engine/kafka-<version>``.

``connectors.embedded.EmbeddedKafka`` runs what this module fetched.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = [
    "KAFKA_VERSION",
    "DistError",
    "dist_dir",
    "ensure_fetched",
    "fetch",
    "is_fetched",
    "java_bin",
    "libs_dir",
    "main",
    "mvn_bin",
]

#: The version docker-compose.yml runs (``apache/kafka:3.9.1``), so the tests and compose agree.
KAFKA_VERSION = "3.9.1"
SCALA_VERSION = "2.13"
#: The SLF4J binding Kafka's own distribution ships (reload4j over SLF4J 1.7); without one the
#: broker logs nothing, and its log is what a failed start is diagnosed from.
SLF4J_VERSION = "1.7.36"
#: Kafka 3.9 brokers run on Java 11 or later.
MIN_JAVA = 11
#: The env var naming the cache folder (holding ``libs/``) instead of the default.
DIST_ENV = "ATP_KAFKA_DIST_DIR"

_MARKER = ".complete"


class DistError(RuntimeError):
    """Java or Maven is missing, too old, or the jars could not be fetched."""


def dist_dir() -> Path:
    """The folder that holds (or will hold) ``libs/`` of the fetched Kafka."""
    given = os.environ.get(DIST_ENV)
    if given:
        return Path(given).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "atp-engine" / f"kafka-{KAFKA_VERSION}"


def libs_dir(home: Path | None = None) -> Path:
    """The classpath folder: every jar Kafka needs to run."""
    return (home or dist_dir()) / "libs"


def is_fetched(home: Path | None = None) -> bool:
    """True when a complete fetch of this version is in ``home`` (a partial one never counts)."""
    marker = (home or dist_dir()) / _MARKER
    try:
        return marker.read_text().strip() == KAFKA_VERSION
    except OSError:
        return False


def java_bin() -> str:
    """``$JAVA_HOME/bin/java`` or ``java`` on PATH, checked to be Java 11 or later."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not candidate or not os.access(candidate, os.X_OK):
        raise DistError("Apache Kafka needs Java 11 or later: no `java` on PATH (nor in $JAVA_HOME/bin)")
    try:
        out = subprocess.run([candidate, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DistError(f"cannot run {candidate} -version: {exc}") from exc
    # `java -version` prints e.g. `openjdk version "17.0.15" 2025-04-15` (or "1.8.0_392") on stderr.
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if match is None:
        raise DistError(f"{candidate} -version named no version: {out.stderr.strip()!r}")
    major = int(match[1]) if match[1] != "1" else int(match[2] or 0)
    if major < MIN_JAVA:
        raise DistError(f"Apache Kafka {KAFKA_VERSION} needs Java {MIN_JAVA} or later; {candidate} is Java {major}")
    return candidate


def mvn_bin() -> str:
    """``mvn`` on PATH (needed only to fetch)."""
    found = shutil.which("mvn")
    if not found:
        raise DistError(
            f"fetching Apache Kafka {KAFKA_VERSION} needs Maven: no `mvn` on PATH"
            " (Debian: apt-get install maven)"
        )
    return found


def _pom() -> str:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>atp-engine</groupId>
  <artifactId>kafka-dist</artifactId>
  <version>{KAFKA_VERSION}</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{SCALA_VERSION}</artifactId>
      <version>{KAFKA_VERSION}</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-reload4j</artifactId>
      <version>{SLF4J_VERSION}</version>
    </dependency>
  </dependencies>
</project>
"""


def fetch(home: Path | None = None, *, quiet: bool = False) -> Path:
    """Fetch Kafka's jars into ``home`` (default ``dist_dir()``) unless already there; returns ``home``.

    The jars land in a temp folder beside ``home`` first and are moved in whole, so an interrupted
    fetch leaves nothing that ``is_fetched`` accepts. Raises ``DistError`` if Maven is missing or fails.
    """
    home = home or dist_dir()
    if is_fetched(home):
        return home
    mvn = mvn_bin()
    java_bin()  # Maven needs it too; say so plainly rather than through Maven's error
    home.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{home.name}-", dir=home.parent) as tmp:
        work = Path(tmp)
        (work / "pom.xml").write_text(_pom())
        staged = work / "libs"
        cmd = [
            mvn, "-B", "--no-transfer-progress", "-Dstyle.color=never", "-f", str(work / "pom.xml"),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staged}",
        ]  # fmt: skip
        if quiet:
            cmd.insert(1, "-q")
        try:
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=quiet, text=True, check=False)
        except OSError as exc:
            raise DistError(f"cannot run {mvn}: {exc}") from exc
        if done.returncode != 0:
            detail = f":\n{(done.stdout or '')[-3000:]}{(done.stderr or '')[-2000:]}" if quiet else ""
            raise DistError(f"mvn could not fetch Apache Kafka {KAFKA_VERSION} (exit {done.returncode}){detail}")
        if not (staged / f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar").is_file():
            raise DistError(f"mvn finished but {staged} holds no kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar")
        (work / "config").mkdir()
        (work / "config" / "log4j.properties").write_text(LOG4J_PROPERTIES)
        for name in ("libs", "config", _MARKER):
            shutil.rmtree(home / name, ignore_errors=True)
        home.mkdir(exist_ok=True)
        staged.rename(home / "libs")
        (work / "config").rename(home / "config")
        (home / _MARKER).write_text(KAFKA_VERSION + "\n")
    return home


def ensure_fetched(home: Path | None = None) -> Path:
    """``home`` with Kafka in it: fetched now if it is not yet (a one-time download through Maven)."""
    home = home or dist_dir()
    if not is_fetched(home):
        print(f"fetching Apache Kafka {KAFKA_VERSION} from Maven Central into {home} (once)", file=sys.stderr)
        fetch(home, quiet=True)
    return home


#: The broker logs INFO and up to stdout, which the embedded launcher sends to its log file.
LOG4J_PROPERTIES = """\
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.org.apache.kafka.clients=WARN
log4j.logger.kafka.request.logger=WARN
log4j.logger.state.change.logger=WARN
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m connectors.kafka_dist",
        description=f"Fetch Apache Kafka {KAFKA_VERSION} (KRaft) from Maven Central for the tests; prints its folder.",
    )
    parser.add_argument("--dest", type=Path, help=f"the folder to fill (default: ${DIST_ENV} or {dist_dir()})")
    parser.add_argument("--check", action="store_true", help="fetch nothing: exit 1 unless already fetched")
    args = parser.parse_args(argv)
    home = args.dest or dist_dir()
    if args.check:
        print(home)
        return 0 if is_fetched(home) else 1
    started = time.monotonic()
    try:
        already = is_fetched(home)
        fetch(home)
    except DistError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    jars = len(list(libs_dir(home).glob("*.jar")))
    what = "already fetched" if already else f"fetched in {time.monotonic() - started:.1f}s"
    print(f"Apache Kafka {KAFKA_VERSION}: {jars} jars {what}", file=sys.stderr)
    print(home)
    return 0


if __name__ == "__main__":
    sys.exit(main())
