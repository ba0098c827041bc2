"""The ``atp`` command: run the engine's processes and talk to its state from a shell.

Commands that read or change reservations, positions and policies talk to Redis directly
through the checkout client (``ATP_REDIS_URL``). ``--json`` prints exactly one JSON object
on stdout — the same bodies as the HTTP API — and is a stable contract (README, "CLI").

Exit codes: 0 done · 1 error (bad configuration, unreachable server, unexpected failure) ·
2 bad argument · 3 the engine said no (refused, conflict, not found, not allowed). Every
error is one line on stderr, never a traceback (``ATP_DEBUG=1`` shows it).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import orjson
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from typer.exceptions import TyperException

from engine.domain.ids import MAX_HOLD_TTL_S, id_problem
from engine.settings import MAX_TOPIC_REPLICATION, Settings
from engine.store.listing import LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX
from engine.store.wire import RESERVATION_STATES

EXIT_ERROR = 1
EXIT_BAD_ARGUMENT = 2
EXIT_REFUSED = 3

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

app = typer.Typer(
    name="atp",
    help="atp-engine: real-time available-to-promise inventory (Kafka → bytewax → Redis/Lua).",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)
topics_app = typer.Typer(help="Kafka topics of the engine.", no_args_is_help=True)
policy_app = typer.Typer(help="Per-SKU selling policy.", no_args_is_help=True)
token_app = typer.Typer(help="API bearer tokens.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")
app.add_typer(policy_app, name="policy")
app.add_typer(token_app, name="token")
reservations_app = typer.Typer(help="Reservations, many at a time.", no_args_is_help=True)
app.add_typer(reservations_app, name="reservations")


# --- errors ------------------------------------------------------------------------------------


class CliError(Exception):
    """A failure reported as one line on stderr with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR, kind: str | None = None) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.kind = kind  # the ``error`` of the --json failure object (default: by exit code)


def _bad(message: str) -> NoReturn:
    raise CliError(message, EXIT_BAD_ARGUMENT)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _redact(url: str) -> str:
    """``url`` without its password (error messages may end up in logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def _settings_problem(exc: ValidationError) -> str:
    first = exc.errors(include_url=False)[0]
    field = ".".join(str(p) for p in first.get("loc", ())) or "settings"
    return f"bad configuration: {field} (ATP_{field.split('.')[0].upper()}): {first.get('msg', 'invalid')}"


def load_settings() -> Settings:
    """The settings from env and TOML; a bad value is a one-line ``CliError``."""
    try:
        return Settings()
    except ValidationError as exc:
        raise CliError(_settings_problem(exc)) from exc


@contextlib.contextmanager
def _talking_to_redis(settings: Settings) -> Iterator[None]:
    """Turn Redis failures into a one-line error naming the server (exit 1)."""
    from redis.exceptions import RedisClusterException, RedisError

    from engine.store.connect import UNREACHABLE

    where = _redact(settings.redis_url)
    try:
        yield
    except (*UNREACHABLE, ConnectionError, TimeoutError) as exc:
        raise CliError(f"cannot reach Redis at {where}: {_one_line(str(exc))}") from exc
    except (RedisError, RedisClusterException) as exc:  # the Cluster client's are not RedisErrors
        raise CliError(f"Redis at {where} failed: {_one_line(str(exc))}") from exc


def _require_id(kind: str, value: str, label: str | None = None) -> str:
    problem = id_problem(kind, value)
    if problem is not None:
        _bad(f"bad {label or kind}: {problem}")
    return value


# --- output ------------------------------------------------------------------------------------


def _print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS).decode() + "\n")
    sys.stdout.flush()


def _emit(data: dict[str, Any], as_json: bool, render: Callable[[dict[str, Any]], None]) -> None:
    if as_json:
        _print_json(data)
    else:
        render(data)


def _render_position(view: dict[str, Any]) -> None:
    where = f" at {view['location']}" if view.get("location") else ""
    table = Table(title=f"{view['sku']}{where}", title_justify="left")
    keys = ("on_hand", "in_transit", "promisable_in_transit", "committed", "held", "backordered", "safety", "atp")
    for column in ("location", *keys):
        table.add_column(column, justify="left" if column == "location" else "right")
    for name, figures in sorted(view["locations"].items()):
        table.add_row(name, *(str(figures[k]) for k in keys))
    table.add_row("[bold]total[/bold]", *(f"[bold]{view[k]}[/bold]" for k in keys))
    console.print(table)
    nxt = view["next_promise_at"] or "none"
    console.print(f"promisable now: {view['promisable_now']}   next promise: {nxt}   oversold: {view['oversold']}")
    # the SKU's ATP counts the backorder allowance left, which no location holds yet
    room = view["atp"] - sum(figures["atp"] for figures in view["locations"].values())
    if view.get("location") is None and room > 0:
        console.print(f"total ATP includes {room} units of backorder allowance")


def _render_reservation(view: dict[str, Any]) -> None:
    console.print(
        f"reservation [bold]{view['reservation_id']}[/bold]: {view['state']}"
        f"   promised: {view['promised_at'] or '-'}   expires: {view['expires_at'] or '-'}"
    )
    table = Table(show_header=True)
    for column in ("sku", "qty", "location", "state", "promised", "allocations"):
        table.add_column(column)
    for line in view["lines"]:
        allocs = ", ".join(
            f"{a['qty']}×{a['kind']}" + (f":{a['ref']}" if a["kind"] == "lot" else "") + f"@{a['location']}"
            for a in line["allocations"]
        )
        table.add_row(line["sku"], str(line["qty"]), line["location"] or "any", line["state"],
                      line["promised_at"] or "-", allocs or "-")
    console.print(table)


def _render_refusal(body: dict[str, Any]) -> None:
    err_console.print(f"[red]{body['error']}[/red]: {body['detail']}")
    for line in body.get("lines", []):
        err_console.print(f"  {line['sku']} × {line['qty']}: available {line['available']}")


def _render_journal(view: dict[str, Any]) -> None:
    table = Table(title=f"journal of {view['sku']}, newest first", title_justify="left")
    for column in ("n", "at", "cmd", "qty", "reason", "ref", "event_id"):
        table.add_column(column)
    for e in view["entries"]:
        table.add_row(str(e["n"]), e["at"] or "", e["cmd"], "" if e["qty"] is None else str(e["qty"]),
                      e["reason"], e["ref"], e["event_id"])
    console.print(table)
    if view["next_before"]:
        console.print(f"more: --before {view['next_before']}")


def _render_policy(view: dict[str, Any]) -> None:
    table = Table(title=f"policy of {view['sku']}", title_justify="left", show_header=False)
    table.add_column("field")
    table.add_column("value")
    for key, value in view["policy"].items():
        table.add_row(key, orjson.dumps(value).decode() if isinstance(value, dict) else str(value))
    console.print(table)


# --- the checkout client -----------------------------------------------------------------------


def _client(settings: Settings) -> Any:
    from engine.reservations.client import AtpClient
    from engine.store.connect import RedisNotConfigured, sync_redis

    try:
        redis = sync_redis(settings)
    except RedisNotConfigured as exc:
        raise CliError(str(exc)) from exc
    # One call per command: nothing to coalesce.
    return AtpClient(redis, prefix=settings.key_prefix, default_ttl_s=settings.default_hold_ttl_s, coalesce=False)


def _topics(prefix: str, suffix: str) -> Any:
    """The topic names with ``prefix`` and ``suffix``; exit 2 with the reason when they are not legal."""
    from connectors.topics import Topics

    try:
        return Topics(prefix=prefix, suffix=suffix)
    except ValueError as exc:
        _bad(str(exc))


def _need_broker(settings: Settings) -> None:
    if not settings.kafka_bootstrap:
        raise CliError("no broker configured: set ATP_KAFKA_BOOTSTRAP")


def _store(settings: Settings) -> Any:
    from engine.store.connect import RedisNotConfigured, sync_redis
    from engine.store.store import Store

    try:
        return Store(sync_redis(settings), prefix=settings.key_prefix)
    except RedisNotConfigured as exc:
        raise CliError(str(exc)) from exc


def _result_out(result: Any, as_json: bool) -> None:
    """Print a client ``Reservation`` (exit 0) or ``Refusal`` (exit 3)."""
    from engine.reservations.types import Reservation
    from engine.reservations.views import reservation_body, reservation_view

    if isinstance(result, Reservation):
        _emit(reservation_view(result), as_json, _render_reservation)
        return
    rid = result.reservation_id
    if result.status == "not_found":
        body: dict[str, Any] = {"error": "not_found", "detail": f"no reservation {rid!r}", "reservation_id": rid}
    else:
        body = {
            "error": "not_allowed",
            "detail": f"the reservation is {result.reason}",
            "reservation_id": rid,
            "state": result.reason,
            "reservation": reservation_body(rid, result.reason, result.lines) if result.lines else None,
        }
    _emit(body, as_json, _render_refusal)
    raise typer.Exit(EXIT_REFUSED)


# --- commands: state ----------------------------------------------------------------------------

JsonOpt = Annotated[bool, typer.Option("--json", help="print one JSON object (stable keys, see README)")]


@app.command()
def get(
    sku: Annotated[str, typer.Argument(help="the SKU")],
    location: Annotated[str | None, typer.Option("--location", "-l", help="one location (default: all)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a SKU's buckets and ATP (keys as GET /v1/atp/{sku})."""
    from engine.reservations.views import position_view

    _require_id("sku", sku)
    if location is not None:
        _require_id("location", location)
    settings = load_settings()
    with _talking_to_redis(settings):
        position = _client(settings).atp(sku, location)
    _emit(position_view(position, location), as_json, _render_position)


@app.command()
def journal(
    sku: Annotated[str, typer.Argument(help="the SKU")],
    limit: Annotated[int, typer.Option(min=1, max=200, help="entries to show")] = 50,
    before: Annotated[int | None, typer.Option(min=1, help="only entries numbered below this (next_before)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show what was applied to a SKU, newest first (keys as GET /v1/skus/{sku}/journal)."""
    from engine.reservations.views import journal_view

    _require_id("sku", sku)
    settings = load_settings()
    with _talking_to_redis(settings):
        entries = _store(settings).journal(sku, limit, before)
    _emit(journal_view(sku, entries, limit), as_json, _render_journal)


def _parse_line(text: str) -> tuple[str, int, str | None]:
    """``SKU:QTY`` or ``SKU:QTY@LOCATION``."""
    head, _, location = text.partition("@")
    sku, sep, qty_text = head.rpartition(":")
    if not sep:
        _bad(f"bad line {text!r}: expected SKU:QTY or SKU:QTY@LOCATION")
    _require_id("sku", sku, f"line {text!r}")
    try:
        qty = int(qty_text)
    except ValueError:
        _bad(f"bad line {text!r}: quantity {qty_text!r} is not an integer")
    if not 1 <= qty <= 1_000_000_000:
        _bad(f"bad line {text!r}: quantity must be between 1 and 1000000000")
    if location:
        _require_id("location", location, f"line {text!r}")
    elif "@" in text:
        _bad(f"bad line {text!r}: empty location after '@'")
    return sku, qty, location or None


@app.command()
def reserve(
    lines: Annotated[list[str], typer.Argument(help="lines as SKU:QTY or SKU:QTY@LOCATION")],
    reservation_id: Annotated[
        str | None, typer.Option("--id", help="reservation id (the idempotency key); default: random")
    ] = None,
    ttl: Annotated[int | None, typer.Option("--ttl", help="hold lifetime in seconds", min=1, max=MAX_HOLD_TTL_S)] = None,
    channel: Annotated[str | None, typer.Option("--channel", help="sales channel")] = None,
    customer: Annotated[str | None, typer.Option("--customer", help="customer id")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Hold every line or none (exit 3 when refused)."""
    from engine.reservations.types import LineRequest, Reservation

    parsed = [_parse_line(text) for text in lines]
    rid = reservation_id or f"cli-{secrets.token_hex(8)}"
    _require_id("reservation_id", rid, "--id")
    if channel is not None:
        _require_id("channel", channel, "--channel")
    if customer is not None:
        _require_id("customer_id", customer, "--customer")
    settings = load_settings()
    with _talking_to_redis(settings):
        client = _client(settings)
        try:
            result = client.hold(
                rid, [LineRequest(*p) for p in parsed], ttl_s=ttl, channel=channel, customer_id=customer
            )
        except ValueError as exc:
            _bad(str(exc))
        if isinstance(result, Reservation):
            _publish_change(client, "hold", result, channel=channel, customer_id=customer)
            _emit_reserved(result, as_json)
            return
        body = _refusal_body(client, rid, parsed, result, customer, channel)
    _emit(body, as_json, _render_refusal)
    raise typer.Exit(EXIT_REFUSED)


def _emit_reserved(result: Any, as_json: bool) -> None:
    from engine.reservations.views import reservation_view

    _emit(reservation_view(result), as_json, _render_reservation)


def _refusal_body(client: Any, rid: str, parsed: Sequence[tuple[str, int, str | None]], refusal: Any,
                  customer: str | None, channel: str | None) -> dict[str, Any]:
    from engine.reservations.views import refusal_view

    if refusal.status == "conflict":
        return {
            "error": "idempotency_conflict",
            "detail": "this reservation id was already used with different lines",
            "reservation_id": rid,
        }
    missing = list(dict.fromkeys(sku for sku, _, _ in parsed if sku not in refusal.available))
    atp = {sku: int(p.get("atp", 0)) for sku, p in client.atp_many(missing).items()} if missing else {}
    return refusal_view(refusal, parsed, atp, customer=customer, channel=channel)


def _lifecycle(op: str, rid: str, as_json: bool, *args: int) -> None:
    from engine.reservations.events import CHANGE_OF

    _require_id("reservation_id", rid)
    settings = load_settings()
    with _talking_to_redis(settings):
        client = _client(settings)
        result = getattr(client, op)(rid, *args)
        if op in CHANGE_OF:
            _publish_change(client, op, result)
    _result_out(result, as_json)


def _publish_change(client: Any, op: str, result: Any, **extra: Any) -> None:
    """Keep the reservation event of what ``op`` did in the change log, as the API does: a relay
    (the API's, or ``atp relay``) ships it to ``inventory.reservations`` (docs/changelog.md)."""
    from engine.reservations.events import publish_args, published_change

    change = published_change(op, result)
    if change is not None:
        change_of, reservation, skus = change
        client.store.publish(*publish_args(change_of, reservation, skus=skus, **extra))


RidArg = Annotated[str, typer.Argument(help="reservation id")]


@app.command()
def confirm(reservation_id: RidArg, as_json: JsonOpt = False) -> None:
    """Confirm a hold (held → committed)."""
    _lifecycle("confirm", reservation_id, as_json)


@app.command()
def release(reservation_id: RidArg, as_json: JsonOpt = False) -> None:
    """Release a reservation; its units come back once."""
    _lifecycle("release", reservation_id, as_json)


@app.command()
def extend(
    reservation_id: RidArg,
    ttl: Annotated[int, typer.Option("--ttl", help="seconds from now", min=1, max=MAX_HOLD_TTL_S)],
    as_json: JsonOpt = False,
) -> None:
    """Keep a hold alive for --ttl more seconds."""
    _lifecycle("extend", reservation_id, as_json, ttl)


@app.command("show")
def show(reservation_id: RidArg, as_json: JsonOpt = False) -> None:
    """Show a reservation."""
    _lifecycle("get_reservation", reservation_id, as_json)


def _render_page(body: dict[str, Any]) -> None:
    table = Table(show_header=True)
    for column in ("reservation", "state", "sku", "qty", "location", "line state", "customer", "expires",
                   "promised"):
        table.add_column(column)
    for item in body["items"]:
        for i, line in enumerate(item["lines"]):
            first = i == 0
            table.add_row(item["reservation_id"] if first else "", item["state"] if first else "", line["sku"],
                          str(line["qty"]), line["location"] or "any", line["state"], line["customer_id"] or "-",
                          line["expires_at"] or "-", line["promised_at"] or "-")
    console.print(table)
    if body["next_cursor"] is None:
        console.print(f"{len(body['items'])} reservation(s); the listing is complete")
    else:
        console.print(f"{len(body['items'])} reservation(s); more with --cursor {body['next_cursor']}", soft_wrap=True)


@reservations_app.command("list")
def reservations_list(
    sku: Annotated[str | None, typer.Option("--sku", help="only this SKU's lines")] = None,
    customer: Annotated[str | None, typer.Option("--customer", help="only this customer's reservations")] = None,
    state: Annotated[str | None, typer.Option(
        "--state", help=f"only this state: {', '.join(RESERVATION_STATES)}")] = None,
    cursor: Annotated[str | None, typer.Option("--cursor", help="next_cursor of the page before")] = None,
    limit: Annotated[int, typer.Option(
        "--limit", help="most reservations in the page", min=1, max=LIST_LIMIT_MAX)] = LIST_LIMIT_DEFAULT,
    as_json: JsonOpt = False,
) -> None:
    """List reservations a page at a time (keys as GET /v1/reservations); --cursor goes on.

    Each page does bounded work, so it may hold fewer than --limit, even none, before the end."""
    from engine.reservations.views import reservation_page_view
    from engine.store.listing import BadCursor

    if sku is not None:
        _require_id("sku", sku, "--sku")
    if customer is not None:
        _require_id("customer_id", customer, "--customer")
    if state is not None and state not in RESERVATION_STATES:
        _bad(f"bad --state {state!r}: one of {', '.join(RESERVATION_STATES)}")
    settings = load_settings()
    with _talking_to_redis(settings):
        try:
            page = _store(settings).list_reservations(sku=sku, customer=customer, state=state, cursor=cursor,
                                                      limit=limit)
        except BadCursor as exc:
            _bad(f"bad --cursor: {exc}")
    _emit(reservation_page_view(page), as_json, _render_page)


# --- commands: policy ---------------------------------------------------------------------------


def _policy_view(sku: str, raw: dict[str, Any]) -> dict[str, Any]:
    from engine.domain.policy import Policy

    known = set(Policy.model_fields)
    policy = Policy.model_validate({k: v for k, v in raw.items() if k in known})
    return {"sku": sku, "policy": policy.to_wire()}


@policy_app.command("get")
def policy_get(sku: Annotated[str, typer.Argument(help="the SKU")], as_json: JsonOpt = False) -> None:
    """Show a SKU's policy (defaults when none was set)."""
    _require_id("sku", sku)
    settings = load_settings()
    with _talking_to_redis(settings):
        raw = _store(settings).get_policy(sku)
    _emit(_policy_view(sku, raw), as_json, _render_policy)


def _parse_quotas(items: Sequence[str]) -> dict[str, int]:
    quotas: dict[str, int] = {}
    for item in items:
        channel, sep, value = item.partition("=")
        if not sep:
            _bad(f"bad --quota {item!r}: expected CHANNEL=UNITS")
        _require_id("channel", channel, f"--quota {item!r}")
        try:
            quotas[channel] = int(value)
        except ValueError:
            _bad(f"bad --quota {item!r}: {value!r} is not an integer")
    return quotas


@policy_app.command("set")
def policy_set(
    sku: Annotated[str, typer.Argument(help="the SKU")],
    mode: Annotated[str | None, typer.Option(help="strict | presell | backorder")] = None,
    cap_pm: Annotated[int | None, typer.Option(help="presell cap, per mille of a lot's qty")] = None,
    horizon_s: Annotated[int | None, typer.Option(help="only lots due within this many seconds (0 = any)")] = None,
    use_reliability: Annotated[
        bool | None, typer.Option("--use-reliability/--no-use-reliability", help="scale lots by supplier reliability")
    ] = None,
    backorder_limit: Annotated[int | None, typer.Option(help="units beyond all supply (mode backorder)")] = None,
    backorder_days: Annotated[int | None, typer.Option(help="promised date of backordered units, days")] = None,
    safety: Annotated[int | None, typer.Option(help="units held back at every location")] = None,
    order_cap: Annotated[int | None, typer.Option(help="max units per reservation (0 = none)")] = None,
    customer_limit: Annotated[int | None, typer.Option(help="max units per customer (0 = none)")] = None,
    quota: Annotated[list[str] | None, typer.Option(help="CHANNEL=UNITS, repeatable; replaces all quotas")] = None,
    low_stock: Annotated[int | None, typer.Option(help="low-stock alert threshold")] = None,
    pack_size: Annotated[int | None, typer.Option(help="replenishment pack size")] = None,
    lead_time_days: Annotated[float | None, typer.Option(help="replenishment lead time (0 = learn)")] = None,
    reset: Annotated[bool, typer.Option("--reset", help="start from the defaults, not the current policy")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Change the fields given; the others keep their current values (or defaults with --reset)."""
    from engine.domain.policy import Policy

    _require_id("sku", sku)
    changes: dict[str, Any] = {
        name: value
        for name, value in {
            "mode": mode,
            "cap_pm": cap_pm,
            "horizon_s": horizon_s,
            "use_reliability": use_reliability,
            "backorder_limit": backorder_limit,
            "backorder_days": backorder_days,
            "safety": safety,
            "order_cap": order_cap,
            "customer_limit": customer_limit,
            "low_stock": low_stock,
            "pack_size": pack_size,
            "lead_time_days": lead_time_days,
        }.items()
        if value is not None
    }
    if quota is not None:
        changes["quotas"] = _parse_quotas(quota)
    settings = load_settings()
    with _talking_to_redis(settings):
        store = _store(settings)
        current = {} if reset else _policy_view(sku, store.get_policy(sku))["policy"]
        try:
            policy = Policy.model_validate({**current, **changes})
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            field = ".".join(str(p) for p in first["loc"])
            _bad(f"bad --{field.replace('_', '-')}: {first['msg']}")
        try:
            store.set_policy(sku, policy.to_wire())
        except ValueError as exc:
            _bad(str(exc))
        raw = store.get_policy(sku)
    _emit(_policy_view(sku, raw), as_json, _render_policy)


# --- commands: processes ------------------------------------------------------------------------


def _check_port_free(host: str, port: int) -> None:
    if port == 0:
        return
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise CliError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def _services(settings: Settings, what: str) -> Iterator[Settings]:
    """``settings`` as they are, or with embedded Redis/broker started where they are empty."""
    if settings.redis_url and settings.kafka_bootstrap:
        yield settings
        return
    from connectors.embedded import EmbeddedError, embedded_stack
    from connectors.kafka import admin_config
    from connectors.topics import Topics, create_topics

    try:
        with embedded_stack(settings) as running:
            # a configured broker gets the configured replication; the embedded one is one node
            create_topics(admin_config(running), Topics(), partitions=running.topic_partitions,
                          replication_factor=running.topic_replication if settings.kafka_bootstrap else 1)
            err_console.print(
                f"[dim]{what}: embedded services — Redis {running.redis_url}, broker {running.kafka_bootstrap}[/dim]",
                soft_wrap=True,
            )
            yield running
    except EmbeddedError as exc:
        raise CliError(f"cannot start the embedded services: {_one_line(str(exc))}") from exc


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address (default: ATP_API_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: ATP_API_PORT)", min=0, max=65535)] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
    workers: Annotated[int, typer.Option(help="server processes on the port (one per spare core)", min=1, max=64)] = 1,
    access_log: Annotated[bool, typer.Option(help="log every request (metrics count them anyway)")] = False,
    topic_prefix: Annotated[str, typer.Option(help="prefix of every topic name (as given to atp flow)")] = "",
    topic_suffix: Annotated[str, typer.Option(help="suffix of every topic name (as given to atp flow)")] = "",
) -> None:
    """Serve the HTTP API (embedded Redis/broker when ATP_REDIS_URL / ATP_KAFKA_BOOTSTRAP are empty)."""
    from engine.api.server import LOG_LEVELS
    from engine.api.server import serve as serve_api

    if log_level not in LOG_LEVELS:
        _bad(f"bad --log-level {log_level!r}: one of {', '.join(LOG_LEVELS)}")
    topics = _topics(topic_prefix, topic_suffix)
    settings = load_settings()
    bind_host = host or settings.api_host
    bind_port = settings.api_port if port is None else port
    _check_port_free(bind_host, bind_port)
    with _services(settings, "serve") as running:
        serve_api(running, bind_host, bind_port, log_level=log_level, workers=workers, access_log=access_log,
                  topics=topics)


@app.command()
def flow(
    workers: Annotated[int | None, typer.Option("--workers", "-w", help="worker threads (ATP_WORKERS)")] = None,
    batch_size: Annotated[int | None, typer.Option(help="messages per batch (ATP_BATCH_SIZE)")] = None,
    recovery_dir: Annotated[str | None, typer.Option(help="bytewax recovery directory (ATP_RECOVERY_DIR)")] = None,
    snapshot_interval: Annotated[
        float | None, typer.Option(help="seconds between snapshots (ATP_SNAPSHOT_INTERVAL_S)")
    ] = None,
    topic_prefix: Annotated[str, typer.Option(help="prefix of every topic name")] = "",
    topic_suffix: Annotated[str, typer.Option(help="suffix of every topic name")] = "",
    until_end: Annotated[bool, typer.Option(help="stop once every input partition is read to its end")] = False,
    metrics: Annotated[bool, typer.Option(help="serve /metrics on ATP_FLOW_METRICS_PORT")] = True,
    log_level: Annotated[str, typer.Option(help="DEBUG / INFO / WARNING / ERROR")] = "INFO",
    process_id: Annotated[
        int | None, typer.Option("--process-id", "-i", help="this process's index (several processes)")
    ] = None,
    addresses: Annotated[
        str | None, typer.Option("--addresses", "-a", help="host:port of every process, ';'-separated, in order")
    ] = None,
) -> None:
    """Run the stream: input topics → validate → apply in Redis → alerts and triggers (Ctrl-C drains).

    Several processes share the work with ``-a`` (the same list for all) and ``-i`` (each its own
    index) and one recovery directory; each serves metrics on ATP_FLOW_METRICS_PORT + its index."""
    import logging

    from engine.flow.runner import FlowConfigError, check_processes, run_flow

    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        _bad(f"bad --log-level {log_level!r}: one of DEBUG, INFO, WARNING, ERROR")
    peers = [a for a in addresses.split(";") if a] if addresses is not None else None
    try:
        check_processes(process_id, peers)
    except FlowConfigError as exc:
        _bad(f"bad --process-id / --addresses: {exc}")
    topics = _topics(topic_prefix, topic_suffix)
    overrides = {"workers": workers, "batch_size": batch_size, "recovery_dir": recovery_dir,
                 "snapshot_interval_s": snapshot_interval}
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        raise CliError(_settings_problem(exc), EXIT_BAD_ARGUMENT) from exc
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with _services(settings, "flow") as running:
        try:
            run_flow(running, topics, until_end=until_end, serve_metrics=metrics, process_id=process_id,
                     addresses=peers)
        except FlowConfigError as exc:
            raise CliError(f"cannot run the flow: {exc}") from exc
        except KeyboardInterrupt:
            err_console.print("flow stopped")


@app.command()
def up(
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", help="keep Redis (AOF, fsync every second) and the flow's snapshots here; "
                           "default: nothing kept")] = None,
    port: Annotated[int | None, typer.Option(help="API port (default: ATP_API_PORT)", min=0, max=65535)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run a single node until Ctrl-C or SIGTERM: Redis and the broker (embedded unless
    ATP_REDIS_URL / ATP_KAFKA_BOOTSTRAP name them), the topics, the flow and the API together."""
    import hashlib
    import signal

    from connectors.embedded import EmbeddedError, embedded_stack
    from connectors.kafka import admin_config
    from connectors.topics import Topics, create_topics
    from engine.dev.demo import engine_processes

    settings = load_settings()
    token = None
    roles = settings.api_tokens
    if not roles:  # an admin token of this run, printed once
        token = secrets.token_urlsafe(24)
        roles = {hashlib.sha256(token.encode()).hexdigest(): ["read", "reserve", "operate"]}
    redis_dir = recovery_dir = None
    if data_dir is not None:
        try:
            (data_dir / "redis").mkdir(parents=True, exist_ok=True)
            (data_dir / "recovery").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            _bad(f"cannot use --data-dir {data_dir}: {exc}")
        redis_dir = data_dir / "redis"
        # the embedded broker keeps nothing: a snapshot of where the flow read is only worth
        # keeping for a broker that keeps its log
        recovery_dir = str(data_dir / "recovery") if settings.kafka_bootstrap else None

    def stop(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        with embedded_stack(settings, redis_data_dir=redis_dir) as running:
            create_topics(admin_config(running), Topics(), partitions=running.topic_partitions,
                          replication_factor=running.topic_replication if settings.kafka_bootstrap else 1)
            if redis_dir is not None and not settings.kafka_bootstrap and not settings.redis_url:
                # kept stock, a new empty log: its offsets start at 0 again
                from engine.store.connect import sync_redis
                from engine.store.store import Store

                client = sync_redis(running)
                try:
                    Store(client, prefix=running.key_prefix).forget_offsets()
                finally:
                    client.close()
            with engine_processes(running, roles, recovery_dir=recovery_dir,
                                  api_port=port or settings.api_port) as (api_url, flow_metrics):
                info = {"api_url": api_url, "docs_url": f"{api_url}/docs", "token": token,
                        "redis_url": _redact(running.redis_url), "kafka_bootstrap": running.kafka_bootstrap,
                        "flow_metrics_url": flow_metrics, "data_dir": str(data_dir) if data_dir else None}
                _emit(info, as_json, _render_up)
                while True:
                    time.sleep(1)
    except KeyboardInterrupt:
        err_console.print("stopped")
    except EmbeddedError as exc:
        raise CliError(f"cannot start the single node: {_one_line(str(exc))}") from exc


def _render_up(info: dict[str, Any]) -> None:
    console.print(f"API       {info['api_url']}  (docs {info['docs_url']})")
    if info["token"]:
        console.print(f"token     {info['token']}  (all roles; this run only)")
    console.print(f"Redis     {info['redis_url']}")
    console.print(f"broker    {info['kafka_bootstrap']}")
    console.print(f"metrics   {info['api_url']}/metrics, flow {info['flow_metrics_url']}")
    console.print(f"data      {info['data_dir'] or 'not kept (--data-dir keeps Redis and the snapshots)'}")
    console.print("Ctrl-C stops everything.")


@app.command()
def relay(
    once: Annotated[bool, typer.Option(
        "--once", help="one pass over the keyspace, then print what shipped and what still waits")] = False,
    topic_prefix: Annotated[str, typer.Option(help="prefix of every topic name (as given to atp serve)")] = "",
    topic_suffix: Annotated[str, typer.Option(help="suffix of every topic name (as given to atp serve)")] = "",
    log_level: Annotated[str, typer.Option(help="DEBUG / INFO / WARNING / ERROR")] = "INFO",
    as_json: JsonOpt = False,
) -> None:
    """Ship the change log from Redis to inventory.changes until Ctrl-C or SIGTERM (the API does it
    too while ATP_RELAY is on; one relay per keyspace ships, the others wait for its lock)."""
    import logging

    from confluent_kafka import KafkaException

    from engine.log.relay import Relay, RelayError

    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        _bad(f"bad --log-level {log_level!r}: one of DEBUG, INFO, WARNING, ERROR")
    topics = _topics(topic_prefix, topic_suffix)
    settings = load_settings()
    if not settings.redis_url:
        raise CliError("no Redis configured: set ATP_REDIS_URL (the relay ships what is in it)")
    _need_broker(settings)
    try:
        relay_ = Relay(settings, topics, kafka_logger=_quiet_kafka_logger() if once else None)
    except (ValueError, KafkaException) as exc:
        raise CliError(f"bad configuration: {_one_line(str(exc))}") from exc
    if once:
        try:
            with _talking_to_redis(settings):
                shipped = relay_.run_pass()
        except (RelayError, KafkaException) as exc:
            raise CliError(f"cannot relay to {settings.kafka_bootstrap}: {_one_line(str(exc))}") from exc
        finally:
            relay_.close()
        body = {"shipped": shipped, "backlog": relay_.backlog}
        idle = "" if relay_.active or shipped else " (another relay holds the lock)"
        _emit(body, as_json, lambda b: console.print(
            f"shipped {b['shipped']} change record(s); {b['backlog']} wait{idle}"))
        return
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = _stop_on_signals()
    err_console.print(f"relay: keyspace {settings.key_prefix} → {relay_.topic} (Ctrl-C stops)", soft_wrap=True)
    try:
        relay_.run_forever(stop)
    finally:
        relay_.close()
    err_console.print(f"relay stopped: {relay_.shipped} change record(s) shipped")


@app.command()
def demo(
    duration: Annotated[float, typer.Option(help="seconds of flash sale", min=1)] = 60.0,
    keep_running: Annotated[bool, typer.Option(help="keep the services up after the summary")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Start everything embedded and run a simulated flash sale with a live display."""
    from engine.dev.demo import run_demo

    summary = run_demo(load_settings(), duration_s=duration, keep_running=keep_running, as_json=as_json)
    if summary["oversold"] or summary["invariant_violations"]:
        raise CliError(f"oversold {summary['oversold']}, invariant violations {len(summary['invariant_violations'])}")


@topics_app.command("create")
def topics_create(
    partitions: Annotated[int | None, typer.Option(help="default: ATP_TOPIC_PARTITIONS", min=1, max=1024)] = None,
    replication: Annotated[
        int | None, typer.Option(help="replicas of each partition (default: ATP_TOPIC_REPLICATION)",
                                 min=1, max=MAX_TOPIC_REPLICATION)
    ] = None,
    prefix: Annotated[str, typer.Option(help="prefix of every topic name")] = "",
    suffix: Annotated[str, typer.Option(help="suffix of every topic name")] = "",
    timeout: Annotated[float, typer.Option(help="seconds to wait for the broker", min=0.5, max=300)] = 10.0,
    as_json: JsonOpt = False,
) -> None:
    """Create the engine's topics that do not exist yet."""
    from confluent_kafka import KafkaException

    from connectors.kafka import admin_config
    from connectors.topics import create_topics

    names = _topics(prefix, suffix)
    settings = load_settings()
    _need_broker(settings)
    try:
        created = create_topics(
            {**admin_config(settings), "logger": _quiet_kafka_logger()}, names,
            partitions=partitions or settings.topic_partitions,
            replication_factor=replication or settings.topic_replication, timeout_s=timeout,
        )
    except KafkaException as exc:
        raise CliError(f"cannot create topics on {settings.kafka_bootstrap}: {_one_line(str(exc))}") from exc
    body = {"created": created, "existing": [n for n in names.all if n not in created]}
    _emit(body, as_json, lambda b: console.print(
        f"created {len(b['created'])} topic(s): {', '.join(b['created']) or '-'}; "
        f"{len(b['existing'])} already existed"))


@app.command()
def simulate(
    count: Annotated[int, typer.Option("--count", "-n", help="messages to send", min=1, max=100_000_000)] = 10_000,
    seed: Annotated[int, typer.Option(help="random seed (same seed, same stream)")] = 0,
    skus: Annotated[int, typer.Option(help="how many SKUs", min=1, max=1_000_000)] = 200,
    bad_fraction: Annotated[float, typer.Option(help="share of bad messages", min=0.0, max=1.0)] = 0.0,
    duplicate_fraction: Annotated[float, typer.Option(help="share of re-sent messages", min=0.0, max=1.0)] = 0.0,
    prefix: Annotated[str, typer.Option(help="topic name prefix")] = "",
    suffix: Annotated[str, typer.Option(help="topic name suffix")] = "",
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Send a realistic order / inbound / receipt / adjustment stream to the input topics."""
    from engine.dev.simulate import produce

    names = _topics(prefix, suffix)
    settings = load_settings()
    _need_broker(settings)
    try:
        report = produce(
            settings, names, count, seed=seed, skus=skus, bad_fraction=bad_fraction,
            duplicate_fraction=duplicate_fraction, progress=progress and not as_json, console=err_console,
        )
    except ValueError as exc:
        _bad(str(exc))
    body = {
        "messages": report.messages,
        "delivered": report.delivered,
        "failed": report.failed,
        "duplicates": report.duplicates,
        "bad": report.bad,
        "by_topic": report.by_topic,
        "by_type": report.by_type,
        "elapsed_s": round(report.elapsed_s, 3),
        "rate": round(report.rate, 1),
        "errors": report.errors,
    }
    _emit(body, as_json, lambda b: console.print(
        f"sent {b['messages']} messages ({b['delivered']} acknowledged, {b['failed']} failed) "
        f"in {b['elapsed_s']} s — {b['rate']} msg/s"))
    if not report.ok:
        raise CliError(f"{report.failed} message(s) not delivered: {'; '.join(report.errors[:2])}")


# --- commands: the change log -------------------------------------------------------------------

TopicPrefixOpt = Annotated[str, typer.Option(help="prefix of every topic name (as given to atp flow)")]
TopicSuffixOpt = Annotated[str, typer.Option(help="suffix of every topic name (as given to atp flow)")]


def _changes_topic(topic_prefix: str, topic_suffix: str) -> str:

    return _topics(topic_prefix, topic_suffix).changes


def _log_clients(settings: Settings, group: str) -> tuple[Any, dict[str, Any]]:
    """A Redis client and the consumer config the change-log commands read the topic with."""
    from connectors.kafka import consumer_config
    from engine.store.connect import RedisNotConfigured, sync_redis

    _need_broker(settings)
    try:
        client = sync_redis(settings)
    except RedisNotConfigured as exc:
        raise CliError(str(exc)) from exc
    return client, consumer_config(settings, group, {"logger": _quiet_kafka_logger()})


@contextlib.contextmanager
def _reading_the_log(settings: Settings, topic: str) -> Iterator[None]:
    """Turn the broker's and the replay's failures into one-line errors (exit 1)."""
    from confluent_kafka import KafkaException

    from engine.log.rebuild import RebuildError
    from engine.store.changelog import LogGap

    try:
        yield
    except (KafkaException, TimeoutError) as exc:
        raise CliError(f"cannot read {topic} on {settings.kafka_bootstrap}: {_one_line(str(exc))}") from exc
    except (RebuildError, LogGap) as exc:
        raise CliError(_one_line(str(exc))) from exc


@contextlib.contextmanager
def _log_progress(enabled: bool, label: str) -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar on stderr over the messages of the changes topic (or nothing)."""
    if not enabled:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    bar = Progress(TextColumn(f"[bold]{label}[/bold]"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                   TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=err_console, transient=True)
    task = bar.add_task(label, total=None, rate="")
    started = time.perf_counter()

    def advance(done: int, total: int) -> None:
        elapsed = time.perf_counter() - started
        bar.update(task, completed=done, total=total or None,
                   rate=f"{done / elapsed:,.0f} records/s" if elapsed > 0 else "")

    with bar:
        yield advance


def _render_rebuild(body: dict[str, Any]) -> None:
    console.print(
        f"rebuilt {body['skus']} SKU(s) from {body['topic']}: {body['records']} records, {body['applied']} replayed, "
        f"{body['skipped']} already there; {body['indexes']} reservation index entries; "
        f"{body['seconds']} s — {body['records_per_s']:,.0f} records/s, {body['skus_per_s']:,.0f} SKUs/s",
        markup=False, soft_wrap=True)
    if body["bad"]:
        err_console.print(f"{body['bad']} message(s) of the topic are not change records, left out: "
                          + "; ".join(body["bad_examples"]), markup=False, style="yellow", soft_wrap=True)


@app.command("rebuild")
def rebuild_cmd(
    force: Annotated[bool, typer.Option("--force", help="replay into a keyspace that holds SKU state "
                                                        "(what it has already is skipped)")] = False,
    topic_prefix: TopicPrefixOpt = "",
    topic_suffix: TopicSuffixOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Rebuild Redis from the change log (inventory.changes) after it was lost.

    Stop the API and the flow first, and start them again once it is done (README, "Redis lost").
    Refuses (exit 3) when the keyspace already holds SKU state, unless --force, and while another
    process holds the relay's lock."""
    from engine.log.rebuild import KeyspaceNotEmpty, RelayBusy
    from engine.log.rebuild import rebuild as replay_topic

    topic = _changes_topic(topic_prefix, topic_suffix)
    settings = load_settings()
    with _talking_to_redis(settings), _reading_the_log(settings, topic):
        client, conf = _log_clients(settings, "atp-rebuild")
        try:
            with _log_progress(not as_json, "rebuild") as progress:
                stats = replay_topic(client, conf, topic, settings.key_prefix, force=force, progress=progress)
        except KeyspaceNotEmpty as exc:
            raise CliError(f"{exc}: a rebuild starts from an empty Redis; --force replays into it what it "
                           f"lacks", EXIT_REFUSED) from exc
        except RelayBusy as exc:
            raise CliError(str(exc), EXIT_REFUSED) from exc
    body = {"topic": topic, **stats.to_json()}
    _emit(body, as_json, _render_rebuild)
    if stats.gaps:
        shown = "; ".join(list(stats.gaps.values())[:3])
        err_console.print(f"atp: error: {len(stats.gaps)} SKU(s) could not be rebuilt whole, the log misses "
                          f"records: {shown}", markup=False, soft_wrap=True)
        raise typer.Exit(EXIT_ERROR)


def _render_reconcile(body: dict[str, Any]) -> None:
    if not body["drifted"]:
        console.print(f"checked {body['checked']} SKU(s): no drift", markup=False)
    else:
        console.print(f"checked {body['checked']} SKU(s): {body['drifted']} drifted, {body['units']} unit(s) "
                      f"in their buckets", markup=False)
    for item in body["skus"]:
        console.print(f"{item['sku']}  live change {item['live_q']}, log change {item['log_q']}, "
                      f"{item['units']} unit(s)", markup=False, style="bold", soft_wrap=True)
        for line in item["diff"]:
            console.print(f"  {line}", markup=False, soft_wrap=True)
    if body["unsettled"]:
        err_console.print("not judged, they kept changing while read: " + ", ".join(body["unsettled"]),
                          markup=False, style="yellow", soft_wrap=True)
    if body["bad"]:
        err_console.print(f"{body['bad']} record(s) that are not change records, left out: "
                          + "; ".join(body["bad_examples"]), markup=False, style="yellow", soft_wrap=True)


#: ``atp reconcile``'s exit codes: 0 no drift, 1 drift, 2 error (a bad argument too).
RECONCILE_DRIFT = 1
RECONCILE_ERROR = 2


@contextlib.contextmanager
def _reconcile_errors() -> Iterator[None]:
    """Every failure of ``atp reconcile`` exits 2: 1 means drift."""
    try:
        yield
    except CliError as exc:
        kind = "bad_argument" if exc.exit_code == EXIT_BAD_ARGUMENT else "error"
        raise CliError(str(exc), RECONCILE_ERROR, kind) from exc
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except Exception as exc:
        raise CliError(f"{type(exc).__name__}: {_one_line(str(exc))}", RECONCILE_ERROR, "error") from exc


@app.command("reconcile")
def reconcile_cmd(
    sku: Annotated[list[str] | None, typer.Option("--sku", help="only this SKU; repeatable (default: every SKU)")] = None,
    every: Annotated[float | None, typer.Option(
        "--every", min=0.1, help="go on: a round every this many seconds, each checking the next --per-round SKUs, "
                                 "until Ctrl-C or SIGTERM")] = None,
    per_round: Annotated[int, typer.Option("--per-round", min=1, max=100_000,
                                           help="SKUs a round checks (with --every)")] = 100,
    topic_prefix: TopicPrefixOpt = "",
    topic_suffix: TopicSuffixOpt = "",
    as_json: JsonOpt = False,
) -> None:
    """Compare each SKU's Redis state with what its change log gives (exit 0: no drift, 1: drift, 2: error).

    Safe while the engine runs. A check of every SKU sets the drift gauges the flow exports. With
    --every it goes on, a round at a time: each cycle over every SKU, and each round that finds
    drift, sets them (the exit code is then the last whole cycle's)."""
    from engine.log.rebuild import reconcile

    with _reconcile_errors():
        skus = [_require_id("sku", s, "--sku") for s in dict.fromkeys(sku or [])] or None
        topic = _changes_topic(topic_prefix, topic_suffix)
        settings = load_settings()
        with _talking_to_redis(settings), _reading_the_log(settings, topic):
            client, conf = _log_clients(settings, "atp-reconcile")
            if every is not None:
                report = _reconcile_rounds(client, conf, topic, settings.key_prefix, skus, every, per_round, as_json)
                if report is not None and report.drifted:
                    raise typer.Exit(RECONCILE_DRIFT)
                return
            with _log_progress(not as_json, "reconcile") as progress:
                report = reconcile(client, conf, topic, settings.key_prefix, skus=skus, progress=progress)
    _emit(report.to_json(), as_json, _render_reconcile)
    if report.drifted:
        raise typer.Exit(RECONCILE_DRIFT)


def _stop_on_signals() -> Any:
    """A ``threading.Event`` that SIGTERM and SIGINT (Ctrl-C) set: a long-running command's stop."""
    import signal
    import threading

    stop = threading.Event()

    def on_signal(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def _reconcile_rounds(client: Any, conf: dict[str, Any], topic: str, prefix: str, skus: list[str] | None,
                      every: float, per_round: int, as_json: bool) -> Any:
    """``atp reconcile --every``: rounds until a signal (engine.log.rebuild.Rotation); each round's
    report goes out as it ends (a JSON line with --json). Returns the last whole cycle's."""
    from engine.log.rebuild import Rotation

    rotation = Rotation(client, conf, topic, prefix, per_round=per_round, skus=skus)
    stop = _stop_on_signals()
    err_console.print(f"reconcile: {per_round} SKUs every {every:g} s (Ctrl-C stops)", soft_wrap=True)
    rotation.run(stop, every, lambda report: _emit(report.to_json(), as_json, _render_reconcile))
    err_console.print(f"reconcile stopped after {rotation.cycles} whole cycle(s)")
    return rotation.last_cycle


# --- commands: tokens ---------------------------------------------------------------------------


@token_app.command("new")
def token_new(
    role: Annotated[list[str], typer.Option("--role", "-r", help="read / reserve / operate; repeatable")],
    as_json: JsonOpt = False,
) -> None:
    """Make a random token; prints it once, with the digest to put in ATP_API_TOKENS."""
    from engine.api.auth import Role, token_digest

    known = {r.value for r in Role}
    bad = sorted(set(role) - known)
    if bad:
        _bad(f"bad --role {', '.join(bad)}: one of {', '.join(sorted(known))}")
    token = secrets.token_urlsafe(32)
    digest = token_digest(token)
    roles = sorted(set(role))
    body = {"token": token, "sha256": digest, "roles": roles, "api_tokens_entry": {digest: roles}}
    _emit(body, as_json, lambda b: console.print(
        f"token:  {b['token']}\nsha256: {b['sha256']}\n"
        f"ATP_API_TOKENS='{orjson.dumps(b['api_tokens_entry']).decode()}'"))


@token_app.command("hash")
def token_hash(token: Annotated[str, typer.Argument(help="the bearer token")]) -> None:
    """Print the sha256 hex digest of a token (the form settings keep)."""
    from engine.api.auth import token_digest

    console.print(token_digest(token))


# --- entry point --------------------------------------------------------------------------------


_FAILURES = {EXIT_ERROR: "error", EXIT_BAD_ARGUMENT: "bad_argument", 130: "interrupted"}
_json_errors = False  # the command line asked for --json: a failure is a JSON object on stdout too


def _quiet_kafka_logger() -> Any:
    """A logger for the Kafka clients of one-shot commands: librdkafka's retry chatter goes
    nowhere, the command prints its one-line error instead (ATP_DEBUG=1 shows it again)."""
    import logging

    log = logging.getLogger("atp.cli.kafka")
    if not log.handlers:
        log.addHandler(logging.NullHandler())
        log.propagate = os.environ.get("ATP_DEBUG", "").lower() in ("1", "true", "yes")
    return log


def _fail(message: str, code: int, kind: str | None = None) -> NoReturn:
    line = _one_line(message)
    err_console.print(f"atp: error: {line}", markup=False, highlight=False, soft_wrap=True)
    if _json_errors:
        sys.stdout.write(json.dumps({"error": kind or _FAILURES.get(code, "error"), "detail": line}) + "\n")
    sys.exit(code)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("atp-engine")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown"


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry: run ``app``; any failure is one line on stderr and a non-zero exit
    (with ``--json`` also ``{error, detail}`` on stdout)."""
    global _json_errors
    args = list(sys.argv[1:] if argv is None else argv)
    _json_errors = "--json" in args
    if args in (["--version"], ["-V"]):
        print(f"atp-engine {_version()}")
        sys.exit(0)
    command = typer.main.get_command(app)
    debug = os.environ.get("ATP_DEBUG", "").lower() in ("1", "true", "yes")
    try:
        code = command.main(args=args, prog_name="atp", standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except TyperException as exc:  # usage errors: bad option, missing argument, bad value
        if not exc.format_message():  # a bare group: its help was the answer
            sys.exit(0)
        _fail(exc.format_message(), EXIT_BAD_ARGUMENT)
    except CliError as exc:
        if debug:
            raise
        _fail(str(exc), exc.exit_code, exc.kind)
    except ValidationError as exc:
        if debug:
            raise
        _fail(_settings_problem(exc), EXIT_ERROR)
    except (typer.Abort, KeyboardInterrupt):
        _fail("interrupted", 130)
    except Exception as exc:  # the last line of defence: never a traceback
        if debug:
            raise
        _fail(f"{type(exc).__name__}: {exc}", EXIT_ERROR)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
