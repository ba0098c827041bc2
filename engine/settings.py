"""One settings object for the whole engine: env vars prefixed ``ATP_`` and an optional TOML file.

The TOML file is named by ``ATP_CONFIG`` (default ``atp.toml`` in the working directory, if present).
Env vars win over the file. A bad value raises ``pydantic.ValidationError`` with the field name,
which the CLI turns into a one-line message and a non-zero exit.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from engine.domain.ids import MAX_HOLD_TTL_S, id_problem
from engine.store.keys import DEFAULT_PREFIX, PREFIX_PATTERN
from engine.store.wire import RETENTION_S

WATCH_LIMIT = 50
"""Most SKUs on the watch list (``engine.metrics.WATCH_LIMIT`` is the same bound)."""

# Upper bounds of the HTTP edge settings: past these a value is a typo, not a policy.
MAX_HEADER_BYTES_CAP = 1024 * 1024
MAX_HEADERS_CAP = 10_000
MAX_CONNECTIONS_CAP = 1_000_000
TIMEOUT_CAP_S = 3600.0
# The broker refuses more replicas than it has brokers; past this a value is a typo, not a cluster.
MAX_TOPIC_REPLICATION = 32


def _config_file() -> Path | None:
    path = Path(os.environ.get("ATP_CONFIG", "atp.toml"))
    return path if path.is_file() else None


class Settings(BaseSettings):
    """Engine configuration. Every field maps to ``ATP_<FIELD>`` (upper case)."""

    model_config = SettingsConfigDict(env_prefix="ATP_", extra="ignore", validate_default=True)

    # Redis: the live state.
    redis_url: str = Field("", description="redis:// or rediss:// URL; empty = start an embedded Redis")
    redis_cluster: bool = Field(False, description="connect with the Redis Cluster client")
    redis_username: str | None = None
    redis_password: str | None = None
    redis_tls_ca: str | None = Field(None, description="CA bundle for rediss://")
    key_prefix: str = Field(DEFAULT_PREFIX, pattern=f"^{PREFIX_PATTERN.pattern}$")

    # Kafka: the log.
    kafka_bootstrap: str = Field("", description="host:port[,…]; empty = start an embedded broker")
    kafka_security_protocol: str = Field("PLAINTEXT", pattern=r"^(PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL)$")
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    kafka_ssl_ca: str | None = None
    topic_partitions: int = Field(3, ge=1, le=1024)
    topic_replication: int = Field(
        1, ge=1, le=MAX_TOPIC_REPLICATION,
        description="replication factor of the topics the engine creates on a configured broker "
                    "(min.insync.replicas is the broker's)",
    )

    # The flow.
    workers: int = Field(1, ge=1, le=64)
    batch_size: int = Field(500, ge=1, le=100_000)
    recovery_dir: str | None = Field(None, description="bytewax recovery directory; empty = no recovery")
    snapshot_interval_s: float = Field(5.0, gt=0)
    flow_metrics_port: int = Field(9101, ge=0, le=65535)

    # The API.
    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=0, le=65535)
    api_tokens: dict[str, list[str]] = Field(
        default_factory=dict,
        description="sha256 hex of a bearer token -> roles (read, reserve, operate); JSON in the env var",
    )
    max_body_bytes: int = Field(256 * 1024, ge=1024)
    # What one connection may cost before it is answered 4xx or dropped (engine/api/edge.py).
    max_header_bytes: int = Field(
        16 * 1024, ge=1024, le=MAX_HEADER_BYTES_CAP,
        description="request line + headers of one request; over it: 431 (414 when the URL is what ran over)",
    )
    max_headers: int = Field(100, ge=10, le=MAX_HEADERS_CAP, description="header fields per request; over it: 431")
    header_timeout_s: float = Field(
        10.0, gt=0, le=TIMEOUT_CAP_S,
        description="a request's headers must be in within this long of the connection or of the last response",
    )
    keepalive_timeout_s: float = Field(
        5.0, gt=0, le=TIMEOUT_CAP_S, description="an idle keep-alive connection is closed after this long"
    )
    max_connections: int = Field(
        2048, ge=1, le=MAX_CONNECTIONS_CAP,
        description="connections or requests in progress per server process; requests over it get 503",
    )

    # The change log (docs/changelog.md).
    relay: bool = Field(
        True,
        description="the API runs the change log relay in a background thread (one relay ships per keyspace: "
                    "a Redis lock; false when `atp relay` runs on its own)",
    )
    changelog_backlog_max: int = Field(
        1_000_000, ge=1,
        description="change records waiting in Redis for the relay; beyond it /readyz reports not ready",
    )

    # Reservations.
    default_hold_ttl_s: int = Field(600, ge=1, le=MAX_HOLD_TTL_S)
    sweep_interval_s: float = Field(1.0, gt=0)
    reservation_retention_s: int = Field(
        RETENTION_S, ge=1, le=3650 * 86_400,
        description="released / expired / shipped reservation lines are purged this long after they ended",
    )

    # Alerts and replenishment defaults (per-SKU policy overrides).
    low_stock_threshold: int = Field(10, ge=0)
    demand_surge_pct: float = Field(50.0, gt=0)
    alert_resolve_after_s: float = Field(
        3600.0, ge=0, le=7 * 86_400,
        description="low_stock, stockout, oversold, promise_at_risk and demand_surge resolve only once clear "
                    "for this long without a break (event time)",
    )
    unfulfillable_quiet_s: float = Field(
        8 * 3600.0, gt=0, le=7 * 86_400,
        description="refused orders of a SKU and location are one order_unfulfillable episode until this "
                    "long passes without one (event time)",
    )
    supplier_unreliable_below: float = Field(0.8, ge=0, le=1)
    supplier_resolve_band: float = Field(
        0.05, ge=0, le=1, description="supplier_unreliable resolves at a score ≥ unreliable_below + band")
    supplier_alpha: float = Field(
        0.2, gt=0, le=1, description="EWMA weight of each receipt in the supplier's on-time and fill rates")
    demand_alpha: float = Field(0.25, gt=0, le=1, description="EWMA weight of each closed day in demand d and σ")
    demand_window_hours: int = Field(24, ge=1, le=744, description="demand_surge: the recent window")
    demand_baseline_days: int = Field(7, ge=1, le=90, description="demand_surge: the baseline before that window")
    service_level: float = Field(0.95, gt=0, lt=1)
    review_period_days: float = Field(1.0, gt=0)
    default_lead_time_days: float = Field(7.0, gt=0)

    # Observability.
    watch_skus: list[str] = Field(
        default_factory=list,
        max_length=WATCH_LIMIT,
        description=f"SKUs whose ATP is exported per location (atp_watch_atp); JSON list in the env var, "
        f"at most {WATCH_LIMIT}",
    )

    @field_validator("watch_skus")
    @classmethod
    def _watch_skus_valid(cls, v: list[str]) -> list[str]:
        # Each watched SKU is a label value of its own series: malformed ones are refused here,
        # duplicates dropped (order kept).
        for sku in v:
            problem = id_problem("sku", sku)
            if problem is not None:
                raise ValueError(f"watch_skus: {problem}")
        return list(dict.fromkeys(v))

    @field_validator("api_tokens")
    @classmethod
    def _roles_known(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        allowed = {"read", "reserve", "operate"}
        for digest, roles in v.items():
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError("api_tokens keys must be sha256 hex digests of the tokens")
            bad = set(roles) - allowed
            if bad:
                raise ValueError(f"unknown roles {sorted(bad)}; allowed: {sorted(allowed)}")
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    def kafka_config(self) -> dict[str, Any]:
        """librdkafka settings for the broker connection (bootstrap, security, credentials)."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.kafka_bootstrap,
            "security.protocol": self.kafka_security_protocol,
        }
        if self.kafka_sasl_mechanism:
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
            conf["sasl.username"] = self.kafka_sasl_username or ""
            conf["sasl.password"] = self.kafka_sasl_password or ""
        if self.kafka_ssl_ca:
            conf["ssl.ca.location"] = self.kafka_ssl_ca
        return conf


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
