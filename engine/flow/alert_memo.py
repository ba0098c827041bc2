"""The alert step's replay memo: observations as first applied, kept in Redis for a while.

Why it exists is explained in ``engine.flow.alert_monitor``. Here: the key of a memo, and its
JSON form (never pickle — Redis content must not be able to run code in the flow).

Key: ``<prefix>-am:{<sku>}:<topic>:<partition>:<offset>`` — the outcome's id, with the SKU's hash
tag so it lives in the SKU's cluster slot. The ``-am`` namespace sits beside the engine's own keys
(``<prefix>:…``): memos are a replay aid with a TTL, not inventory state, and they hold clock
readings (promised dates), so they stay out of state digests and the invariant checks.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import orjson

from engine.domain.observation import AtRisk, ClosedLot, LocationFigures, Observation, PositionFigures, Slip
from engine.flow.alert_monitor import Memo, PolicyKnobs
from engine.store.keys import validate_prefix, validate_sku
from engine.store.reply_stash import check_position

MEMO_VERSION = 1


class MemoError(ValueError):
    """A stored memo that cannot be read back (then the replay goes on without it)."""


def memo_key(prefix: str, sku: str, source: str, offset: int) -> str:
    """The key of the memo of (``sku``, ``source`` = ``topic:partition``, ``offset``); raises
    ``ValueError`` for any part that is not a valid identifier."""
    validate_prefix(prefix)
    validate_sku(sku)
    check_position(source, offset)
    return f"{prefix}-am:{{{sku}}}:{source}:{offset}"


def encode_memo(memo: Memo) -> bytes:
    """The stored form of ``memo``: JSON without the fields at their defaults (memos are many)."""
    obs = memo.observation
    data: dict[str, Any] = {
        name: value for name in _OBS_FIELDS if (value := getattr(obs, name)) != _OBS_DEFAULTS[name]
    }
    data["sku"], data["command"], data["occurred_ms"] = obs.sku, obs.command, obs.occurred_ms
    if obs.position is not None:
        pos = obs.position
        data["position"] = {
            "atp": pos.atp,
            "oversold": pos.oversold,
            "locations": {loc: _nonzero(figs) for loc, figs in pos.locations.items()},
        }
        if pos.backordered:
            data["position"]["backordered"] = pos.backordered
    return orjson.dumps({"v": MEMO_VERSION, "obs": data, "knobs": memo.knobs})


def decode_memo(raw: bytes | str) -> Memo:
    """A memo from its stored form; raises ``MemoError`` when it is not one."""
    try:
        data = orjson.loads(raw)
        if not isinstance(data, dict) or data.get("v") != MEMO_VERSION:
            raise MemoError(f"unknown memo version {data.get('v') if isinstance(data, dict) else data!r}")
        return Memo(_observation(data["obs"]), _knobs(data["knobs"]))
    except MemoError:
        raise
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MemoError(f"unreadable memo: {exc}") from exc


_OBS_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in fields(Observation) if f.name not in ("sku", "command", "occurred_ms")
}
_OBS_FIELDS = tuple(name for name in _OBS_DEFAULTS if name != "position")


def _nonzero(figs: LocationFigures) -> dict[str, int]:
    return {name: value for name in _LOC_FIELDS if (value := getattr(figs, name))}


_LOC_FIELDS = tuple(f.name for f in fields(LocationFigures))


def _knobs(d: dict[str, Any]) -> PolicyKnobs:
    low, pack, lead, uses = d["low_stock"], d["pack_size"], d["lead_time_days"], d["use_reliability"]
    if type(low) is not int or type(pack) is not int or not isinstance(lead, int | float) or type(uses) is not bool:
        raise MemoError("bad policy knobs")
    return PolicyKnobs(low, pack, float(lead), uses)


def _position(d: dict[str, Any] | None) -> PositionFigures | None:
    if d is None:
        return None
    return PositionFigures(
        atp=int(d["atp"]),
        oversold=int(d["oversold"]),
        locations={loc: LocationFigures(**figs) for loc, figs in sorted(d["locations"].items())},
        backordered=int(d.get("backordered", 0)),
    )


def _observation(d: dict[str, Any]) -> Observation:
    if not isinstance(d, dict):
        raise MemoError("the observation is not an object")
    lot = d.get("lot")
    return Observation(
        sku=validate_sku(d["sku"]),
        command=str(d["command"]),
        occurred_ms=int(d["occurred_ms"]),
        event_id=str(d.get("event_id", "")),
        status=str(d.get("status", "ok")),
        reason=str(d.get("reason", "")),
        position=_position(d.get("position")),
        at_risk=tuple(AtRisk(**a) for a in d.get("at_risk", ())),
        slipped=tuple(Slip(**s) for s in d.get("slipped", ())),
        location=str(d.get("location", "")),
        qty=int(d.get("qty", 0)),
        rid=str(d.get("rid", "")),
        channel=str(d.get("channel", "")),
        available=int(d.get("available", 0)),
        inbound_id=str(d.get("inbound_id", "")),
        eta_ms=int(d.get("eta_ms", 0)),
        supplier=str(d.get("supplier", "")),
        lot=ClosedLot(**lot) if lot is not None else None,
    )
