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

What one connection may cost is bounded (``engine.api.edge``): a request head's size and header
count, the time to send it (``header_timeout_s``), the keep-alive idle time
(``keepalive_timeout_s``) and the connections per process (``max_connections``; requests over
it are answered 503). Each serving process raises its soft open-files limit towards
``OPEN_FILES`` (capped by the hard limit) so that those connections get a descriptor: at the
common default of 1024, a thousand idle sockets would make the kernel refuse the next customer.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import resource

import uvicorn

from connectors.topics import Topics
from engine.api.app import AtpApi, create_app
from engine.api.edge import EdgeLimits, EdgeProtocol
from engine.settings import Settings

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
_FACTORY = "engine.api.server:app_from_environment"
#: How ``serve`` hands the topic names' prefix and suffix to its worker processes ("prefix suffix").
_TOPICS_ENV = "ATP_SERVE_TOPIC_AFFIXES"

#: Soft open-files limit a serving process asks for (the hard limit caps it); docker-compose.yml
#: gives the api service this much.
OPEN_FILES = 65536
#: Descriptors besides client connections: the Redis pool, the broker, log and metric files.
OPEN_FILES_MARGIN = 1024

log = logging.getLogger("uvicorn.error")  # configured by uvicorn, so these lines go out with its own


def freeze_startup_heap() -> None:
    """Collect, then move every object alive now out of the collector's generations for good."""
    gc.collect()
    gc.freeze()


def raise_open_files_limit(want: int) -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to ``want`` (at most the hard limit, never lower).

    Returns the soft limit before and after.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return soft, target
    return soft, soft


def prepare_serving_process(settings: Settings) -> None:
    """Per serving process, before it accepts connections: the edge limits and the open-files limit."""
    EdgeProtocol.use_limits(EdgeLimits.from_settings(settings))
    need = settings.max_connections + OPEN_FILES_MARGIN
    before, after = raise_open_files_limit(max(OPEN_FILES, need))
    if after != before:
        log.info("Open files limit raised from %d to %d", before, after)
    if after != resource.RLIM_INFINITY and after < need:
        log.warning(
            "Open files limit %d is below max_connections + %d = %d: connections past it are refused "
            "by the kernel instead of answered 503 (raise the hard limit: ulimit -Hn, or compose ulimits)",
            after, OPEN_FILES_MARGIN, need,
        )


def app_from_environment() -> AtpApi:
    """The app over the settings of the environment: what each worker process serves."""
    settings = Settings()
    prepare_serving_process(settings)
    prefix, _, suffix = os.environ.get(_TOPICS_ENV, " ").partition(" ")
    app = create_app(settings, topics=Topics(prefix=prefix, suffix=suffix))
    freeze_startup_heap()
    return app


def _prepared(app: AtpApi, settings: Settings) -> AtpApi:
    prepare_serving_process(settings)
    return app


def serve(
    settings: Settings,
    host: str,
    port: int,
    *,
    log_level: str = "info",
    workers: int = 1,
    access_log: bool = False,
    topics: Topics | None = None,
) -> None:
    """Serve the API on ``host:port`` until interrupted (blocking). Reservation events go to
    ``topics.reservations`` (default: the production names).

    ``settings`` must name a running Redis and broker. With ``workers`` > 1 their addresses are
    exported as ``ATP_REDIS_URL`` / ``ATP_KAFKA_BOOTSTRAP`` for the worker processes, which read
    every other setting from the environment as this process did.
    """
    if log_level not in LOG_LEVELS:
        raise ValueError(f"bad log level {log_level!r}: one of {', '.join(LOG_LEVELS)}")
    if not 1 <= workers <= 64:
        raise ValueError("workers must be between 1 and 64")
    # loop "auto": uvloop (a project dependency). http: httptools with the edge's bounds.
    options = {"host": host, "port": port, "log_level": log_level, "loop": "auto", "http": EdgeProtocol,
               "access_log": access_log, "limit_concurrency": settings.max_connections,
               "timeout_keep_alive": settings.keepalive_timeout_s}
    if workers == 1:
        app = create_app(settings, topics=topics)
        freeze_startup_heap()
        # Served through a factory so that the process is prepared once uvicorn has set up its
        # logging (the open-files line is one of its log lines), as each worker's factory does.
        uvicorn.run(functools.partial(_prepared, app, settings), factory=True, **options)  # type: ignore[arg-type]
        return
    os.environ["ATP_REDIS_URL"] = settings.redis_url
    os.environ["ATP_KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap
    if topics is not None:
        os.environ[_TOPICS_ENV] = f"{topics.prefix} {topics.suffix}"
    uvicorn.run(_FACTORY, factory=True, workers=workers, **options)  # type: ignore[arg-type]
