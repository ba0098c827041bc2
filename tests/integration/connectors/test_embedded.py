"""The embedded Redis and broker: they start, answer, stop, and never outlive their parent."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from redis import RedisCluster

from connectors.embedded import (
    EmbeddedBroker,
    EmbeddedError,
    EmbeddedKafka,
    EmbeddedRedis,
    EmbeddedRedisCluster,
    embedded_stack,
)
from connectors.kafka import consumer_config, producer_config
from connectors.topics import Topics, create_topics
from engine.settings import Settings

REPO = Path(__file__).resolve().parents[3]


def _alive(pid: int) -> bool:
    """True while pid is a running process (a zombie awaiting its reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_gone(pid: int, port: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid) and not _port_open(port):
            return True
        time.sleep(0.05)
    return False


def _clean_env() -> dict[str, str]:
    """The environment for child Pythons: no external servers, so they start embedded ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATP_")}
    env["PYTHONPATH"] = str(REPO)
    return env


def test_embedded_redis_answers_and_leaves_no_process_after_stop() -> None:
    server = EmbeddedRedis()
    with server:
        pid, port, workdir = server.pid, server.port, server.workdir
        assert pid is not None and _alive(pid)
        client = server.client(decode_responses=True)
        assert client.ping() is True
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        assert int(client.info("server")["process_id"]) == pid
        assert server.url == f"redis://127.0.0.1:{port}/0"
        assert server.log_path.is_file()
        client.close()
    assert not server.running
    assert _wait_gone(pid, port), f"redis-server {pid} still alive after stop()"
    assert not workdir.exists(), "the temp dir (logs, data) is removed on stop"


def test_embedded_broker_answers_and_leaves_no_process_after_stop() -> None:
    broker = EmbeddedBroker()
    with broker:
        pid, port = broker.pid, broker.port
        assert pid is not None and _alive(pid)
        assert broker.bootstrap == f"127.0.0.1:{port}"
        topics = Topics(suffix=".embedded")
        assert sorted(create_topics({"bootstrap.servers": broker.bootstrap}, topics, 2)) == sorted(topics.all)
        listed = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=10).topics
        assert set(topics.all) <= set(listed)
        assert len(listed[topics.orders].partitions) == 2
    assert _wait_gone(pid, port), f"broker {pid} still alive after stop()"


def test_stop_is_idempotent_and_start_after_stop_works() -> None:
    server = EmbeddedRedis()
    server.stop()  # never started: nothing to do
    server.start()
    first = server.pid
    server.stop()
    server.stop()
    server.start()
    try:
        assert server.pid != first and server.client().ping()
    finally:
        server.stop()


def test_fixed_busy_port_gives_a_clear_error_and_no_process() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = EmbeddedRedis(port=port, start_timeout_s=5)
        with pytest.raises(EmbeddedError, match="redis"):
            server.start()
        assert server.pid is None and not server.running


def test_bad_appendfsync_is_refused() -> None:
    with pytest.raises(ValueError, match="appendfsync"):
        EmbeddedRedis(appendfsync="sometimes")


def test_restart_keeps_port_and_fsynced_data_after_a_crash(tmp_path: Path) -> None:
    server = EmbeddedRedis(data_dir=tmp_path, appendonly=True, appendfsync="always")
    with server:
        port = server.port
        client = server.client(decode_responses=True)
        client.set("acknowledged", "yes")
        old_pid = server.pid
        server.restart(kill=True)
        assert server.port == port and server.pid != old_pid
        assert client.get("acknowledged") == "yes"  # the client reconnects to the same URL
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        client.close()
    # (a server >= 7 keeps its AOF as a base and increments in appendonlydir/)
    assert any((tmp_path / "appendonlydir").glob("*.aof")), "a caller's data dir survives stop()"


def test_extra_args_reach_the_server() -> None:
    with EmbeddedRedis(extra_args=["--maxmemory", "64mb"]) as server:
        assert server.client().config_get("maxmemory") == {"maxmemory": str(64 * 1024 * 1024)}


def test_embedded_stack_starts_only_what_settings_leave_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATP_CONFIG", os.devnull)
    for name in ("ATP_REDIS_URL", "ATP_KAFKA_BOOTSTRAP"):
        monkeypatch.delenv(name, raising=False)
    external = "redis://127.0.0.1:1/0"
    with embedded_stack(Settings(redis_url=external)) as filled:
        assert filled.redis_url == external
        host, port = filled.kafka_bootstrap.split(":")
        assert host == "127.0.0.1" and _port_open(int(port))
        assert create_topics(filled.kafka_config(), ["stack.check"], 1) == ["stack.check"]
        p = Producer(producer_config(filled))
        p.produce("stack.check", value=b"x")
        assert p.flush(10) == 0
        c = Consumer(consumer_config(filled, "stack-check"))
        c.assign([TopicPartition("stack.check", 0, 0)])
        msg = c.poll(10)
        c.close()
        assert msg is not None and msg.value() == b"x"
    assert not _port_open(int(port))

    with embedded_stack(Settings()) as both:
        redis_port = int(both.redis_url.rsplit(":", 1)[1].split("/")[0])
        assert both.redis_url.startswith("redis://127.0.0.1:") and _port_open(redis_port)
    assert not _port_open(redis_port)


_CHILD_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from connectors.embedded import EmbeddedBroker, EmbeddedRedis
    r = EmbeddedRedis().start()
    b = EmbeddedBroker().start()
    print(r.pid, r.port, b.pid, b.port, flush=True)
    time.sleep(120)
    """
)


def _spawn_parent() -> tuple[subprocess.Popen[str], list[int]]:
    parent = subprocess.Popen(
        [sys.executable, "-c", _CHILD_SCRIPT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=_clean_env(),
    )
    assert parent.stdout is not None
    line = parent.stdout.readline()
    assert line, f"the parent did not start its servers: {parent.stderr.read() if parent.stderr else ''}"
    redis_pid, redis_port, broker_pid, broker_port = (int(x) for x in line.split())
    assert _alive(redis_pid) and _alive(broker_pid)
    return parent, [redis_pid, redis_port, broker_pid, broker_port]


def _reap(parent: subprocess.Popen[str]) -> int:
    try:
        return parent.wait(timeout=15)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_sigkilled_parent_takes_its_servers_with_it() -> None:
    parent, (redis_pid, redis_port, broker_pid, broker_port) = _spawn_parent()
    os.kill(parent.pid, signal.SIGKILL)
    assert _reap(parent) == -signal.SIGKILL
    assert _wait_gone(redis_pid, redis_port), f"orphan redis-server {redis_pid}"
    assert _wait_gone(broker_pid, broker_port), f"orphan broker {broker_pid}"


def test_sigterm_to_parent_stops_its_servers_cleanly() -> None:
    parent, (redis_pid, redis_port, broker_pid, broker_port) = _spawn_parent()
    os.kill(parent.pid, signal.SIGTERM)
    assert _reap(parent) == -signal.SIGTERM  # the default disposition still ends the parent
    assert _wait_gone(redis_pid, redis_port), f"orphan redis-server {redis_pid}"
    assert _wait_gone(broker_pid, broker_port), f"orphan broker {broker_pid}"


def test_interrupted_pytest_session_leaves_no_server(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids"
    (tmp_path / "test_interrupted.py").write_text(
        textwrap.dedent(
            f"""
            from confluent_kafka.admin import AdminClient

            def test_interrupt(redis, kafka_bootstrap):
                port = int(kafka_bootstrap.rsplit(":", 1)[1])
                with open({str(pid_file)!r}, "w") as f:
                    f.write(f"{{redis.info('server')['process_id']}} {{redis.info('server')['tcp_port']}} {{port}}")
                raise KeyboardInterrupt
            """
        )
    )
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), str(tmp_path / "test_interrupted.py")],
        cwd=REPO, env=_clean_env(), capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert run.returncode == 2, run.stdout + run.stderr  # pytest's "interrupted" exit code
    redis_pid, redis_port, broker_port = (int(x) for x in pid_file.read_text().split())
    assert _wait_gone(redis_pid, redis_port), f"orphan redis-server {redis_pid}"
    assert not _port_open(broker_port), "orphan broker"


def test_redis_fixture_gives_a_working_client(redis) -> None:
    redis.set("left.behind", "1")
    assert redis.get("left.behind") == "1"  # decode_responses=True


def test_redis_fixture_starts_each_test_empty(redis) -> None:
    assert redis.dbsize() == 0


def test_topics_fixture_creates_fresh_partitioned_topics(topics: Topics, settings: Settings) -> None:
    assert topics.orders.startswith("inventory.orders.t")
    meta = AdminClient(settings.kafka_config()).list_topics(timeout=10).topics
    assert all(len(meta[name].partitions) == 3 for name in topics.all)
    assert create_topics(settings.kafka_config(), topics, 3) == [], "a second create is a no-op"
    p = Producer(producer_config(settings))
    p.produce(topics.orders, key=b"SKU-1", value=b"hello", partition=2)
    assert p.flush(10) == 0
    c = Consumer(consumer_config(settings, "fixture-check"))
    c.assign([TopicPartition(topics.orders, 2, 0)])
    msg = c.poll(10)
    c.close()
    assert msg is not None and msg.error() is None and msg.value() == b"hello"


def test_invariant_check_failures_fail_the_test(tmp_path: Path) -> None:
    (tmp_path / "test_inner.py").write_text(
        textwrap.dedent(
            """
            import importlib.machinery, sys, types

            # Stands in for engine.store.invariants: flags any key named "bad".
            fake = types.ModuleType("engine.store.invariants")
            fake.__spec__ = importlib.machinery.ModuleSpec("engine.store.invariants", None)
            fake.check_invariants = lambda client: [f"{k}: negative" for k in client.keys("bad")]
            sys.modules["engine.store.invariants"] = fake

            def test_with_violation(invariant_check):
                invariant_check.append(lambda: ["sku A: held -1"])
                invariant_check.append(lambda: [])

            def test_clean(invariant_check):
                invariant_check.append(lambda: None)

            def test_store_checker_runs_after_redis_tests(redis):
                redis.set("bad", -1)

            def test_store_checker_passes_clean_state(redis):
                redis.set("good", 1)
            """
        )
    )
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), str(tmp_path / "test_inner.py")],
        cwd=REPO, env=_clean_env(), capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert run.returncode == 1, run.stdout + run.stderr
    assert "sku A: held -1" in run.stdout
    assert "ERROR at teardown of test_with_violation" in run.stdout
    assert "ERROR at teardown of test_store_checker_runs_after_redis_tests" in run.stdout
    assert "bad: negative" in run.stdout
    assert "4 passed, 2 errors" in run.stdout  # violations are reported as teardown errors


def test_embedded_cluster_spreads_keys_over_three_primaries_and_stops_clean() -> None:
    cluster = EmbeddedRedisCluster(primaries=3)
    with cluster:
        pids = [n.pid for n in cluster.nodes]
        ports = cluster.ports
        client = RedisCluster.from_url(cluster.url, decode_responses=True)
        assert len(client.get_primaries()) == 3
        for i in range(60):
            client.set(f"{{sku-{i}}}:on_hand", i)
        per_node = [n.client().dbsize() for n in cluster.nodes]
        assert sum(per_node) == 60 and all(count > 0 for count in per_node)
        client.close()
    for pid, port in zip(pids, ports, strict=True):
        assert pid is not None and _wait_gone(pid, port), f"cluster node {pid} still alive"


def test_cluster_size_is_validated() -> None:
    with pytest.raises(ValueError, match="primaries"):
        EmbeddedRedisCluster(primaries=0)


def test_embedded_stack_starts_a_cluster_when_settings_ask_for_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATP_CONFIG", os.devnull)
    monkeypatch.delenv("ATP_REDIS_URL", raising=False)
    with embedded_stack(Settings(redis_cluster=True, kafka_bootstrap="127.0.0.1:1")) as filled:
        assert filled.kafka_bootstrap == "127.0.0.1:1"
        client = RedisCluster.from_url(filled.redis_url)
        assert len(client.get_primaries()) == 3
        client.close()


# --- Apache Kafka (connectors/kafka_dist.py fetches it; the fixture skips or fails without Java) ------


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


@pytest.mark.kafka_compat
def test_embedded_kafka_keeps_its_log_across_a_crash_and_leaves_nothing_after_stop(
    apache_kafka_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # CI finds leftovers by this marker in a process's environment: Kafka must carry it too.
    marker = os.environ.get("ATP_CI_RUN_ID") or "atp-test-marker"
    monkeypatch.setenv("ATP_CI_RUN_ID", marker)
    kafka = EmbeddedKafka(home=apache_kafka_home)
    with kafka:
        pid, port, controller, workdir = kafka.pid, kafka.port, kafka.controller_port, kafka.workdir
        assert pid is not None and _alive(pid)
        assert _environ(pid).get("ATP_CI_RUN_ID") == marker
        assert kafka.bootstrap == f"127.0.0.1:{port}" and controller != port and _port_open(controller)
        conf = {"bootstrap.servers": kafka.bootstrap}
        topics = Topics(suffix=".kafka")
        assert sorted(create_topics(conf, topics, 2)) == sorted(topics.all)
        producer = Producer({**conf, "enable.idempotence": True})
        producer.produce(topics.orders, key=b"SKU-1", value=b"kept")
        assert producer.flush(30) == 0

        kafka.restart(kill=True)  # a crash: unlike Tansu, Kafka comes back with its log
        assert kafka.port == port and kafka.controller_port == controller and kafka.pid != pid
        listed = AdminClient(conf).list_topics(timeout=10).topics
        assert set(topics.all) <= set(listed) and len(listed[topics.orders].partitions) == 2
        consumer = Consumer({**conf, "group.id": "embedded-check", "enable.partition.eof": True})
        consumer.assign([TopicPartition(topics.orders, p, 0) for p in range(2)])
        values, ends, deadline = [], 0, time.monotonic() + 30
        while ends < 2 and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is not None:
                if msg.error():
                    ends += 1
                else:
                    values.append(msg.value())
        consumer.close()
        assert values == [b"kept"]
        pid = kafka.pid
    assert pid is not None and _wait_gone(pid, port), f"kafka {pid} still alive after stop()"
    assert not _port_open(controller)
    assert not workdir.exists(), "the temp dir (logs, log dirs) is removed on stop"


@pytest.mark.kafka_compat
def test_a_sigkilled_parent_takes_its_kafka_with_it(apache_kafka_home: Path) -> None:
    script = textwrap.dedent(
        f"""
        import time
        from connectors.embedded import EmbeddedKafka
        k = EmbeddedKafka(home={str(apache_kafka_home)!r}).start()
        print(k.pid, k.port, k.controller_port, k.workdir, flush=True)
        time.sleep(300)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True, env=_clean_env())
    assert parent.stdout is not None
    line = parent.stdout.readline()
    assert line, f"the parent did not start Kafka: {parent.stderr.read() if parent.stderr else ''}"
    *numbers, workdir = line.split()
    pid, port, controller = (int(x) for x in numbers)
    assert _alive(pid)
    try:
        os.kill(parent.pid, signal.SIGKILL)
        assert _reap(parent) == -signal.SIGKILL
        assert _wait_gone(pid, port), f"orphan kafka {pid}"
        assert not _port_open(controller)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # a SIGKILLed parent cannot remove its temp dir


def test_asking_for_apache_kafka_without_java_stops_the_run_at_once_and_says_why(tmp_path: Path) -> None:
    (tmp_path / "test_never.py").write_text("def test_never():\n    raise AssertionError('collected')\n")
    env = _clean_env()
    env.pop("JAVA_HOME", None)
    env.update(ATP_TEST_BROKER="kafka", PATH=str(Path(sys.executable).parent))  # no java on it
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), str(tmp_path / "test_never.py")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, run.stdout + run.stderr
    assert "ATP_TEST_BROKER=kafka: Apache Kafka needs Java 11 or later" in run.stderr, run.stderr
    assert "collected" not in run.stdout + run.stderr

    env["ATP_TEST_BROKER"] = "redpanda"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), str(tmp_path / "test_never.py")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert run.returncode == pytest.ExitCode.USAGE_ERROR and "'redpanda'" in run.stderr, run.stdout + run.stderr
