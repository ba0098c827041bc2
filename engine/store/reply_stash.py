"""The reply stash: each stream command's supply reply, kept by ``apply.lua`` in the same script
call that applied the command, for a short while.

Why: the flow's alert step judges each outcome after the store applied it, and a process killed
in between (SIGKILL) would otherwise lose those outcomes' alerts for good — the replayed commands
come back ``duplicate`` by offset, with today's position. With the stash, the replay reads the
reply as first produced and judges it as the first pass would have (``engine.flow.alerting``).

Key: ``<prefix>-rp:{<sku>}:<topic>:<partition>:<offset>`` — the outcome's id under the SKU's hash
tag, so it sits in the SKU's cluster slot and the script can write it (it is passed as the last
KEYS entry). The ``-rp`` namespace sits beside the engine's own keys: a replay aid with a TTL, not
inventory state, so it stays out of ``dump``, state digests and the invariant checks. Value: the
reply JSON exactly as ``Store.apply`` returned it. Only commands with an input position
(``source`` = ``topic:partition``, ``offset`` ≥ 0) are kept, and only when applied or refused as a
duplicate by event id; a duplicate by offset changes nothing. The alert step deletes a batch's
stash once its memos are stored, so the stash holds the batches in flight; the TTL is the safety
net for a flow without the alert step or one that died.
"""

from __future__ import annotations

import re

from engine.store.keys import validate_prefix, validate_sku

STASH_TTL_S = 600
"""How long a kept reply stays when nobody deletes it (seconds): the longest a restart may take
to replay it."""

MAX_OFFSET = 2**53 - 1
_SOURCE = re.compile(r"[A-Za-z0-9._-]{1,249}:[0-9]{1,10}")


def check_position(source: object, offset: object) -> tuple[str, int]:
    """``(source, offset)`` if ``source`` is ``topic:partition`` and ``offset`` an int in
    [0, 2**53 - 1]; else ``ValueError`` saying which is bad."""
    if not isinstance(source, str) or _SOURCE.fullmatch(source) is None:
        raise ValueError(f"invalid source {source!r} (must be topic:partition)")
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset <= MAX_OFFSET:
        raise ValueError(f"invalid offset {offset!r}")
    return source, offset


def stash_key(prefix: str, sku: str, source: str, offset: int) -> str:
    """The key of the kept reply of (``sku``, ``source``, ``offset``); ``ValueError`` for any part
    that is not a valid identifier."""
    validate_prefix(prefix)
    validate_sku(sku)
    check_position(source, offset)
    return f"{prefix}-rp:{{{sku}}}:{source}:{offset}"
