"""ASGI middleware that counts every request and its latency by route template."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine import metrics

UNMATCHED = "unmatched"


class RequestMetrics:
    """Record ``atp_http_requests_total`` and ``atp_http_request_seconds`` per request.

    The route label is the matched route's template (``/v1/atp/{sku}``), never the raw path,
    so label cardinality stays bounded.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or UNMATCHED
            metrics.observe_http(template, scope.get("method", "GET"), status, time.perf_counter() - started)
