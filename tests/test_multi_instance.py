"""Several relay processes on one Redis behave as one (real processes, real Redis)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.senders import signed
from tests.support import RelayProcess, free_port, gen_config, redis_url, sse

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

DEPLOY = Path(__file__).parent.parent / "deploy"


@pytest.fixture
def two_instances(tmp_path):
    config = gen_config(tmp_path, redis_url())
    instances = [RelayProcess(config, free_port()).start() for _ in range(2)]
    yield instances
    for instance in instances:
        instance.stop()


async def post_updates(url: str, count: int) -> list[str]:
    cursors = []
    async with httpx.AsyncClient(base_url=url) as client:
        for index in range(count):
            status = "COMPLETED" if index == count - 1 else "PROCESSING"
            body, headers = signed({"id": "shared-1", "status": status,
                                    "progress_percent": index})
            response = await client.post("/hooks/gen", content=body, headers=headers)
            assert response.status_code == 202, response.text
            cursors.append(response.json()["cursor"])
    return cursors


async def test_subscribers_on_b_receive_webhooks_posted_to_a_in_order_exactly_once(
        two_instances):
    a, b = two_instances
    async with httpx.AsyncClient(base_url=b.url) as client, \
            sse(client, "/v1/events?topic=provider:gen") as stream:
        cursors = await post_updates(a.url, 6)
        events = await stream.take(6)
        assert [e.id for e in events] == cursors
        assert [e.data["version"] for e in events] == list(range(1, 7))
        assert events[-1].data["state"] == "succeeded"
        with pytest.raises(TimeoutError):
            await stream.next(timeout=0.5)  # nothing twice


async def test_a_last_event_id_from_a_resumes_on_b(two_instances):
    a, b = two_instances
    cursors = await post_updates(a.url, 4)
    async with httpx.AsyncClient(base_url=b.url) as client, \
            sse(client, "/v1/events?topic=provider:gen", last_event_id=cursors[1]) as stream:
        assert [e.id for e in await stream.take(2)] == cursors[2:]


async def test_tokens_and_webhook_urls_from_one_instance_work_on_the_other(two_instances):
    a, b = two_instances
    async with httpx.AsyncClient(base_url=a.url) as client:
        tracked = (await client.post("/v1/jobs", json={"provider": "gen",
                                                       "external_id": "x"})).json()
    async with httpx.AsyncClient(base_url=b.url) as client, \
            sse(client, f"/v1/jobs/{tracked['job']['id']}/events?"
                        f"token={tracked['subscribe_token']}") as stream:
        assert (await stream.next()).data["external_id"] == "x"


def nginx_or_skip() -> str:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        pytest.skip("nginx is not installed (.ci/run installs Debian's nginx-light)")
    return nginx


async def test_sse_passes_through_the_deploy_nginx_config_unbuffered(two_instances, tmp_path):
    nginx = nginx_or_skip()
    a, b = two_instances
    port = free_port()
    conf = (DEPLOY / "nginx.conf").read_text()
    conf = conf.replace("127.0.0.1:8001", f"127.0.0.1:{a.port}")
    conf = conf.replace("127.0.0.1:8002", f"127.0.0.1:{b.port}")
    conf = conf.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    (tmp_path / "tmp").mkdir()
    (tmp_path / "nginx.conf").write_text(conf)
    subprocess.run([nginx, "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path),
                    "-g", "daemon on;"], check=True, timeout=10)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client, \
                sse(client, "/v1/events?topic=provider:gen") as stream:
            for index in range(3):
                started = time.monotonic()
                body, headers = signed({"id": f"through-nginx-{index}", "status": "PENDING"})
                response = await client.post("/hooks/gen", content=body, headers=headers)
                assert response.status_code == 202
                event = await stream.next(timeout=5)
                assert event.data["external_id"] == f"through-nginx-{index}"
                # Buffered, the first event would wait for nginx's buffer to fill: seconds.
                assert time.monotonic() - started < 2
    finally:
        subprocess.run([nginx, "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path),
                        "-s", "quit"], timeout=10)
