"""`relay demo`'s command line: every bad flag or port is one line and exit 2, every flag has
help, and the port comes from where `relay serve` reads it."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from relay import cli
from relay.errors import ConfigError
from relay.settings import load_settings


@pytest.mark.parametrize(("args", "env", "says"), [
    (["--jobs", "-3"], {}, "--jobs: expected a whole number of at least 1, got '-3'"),
    (["--jobs", "0"], {}, "--jobs: expected a whole number of at least 1"),
    (["--jobs", "many"], {}, "--jobs: expected a whole number of at least 1"),
    (["--exit-after", "0"], {}, "--exit-after: expected seconds, more than 0, got '0'"),
    (["--exit-after", "-5"], {}, "--exit-after: expected seconds, more than 0"),
    (["--exit-after", "nan"], {}, "--exit-after: expected seconds, more than 0"),
    (["--port", "0"], {}, "--port: expected a port from 1 to 65535, got '0'"),
    (["--port", "70000"], {}, "--port: expected a port from 1 to 65535"),
    ([], {"RELAY_PORT": "eighty"}, "RELAY_PORT: expected a port from 1 to 65535, got 'eighty'"),
    ([], {"PORT": "99999"}, "PORT: expected a port from 1 to 65535, got '99999'"),
    (["--host", "0.0.0.0"], {}, "--host: the demo listens on loopback only"),
])
def test_a_bad_demo_flag_or_port_is_one_line_and_exit_2(args, env, says):
    result = subprocess.run([sys.executable, "-m", "relay", "demo", *args], capture_output=True,
                            text=True, timeout=30, env={**os.environ, **env})
    assert result.returncode == 2
    assert says in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout == ""


def test_every_flag_of_every_command_has_help():
    commands = next(action for action in cli._parser()._actions
                    if isinstance(action, argparse._SubParsersAction))
    missing = [f"relay {name} {'/'.join(action.option_strings)}"
               for name, parser in commands.choices.items() for action in parser._actions
               if not action.help]
    assert not missing


@pytest.mark.parametrize("env", [
    {}, {"PORT": "5000"}, {"RELAY_PORT": "6000"}, {"RELAY_PORT": "6000", "PORT": "5000"},
    {"RELAY_PORT": "", "PORT": "5000"},
])
def test_the_demo_reads_its_port_from_the_environment_as_relay_serve_does(tmp_path, env):
    empty = tmp_path / "relay.toml"
    empty.write_text("")
    assert cli.demo_address("127.0.0.1", None, env) == (
        "127.0.0.1", load_settings(empty, env).server.port)
    assert cli.demo_address("127.0.0.1", 7000, env) == ("127.0.0.1", 7000)


def test_the_demo_refuses_an_address_off_loopback():
    with pytest.raises(ConfigError, match="loopback only"):
        cli.demo_address("0.0.0.0", 8000, {})
