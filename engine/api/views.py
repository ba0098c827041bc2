"""Store wire shapes (docs/semantics.md) → the API's JSON bodies (``engine.api.models``).

Pure functions on plain dicts, so the HTTP layer and the CLI's ``--json`` output say the
same thing in the same words.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engine.client import Reservation, ReservedLine
from engine.domain.events import format_time, from_ms

_LOCATION_KEYS = (
    "on_hand",
    "safety",
    "held",
    "committed",
    "in_transit",
    "promisable_in_transit",
    "atp",
    "oh_alloc",
    "bo_alloc",
    "short",
)


def rfc3339(ms: int) -> str | None:
    """RFC 3339 UTC time of ``ms`` since the epoch; None for 0 (= none)."""
    if not ms or ms <= 0:
        return None
    return format_time(from_ms(int(ms)))


def position_view(position: Mapping[str, Any], location: str | None = None) -> dict[str, Any]:
    """An ``AtpOut`` body from a store ``position`` (already restricted to ``location`` if given)."""
    locations = {
        name: {key: int(figures.get(key, 0)) for key in _LOCATION_KEYS}
        for name, figures in (position.get("locations") or {}).items()
    }
    next_ms = int(position.get("next_promise_ms") or 0)
    return {
        "sku": position["sku"],
        "location": location,
        "on_hand": int(position.get("on_hand", 0)),
        "safety": int(position.get("safety", 0)),
        "held": int(position.get("held", 0)),
        "committed": int(position.get("committed", 0)),
        "in_transit": int(position.get("in_transit", 0)),
        "promisable_in_transit": int(position.get("promisable_in_transit", 0)),
        "atp": int(position.get("atp", 0)),
        "promisable_now": int(position.get("promisable_now", 0)),
        "next_promise_ms": next_ms,
        "next_promise_at": rfc3339(next_ms),
        "oversold": int(position.get("oversold", 0)),
        "locations": locations,
    }


def line_view(line: ReservedLine) -> dict[str, Any]:
    """A ``LineOut`` body from a client ``ReservedLine``."""
    return {
        "sku": line.sku,
        "qty": line.qty,
        "location": line.location or None,
        "state": line.state,
        "expires_ms": line.expires_ms,
        "expires_at": rfc3339(line.expires_ms),
        "promised_ms": line.promised_ms,
        "promised_at": rfc3339(line.promised_ms),
        "atp_after": line.atp_after,
        "allocations": [
            {"kind": a.kind, "ref": a.ref, "location": a.location, "qty": a.qty} for a in line.allocations
        ],
    }


def reservation_body(
    rid: str, state: str, lines: Sequence[ReservedLine], promised_ms: int | None = None, expires_ms: int | None = None
) -> dict[str, Any]:
    """A ``ReservationOut`` body (lines ordered by SKU). Dates absent are derived from the lines:
    the latest promised date, the earliest expiry of a held line."""
    views = [line_view(line) for line in sorted(lines, key=lambda ln: ln.sku)]
    if promised_ms is None:
        promised_ms = max((v["promised_ms"] for v in views), default=0)
    if expires_ms is None:
        expires_ms = min((v["expires_ms"] for v in views if v["state"] == "held" and v["expires_ms"]), default=0)
    return {
        "reservation_id": rid,
        "state": state,
        "promised_ms": promised_ms,
        "promised_at": rfc3339(promised_ms),
        "expires_ms": expires_ms,
        "expires_at": rfc3339(expires_ms),
        "lines": views,
    }


def reservation_view(reservation: Reservation) -> dict[str, Any]:
    """A ``ReservationOut`` body from a client ``Reservation``."""
    return reservation_body(
        reservation.reservation_id,
        reservation.state,
        reservation.lines,
        reservation.promised_ms,
        reservation.expires_ms,
    )
