"""The configuration keys users read (relay.settings.KEYS, README.md's tables) are the keys
the parser accepts, with the defaults it gives. Whoever adds a key to the parser without
adding it to KEYS, or changes a default on one side only, is told here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from relay.errors import ConfigError
from relay.settings import (
    _ENV,
    _PROVIDER_KEYS,
    _SERVER_KEYS,
    _SUBSCRIPTION_KEYS,
    KEYS,
    PROVIDER,
    REQUIRED,
    SERVER,
    SUBSCRIPTION,
    keys_markdown,
    parse_settings,
)

README = Path(__file__).parent.parent / "README.md"
TABLES = re.compile(r"<!-- relay config-keys -->\n(.*?)<!-- end relay config-keys -->", re.S)

# The least each table needs: what the defaults of the other keys are read from.
MINIMAL = {
    SERVER: ({}, lambda s: s.server),
    PROVIDER: ({"providers": {"p": {"schema": "story"}}}, lambda s: s.providers["p"]),
    SUBSCRIPTION: ({"subscriptions": [{"url": "https://consumer.example/hook"}]},
                   lambda s: s.subscriptions[0]),
}


def names(table: str) -> set[str]:
    return {key.name for key in KEYS if key.table == table}


@pytest.mark.parametrize(("table", "accepted"), [
    (SERVER, _SERVER_KEYS), (PROVIDER, _PROVIDER_KEYS), (SUBSCRIPTION, _SUBSCRIPTION_KEYS)])
def test_the_table_names_exactly_the_keys_the_parser_accepts(table, accepted):
    assert names(table) - accepted == set(), "in KEYS, but the parser refuses them"
    assert accepted - names(table) == set(), "the parser accepts them, but KEYS lacks them"


@pytest.mark.parametrize("key", [k for k in KEYS if k.default is not REQUIRED],
                         ids=lambda k: f"{k.table}.{k.name}")
def test_a_stated_default_is_what_the_parser_gives_when_the_key_is_left_out(key):
    raw, pick = MINIMAL[key.table]
    assert getattr(pick(parse_settings(raw)), key.field) == key.default


@pytest.mark.parametrize(("key", "raw"), [
    ("schema", {"providers": {"p": {"base_url": "https://provider.example"}}}),
    ("url", {"subscriptions": [{"topics": ["*"]}]}),
])
def test_a_required_key_left_out_is_refused_by_name(key, raw):
    assert [k.name for k in KEYS if k.default is REQUIRED] == ["schema", "url"]
    with pytest.raises(ConfigError, match=rf"\.{key}: "):
        parse_settings(raw)


# One value per variable, and the field it must set.
ENVIRONMENT = {
    "RELAY_HOST": ("::1", "host", "::1"),
    "RELAY_PORT": ("9001", "port", 9001),
    "PORT": ("9002", "port", 9002),
    "RELAY_PUBLIC_URL": ("https://relay.example", "public_url", "https://relay.example"),
    "RELAY_STORE": ("memory://", "store", "memory://"),
    "RELAY_SECRET": ("a-secret", "secret", "a-secret"),
    "RELAY_API_KEYS": ("k1,k2", "api_keys", ("k1", "k2")),
}


def test_every_variable_the_table_names_sets_its_key_and_none_is_left_out():
    named = {name: key.field for key in KEYS for name in key.env}
    assert set(named) == set(ENVIRONMENT) == {*_ENV, "RELAY_PORT", "PORT"}
    for name, (value, field, expected) in ENVIRONMENT.items():
        assert named[name] == field
        assert getattr(parse_settings({}, {name: value}).server, field) == expected


def test_the_readme_shows_the_rendered_tables():
    found = TABLES.search(README.read_text())
    assert found, "README.md has no <!-- relay config-keys --> section"
    assert found.group(1).strip() == keys_markdown().strip(), (
        "README.md's configuration tables differ from relay.settings.KEYS: replace them with "
        "the output of `relay config-keys`")


def test_relay_config_keys_prints_the_tables():
    result = subprocess.run([sys.executable, "-m", "relay", "config-keys"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout == keys_markdown()
