"""Serving the API: uvicorn on uvloop and httptools, in one process or in several workers.

One process (the default) is one event loop on one core; on that core the checkout path is
bound by CPU, and holds on one SKU coalesce into one script call only within a process. On a
host with cores to spare, ``workers`` > 1 runs that many processes on one port (uvicorn's
supervisor; the kernel spreads connections across them). Each worker builds its own app from
the environment (``ATP_*`` variables and the TOML file, as ``Settings`` reads them), with its
own Redis pool, producer and hold sweeper, and its own metrics registry: ``/metrics`` answers
for whichever worker takes the scrape's connection, so where per-instance metrics matter, run
one ``atp serve`` per core on its own port instead and scrape each as its own target.

Once the app is built, the objects that exist then (modules, the app, its pydantic models,
about 80 000 of them) are frozen out of the garbage collector's way (``gc.freeze``): a full
collection scans only what requests created since, about 2 ms instead of 45 ms, and those
pauses, every few seconds under load, were the API's p99.

The access log is off by default: one log line per request costs a noticeable share of a
checkout call, and ``atp_http_requests_total`` / ``atp_http_request_seconds`` already count
every request by route, method and status.
"""

from __future__ import annotations

import gc
import os

import uvicorn

from engine.api.app import AtpApi, create_app
from engine.settings import Settings

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
_FACTORY = "engine.api.server:app_from_environment"


def freeze_startup_heap() -> None:
    """Collect, then move every object alive now out of the collector's generations for good."""
    gc.collect()
    gc.freeze()


def app_from_environment() -> AtpApi:
    """The app over the settings of the environment: what each worker process serves."""
    app = create_app(Settings())
    freeze_startup_heap()
    return app


def serve(
    settings: Settings,
    host: str,
    port: int,
    *,
    log_level: str = "info",
    workers: int = 1,
    access_log: bool = False,
) -> None:
    """Serve the API on ``host:port`` until interrupted (blocking).

    ``settings`` must name a running Redis and broker. With ``workers`` > 1 their addresses are
    exported as ``ATP_REDIS_URL`` / ``ATP_KAFKA_BOOTSTRAP`` for the worker processes, which read
    every other setting from the environment as this process did.
    """
    if log_level not in LOG_LEVELS:
        raise ValueError(f"bad log level {log_level!r}: one of {', '.join(LOG_LEVELS)}")
    if not 1 <= workers <= 64:
        raise ValueError("workers must be between 1 and 64")
    # loop/http "auto": uvloop and httptools (project dependencies), asyncio and h11 without them.
    options = {"host": host, "port": port, "log_level": log_level, "loop": "auto", "http": "auto",
               "access_log": access_log}
    if workers == 1:
        app = create_app(settings)
        freeze_startup_heap()
        uvicorn.run(app, **options)  # type: ignore[arg-type]
        return
    os.environ["ATP_REDIS_URL"] = settings.redis_url
    os.environ["ATP_KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap
    uvicorn.run(_FACTORY, factory=True, workers=workers, **options)  # type: ignore[arg-type]
