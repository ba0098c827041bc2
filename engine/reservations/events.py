"""The messages the API publishes to ``inventory.reservations`` for every state change it makes.

JSON, keyed by reservation id (so one reservation's events stay in order in one partition)::

    {"event_id": "res:R1:held", "type": "reservation.held", "reservation_id": "R1",
     "occurred_at": "2025-01-01T08:00:00.000Z", "state": "held",
     "channel": "web" | null, "customer_id": "c-1" | null,
     "lines": [{"sku", "qty", "location", "state", "expires_ms", "promised_ms",
                "atp_after", "allocations": [...]}]}

``event_id`` is deterministic — ``res:<rid>:<held|confirmed|released>`` and
``res:<rid>:extended:<expires_ms>`` — so a consumer can dedupe a message the idempotent
producer had to resend, and two API instances racing on one reservation name the same
change the same way. Changes are published, and a ``duplicate`` of a change whose event may
never have been kept (``published_change``); each change's event is kept once.

Every event goes through the change log (docs/changelog.md "Reservation events"): the API and the
CLI keep it in the log of the reservation's first SKU (``publish_args`` for ``Store.publish``)
before they answer, and the relay produces it when it ships that record. So an answered change's
event survives a crash of the API and a broker that is away.

``reservation.expired`` comes from the change log, not from a request: the relay publishes one
per line a script call expired (``expired_event``), ``event_id`` ``res:<rid>:expired:<sku>``
(the lines of one reservation expire SKU by SKU), ``occurred_at`` the moment it expired.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from engine.domain.events import format_time
from engine.reservations.types import Reservation, ReservedLine, Result
from engine.reservations.views import allocations_view

Change = Literal["held", "confirmed", "released", "extended"]
CHANGES: tuple[Change, ...] = ("held", "confirmed", "released", "extended")


def reservation_event(
    change: Change,
    reservation: Reservation,
    channel: str | None = None,
    customer_id: str | None = None,
    occurred_at: datetime | None = None,
) -> dict[str, Any]:
    """The event for ``change`` of ``reservation`` (its state after the change)."""
    if change not in CHANGES:
        raise ValueError(f"unknown reservation change {change!r}")
    rid = reservation.reservation_id
    views = [_line(line) for line in sorted(reservation.lines, key=lambda ln: ln.sku)]
    return {
        "event_id": f"res:{rid}:{change_id(change, reservation)}",
        "type": f"reservation.{change}",
        "reservation_id": rid,
        "occurred_at": format_time(occurred_at or datetime.now(UTC)),
        "state": reservation.state,
        "channel": channel,
        "customer_id": customer_id,
        "lines": views,
    }


def change_id(change: Change, reservation: Reservation) -> str:
    """The event id of ``change`` after ``res:<rid>:`` (an extension: with its new expiry)."""
    if change != "extended":
        return change
    expires = min((line.expires_ms for line in reservation.lines if line.expires_ms > 0), default=0)
    return f"extended:{expires}"


#: The change a request makes, by operation.
CHANGE_OF: dict[str, Change] = {"hold": "held", "confirm": "confirmed", "release": "released", "extend": "extended"}
#: The state a reservation is in after each change.
_STATE_AFTER: dict[Change, str] = {"held": "held", "confirmed": "committed", "released": "released",
                                   "extended": "held"}


def published_change(op: str, result: Result) -> tuple[Change, Reservation, list[str]] | None:
    """What a request's ``result`` publishes: (change, the reservation it tells, the
    reservation's other SKUs for ``publish_args``), or None.

    A change made now publishes. So does a ``duplicate`` whose reservation is still in the state
    the change led to: the request that made the change may have died (or lost Redis) before
    its event was kept, and a repeat is how its event gets out; ``Store.publish`` keeps each
    change's event once. A refused release publishes the lines it did release."""
    change = CHANGE_OF[op]
    if isinstance(result, Reservation):
        if result.status == "ok" or (result.status == "duplicate" and result.state == _STATE_AFTER[change]):
            return change, result, []
        return None
    if result.changed is not None:
        return change, result.changed, [line.sku for line in result.lines]
    return None


def _line(line: ReservedLine) -> dict[str, Any]:
    # The API's line body without its RFC 3339 twins (consumers have the *_ms fields).
    return {
        "sku": line.sku,
        "qty": line.qty,
        "location": line.location or None,
        "state": line.state,
        "expires_ms": line.expires_ms,
        "promised_ms": line.promised_ms,
        "atp_after": line.atp_after,
        "allocations": allocations_view(line),
    }


def publish_args(change: Change, reservation: Reservation, channel: str | None = None,
                 customer_id: str | None = None, skus: Iterable[str] = ()) -> tuple[str, str, bytes, str]:
    """``(sku, reservation id, event, change id)`` for ``Store.publish``: the event for
    ``change`` of ``reservation``, kept in the log of the reservation's first SKU in byte order,
    so that all events of one reservation wait in one log, in the order they were made. ``skus``:
    the reservation's other SKUs when ``reservation`` holds only some of its lines (what a
    refused release did release)."""
    sku = min([line.sku for line in reservation.lines] + list(skus))
    event = reservation_event(change, reservation, channel=channel, customer_id=customer_id)
    return sku, reservation.reservation_id, encode(event), change_id(change, reservation)


def encode(event: Mapping[str, Any]) -> bytes:
    """The message value."""
    return orjson.dumps(event)


def expired_event(sku: str, line: Mapping[str, Any]) -> dict[str, Any]:
    """The ``reservation.expired`` event of one line a change record's call expired (an
    ``expired`` item of the record, ``engine.domain.outputs.ExpiredLine``)."""
    rid = line["rid"]
    return {
        "event_id": f"res:{rid}:expired:{sku}",
        "type": "reservation.expired",
        "reservation_id": rid,
        "occurred_at": format_time(datetime.fromtimestamp(line["expires_ms"] / 1000, UTC)),
        "state": "expired",
        "channel": line["channel"] or None,
        "customer_id": line["customer_id"] or None,
        "lines": [{
            "sku": sku,
            "qty": line["qty"],
            "location": line["location"] or None,
            "state": "expired",
            "expires_ms": line["expires_ms"],
            "promised_ms": line["promised_ms"],
            "atp_after": line["atp_after"],
            "allocations": [],
        }],
    }
