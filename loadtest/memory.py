"""P5 — Redis memory per SKU position with no activity.

N positions are created with stock counts, as the stream creates them (``stock.counted``
events: an event id, a source partition and offset) and, separately, as an operator count
(no event id, no source). Reported: the ``used_memory`` delta / N for each, and
``MEMORY USAGE`` of every key of one SKU, so the cost per key is visible. Idle means the relay
has shipped the SKU's change record (docs/changelog.md); what a record costs while it waits is
reported beside (``bytes_per_waiting_record``).

Runs on its own embedded Redis (a fresh keyspace, so the delta is only the positions), or on
``ATP_REDIS_URL`` when one is given.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from loadtest.progress import Progress
from loadtest.server_stats import used_memory
from loadtest.target import Target
from loadtest.targets import P5_BYTES


@dataclass(frozen=True)
class MemoryConfig:
    positions: int = 20_000
    batch: int = 500

    def __post_init__(self) -> None:
        if self.positions < 100 or self.batch < 1:
            raise ValueError("positions must be at least 100 and batch at least 1")


@contextlib.contextmanager
def _scratch(target: Target) -> Iterator[Target]:
    if not target.embedded:
        yield target
        return
    from connectors.embedded import EmbeddedRedis

    with EmbeddedRedis() as server:
        yield Target(url=server.url, embedded=True, token=target.token, prefix=target.prefix)


def _settled_memory(client: Any) -> int:
    time.sleep(0.2)  # let client output buffers drain before reading
    return used_memory(client)


def _create(target: Target, variant: str, cfg: MemoryConfig, progress: Progress) -> dict[str, Any]:
    from engine.store.changelog import trim_logs
    from engine.store.keys import KEY_NAMES, sku_keys
    from engine.store.store import Store, SupplyCommand

    client = target.client()
    store = Store(client, prefix=target.prefix)
    names = [target.sku(f"P5{variant[0]}-{i:07d}") for i in range(cfg.positions)]
    gc.collect()
    keys0 = client.dbsize()
    before = _settled_memory(client)
    task = progress.add_task(f"P5: {cfg.positions} positions ({variant} counts)", total=cfg.positions)
    for i in range(0, len(names), cfg.batch):
        chunk = names[i:i + cfg.batch]
        if variant == "stream":
            cmds = [SupplyCommand(sku=s, cmd="count", payload={"loc": "default", "on_hand": 100},
                                  event_id=f"cnt-{s}", source="inventory.adjustments:0", offset=i + j,
                                  reason="cycle count", ref="CC-1")
                    for j, s in enumerate(chunk)]  # fmt: skip
        else:
            cmds = [SupplyCommand(sku=s, cmd="count", payload={"loc": "default", "on_hand": 100}) for s in chunk]
        store.apply(cmds)
        progress.update(task, completed=i + len(chunk))
    waiting = _settled_memory(client)
    # an idle position is one whose change records the relay shipped (docs/changelog.md): what
    # the relay's own trim leaves (the log gone, the SKU out of the changed set); each SKU has
    # one record, change number 1
    trim_logs(client, [(s, 1) for s in names], target.prefix, chunk=cfg.batch)
    after = _settled_memory(client)
    keys = client.dbsize() - keys0
    one = sku_keys(names[len(names) // 2], target.prefix)
    per_key = {}
    for name in KEY_NAMES:
        usage = client.memory_usage(getattr(one, name), samples=0)
        if usage:
            per_key[name] = {"bytes": int(usage),
                             "encoding": client.object("encoding", getattr(one, name)).decode()}  # fmt: skip
    client.close()
    per_position = (after - before) / cfg.positions
    return {
        "variant": variant,
        "positions": cfg.positions,
        "keys_per_position": round(keys / cfg.positions, 2),
        "used_memory_delta": after - before,
        "bytes_per_position": round(per_position, 1),
        "bytes_per_waiting_record": round((waiting - after) / cfg.positions, 1),
        "memory_usage_of_one_sku": per_key,
        "memory_usage_sum": sum(v["bytes"] for v in per_key.values()),
        "target_met": per_position <= P5_BYTES,
    }


def run_memory(target: Target, cfg: MemoryConfig, progress: Progress) -> dict[str, Any]:
    """Both variants on a fresh keyspace; the stream variant is the headline (it is how
    production creates positions)."""
    with _scratch(target) as scratch:
        client = scratch.client()
        version = client.info("server").get("redis_version")
        client.close()
        stream = _create(scratch, "stream", cfg, progress)
        operator = _create(scratch, "operator", cfg, progress)
    return {
        "name": "P5",
        "redis_version": version,
        "bytes_per_position": stream["bytes_per_position"],
        "target": f"<= {P5_BYTES} bytes per position",
        "target_met": stream["target_met"],
        "stream_counts": stream,
        "operator_counts": operator,
    }
