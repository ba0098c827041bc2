"""Records crossing the store boundary: validated requests in, normalised replies out.

Replies stay the plain-dict shapes of docs/semantics.md ("Wire shapes"), identical to what the
oracle returns. Requests are validated here so that no bad value ever reaches a key or a script.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from engine.domain.commands import SUPPLY_COMMANDS
from engine.domain.ids import DEFAULT_LOCATION, QTY_MAX
from engine.domain.policy import Policy
from engine.store.keys import validate_id, validate_location, validate_sku

_T = TypeVar("_T")

#: The store's own bound on a hold's life (a script holds it without overflow); a hold through the
#: service lives at most ``engine.domain.ids.MAX_HOLD_TTL_S``.
MAX_TTL_MS = 366 * 86_400_000
#: How long ended lines (released, expired, shipped) are kept before a purge deletes them, unless
#: the deployment says otherwise (``ATP_RESERVATION_RETENTION_S``).
RETENTION_S = 7 * 86_400
#: The largest reservation event the change log keeps for the relay (``Store.publish``).
MAX_EVENT_BYTES = 256 * 1024
#: How long ``Store.publish`` remembers that a change's event was kept (lua/publish.lua): a
#: request repeated within it finds its event kept and keeps no second one.
EVENT_MARK_TTL_MS = 86_400_000
#: The change a reservation event tells, as its event id names it after ``res:<rid>:``.
EVENT_CHANGE_PATTERN = re.compile(r"(held|confirmed|released|extended:[0-9]{1,14})")
# cjson prints numbers with 14 significant digits: every integer crossing the script boundary stays
# below 1e14 (ms timestamps have 13 digits).
MAX_TIME_MS = 10**14 - 1
MAX_OFFSET = 2**53 - 1
#: The longest input position name ('topic:partition') a command may carry.
MAX_SOURCE = 300

#: Why the hold script refuses a request (docs/semantics.md, hold_batch): the flash-sale guards,
#: then a location the SKU has neither stock nor inbound at, then short stock.
GUARDS = ("order_cap", "customer_limit", "channel_quota")
UNKNOWN_LOCATION = "unknown_location"
HOLD_REFUSALS = (*GUARDS, UNKNOWN_LOCATION, "insufficient")
LINE_STATES = ("held", "committed", "shipped", "released", "expired")
#: A reservation of lines in different states is ``partial`` (``reservation_state``).
PARTIAL = "partial"
#: The states the API reports for a reservation: its lines' common state, or ``partial``.
RESERVATION_STATES = (*LINE_STATES, PARTIAL)

POLICY_DEFAULTS: dict[str, Any] = Policy().to_wire()


def reservation_state(states: Iterable[str]) -> str:
    """The state of a reservation whose lines are in ``states``: theirs when they all agree,
    else ``partial``."""
    distinct = set(states)
    return distinct.pop() if len(distinct) == 1 else PARTIAL


def check_int(value: object, what: str, lo: int, hi: int) -> int:
    """Return ``value`` if it is an int (not a bool) in ``[lo, hi]``, else raise ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{what} must be in [{lo}, {hi}], got {value}")
    return value


def check_qty(value: object, what: str = "qty") -> int:
    """A quantity: integer in ``[1, 1_000_000_000]``."""
    return check_int(value, what, 1, QTY_MAX)


def _opt_location(value: object, what: str = "location") -> str:
    if value is None or value == "":
        return ""
    return validate_location(value, what)


def _opt_id(value: object, what: str) -> str:
    if value is None or value == "":
        return ""
    return validate_id(value, what)


@dataclass(frozen=True)
class HoldRequest:
    """One hold of one SKU: all-or-nothing; ``loc`` "" means any location.

    ``commit`` reserves as committed (no expiry) — the stream's reserve-as-committed.
    Construction validates every field and raises ``ValueError`` with the reason.
    """

    rid: str
    qty: int
    loc: str = ""
    ttl_ms: int = 600_000
    channel: str = ""
    customer: str = ""
    commit: bool = False

    def __post_init__(self) -> None:
        validate_id(self.rid, "reservation_id")
        check_qty(self.qty)
        object.__setattr__(self, "loc", _opt_location(self.loc))
        check_int(self.ttl_ms, "ttl_ms", 1, MAX_TTL_MS)
        object.__setattr__(self, "channel", _opt_location(self.channel, "channel"))
        object.__setattr__(self, "customer", _opt_id(self.customer, "customer_id"))
        if not isinstance(self.commit, bool):
            raise ValueError(f"commit must be a bool, got {self.commit!r}")

    def argv(self) -> list[str]:
        """The two ARGV slots of this request in hold.lua: the rid and the terms."""
        return [self.rid, self.terms()]

    def terms(self) -> str:
        """``qty|loc|ttl_ms|channel|customer|commit`` (hold.lua parses each distinct one once)."""
        return f"{self.qty}|{self.loc}|{self.ttl_ms}|{self.channel}|{self.customer}|{int(self.commit)}"


def checked_hold_request(rid: str, qty: int, loc: str, ttl_ms: int, channel: str, customer: str,
                         commit: bool = False) -> HoldRequest:
    """A ``HoldRequest`` from fields the caller has validated already (the checkout client, which
    checks every line and id once): built without running the checks again."""
    return _unchecked(HoldRequest, rid=rid, qty=qty, loc=loc, ttl_ms=ttl_ms, channel=channel, customer=customer,
                      commit=commit)


def _unchecked(cls: type[_T], **fields: Any) -> _T:
    """An instance of the frozen dataclass ``cls`` with ``fields`` as given, its checks
    (``__post_init__``) not run."""
    obj = object.__new__(cls)
    for name, value in fields.items():
        object.__setattr__(obj, name, value)
    return obj


def normalize_policy(policy: dict[str, Any] | None) -> dict[str, Any]:
    """A complete, validated policy (``engine.domain.policy.Policy``): defaults filled in.

    Unknown fields or bad values raise ``ValueError`` (pydantic's ``ValidationError`` is one).
    """
    if policy is not None and not isinstance(policy, dict):
        raise ValueError("policy must be an object")
    return Policy.from_wire(policy).to_wire()


def normalize_payload(cmd: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The validated payload of supply command ``cmd`` with every optional field present.

    Absent locations become ``DEFAULT_LOCATION`` (``""`` = any for order_placed), absent ids ``""``,
    absent times/quantities ``0``. Raises ``ValueError`` naming the bad field.
    """
    if not isinstance(payload, dict):
        raise ValueError("payload must be an object")
    p = payload

    def loc(name: str = "loc") -> str:
        v = p.get(name)
        return DEFAULT_LOCATION if v is None or v == "" else validate_location(v)

    if cmd == "inbound_created":
        return {
            "inbound_id": validate_id(p.get("inbound_id"), "inbound_id"),
            "loc": loc(),
            "qty": check_qty(p.get("qty")),
            "eta_ms": check_int(p.get("eta_ms"), "eta_ms", 0, MAX_TIME_MS),
            "supplier": validate_location(p.get("supplier"), "supplier_id"),
        }
    if cmd == "inbound_updated":
        # 0 (or absent) = unchanged
        eta = p.get("eta_ms") or 0
        qty = p.get("qty") or 0
        return {
            "inbound_id": validate_id(p.get("inbound_id"), "inbound_id"),
            "eta_ms": check_int(eta, "eta_ms", 0, MAX_TIME_MS),
            "qty": 0 if qty == 0 else check_qty(qty),
        }
    if cmd == "inbound_cancelled":
        return {"inbound_id": validate_id(p.get("inbound_id"), "inbound_id")}
    if cmd == "receipt":
        return {
            "loc": loc(),
            "qty": check_qty(p.get("qty")),
            "inbound_id": _opt_id(p.get("inbound_id"), "inbound_id"),
        }
    if cmd == "adjust":
        return {"loc": loc(), "delta": check_int(p.get("delta"), "delta", -QTY_MAX, QTY_MAX)}
    if cmd == "count":
        return {"loc": loc(), "on_hand": check_int(p.get("on_hand"), "on_hand", 0, QTY_MAX)}
    if cmd == "ship":
        return {
            "rid": validate_id(p.get("rid"), "reservation_id"),
            "loc": loc(),
            "qty": check_qty(p.get("qty")),
        }
    if cmd == "order_placed":
        return {
            "rid": validate_id(p.get("rid"), "reservation_id"),
            "loc": _opt_location(p.get("loc")),
            "qty": check_qty(p.get("qty")),
            "channel": _opt_location(p.get("channel"), "channel"),
            "customer": _opt_id(p.get("customer"), "customer_id"),
        }
    if cmd == "order_cancelled":
        return {"rid": validate_id(p.get("rid"), "reservation_id")}
    if cmd == "policy":
        return {"policy": normalize_policy(p.get("policy"))}
    if cmd == "reliability":
        return {
            "supplier": validate_location(p.get("supplier"), "supplier_id"),
            "rel_pm": check_int(p.get("rel_pm"), "rel_pm", 0, 1000),
        }
    raise ValueError(f"unknown supply command {cmd!r}; known: {', '.join(SUPPLY_COMMANDS)}")


@dataclass(frozen=True)
class SupplyCommand:
    """One supply command of one SKU, applied idempotently by apply.lua.

    ``source`` (``topic:partition``) and ``offset`` drive the offset watermark, ``event_id`` the
    recent-event log; an empty ``source`` / ``event_id`` skips that check (operator commands).
    ``payload`` is normalised on construction (see ``normalize_payload``).
    """

    sku: str
    cmd: str
    payload: dict[str, Any] = field(default_factory=dict)
    event_id: str = ""
    source: str = ""
    offset: int = -1
    reason: str = ""
    ref: str = ""

    def __post_init__(self) -> None:
        validate_sku(self.sku)
        object.__setattr__(self, "payload", normalize_payload(self.cmd, self.payload))
        object.__setattr__(self, "event_id", _opt_id(self.event_id, "event_id"))
        if not isinstance(self.source, str) or len(self.source) > MAX_SOURCE or "\n" in self.source:
            raise ValueError(f"source must be a string 'topic:partition' of at most {MAX_SOURCE} characters")
        if self.source:
            check_int(self.offset, "offset", 0, MAX_OFFSET)
        for name in ("reason", "ref"):
            value = getattr(self, name)
            if not isinstance(value, str) or len(value) > 256:
                raise ValueError(f"{name} must be a string of at most 256 characters")

    @classmethod
    def checked(cls, sku: str, cmd: str, payload: dict[str, Any], event_id: str, source: str, offset: int,
                reason: str, ref: str) -> SupplyCommand:
        """A command from fields the caller has validated already, ``payload`` in the form
        ``normalize_payload`` gives (the parse step, whose event models check every field):
        built without running the checks again."""
        return _unchecked(cls, sku=sku, cmd=cmd, payload=payload, event_id=event_id, source=source, offset=offset,
                          reason=reason, ref=ref)

    def argv(self) -> list[str | int]:
        """ARGV slots 3.. of apply.lua."""
        return [
            self.cmd,
            self.event_id,
            self.source,
            self.offset if self.source else -1,
            orjson.dumps(self.payload).decode(),
            journal_note(self.reason, self.ref),
        ]


# ---------------------------------------------------------------------------- raw state


# ---------------------------------------------------------------------------- the journal

JOURNAL_SIZE = 200


def _escape(text: str) -> str:
    return text.replace("%", "%25").replace("|", "%7C") if ("%" in text or "|" in text) else text


def _unescape(text: str) -> str:
    return text.replace("%7C", "|").replace("%25", "%") if "%" in text else text


def journal_note(reason: str, ref: str) -> str:
    """``reason|ref`` as apply.lua stores it in a journal entry ('%' and '|' escaped)."""
    return _escape(reason) + "|" + _escape(ref)


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def state_counters(state: dict[Any, Any]) -> tuple[int, int, int]:
    """(lines created, commands applied, event ids applied) from a SKU's state hash."""
    raw = state.get("!L", state.get(b"!L"))
    if raw is None:
        return 0, 0, 0
    head = _text(raw).split("|", 1)[0]
    seq, applied, events = (int(x) for x in head.split(","))
    return seq, applied, events


def journal_entries(state: dict[Any, Any], limit: int = JOURNAL_SIZE, before: int | None = None) -> list[dict[str, Any]]:
    """The movement journal, newest first, from a SKU's whole state hash (HGETALL): ``{n, at,
    cmd, qty, reason, ref, event_id}`` per applied command (``n`` its number, ``qty`` the
    quantity it named or None), at most ``limit``, only those numbered below ``before``."""
    fields = {_text(k): _text(v) for k, v in state.items()}
    _seq, applied, _events = state_counters(fields)
    # 'e<event id>' -> '<n>:<content digest>' (or '<n>', written before digests were kept)
    ids = {v.partition(":")[0]: k[1:] for k, v in fields.items() if k.startswith("e")}
    top = applied if before is None else min(applied, before - 1)
    out = []
    for n in range(top, max(0, applied - JOURNAL_SIZE, top - limit), -1):
        raw = fields.get(f"j{n % JOURNAL_SIZE}")
        if raw is None:
            continue
        parts = raw.split("|")
        at, cmd, events = parts[:3]
        # '<at>|<cmd>|<events>|<qty>|<reason>|<ref>'; entries written before qty have five parts
        qty, reason, ref = parts[3:] if len(parts) == 6 else ("", *parts[3:])
        out.append({"n": n, "at": int(at), "cmd": cmd, "qty": int(qty) if qty else None,
                    "reason": _unescape(reason), "ref": _unescape(ref),
                    "event_id": ids.get(events, "") if events else ""})
    return out


_LIST_FIELDS = frozenset({"alloc", "at_risk", "slipped"})


def normalize_reply(value: Any) -> Any:
    """Turn cjson's ``{}`` for an empty list back into ``[]`` (fields alloc, at_risk, slipped)."""
    if isinstance(value, dict):
        return {
            k: ([] if k in _LIST_FIELDS and v == {} else normalize_reply(v)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [normalize_reply(v) for v in value]
    return value


def decode_line(rid: str, sku: str, raw: bytes | str) -> dict[str, Any]:
    """The wire line (docs/semantics.md "line") of a line in its stored form
    ``state|qty|loc|expires_ms|seq|channel|customer|promised_ms|atp_after|alloc`` (lua/lib.lua)."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    state, qty, loc, expires, seq, channel, customer, promised, atp, alloc = text.split("|")
    entries: list[list[Any]] = []
    if alloc:
        for entry in alloc.split(";"):
            kind, ref, at, q = entry.split(",")
            entries.append([kind, ref, at, int(q)])
    return {
        "rid": rid, "sku": sku, "qty": int(qty), "loc": loc, "state": state, "expires_ms": int(expires),
        "seq": int(seq), "channel": channel, "customer": customer, "alloc": entries,
        "promised_ms": int(promised), "atp_after": int(atp),
    }


def decode_refusal(payload: bytes | str) -> dict[str, Any]:
    """A refused hold's ``<reason>:<available>[:<limit>[:<used>]]`` as ``{reason, available}``
    plus, for a guard, its ``limit`` and (customer_limit, channel_quota) the ``used`` units."""
    reason, *numbers = (payload.decode() if isinstance(payload, bytes) else payload).split(":")
    return {"reason": reason, **{k: int(v) for k, v in zip(("available", "limit", "used"), numbers, strict=False)}}


def decode_hold_replies(sku: str, requests: Sequence[HoldRequest],
                        raw: Sequence[bytes | str]) -> list[dict[str, Any]]:
    """The hold replies of docs/semantics.md from hold.lua's flat reply (status, payload per
    request): ``{status: ok|duplicate|conflict, rid, line}`` or
    ``{status: refused, rid, reason, available[, limit[, used]]}``."""
    if len(raw) != 2 * len(requests):
        raise ValueError(f"hold script answered {len(raw)} items for {len(requests)} requests")
    out = []
    for i, req in enumerate(requests):
        status = raw[2 * i]
        status = status.decode() if isinstance(status, bytes) else status
        payload = raw[2 * i + 1]
        if status == "refused":
            out.append({"status": status, "rid": req.rid, **decode_refusal(payload)})
        else:
            out.append({"status": status, "rid": req.rid, "line": decode_line(req.rid, sku, payload)})
    return out


# cjson writes compactly, and ids, locations and field names hold no quotes, so an empty list
# field is exactly these bytes wherever it sits.
_EMPTY_LIST_FIELDS = tuple((f'"{k}":{{}}'.encode(), f'"{k}":[]'.encode()) for k in sorted(_LIST_FIELDS))


def decode_reply(raw: bytes | str) -> Any:
    """Decode a script's JSON reply and normalise its empty lists (as ``normalize_reply`` does)."""
    if isinstance(raw, str):
        raw = raw.encode()
    # rewriting the few bytes costs far less than walking the decoded reply
    if b"{}" in raw:
        for empty_object, empty_list in _EMPTY_LIST_FIELDS:
            raw = raw.replace(empty_object, empty_list)
    return orjson.loads(raw)
