"""What the Redis server itself says about a phase of a benchmark: per-command call counts and
time (``INFO commandstats``), its own CPU time (``INFO cpu``) and memory (``INFO memory``). On a
Redis Cluster (a ``redis.RedisCluster`` client) every figure is the sum over its nodes.

``usec`` in commandstats is wall-clock time inside the command (for FCALL or EVALSHA: the whole script,
including the commands it calls), so on a busy machine it also counts time the server thread
was preempted. The server's CPU time per call is the figure that stays honest under load; both
are reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis.cluster import RedisCluster


@dataclass(frozen=True)
class CommandStat:
    calls: int
    usec: int


#: The commands that run a script, lower case: FCALL is what the engine sends, EVALSHA what the
#: minimal script of M1 / M16 and the profiles send. "The script's time" is the sum over these.
SCRIPT_COMMANDS = ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro")
#: The name ``PhaseStats.calls`` / ``usec`` take for all of ``SCRIPT_COMMANDS`` together.
SCRIPTS = "scripts"


def is_script_command(name: str | bytes) -> bool:
    """Whether a command name (any case, e.g. the first word of a SLOWLOG entry) runs a script."""
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    return name.lower() in SCRIPT_COMMANDS


def parse_command_stats(info: dict[str, Any]) -> dict[str, CommandStat]:
    """An ``INFO commandstats`` reply (as redis-py parses it) as command name -> calls and usec (pure)."""
    out: dict[str, CommandStat] = {}
    for key, value in info.items():
        name = key.removeprefix("cmdstat_")
        out[name] = CommandStat(int(value["calls"]), int(value["usec"]))
    return out


def _infos(client: Any, section: str) -> list[dict[str, Any]]:
    """``INFO <section>`` of the server, or of every primary of a Cluster (a Cluster client sends
    INFO to one node unless told otherwise)."""
    if isinstance(client, RedisCluster):
        return list(client.info(section, target_nodes=RedisCluster.PRIMARIES).values())
    return [client.info(section)]


def command_stats(client: Any) -> dict[str, CommandStat]:
    """``INFO commandstats`` as command name (lower case, e.g. ``evalsha``) -> calls and usec."""
    total: dict[str, CommandStat] = {}
    for info in _infos(client, "commandstats"):
        for name, stat in parse_command_stats(info).items():
            seen = total.get(name, CommandStat(0, 0))
            total[name] = CommandStat(seen.calls + stat.calls, seen.usec + stat.usec)
    return total


def script_totals(stats: dict[str, CommandStat]) -> CommandStat:
    """Calls and usec of every script command together (``SCRIPT_COMMANDS``)."""
    return CommandStat(sum(stats[c].calls for c in SCRIPT_COMMANDS if c in stats),
                       sum(stats[c].usec for c in SCRIPT_COMMANDS if c in stats))


def server_cpu_s(client: Any) -> float:
    """CPU seconds (user + system) the server process (every node's) has used since it started."""
    return sum(float(info["used_cpu_user"]) + float(info["used_cpu_sys"]) for info in _infos(client, "cpu"))


def used_memory(client: Any) -> int:
    """``used_memory`` in bytes (of every node)."""
    return sum(int(info["used_memory"]) for info in _infos(client, "memory"))


@dataclass(frozen=True)
class PhaseStats:
    """Server-side figures of one phase: commands run (with calls and usec) and CPU seconds."""

    commands: dict[str, CommandStat]
    cpu_s: float

    def _stat(self, command: str) -> CommandStat | None:
        if command == SCRIPTS:
            return script_totals(self.commands)
        return self.commands.get(command)

    def calls(self, command: str) -> int:
        """Calls of ``command`` (lower case; ``SCRIPTS``: of every script command)."""
        stat = self._stat(command)
        return stat.calls if stat else 0

    def usec(self, command: str) -> int:
        """Microseconds inside ``command`` (``SCRIPTS``: inside every script command)."""
        stat = self._stat(command)
        return stat.usec if stat else 0

    def usec_per_call(self, command: str) -> float:
        calls = self.calls(command)
        return self.usec(command) / calls if calls else 0.0

    def cpu_us_per(self, units: int) -> float:
        """Server CPU microseconds per unit of work (per call, per hold, ...)."""
        return self.cpu_s * 1e6 / units if units else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "cpu_s": round(self.cpu_s, 4),
            "commands": {
                name: {"calls": s.calls, "usec": s.usec,
                       "usec_per_call": round(s.usec / s.calls, 3) if s.calls else 0.0}
                for name, s in sorted(self.commands.items())
            },
        }  # fmt: skip


class ServerMeter:
    """Measure a phase: ``CONFIG RESETSTAT`` and a CPU reading on entry, both read on exit.

    ``RESETSTAT`` clears the server's command statistics for everyone; the benchmarks run on their
    own (embedded) server by default, so nothing else is disturbed.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.result: PhaseStats | None = None
        self._cpu0 = 0.0

    def __enter__(self) -> ServerMeter:
        if isinstance(self.client, RedisCluster):  # else it goes to one node
            self.client.config_resetstat(target_nodes=RedisCluster.PRIMARIES)
        else:
            self.client.config_resetstat()
        self._cpu0 = server_cpu_s(self.client)
        return self

    def snapshot(self) -> PhaseStats:
        """The figures so far (the phase goes on)."""
        stats = command_stats(self.client)
        stats.pop("config", None)  # our own RESETSTAT
        stats.pop("info", None)  # our own readings
        return PhaseStats(stats, server_cpu_s(self.client) - self._cpu0)

    def __exit__(self, *exc: object) -> None:
        self.result = self.snapshot()
