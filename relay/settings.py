"""Reading the configuration: a TOML file, `${VAR}` expansion, then environment overrides.

`load_settings()` is the only place that reads the environment. Anything wrong raises
`ConfigError` with one line naming the key, so `relay serve` fails at startup, never at the
first request. The values it builds are `relay.config`'s.

`KEYS` lists every key for users, with its default and meaning; `keys_markdown()` renders
them as README.md's configuration tables (and `relay config-keys`'s output).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from relay.config import ProviderConfig, ServerConfig, Settings, SubscriptionConfig
from relay.errors import ConfigError
from relay.models import Schema
from relay.normalise.story import MAX_LIST  # the entries of one page relay reads

MIN_SECRET = 16
"""Characters a secret or API key has at least when the relay is reachable from elsewhere."""
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def load_settings(path: str | os.PathLike[str] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from `path` (else `$RELAY_CONFIG`, else `./relay.toml` if present, else
    defaults), with `${VAR}` expanded and `RELAY_*` environment variables applied on top."""
    env = os.environ if environ is None else environ
    raw = _read_toml(_config_path(path, env))
    raw = _expand(raw, env, "")
    return parse_settings(raw, env)


def parse_settings(raw: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from an already-read TOML document (tests and the demo build them this way)."""
    env = {} if environ is None else environ
    _check_keys(raw, {"server", "providers", "subscriptions"}, "")
    server = _server(_table(raw, "server"), env)
    providers = {name: _provider(name, table)
                 for name, table in _table(raw, "providers").items()}
    subscriptions = tuple(_subscription(i, entry)
                          for i, entry in enumerate(_list(raw, "subscriptions", "")))
    return Settings(server=server, providers=providers, subscriptions=subscriptions)


def _config_path(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    if path is not None:
        return Path(path)
    if env.get("RELAY_CONFIG"):
        return Path(env["RELAY_CONFIG"])
    default = Path("relay.toml")
    return default if default.is_file() else None


def _read_toml(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML: {exc}") from exc


def _expand(value: Any, env: Mapping[str, str], key: str) -> Any:
    if isinstance(value, str):
        return _VAR.sub(lambda m: _variable(m.group(1), env, key), value)
    if isinstance(value, dict):
        return {k: _expand(v, env, f"{key}.{k}" if key else k) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, env, f"{key}[{i}]") for i, v in enumerate(value)]
    return value


def _variable(name: str, env: Mapping[str, str], key: str) -> str:
    if name not in env:
        raise ConfigError(f"{key}: environment variable {name} is not set")
    return env[name]


# -- server ---------------------------------------------------------------------------------

_SERVER_KEYS = {"host", "port", "public_url", "store", "secret", "api_keys", "cors_origins",
                "heartbeat", "max_body", "allow_private_targets", "delivery_max_age",
                "delivery_retry_scale", "max_connections", "retention", "log_format"}
LOG_FORMATS = ("text", "json")


def _server(table: Mapping[str, Any], env: Mapping[str, str]) -> ServerConfig:
    _check_keys(table, _SERVER_KEYS, "server")
    values = dict(table)
    _apply_env(values, env)
    host = _str(values, "host", "server", "127.0.0.1")
    port = _int(values, "port", "server", 8000, low=0, high=65535)
    server = ServerConfig(
        host=host,
        port=port,
        public_url=_str(values, "public_url", "server", "").rstrip("/")
        or f"http://{host}:{port}",
        store=_store_url(_str(values, "store", "server", "sqlite:///./relay.db")),
        secret=_str(values, "secret", "server", "") or None,
        api_keys=tuple(k for k in _strings(values, "api_keys", "server") if k),
        cors_origins=_strings(values, "cors_origins", "server"),
        heartbeat=_float(values, "heartbeat", "server", 15.0, low=0.05),
        max_body=_int(values, "max_body", "server", 1_048_576, low=1),
        allow_private_targets=_bool(values, "allow_private_targets", "server", False),
        delivery_max_age=_float(values, "delivery_max_age", "server", 86400.0, low=0),
        delivery_retry_scale=_float(values, "delivery_retry_scale", "server", 1.0, low=1e-6,
                                    high=1000),
        max_connections=_int(values, "max_connections", "server", 10_000, low=1),
        retention=_float(values, "retention", "server", 2_592_000.0, low=0),
        log_format=_log_format(_str(values, "log_format", "server", "text")),
    )
    _check_exposure(server)
    return server


_ENV: dict[str, tuple[str, Callable[[str], Any]]] = {
    "RELAY_HOST": ("host", str),
    "RELAY_STORE": ("store", str),
    "RELAY_SECRET": ("secret", str),
    "RELAY_PUBLIC_URL": ("public_url", str),
    "RELAY_API_KEYS": ("api_keys", lambda v: [k.strip() for k in v.split(",")]),
}


def _apply_env(values: dict[str, Any], env: Mapping[str, str]) -> None:
    for name, (key, convert) in _ENV.items():
        if env.get(name):
            values[key] = convert(env[name])
    port = env.get("RELAY_PORT") or env.get("PORT")
    if port:
        try:
            values["port"] = int(port)
        except ValueError:
            raise ConfigError(f"RELAY_PORT/PORT: expected a port number, got {port!r}") from None


def _log_format(name: str) -> str:
    if name not in LOG_FORMATS:
        raise ConfigError(f"server.log_format: expected text or json, got {name[:64]!r}")
    return name


def _store_url(url: str) -> str:
    if not url.startswith(("sqlite:///", "redis://", "rediss://", "memory://")):
        raise ConfigError(
            f"server.store: expected sqlite:///PATH, redis://… or memory://, got {url!r}")
    return url


def _check_exposure(server: ServerConfig) -> None:
    """Bound anywhere but loopback, the relay needs a secret and API keys, and long ones: a
    short secret or key can be guessed from the outside."""
    if server.loopback:
        return
    if not server.secret:
        raise ConfigError("server.secret: required when not bound to loopback (set RELAY_SECRET)")
    if not server.api_keys:
        raise ConfigError(
            "server.api_keys: required when not bound to loopback (set RELAY_API_KEYS)")
    if len(server.secret) < MIN_SECRET:
        raise ConfigError(f"server.secret: at least {MIN_SECRET} characters when not bound to "
                          "loopback")
    for index, key in enumerate(server.api_keys):
        if len(key) < MIN_SECRET:
            raise ConfigError(f"server.api_keys[{index}]: at least {MIN_SECRET} characters "
                              "when not bound to loopback")


# -- providers and subscriptions ------------------------------------------------------------

_PROVIDER_KEYS = {"schema", "base_url", "api_key", "webhook_secret", "signature_tolerance",
                  "poll_interval", "poll_max_interval", "webhook_grace", "max_concurrency",
                  "max_job_age", "progress", "page_size", "auth_header", "auth_scheme"}
_SCHEMA_KEYS = {"progress": Schema.GENERATION, "page_size": Schema.STORY}
"""Keys that mean something to one schema only: set on another, they are a mistake."""
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _provider(name: str, table: Any) -> ProviderConfig:
    key = f"providers.{name}"
    if not _NAME.match(name):
        raise ConfigError(f"{key}: a provider name is 1 to 64 letters, digits, '-' or '_'")
    if not isinstance(table, dict):
        raise ConfigError(f"{key}: expected a table")
    _check_keys(table, _PROVIDER_KEYS, key)
    schema = _schema(table, key)
    _check_schema_keys(table, schema, key)
    interval = _float(table, "poll_interval", key, 2.0, low=0.01)
    return ProviderConfig(
        name=name,
        schema=schema,
        base_url=(_str(table, "base_url", key, "") or "").rstrip("/") or None,
        api_key=_str(table, "api_key", key, "") or None,
        webhook_secrets=_secrets(table, key),
        signature_tolerance=_float(table, "signature_tolerance", key, 300.0, low=0),
        poll_interval=interval,
        poll_max_interval=_float(table, "poll_max_interval", key, max(60.0, interval),
                                 low=interval),
        webhook_grace=_float(table, "webhook_grace", key, 120.0, low=0),
        max_concurrency=_int(table, "max_concurrency", key, 8, low=1, high=1000),
        max_job_age=_float(table, "max_job_age", key, 86400.0, low=0),
        progress=_bool(table, "progress", key, True),
        page_size=_int(table, "page_size", key, 50, low=1, high=MAX_LIST),
        auth_header=_str(table, "auth_header", key, "") or None,
        auth_scheme=_str(table, "auth_scheme", key, "") if "auth_scheme" in table else None,
    )


def _schema(table: Mapping[str, Any], key: str) -> Schema:
    if "schema" not in table:
        raise ConfigError(f"{key}.schema: required (story, generation or jobstatus)")
    value = table["schema"]
    try:
        return Schema(value)
    except ValueError:
        raise ConfigError(
            f"{key}.schema: unknown schema {value!r} (expected story, generation or jobstatus)"
        ) from None


def _check_schema_keys(table: Mapping[str, Any], schema: Schema, key: str) -> None:
    for name, only in _SCHEMA_KEYS.items():
        if name in table and schema is not only:
            raise ConfigError(f"{key}.{name}: only a {only.value} provider has it")


def _secrets(table: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = table.get("webhook_secret")
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{key}.webhook_secret: expected a string or a list of strings")
    return tuple(value)


_SUBSCRIPTION_KEYS = {"url", "topics", "secret", "events", "name"}


def _subscription(index: int, entry: Any) -> SubscriptionConfig:
    key = f"subscriptions[{index}]"
    if not isinstance(entry, dict):
        raise ConfigError(f"{key}: expected a table")
    _check_keys(entry, _SUBSCRIPTION_KEYS, key)
    url = _str(entry, "url", key, "")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{key}.url: expected an http(s) URL")
    topics = _strings(entry, "topics", key) or ("*",)
    # What the words may be is the outbound service's to check (relay.outbound.subscriptions).
    return SubscriptionConfig(
        url=url, topics=topics, secret=_str(entry, "secret", key, "") or None,
        events=_strings(entry, "events", key) if "events" in entry else None,
        name=_str(entry, "name", key, "") if "name" in entry else None)


# -- typed readers: each names the key it rejects --------------------------------------------

def _check_keys(table: Mapping[str, Any], known: set[str], prefix: str) -> None:
    for name in table:
        if name not in known:
            full = f"{prefix}.{name}" if prefix else name
            raise ConfigError(f"{full}: unknown key (expected one of {', '.join(sorted(known))})")


def _table(raw: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: expected a table")
    return value


def _list(raw: Mapping[str, Any], name: str, prefix: str) -> list[Any]:
    value = raw.get(name, [])
    if not isinstance(value, list):
        raise ConfigError(f"{prefix + '.' if prefix else ''}{name}: expected a list")
    return value


def _typed(table: Mapping[str, Any], name: str, prefix: str, default: Any,
           check: Callable[[Any], bool], expected: str) -> Any:
    value = table.get(name, default)
    if not check(value):
        raise ConfigError(f"{prefix}.{name}: expected {expected}, got {value!r}")
    return value


def _str(table: Mapping[str, Any], name: str, prefix: str, default: str) -> str:
    return str(_typed(table, name, prefix, default, lambda v: isinstance(v, str), "a string"))


def _bool(table: Mapping[str, Any], name: str, prefix: str, default: bool) -> bool:
    return bool(_typed(table, name, prefix, default, lambda v: isinstance(v, bool), "true/false"))


def _number(table: Mapping[str, Any], name: str, prefix: str, default: float, low: float,
            high: float, integer: bool) -> Any:
    def check(v: Any) -> bool:
        kinds = (int,) if integer else (int, float)
        return isinstance(v, kinds) and not isinstance(v, bool) and low <= v <= high

    kind = "an integer" if integer else "a number"
    return _typed(table, name, prefix, default, check, f"{kind} from {low:g} to {high:g}")


def _int(table: Mapping[str, Any], name: str, prefix: str, default: int, *, low: int,
         high: int = 2**31) -> int:
    return int(_number(table, name, prefix, default, low, high, integer=True))


def _float(table: Mapping[str, Any], name: str, prefix: str, default: float, *, low: float,
           high: float = 1e9) -> float:
    return float(_number(table, name, prefix, default, low, high, integer=False))


def _strings(table: Mapping[str, Any], name: str, prefix: str) -> tuple[str, ...]:
    value = _typed(table, name, prefix, [],
                   lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v),
                   "a list of strings")
    return tuple(value)


# -- every key, as users read it ---------------------------------------------------------------
# README.md's configuration tables are rendered from KEYS (`relay config-keys` prints them), and
# tests/test_config_keys.py fails when KEYS and the parser above disagree: a key one accepts
# and the other does not name, or a default that is not what parse_settings gives.

class _Required(Enum):
    REQUIRED = "required"


REQUIRED = _Required.REQUIRED
"""The default of a key that must be given: parse_settings refuses the table without it."""


@dataclass(frozen=True, slots=True)
class Key:
    """One configuration key: where it is, its default, and what it does.

    `default` is what parse_settings gives when the key is left out (REQUIRED when it refuses
    to); `shown` says it in words where the bare value would mislead. `attribute` names the
    field it fills when that is not the key's own name; `env` the variables that override it.
    """

    table: str
    name: str
    default: Any
    meaning: str
    shown: str | None = None
    attribute: str | None = None
    env: tuple[str, ...] = ()

    @property
    def field(self) -> str:
        return self.attribute or self.name


SERVER = "server"
PROVIDER = "providers.<name>"
SUBSCRIPTION = "[[subscriptions]]"

KEYS: tuple[Key, ...] = (
    Key(SERVER, "host", "127.0.0.1", "the address `relay serve` listens on; anything but "
        "loopback needs `secret` and `api_keys`", env=("RELAY_HOST",)),
    Key(SERVER, "port", 8000, "the port it listens on", env=("RELAY_PORT", "PORT")),
    Key(SERVER, "public_url", "http://127.0.0.1:8000", "the base of the `webhook_url` handed to "
        "providers and of `events_url`", shown="`http://<host>:<port>`",
        env=("RELAY_PUBLIC_URL",)),
    Key(SERVER, "store", "sqlite:///./relay.db", "the event log: `sqlite:///PATH`, "
        "`redis://HOST:PORT/DB` (options `?prefix=`, `?retention=`), or `memory://` (gone at "
        "exit)", env=("RELAY_STORE",)),
    Key(SERVER, "secret", None, "signs subscribe tokens and webhook URL tokens; off loopback "
        "required, at least 16 characters", shown="on loopback: generated once, kept in the "
        "store", env=("RELAY_SECRET",)),
    Key(SERVER, "api_keys", (), "bearer keys for `/v1` (`Authorization: Bearer <key>`; the "
        "variable is comma-separated); off loopback required, each at least 16 characters",
        shown="`[]`: the API is open (loopback only)", env=("RELAY_API_KEYS",)),
    Key(SERVER, "cors_origins", (), "origins (`https://app.example`) whose pages may call the "
        "API and open event streams"),
    Key(SERVER, "heartbeat", 15.0, "seconds between the heartbeat comments of an idle event "
        "stream"),
    Key(SERVER, "max_body", 1_048_576, "bytes a webhook body may have; a larger one is `413`"),
    Key(SERVER, "allow_private_targets", False, "let subscriptions post to loopback and "
        "private addresses"),
    Key(SERVER, "retention", 2_592_000.0, "seconds a terminal job, its events and its "
        "deliveries are kept after it finished; an hourly sweep deletes older ones; `0` keeps "
        "all", shown="`2592000` (30 days)"),
    Key(SERVER, "delivery_max_age", 86400.0, "seconds an outbound delivery is retried before "
        "it is `failed`"),
    Key(SERVER, "delivery_retry_scale", 1.0, "multiplies every outbound retry delay (tests "
        "and demos shorten it)"),
    Key(SERVER, "max_connections", 10_000, "open connections at once; past it a new one gets "
        "`503`"),
    Key(SERVER, "log_format", "text", "`text`, or `json`: one JSON object per line (`ts`, "
        "`level`, `logger`, `msg`, and the line's fields); access lines carry the request id, "
        "method, path (tokens redacted), status and duration"),
    Key(PROVIDER, "schema", REQUIRED, "`story`, `generation` or `jobstatus`: how the provider "
        "reports its jobs"),
    Key(PROVIDER, "base_url", None, "the provider's API root, where relay polls",
        shown="none: never polled, webhooks only"),
    Key(PROVIDER, "api_key", None, "sent with every call the schema's way: `generation` "
        "`x-api-key: <key>`, `story` and `jobstatus` `Authorization: Bearer <key>`"),
    Key(PROVIDER, "webhook_secret", (), "proves its webhooks (`Sync-Signature`, "
        "`X-Signature-Primary`, or Standard Webhooks with a `whsec_` secret); a list of "
        "strings during a rotation", attribute="webhook_secrets",
        shown="none: a webhook proves itself by the signed `/hooks/<name>/<token>` URL"),
    Key(PROVIDER, "signature_tolerance", 300.0, "seconds a signed timestamp may differ from "
        "now"),
    Key(PROVIDER, "poll_interval", 2.0, "seconds to the first poll; while nothing changes the "
        "interval backs off towards `poll_max_interval`"),
    Key(PROVIDER, "poll_max_interval", 60.0, "the back-off cap, in seconds",
        shown="`60.0`, or `poll_interval` if larger"),
    Key(PROVIDER, "webhook_grace", 120.0, "seconds without a callback before a job whose "
        "schema pushes webhooks (`generation`) is polled"),
    Key(PROVIDER, "max_concurrency", 8, "polls in flight to this provider at once"),
    Key(PROVIDER, "max_job_age", 86400.0, "seconds after tracking starts before a job still not "
        "terminal becomes `failed` with code `deadline_exceeded`; `0` never"),
    Key(PROVIDER, "progress", True, "`generation` only: poll `include=progress` while a job "
        "runs, even while webhooks arrive, so its progress moves; `false` long-polls instead"),
    Key(PROVIDER, "page_size", 50, "`story` only: the `limit` of each `GET /v1/jobs` list page"),
    Key(PROVIDER, "auth_header", None, "the header that carries `api_key`",
        shown="the schema's: `x-api-key` or `Authorization`"),
    Key(PROVIDER, "auth_scheme", None, "the word before the key in that header; `\"\"` sends "
        "the bare key", shown="the schema's: `Bearer`, none for `generation`"),
    Key(SUBSCRIPTION, "url", REQUIRED, "where relay posts each event: an `http(s)` URL; "
        "loopback and private addresses need `server.allow_private_targets`"),
    Key(SUBSCRIPTION, "topics", ("*",), "the topics whose jobs it receives; `*` is every job, "
        "`relay:ops` the operational events"),
    Key(SUBSCRIPTION, "secret", None, "signs each delivery the Standard Webhooks way: "
        "`whsec_` and the base64 of 24 to 64 bytes", shown="required"),
    Key(SUBSCRIPTION, "events", None, "the changes it receives: any of `created`, `state`, "
        "`progress`, `terminal`", shown="all"),
    Key(SUBSCRIPTION, "name", None, "its identity (1 to 64 letters, digits, `-`, `_`): with "
        "one, its url, topics, events and secret may change and its deliveries and health stay",
        shown="none: identified by its url, topics and events"),
)
"""Every configuration key, table by table, in the order the README lists them."""


def keys_markdown(keys: Iterable[Key] = KEYS) -> str:
    """The keys as Markdown: one table per TOML table (README.md, `relay config-keys`)."""
    by_table: dict[str, list[Key]] = {}
    for key in keys:
        by_table.setdefault(key.table, []).append(key)
    return "\n".join(_key_table(table, rows) for table, rows in by_table.items())


def _key_table(table: str, rows: list[Key]) -> str:
    heading = f"[{table}]" if not table.startswith("[") else table
    with_env = any(key.env for key in rows)
    head = ["key", "default", *(["environment"] if with_env else []), "meaning"]
    lines = [f"`{heading}`", "", _row(head), _row(["---"] * len(head))]
    for key in rows:
        env = [", ".join(f"`{name}`" for name in key.env)] if with_env else []
        lines.append(_row([f"`{key.name}`", key.shown or _shown(key.default), *env, key.meaning]))
    return "\n".join(lines) + "\n"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _shown(value: Any) -> str:
    if value is REQUIRED:
        return "required"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        return "`[" + ", ".join(f'"{item}"' for item in value) + "]`"
    return f"`{value}`"
