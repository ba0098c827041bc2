"""Per-SKU selling policy (docs/semantics.md, "Policy").

The same fields live in Redis (``atp:{sku}:pol``) where the scripts read them; this model validates
what the API, the CLI and the policy file hand in.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Mode = Literal["strict", "presell", "backorder"]
ChannelName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,31}$")]
Units = Annotated[int, Field(ge=0, le=1_000_000_000)]


class Policy(BaseModel):
    """How much of a SKU may be promised, and the flash-sale guards around it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode = "strict"
    cap_pm: int = Field(1000, ge=0, le=1000, description="presell cap per mille of a lot's qty")
    horizon_s: int = Field(0, ge=0, le=10 * 365 * 86_400, description="0 = any ETA is promisable")
    use_reliability: bool = False
    backorder_limit: Units = 0
    backorder_days: int = Field(14, ge=0, le=3650)
    safety: Units = 0
    order_cap: Units = 0
    customer_limit: Units = 0
    quotas: dict[ChannelName, Units] = Field(default_factory=dict, max_length=64)
    low_stock: Units = 0
    pack_size: int = Field(1, ge=1, le=1_000_000)
    lead_time_days: float = Field(0.0, ge=0, le=3650, description="0 = learn from the supplier's receipts")

    def to_wire(self) -> dict[str, Any]:
        """The plain dict the scripts and the state dump use."""
        return self.model_dump()

    @classmethod
    def from_wire(cls, data: dict[str, Any] | None) -> Policy:
        """Parse a stored policy; missing fields take their defaults."""
        return cls.model_validate(data or {})


def merge_patch(target: Any, patch: Any) -> Any:
    """``patch`` applied to ``target`` as RFC 7396 JSON Merge Patch says: objects merge key by
    key, ``null`` removes a key, anything else replaces. Neither argument is changed."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged
