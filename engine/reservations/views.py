"""Store wire shapes (docs/semantics.md) → the API's JSON bodies (``engine.api.models``).

Pure functions on plain dicts, so the HTTP layer and the CLI's ``--json`` output say the
same thing in the same words.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from engine.domain.events import format_time, from_ms
from engine.reservations.types import Refusal, Reservation, ReservedLine
from engine.store.listing import Page
from engine.store.wire import UNKNOWN_LOCATION, reservation_state

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


#: Formatted whole seconds (``2025-01-01T08:00:00``) by epoch second: a checkout reply names a
#: few times, mostly within the same seconds, and datetime formatting is most of its cost.
_SECONDS: dict[int, str] = {}
_SECONDS_KEPT = 4096


def rfc3339(ms: int) -> str | None:
    """RFC 3339 UTC time of ``ms`` since the epoch (``engine.domain.events.format_time``'s form,
    e.g. ``2025-01-01T08:00:00.000Z``); None for 0 (= none)."""
    if not ms or ms <= 0:
        return None
    second, milli = divmod(int(ms), 1000)
    prefix = _SECONDS.get(second)
    if prefix is None:
        if len(_SECONDS) >= _SECONDS_KEPT:
            _SECONDS.clear()
        prefix = _SECONDS[second] = format_time(from_ms(second * 1000))[:-5]  # less ".000Z"
    return f"{prefix}.{milli:03d}Z"


def position_view(position: Mapping[str, Any], location: str | None = None) -> dict[str, Any]:
    """An ``AtpOut`` body from a store ``position`` (already restricted to ``location`` if given)."""
    locations = {
        name: {key: int(figures.get(key, 0)) for key in _LOCATION_KEYS}
        for name, figures in (position.get("locations") or {}).items()
    }
    for figures in locations.values():
        figures["backordered"] = figures["bo_alloc"]
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
        "backordered": int(position.get("backordered", 0)),
        "locations": locations,
    }


def allocations_view(line: ReservedLine) -> list[dict[str, Any]]:
    """The ``allocations`` of a ``LineOut`` body."""
    return [{"kind": a.kind, "ref": a.ref, "location": a.location, "qty": a.qty} for a in line.allocations]


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
        "allocations": allocations_view(line),
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



#: What the guards that refuse a hold mean, for a refusal's ``detail`` (docs/semantics.md, "Policy").
_GUARD_LIMITS = {
    "order_cap": "at most {limit} units per reservation",
    "customer_limit": "at most {limit} units per customer{who}, {used} already held or bought",
    "channel_quota": "at most {limit} units for channel{who}, {used} already held or bought",
}


def refusal_view(
    refusal: Refusal,
    lines: Sequence[tuple[str, int, str | None]],
    atp: Mapping[str, int],
    *,
    customer: str | None = None,
    channel: str | None = None,
) -> dict[str, Any]:
    """A ``RefusedOut`` body for a refused hold of ``lines`` (sku, qty, location).

    ``atp`` gives the stock each SKU could take (the refusal's own figures win). A line's
    ``available`` is what would fit: the stock, bounded by the guard that refused its SKU;
    ``requested`` sums the lines of one SKU, which are held as one and refused together."""
    requested: dict[str, int] = {}
    for sku, qty, _loc in lines:
        requested[sku] = requested.get(sku, 0) + qty
    stock = {sku: max(0, int(units)) for sku, units in {**atp, **refusal.available}.items()}
    room = None if refusal.limit is None else max(0, refusal.limit - (refusal.used or 0))
    fits = dict(stock)
    if room is not None and refusal.sku in fits:
        fits[refusal.sku] = min(fits[refusal.sku], room)
    merged = sum(1 for sku, _q, _l in lines if sku == refusal.sku) > 1
    return {
        "error": "refused",
        "detail": _refusal_detail(refusal, requested, fits, merged,
                                  customer if refusal.reason == "customer_limit" else channel,
                                  next((loc for sku, _q, loc in lines if sku == refusal.sku), None)),
        "reservation_id": refusal.reservation_id,
        "reason": refusal.reason,
        "sku": refusal.sku,
        "guard": None if room is None else {
            "name": refusal.reason, "limit": refusal.limit, "used": refusal.used, "room": room,
        },
        "lines": [
            {
                "sku": sku,
                "qty": qty,
                "location": location,
                "requested": requested[sku],
                "available": fits.get(sku, 0),
                "stock": stock.get(sku, 0),
                "reason": refusal.reason if refusal.sku in (None, sku) else None,
            }
            for sku, qty, location in lines
        ],
    }


def _refusal_detail(refusal: Refusal, requested: Mapping[str, int], fits: Mapping[str, int],
                    merged: bool, who: str | None, where: str | None) -> str:
    sku = refusal.sku
    if sku is None:
        return f"not enough to promise: {refusal.reason}"
    asked = f"{requested.get(sku, 0)} asked" + (" by its lines together" if merged else "")
    if refusal.reason == UNKNOWN_LOCATION:
        return f"{sku} has no location {where!r}: no stock and no inbound there"
    guard = _GUARD_LIMITS.get(refusal.reason)
    if guard is None:
        return f"not enough to promise on {sku}: {asked}, {fits.get(sku, 0)} available"
    meaning = guard.format(limit=refusal.limit, used=refusal.used, who=f" {who}" if who else "")
    return f"{refusal.reason} on {sku}: {meaning}; {asked}, {fits.get(sku, 0)} would fit"


def listed_reservation_view(rid: str, lines: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A ``ListedReservationOut`` body from a reservation id and its store wire lines."""
    reserved = [ReservedLine.from_wire(dict(line)) for line in lines]
    body = reservation_body(rid, reservation_state(line.state for line in reserved), reserved)
    wire = {line["sku"]: line for line in lines}
    for view in body["lines"]:
        view["customer_id"] = wire[view["sku"]]["customer"] or None
        view["channel"] = wire[view["sku"]]["channel"] or None
    return body


def reservation_page_view(page: Page) -> dict[str, Any]:
    """A ``ReservationPageOut`` body from a store listing page."""
    return {
        "items": [listed_reservation_view(item.reservation_id, item.lines) for item in page.items],
        "next_cursor": page.next_cursor,
    }


def journal_view(sku: str, entries: Sequence[Mapping[str, Any]], limit: int) -> dict[str, Any]:
    """A ``JournalPageOut`` body from ``Store.journal`` entries; ``next_before`` continues below
    the last entry (None once a page comes back short)."""
    return {
        "sku": sku,
        "entries": [{**e, "at_ms": e["at"], "at": rfc3339(e["at"])} for e in entries],
        "next_before": entries[-1]["n"] if len(entries) == limit and entries[-1]["n"] > 1 else None,
    }
