"""`/readyz` tells the truth: 503 while the store's writes fail, ready again once they work;
a store that cannot be written fails startup with one line."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import uuid

import pytest
import redis

from relay.store import open_store
from tests.support import REDIS, make_settings, redis_url, running_relay

pytestmark = pytest.mark.anyio

BODY = {"id": "full-1", "status": "PROCESSING"}


async def test_readyz_is_503_while_sqlite_writes_fail_and_ready_once_they_work(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'relay.db'}")
    async with running_relay(make_settings(), store=store) as relay:
        assert (await relay.client.get("/readyz")).status_code == 200
        # SQLite itself refuses every write of the store's writer, as a read-only file would.
        await store._db.on_writer(lambda: store._db.writer.execute("PRAGMA query_only = ON"))
        refused = await relay.webhook(BODY)
        assert (refused.status_code, refused.json()["error"]) == (503, "unavailable")
        readyz = await relay.client.get("/readyz")
        assert (readyz.status_code, readyz.json()["error"]) == (503, "unavailable")
        await store._db.on_writer(lambda: store._db.writer.execute("PRAGMA query_only = OFF"))
        assert (await relay.client.get("/readyz")).status_code == 200
        assert (await relay.webhook({"id": "after", "status": "PROCESSING"})).status_code == 202


async def test_readyz_is_503_while_redis_refuses_writes_and_ready_once_it_takes_them():
    url = redis_url()
    admin = redis.Redis.from_url(REDIS)
    user, password = f"relay-test-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"],
                      commands=["+@all"])
    try:
        store = open_store(url.replace("redis://", f"redis://{user}:{password}@"))
        async with running_relay(make_settings(), store=store) as relay:
            assert (await relay.webhook({"id": "after", "status": "PROCESSING"})).status_code == 202
            admin.acl_setuser(user, commands=["-@write", "-evalsha", "-eval"])
            refused = await relay.webhook({**BODY, "status": "COMPLETED"})
            assert refused.status_code == 503
            assert (await relay.client.get("/readyz")).status_code == 503
            admin.acl_setuser(user, commands=["+@all"])
            assert (await relay.client.get("/readyz")).status_code == 200
            assert (await relay.webhook({**BODY, "status": "COMPLETED"})).status_code == 202
    finally:
        admin.acl_deluser(user)
        admin.close()


def test_a_sqlite_file_that_cannot_be_written_fails_startup_with_one_line(tmp_path):
    config = tmp_path / "relay.toml"
    config.write_text(f'[server]\nstore = "sqlite:///{tmp_path / "relay.db"}"\n')
    command = [sys.executable, "-m", "relay", "serve", "--config", str(config), "--port", "0"]
    with sqlite3.connect(tmp_path / "relay.db") as conn:  # a store that exists, then is frozen
        conn.execute("CREATE TABLE t (x)")
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed: no way to make a file unwritable for root")
    frozen = subprocess.run(["chattr", "+i", str(tmp_path / "relay.db")], capture_output=True)
    if frozen.returncode != 0:
        pytest.skip(f"this filesystem cannot make a file immutable: {frozen.stderr!r}")
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    finally:
        subprocess.run(["chattr", "-i", str(tmp_path / "relay.db")], check=True)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("relay: cannot open SQLite database")
    assert "for writing: attempt to write a readonly database" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
