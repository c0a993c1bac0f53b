"""Configuration fails at startup with one clear line naming the key."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from relay.errors import ConfigError
from relay.models import Schema
from relay.settings import load_settings, parse_settings


def write(tmp_path, text: str):
    path = tmp_path / "relay.toml"
    path.write_text(text)
    return path


def test_toml_with_env_expansion_and_overrides(tmp_path):
    path = write(tmp_path, """
[server]
store = "sqlite:///x.db"
api_keys = ["${KEY}"]
[providers.lipsync]
schema = "generation"
api_key = "${LIPSYNC}"
webhook_secret = ["old", "new"]
""")
    settings = load_settings(path, {"KEY": "k1", "LIPSYNC": "p1", "RELAY_PORT": "9000",
                                    "RELAY_STORE": "memory://"})
    assert settings.server.api_keys == ("k1",)
    assert settings.server.port == 9000
    assert settings.server.store == "memory://"
    assert settings.server.public_url == "http://127.0.0.1:9000"
    provider = settings.providers["lipsync"]
    assert (provider.schema, provider.api_key) == (Schema.GENERATION, "p1")
    assert provider.webhook_secrets == ("old", "new")
    assert (provider.poll_interval, provider.poll_max_interval) == (2.0, 60.0)
    assert (provider.max_job_age, provider.progress, provider.page_size) == (86400.0, True, 50)


def test_the_polling_keys_of_one_schema_are_read_for_it():
    settings = parse_settings({"providers": {
        "gen": {"schema": "generation", "progress": False, "max_job_age": 0},
        "stories": {"schema": "story", "page_size": 200, "max_job_age": 3600},
    }})
    assert (settings.providers["gen"].progress, settings.providers["gen"].max_job_age) == (
        False, 0.0)
    assert (settings.providers["stories"].page_size,
            settings.providers["stories"].max_job_age) == (200, 3600.0)


def test_defaults_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(None, {})
    assert (settings.server.host, settings.server.port) == ("127.0.0.1", 8000)
    assert settings.server.store == "sqlite:///./relay.db"
    assert settings.providers == {}


def test_port_is_honoured_and_relay_port_wins(tmp_path):
    assert load_settings(None, {"PORT": "5000", "RELAY_CONFIG": str(write(tmp_path, ""))}
                         ).server.port == 5000
    assert load_settings(write(tmp_path, ""), {"PORT": "5000", "RELAY_PORT": "6000"}
                         ).server.port == 6000


@pytest.mark.parametrize(("toml", "env", "message"), [
    ('[providers.a]\nschema = "generation"\napi_key = "${MISSING}"', {},
     "providers.a.api_key: environment variable MISSING is not set"),
    ('[providers.a]\nschema = "video"', {}, "providers.a.schema: unknown schema 'video'"),
    ('[providers.a]\nbase_url = "http://x"', {}, "providers.a.schema: required"),
    ('[server]\nport = "eighty"', {}, "server.port: expected an integer"),
    ('[server]\nbogus = 1', {}, "server.bogus: unknown key"),
    ('[providers.a]\nschema = "story"\npoll_interval = -1', {}, "providers.a.poll_interval"),
    ('[server]\nstore = "postgres://x"', {}, "server.store: expected"),
    ('[providers.a]\nschema = "story"\npage_size = 0', {}, "providers.a.page_size: expected"),
    ('[providers.a]\nschema = "jobstatus"\npage_size = 10', {},
     "providers.a.page_size: only a story provider has it"),
    ('[providers.a]\nschema = "story"\nprogress = true', {},
     "providers.a.progress: only a generation provider has it"),
    ('[providers.a]\nschema = "generation"\nprogress = "yes"', {},
     "providers.a.progress: expected true/false"),
    ('[providers.a]\nschema = "jobstatus"\nmax_job_age = -1', {}, "providers.a.max_job_age"),
    ('[server]\nhost = "0.0.0.0"', {}, "server.secret: required when not bound to loopback"),
    ('[server]\nhost = "0.0.0.0"\nsecret = "s"', {}, "server.api_keys: required"),
    ('[server]\nhost = "0.0.0.0"\nsecret = "s"\napi_keys = ["a-long-enough-api-key"]', {},
     "server.secret: at least 16 characters"),
    ('[server]\nhost = "0.0.0.0"\nsecret = "a-long-enough-secret"\napi_keys = ["k"]', {},
     "server.api_keys[0]: at least 16 characters"),
    ('[[subscriptions]]\nurl = "ftp://x"', {}, "subscriptions[0].url"),
    ("not toml [", {}, "invalid TOML"),
])
def test_bad_configuration_names_the_key(tmp_path, toml, env, message):
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, toml), env)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_public_url_trailing_slash_is_dropped():
    settings = parse_settings({"server": {"public_url": "https://relay.example/"}})
    assert settings.server.public_url == "https://relay.example"


@pytest.mark.parametrize(("toml", "message"), [
    ('[providers.a]\nschema = "generation"\napi_key = "${NOPE_NOT_SET}"',
     "relay: providers.a.api_key: environment variable NOPE_NOT_SET is not set"),
    ('[providers.a]\nschema = "nonsense"', "relay: providers.a.schema: unknown schema"),
])
def test_relay_serve_fails_at_startup_with_one_line(tmp_path, toml, message):
    result = subprocess.run(
        [sys.executable, "-m", "relay", "serve", "--config", str(write(tmp_path, toml))],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(message)
    assert len(result.stderr.strip().splitlines()) == 1


def serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay", "serve", *args], capture_output=True,
                          text=True, timeout=30, env={**os.environ, **(env or {})})


def test_an_unreachable_store_fails_startup_with_one_line_before_listening(tmp_path):
    result = serve("--config", str(write(tmp_path, "")),
                   env={"RELAY_STORE": "redis://127.0.0.1:1/0"})
    assert result.returncode == 2
    assert result.stderr.strip().startswith("relay: Redis failed:")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "listening" not in result.stderr + result.stdout


def test_a_busy_port_fails_startup_with_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve("--config", str(write(tmp_path, "")), "--port", str(port),
                       env={"RELAY_STORE": "memory://"})
    assert result.returncode == 2
    assert result.stderr.strip() == (f"relay: cannot listen on 127.0.0.1:{port}: "
                                     "Address already in use")
