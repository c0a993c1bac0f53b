"""The SSRF guard refuses every address that is not public, however it is written."""

from __future__ import annotations

import ipaddress

import pytest

from relay.errors import TargetError
from relay.outbound.targets import Guard, address_problem

REFUSED = [
    ("127.0.0.1", "loopback"), ("10.1.2.3", "private"), ("192.168.0.1", "private"),
    ("172.16.0.1", "private"), ("169.254.169.254", "link-local"), ("100.64.0.1", "public"),
    ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast"), ("::1", "loopback"),
    ("fe80::1", "link-local"), ("fd00::1", "private"), ("fec0::1", "site-local"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.0.0.1", "private"),
    ("::7f00:1", "loopback"),  # IPv4-compatible 127.0.0.1
    ("::a9fe:a9fe", "link-local"),  # IPv4-compatible 169.254.169.254
    ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
    ("2002:a9fe:a9fe::1", "link-local"),  # 6to4 of 169.254.169.254
    ("64:ff9b::7f00:1", "loopback"),  # NAT64 of 127.0.0.1
    ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
    ("64:ff9b:1::7f00:1", "NAT64"),  # local-use NAT64 prefix
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "private"),  # Teredo
    ("2001:db8::1", "private"),  # documentation
]
ACCEPTED = ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "2002:808:808::",
            "64:ff9b::808:808", "::ffff:8.8.8.8"]


@pytest.mark.parametrize(("address", "kind"), REFUSED)
def test_a_non_public_address_is_refused_whatever_its_form(address, kind):
    problem = address_problem(ipaddress.ip_address(address))
    assert problem is not None and kind in problem, (address, problem)


@pytest.mark.parametrize("address", ACCEPTED)
def test_a_public_address_passes(address):
    assert address_problem(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize("address", ["2002:7f00:1::", "::7f00:1", "64:ff9b:1::7f00:1",
                                     "fec0::1"])
async def test_the_guard_refuses_a_url_with_such_an_address(address):
    with pytest.raises(TargetError) as refused:
        await Guard(allow_private=False).target(f"http://[{address}]:8080/hook")
    assert refused.value.address == address


pytestmark = pytest.mark.anyio
