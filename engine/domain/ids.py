"""Identifiers and quantities: the patterns of docs/semantics.md, as validators and pydantic types.

Every identifier that reaches a Redis key passes through one of these first. Two forms:

* ``is_valid_id(kind, value) -> bool`` and ``require_id(kind, value) -> str`` (raises
  ``ValueError`` whose message says what is wrong) for code that is not pydantic, and
  ``valid_qty`` / ``require_qty`` for quantities;
* ``Annotated`` types (``Sku``, ``Location``, ``Qty``, …) for pydantic models and FastAPI
  signatures. They are strict: a number is never accepted where a string is expected, nor a
  string or a float where an integer is expected.

Patterns are matched against the whole string (a trailing newline is not allowed).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints
from pydantic_core import PydanticCustomError

QTY_MAX = 1_000_000_000
"""Largest quantity, delta or count anywhere in the engine."""

DEFAULT_LOCATION = "default"
"""The location used where an event or call names none (holds excepted: no location = any)."""

MAX_LINES = 100
"""Most lines in one order or one reservation."""

MAX_HOLD_TTL_S = 86_400
"""Longest a hold may live, in seconds (a checkout that needs longer extends it)."""

ANY_LOCATION = "any"
"""Not a location name (in any case): a hold means any location by naming none, and a warehouse
called ``any`` would turn a request for any location into one for that warehouse."""

SKU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
SHORT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$"
"""location, channel, supplier_id."""
LONG_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
"""reservation_id, order_id, inbound_id, receipt_id, event_id, customer_id."""

# kind -> (whole-string pattern, max length, the allowed characters in words)
_RULES: dict[str, tuple[re.Pattern[str], int, str]] = {
    "sku": (re.compile(SKU_PATTERN[:-1] + r"\Z"), 64, "A-Z a-z 0-9 . _ -"),
    "location": (re.compile(SHORT_ID_PATTERN[:-1] + r"\Z"), 32, "A-Z a-z 0-9 . _ -"),
    "channel": (re.compile(SHORT_ID_PATTERN[:-1] + r"\Z"), 32, "A-Z a-z 0-9 . _ -"),
    "supplier_id": (re.compile(SHORT_ID_PATTERN[:-1] + r"\Z"), 32, "A-Z a-z 0-9 . _ -"),
    "reservation_id": (re.compile(LONG_ID_PATTERN[:-1] + r"\Z"), 128, "A-Z a-z 0-9 . _ : -"),
    "order_id": (re.compile(LONG_ID_PATTERN[:-1] + r"\Z"), 128, "A-Z a-z 0-9 . _ : -"),
    "inbound_id": (re.compile(LONG_ID_PATTERN[:-1] + r"\Z"), 128, "A-Z a-z 0-9 . _ : -"),
    "receipt_id": (re.compile(LONG_ID_PATTERN[:-1] + r"\Z"), 128, "A-Z a-z 0-9 . _ : -"),
    "event_id": (re.compile(LONG_ID_PATTERN[:-1] + r"\Z"), 128, "A-Z a-z 0-9 . _ : -"),
    "customer_id": (re.compile(LONG_ID_PATTERN[:-1] + r"\Z"), 128, "A-Z a-z 0-9 . _ : -"),
}

ID_KINDS: tuple[str, ...] = tuple(_RULES)


def is_valid_id(kind: str, value: object) -> bool:
    """True when ``value`` is a string matching the pattern of ``kind`` (one of ``ID_KINDS``)."""
    pattern = _RULES[kind][0]
    if not isinstance(value, str) or pattern.match(value) is None:
        return False
    return kind != "location" or value.lower() != ANY_LOCATION


def id_problem(kind: str, value: object) -> str | None:
    """Why ``value`` is not a valid ``kind`` identifier, or None when it is."""
    pattern, max_len, chars = _RULES[kind]
    if not isinstance(value, str):
        return f"{kind} must be a string, not {type(value).__name__}"
    if pattern.match(value):
        if kind == "location" and value.lower() == ANY_LOCATION:
            return f"location {value!r} is reserved: leave the location out to mean any location"
        return None
    if not value:
        return f"{kind} is empty"
    if len(value) > max_len:
        return f"{kind} is {len(value)} characters long; at most {max_len} allowed"
    if not (value[0].isascii() and value[0].isalnum()):
        return f"{kind} must start with a letter or digit: {value[:40]!r}"
    return f"{kind} may hold only {chars}: {value[:40]!r}"


def require_id(kind: str, value: object) -> str:
    """``value`` when it is a valid ``kind`` identifier; raises ``ValueError`` with the reason otherwise."""
    problem = id_problem(kind, value)
    if problem is not None:
        raise ValueError(problem)
    return value  # type: ignore[return-value]  # id_problem proved it is a str


def valid_qty(value: object) -> bool:
    """True for an int (not a bool) in 1..QTY_MAX."""
    return type(value) is int and 1 <= value <= QTY_MAX


def require_qty(value: object) -> int:
    """``value`` when ``valid_qty``; raises ``ValueError`` with the reason otherwise."""
    if type(value) is not int:
        raise ValueError(f"qty must be an integer, not {type(value).__name__}")
    if not 1 <= value <= QTY_MAX:
        raise ValueError(f"qty must be between 1 and {QTY_MAX}, got {value}")
    return value


# --- pydantic types -------------------------------------------------------------------------
# The pattern is checked by pydantic-core's Rust regex, where `$` is the absolute end of the
# text, so "SKU\n" is refused just like in the validators above.


Sku = Annotated[str, StringConstraints(strict=True, pattern=SKU_PATTERN), Field(description="SKU")]
def _not_any(value: str) -> str:
    if value.lower() == ANY_LOCATION:
        raise PydanticCustomError(
            "bad_id", "location '{value}' is reserved: leave the location out to mean any location",
            {"value": value},
        )
    return value


Location = Annotated[
    str,
    StringConstraints(strict=True, pattern=SHORT_ID_PATTERN),
    Field(
        description="location code (not 'any', in any case: a hold names no location to mean any)",
        json_schema_extra={"not": {"pattern": "^[Aa][Nn][Yy]$"}},
    ),
    AfterValidator(_not_any),
]
Channel = Annotated[
    str, StringConstraints(strict=True, pattern=SHORT_ID_PATTERN), Field(description="sales channel")
]
SupplierId = Annotated[
    str, StringConstraints(strict=True, pattern=SHORT_ID_PATTERN), Field(description="supplier id")
]
ReservationId = Annotated[
    str, StringConstraints(strict=True, pattern=LONG_ID_PATTERN), Field(description="reservation id")
]
OrderId = Annotated[
    str, StringConstraints(strict=True, pattern=LONG_ID_PATTERN), Field(description="order id")
]
InboundId = Annotated[
    str, StringConstraints(strict=True, pattern=LONG_ID_PATTERN), Field(description="inbound lot id")
]
ReceiptId = Annotated[
    str, StringConstraints(strict=True, pattern=LONG_ID_PATTERN), Field(description="receipt id")
]
EventId = Annotated[
    str,
    StringConstraints(strict=True, pattern=LONG_ID_PATTERN),
    Field(description="unique event id, the dedupe key"),
]
CustomerId = Annotated[
    str, StringConstraints(strict=True, pattern=LONG_ID_PATTERN), Field(description="customer id")
]

Qty = Annotated[int, Field(strict=True, ge=1, le=QTY_MAX, description="units, 1..1e9")]
OnHand = Annotated[int, Field(strict=True, ge=0, le=QTY_MAX, description="absolute units, 0..1e9")]


def _nonzero(value: int) -> int:
    if value == 0:
        raise PydanticCustomError("out_of_range", "delta must not be 0")
    return value


Delta = Annotated[
    int,
    Field(
        strict=True,
        ge=-QTY_MAX,
        le=QTY_MAX,
        description="signed units, nonzero, |delta| <= 1e9",
        json_schema_extra={"not": {"const": 0}},
    ),
    AfterValidator(_nonzero),
]
