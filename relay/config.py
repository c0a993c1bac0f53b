"""The configuration, as frozen values (read by `relay.settings`). Every component is given
the slice it uses, never the whole of it: providers by name, the outbound settings, one number.

This module imports nothing from relay but the job model.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from relay.models import Schema

DEFAULT_AUTH = {
    Schema.GENERATION: ("x-api-key", ""),
    Schema.STORY: ("Authorization", "Bearer"),
    Schema.JOBSTATUS: ("Authorization", "Bearer"),
}


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """One `[providers.<name>]` table."""

    name: str
    schema: Schema
    base_url: str | None = None
    api_key: str | None = None
    webhook_secrets: tuple[str, ...] = ()
    signature_tolerance: float = 300.0
    poll_interval: float = 2.0
    poll_max_interval: float = 60.0
    webhook_grace: float = 120.0
    max_concurrency: int = 8
    max_job_age: float = 86400.0  # seconds after tracking starts; 0: no deadline
    progress: bool = True  # generation: poll include=progress while a job runs
    page_size: int = 50  # story: the limit of each GET /v1/jobs page
    auth_header: str | None = None
    auth_scheme: str | None = None  # "" sends the bare key

    def auth_headers(self) -> dict[str, str]:
        """The header that carries `api_key` to this provider, the schema's way by default."""
        if not self.api_key:
            return {}
        header, scheme = DEFAULT_AUTH[self.schema]
        header = self.auth_header or header
        scheme = scheme if self.auth_scheme is None else self.auth_scheme
        return {header: f"{scheme} {self.api_key}" if scheme else self.api_key}


Providers = Mapping[str, ProviderConfig]
"""The configured providers, by name."""


@dataclass(frozen=True, slots=True)
class SubscriptionConfig:
    """One `[[subscriptions]]` entry: an outbound webhook target."""

    url: str
    topics: tuple[str, ...] = ("*",)
    secret: str | None = None
    events: tuple[str, ...] | None = None  # None: every event
    name: str | None = None  # its identity across config changes, when given


@dataclass(frozen=True, slots=True)
class OutboundConfig:
    """What the outbound webhook service is configured with."""

    subscriptions: tuple[SubscriptionConfig, ...] = ()
    allow_private_targets: bool = False
    delivery_max_age: float = 86400.0  # seconds an outbound delivery is retried
    delivery_retry_scale: float = 1.0  # multiplies the retry schedule (tests shrink it)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The `[server]` table."""

    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str = ""
    store: str = "sqlite:///./relay.db"
    secret: str | None = None
    api_keys: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    heartbeat: float = 15.0
    max_body: int = 1_048_576
    allow_private_targets: bool = False
    delivery_max_age: float = 86400.0
    delivery_retry_scale: float = 1.0
    max_connections: int = 10_000
    retention: float = 2_592_000.0  # seconds a terminal job is kept after it finished; 0: all
    log_format: str = "text"  # text | json

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


@dataclass(frozen=True, slots=True)
class Settings:
    """The whole configuration; only the composition root holds it."""

    server: ServerConfig = field(default_factory=ServerConfig)
    providers: Providers = field(default_factory=dict)
    subscriptions: tuple[SubscriptionConfig, ...] = ()

    @property
    def outbound(self) -> OutboundConfig:
        server = self.server
        return OutboundConfig(self.subscriptions, server.allow_private_targets,
                              server.delivery_max_age, server.delivery_retry_scale)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
