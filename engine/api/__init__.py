"""The HTTP service: ATP queries, reservations and operations (``create_app``)."""

from engine.api.app import create_app

__all__ = ["create_app"]
