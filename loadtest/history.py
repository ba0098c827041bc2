"""The recorded history of a flash sale and the zero-oversell check made from it (pure).

Every attempt is recorded as (start, end, qty, outcome); the checker compares what the history
says was sold with the stock and with the SKU's final position read back from Redis. Nothing in
the sale releases or confirms a hold, so at the end ``held`` must equal the units the history
says were reserved and ``atp`` must be the stock minus them.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

OK, REFUSED, ERROR = 0, 1, 2
OUTCOMES = {OK: "ok", REFUSED: "refused", ERROR: "error"}


@dataclass
class History:
    """Attempts of one sale, in columns (compact enough for millions of attempts).

    ``start`` / ``end`` are ``time.monotonic()`` seconds (one clock for every process of the
    machine); ``outcome`` is ``OK``, ``REFUSED`` (the engine said no: sold out, a guard) or
    ``ERROR`` (no answer: exception, timeout, 5xx — the hold may or may not exist); ``sku`` is
    the index of the attempt's SKU in a sale of several (0 for a sale of one).
    """

    start: array = field(default_factory=lambda: array("d"))
    end: array = field(default_factory=lambda: array("d"))
    qty: array = field(default_factory=lambda: array("q"))
    outcome: array = field(default_factory=lambda: array("b"))
    sku: array = field(default_factory=lambda: array("l"))

    def record(self, start: float, end: float, qty: int, outcome: int, sku: int = 0) -> None:
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        self.start.append(start)
        self.end.append(end)
        self.qty.append(qty)
        self.outcome.append(outcome)
        self.sku.append(sku)

    def extend(self, other: History) -> None:
        """Append another history (e.g. a worker process's)."""
        self.start.extend(other.start)
        self.end.extend(other.end)
        self.qty.extend(other.qty)
        self.outcome.extend(other.outcome)
        self.sku.extend(other.sku)

    def __len__(self) -> int:
        return len(self.outcome)

    def count(self, outcome: int) -> int:
        return sum(1 for o in self.outcome if o == outcome)

    def qty_of(self, outcome: int) -> int:
        return sum(q for q, o in zip(self.qty, self.outcome, strict=True) if o == outcome)

    def latencies(self, outcome: int | None = None) -> list[float]:
        """end − start of every attempt (or of those with ``outcome``), in seconds."""
        return [
            e - s
            for s, e, o in zip(self.start, self.end, self.outcome, strict=True)
            if outcome is None or o == outcome
        ]

    def first_start(self) -> float:
        return min(self.start) if self.start else 0.0

    def last_end(self, outcome: int | None = None) -> float:
        """The latest completion (of ``outcome`` when given); 0.0 when there is none."""
        ends = [e for e, o in zip(self.end, self.outcome, strict=True) if outcome is None or o == outcome]
        return max(ends) if ends else 0.0


@dataclass(frozen=True)
class OversellCheck:
    """Outcome of the zero-oversell check; ``ok`` is False when any ``problems`` were found."""

    ok: bool
    stock: int
    sold_qty: int
    successes: int
    refusals: int
    errors: int
    final_held: int
    final_committed: int
    final_atp: int
    problems: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "stock": self.stock, "sold_qty": self.sold_qty, "successes": self.successes,
            "refusals": self.refusals, "errors": self.errors, "final_held": self.final_held,
            "final_committed": self.final_committed, "final_atp": self.final_atp,
            "problems": list(self.problems),
        }  # fmt: skip


def check_oversell(
    stock: int,
    attempts: Iterable[tuple[int, int]],
    position: Mapping[str, Any],
) -> OversellCheck:
    """Check a sale of ``stock`` units (on hand, no lots, strict policy) from its history.

    ``attempts`` are ``(qty, outcome)`` pairs; ``position`` is the SKU's final position
    (semantics.md "position"). Problems found:

    * Σ qty of successful holds > stock (oversell);
    * final held + committed differs from Σ successful qty (a success not booked, or a booking
      nobody was told about) — with ``ERROR`` attempts the booked amount may exceed the known
      successes by at most their qty, since their outcome is unknown;
    * final ATP ≠ stock − booked units, a negative ATP, or ``oversold`` > 0;
    * a refusal of q units although, at the end, at least q units are still unsold (holds only
      grow during a sale, so a correct refusal leaves fewer than q units for good).
    """
    sold = successes = refusals = errors = error_qty = 0
    min_refused: int | None = None
    for qty, outcome in attempts:
        if outcome == OK:
            successes += 1
            sold += qty
        elif outcome == REFUSED:
            refusals += 1
            min_refused = qty if min_refused is None else min(min_refused, qty)
        elif outcome == ERROR:
            errors += 1
            error_qty += qty
        else:
            raise ValueError(f"unknown outcome {outcome!r}")
    held = int(position.get("held", 0))
    committed = int(position.get("committed", 0))
    atp = int(position.get("atp", 0))
    booked = held + committed
    problems: list[str] = []
    if sold > stock:
        problems.append(f"oversell: {sold} units reserved from a stock of {stock}")
    if not sold <= booked <= sold + error_qty:
        problems.append(
            f"booked units {booked} (held {held} + committed {committed}) differ from the "
            f"{sold} units the history reserved" + (f" (+ up to {error_qty} of failed calls)" if errors else "")
        )
    if atp != stock - booked:
        problems.append(f"final ATP {atp} != stock {stock} - booked {booked}")
    if atp < 0:
        problems.append(f"negative ATP {atp}")
    if int(position.get("oversold", 0)) > 0:
        problems.append(f"position reports oversold = {position.get('oversold')}")
    if min_refused is not None and stock - booked >= min_refused:
        problems.append(
            f"a hold of {min_refused} was refused although {stock - booked} units were never sold"
        )
    return OversellCheck(
        ok=not problems, stock=stock, sold_qty=sold, successes=successes, refusals=refusals,
        errors=errors, final_held=held, final_committed=committed, final_atp=atp,
        problems=tuple(problems),
    )  # fmt: skip


#: Problems of a sale of several SKUs listed in full; the rest are counted.
PROBLEMS_SHOWN = 10


def check_oversell_many(
    stock: int,
    attempts: Iterable[tuple[int, int, int]],
    positions: Sequence[Mapping[str, Any]],
) -> OversellCheck:
    """``check_oversell`` of a sale of ``len(positions)`` SKUs, ``stock`` units each: ``attempts``
    are ``(sku index, qty, outcome)``, ``positions`` each SKU's final position in index order.
    Each SKU is checked on its own; the result adds their figures up (``stock`` = the sale's
    whole stock) and names the SKU of each problem (the first ``PROBLEMS_SHOWN`` of them)."""
    per_sku: list[list[tuple[int, int]]] = [[] for _ in positions]
    for sku, qty, outcome in attempts:
        per_sku[sku].append((qty, outcome))
    checks = [check_oversell(stock, a, p) for a, p in zip(per_sku, positions, strict=True)]
    if len(checks) == 1:
        return checks[0]
    problems = [f"SKU #{k}: {p}" for k, c in enumerate(checks) for p in c.problems]
    if len(problems) > PROBLEMS_SHOWN:
        problems[PROBLEMS_SHOWN:] = [f"… and {len(problems) - PROBLEMS_SHOWN} more"]
    return OversellCheck(
        ok=all(c.ok for c in checks), stock=stock * len(checks),
        sold_qty=sum(c.sold_qty for c in checks), successes=sum(c.successes for c in checks),
        refusals=sum(c.refusals for c in checks), errors=sum(c.errors for c in checks),
        final_held=sum(c.final_held for c in checks), final_committed=sum(c.final_committed for c in checks),
        final_atp=sum(c.final_atp for c in checks), problems=tuple(problems),
    )  # fmt: skip
