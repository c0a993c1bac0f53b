from __future__ import annotations

import pytest

from tests.support import wipe_test_prefixes


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    wipe_test_prefixes()
