"""The HTTP service: ATP queries, reservations and operations (``create_app``)."""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the CLI imports engine.api.auth for its token commands, and loading
    # FastAPI with it would add a third of a second to every start.
    if name == "create_app":
        from engine.api.app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
