"""deploy/Dockerfile and deploy/compose.yaml, checked without a Docker engine (none runs
here): what the files say is read and checked, and the parts that run outside a container
are run: the image's command with the image's environment, and its health check."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support import free_port

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
SECRETS = {"RELAY_SECRET": "deploy-test-secret", "RELAY_API_KEYS": "deploy-test-api-key"}


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined."""
    text = dockerfile.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    parsed = [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]
    starts = [i for i, (name, _) in enumerate(parsed) if name.upper() == "FROM"]
    return [(name.upper(), args) for name, args in parsed[starts[-1]:]]


def first(stage: list[tuple[str, str]], name: str) -> str:
    return next(args for instruction, args in stage if instruction == name)


def image_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    pairs = [pair for instruction, args in stage if instruction == "ENV"
             for pair in shlex.split(args)]
    return dict(pair.split("=", 1) for pair in pairs)


STAGE = instructions(DEPLOY / "Dockerfile")


def test_the_image_runs_relay_serve_as_an_unprivileged_user_on_port_8000():
    names = [instruction for instruction, _ in STAGE]
    user = first(STAGE, "USER")
    assert user not in ("root", "0")
    assert "useradd" in first(STAGE, "RUN") and user in first(STAGE, "RUN").split()
    assert names.index("USER") > max(i for i, name in enumerate(names) if name == "RUN")
    assert json.loads(first(STAGE, "CMD")) == ["relay", "serve"]
    assert first(STAGE, "EXPOSE") == "8000"
    env = image_env(STAGE)
    assert env["RELAY_HOST"] == "0.0.0.0"
    assert not {"RELAY_SECRET", "RELAY_API_KEYS"} & set(env)  # only from the environment
    assert "RELAY_PORT" not in env  # it would hide a platform's PORT


def test_the_health_check_is_the_copied_script_asking_healthz():
    check = first(STAGE, "HEALTHCHECK")
    command = json.loads(check.split("CMD", 1)[1])
    copied = dict(args.split()[::-1] for instruction, args in STAGE
                  if instruction == "COPY" and not args.startswith("--"))
    assert command[0] == "python" and copied[command[1]] == "deploy/healthcheck.py"
    assert "/healthz" in (DEPLOY / "healthcheck.py").read_text()


def test_every_file_the_build_copies_is_in_the_repository():
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    sources = [source for line in text.splitlines() if line.startswith("COPY ")
               and "--from" not in line for source in line.split()[1:-1]]
    assert sources and all((ROOT / source).exists() for source in sources), sources


@pytest.fixture
def image_command(tmp_path) -> Iterator[tuple[list[str], dict[str, str]]]:
    """The image's CMD and environment, for this machine: `relay` is this venv's, and the
    store is a file here instead of the image's volume."""
    relay = shutil.which("relay", path=str(Path(sys.executable).parent))
    assert relay, "the relay command is installed with the package"
    env = {**os.environ, **image_env(STAGE), "RELAY_PORT": str(free_port()),
           "RELAY_STORE": f"sqlite:///{tmp_path}/relay.db"}
    yield [relay, *json.loads(first(STAGE, "CMD"))[1:]], env


def healthy(env: dict[str, str]) -> bool:
    result = subprocess.run([sys.executable, str(DEPLOY / "healthcheck.py")], env=env,
                            capture_output=True, timeout=10)
    return result.returncode == 0


@pytest.mark.slow
def test_the_image_command_serves_with_secrets_from_the_environment_and_passes_its_check(
        image_command, tmp_path):
    command, env = image_command
    assert not healthy(env)  # nothing listens yet: the check fails
    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 2 and "RELAY_SECRET" in refused.stderr  # bound to 0.0.0.0
    with (tmp_path / "relay.log").open("wb") as log:
        process = subprocess.Popen(command, env={**env, **SECRETS}, stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while not healthy(env):
            assert process.poll() is None, (tmp_path / "relay.log").read_text()
            assert time.monotonic() < deadline, "the health check never passed"
            time.sleep(0.1)
        url = f"http://127.0.0.1:{env['RELAY_PORT']}"
        assert httpx.get(f"{url}/v1/jobs").status_code == 401
        keyed = {"authorization": f"Bearer {SECRETS['RELAY_API_KEYS']}"}
        assert httpx.get(f"{url}/v1/jobs", headers=keyed).status_code == 200
    finally:
        process.terminate()
        process.wait(15)


# -- compose ----------------------------------------------------------------------------------

def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())  # type: ignore[no-any-return]


def test_compose_runs_two_relays_on_one_redis_behind_nginx():
    services = compose()["services"]
    assert set(services) == {"redis", "relay1", "relay2", "nginx"}
    for name in ("relay1", "relay2"):
        relay = services[name]
        assert relay["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert relay["depends_on"]["redis"]["condition"] == "service_healthy"
        assert relay["environment"]["RELAY_SECRET"].startswith("${RELAY_SECRET:?")
        assert relay["environment"]["RELAY_API_KEYS"].startswith("${RELAY_API_KEYS:?")
    stores = {services[name]["environment"]["RELAY_STORE"] for name in ("relay1", "relay2")}
    assert len(stores) == 1 and stores.pop().startswith("redis://redis:6379/")
    assert services["nginx"]["depends_on"] == {
        "relay1": {"condition": "service_healthy"}, "relay2": {"condition": "service_healthy"}}
    assert services["nginx"]["ports"] == ["8080:8080"]


def test_compose_uses_the_deploy_redis_and_nginx_configs():
    services = compose()["services"]
    mounts = {volume.split(":")[0] for service in services.values()
              for volume in service.get("volumes", [])}
    assert {"./redis.conf", "./nginx.conf"} <= mounts
    assert all((DEPLOY / mount).exists() for mount in mounts if mount.startswith("./"))
    redis = services["redis"]
    assert redis["command"][:2] == ["redis-server", "/usr/local/etc/redis/redis.conf"]
    assert "./redis.conf:/usr/local/etc/redis/redis.conf:ro" in redis["volumes"]


def test_nginx_in_compose_balances_over_both_relay_containers():
    """Runs the nginx service's own sed over deploy/nginx.conf and reads the result."""
    script = compose()["services"]["nginx"]["command"][2]
    words = shlex.split(script)
    sed = words[words.index("sed"):words.index(">") - 1]
    result = subprocess.run([*sed, str(DEPLOY / "nginx.conf")], capture_output=True,
                            text=True, check=True, timeout=10)
    lines = [line.split("#")[0].strip() for line in result.stdout.splitlines()]
    upstream = lines[lines.index("upstream relay {") + 1:]
    upstream = upstream[:upstream.index("}")]
    servers = {line.split()[1] for line in upstream if line.startswith("server ")}
    assert servers == {"relay1:8000", "relay2:8000"}
    assert "listen 8080;" in lines
    assert first(STAGE, "EXPOSE") == "8000"  # the port the upstreams name
