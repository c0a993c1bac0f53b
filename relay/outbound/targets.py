"""Where outbound webhooks may go: URL rules and the SSRF guard.

A target is refused when its host is, or resolves to, an address that is not public:
loopback, private (RFC 1918, fc00::/7 such as fd00::/8), link-local (169.254.0.0/16, where
cloud metadata such as 169.254.169.254 lives, and fe80::/10), site-local (fec0::/10), shared
(100.64.0.0/10), multicast, reserved, unspecified, or any other range that is not global
(Teredo, documentation, local-use NAT64), and any IPv6 address carrying a non-public IPv4
one (IPv4-mapped ::ffff:a.b.c.d, IPv4-compatible ::a.b.c.d, 6to4 2002::/16, NAT64
64:ff9b::/96). Every address a name resolves to must pass. The request then goes to the
address that was checked (`Target`: the URL with the address as host, the name kept in `Host`
and in TLS SNI, so certificates are still checked against the name): a DNS answer that
changes between the check and the connect (rebinding) cannot send it elsewhere. Redirects
are not followed. `server.allow_private_targets` turns the guard off.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from relay.errors import TargetError
from relay.limits import URL_LENGTH, URL_PATTERN

RESOLVE_TIMEOUT = 5.0
RESOLVED_FOR = 10.0
MAX_RESOLVED = 1000
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: never global
_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated IPv4-compatible addresses

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Target:
    """What to send a request to: `url`, with these headers and httpx extensions."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    extensions: dict[str, Any] = field(default_factory=dict)


_URL = re.compile(URL_PATTERN)


def url_problem(url: str) -> str | None:
    """Why `url` cannot be a webhook target at all (None: it can)."""
    if len(url) > URL_LENGTH:
        return f"longer than {URL_LENGTH} characters"
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "not a valid URL"
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return "expected an http:// or https:// URL with a host"
    if parsed.userinfo:
        return "credentials in the URL are not allowed; use a signed delivery"
    if not _URL.fullmatch(url):
        return "expected a host name in ASCII (punycode) or an IP address, printable ASCII"
    return None


def address_problem(address: Address) -> str | None:
    """What kind of non-public address this is (None: a public one). An IPv6 address that
    carries an IPv4 one is judged by that IPv4 address too: it can route to it."""
    if address.is_unspecified or address.is_loopback:
        return "an unspecified address" if address.is_unspecified else "a loopback address"
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64_LOCAL:
            return "a local-use NAT64 address"
        embedded = _embedded(address)
        if embedded is not None:
            problem = address_problem(embedded)
            if problem is not None:
                return f"{problem} inside an IPv6 address"
    for kind, test in (("a link-local", address.is_link_local),
                       ("a site-local", isinstance(address, ipaddress.IPv6Address)
                        and address.is_site_local),
                       ("a private", address.is_private),
                       ("a multicast", address.is_multicast)):
        if test:
            return f"{kind} address"
    return None if address.is_global else "not a public address"


def _embedded(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible
    (::a.b.c.d), 6to4 (2002:aabb:ccdd::) or NAT64 (64:ff9b::a.b.c.d) address."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or address in _COMPATIBLE:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


class Guard:
    """Resolves a target and refuses it unless every address is public (or the guard is off).
    A name's addresses are remembered for RESOLVED_FOR seconds: a delivery each to the same
    consumer need not each wait on the resolver (the request still goes to a checked one)."""

    def __init__(self, allow_private: bool) -> None:
        self.allow_private = allow_private
        self._resolved: dict[tuple[str, int], tuple[float, list[Address]]] = {}

    async def target(self, url: str) -> Target:
        """Where to send a request for `url`; TargetError when it is refused or unresolved."""
        if self.allow_private:
            return Target(url)
        parsed = httpx.URL(url)
        addresses = await self._addresses(parsed)
        _check(_host(parsed), addresses)
        return _pinned(parsed, addresses[0])

    async def _addresses(self, url: httpx.URL) -> list[Address]:
        key, now = (_host(url), _port(url)), time.monotonic()
        known = self._resolved.get(key)
        if known is not None and known[0] > now:
            return known[1]
        addresses = await _resolve(url)
        if len(self._resolved) >= MAX_RESOLVED:
            self._resolved.clear()
        self._resolved[key] = (now + RESOLVED_FOR, addresses)
        return addresses

    def check_now(self, url: str) -> None:
        """The same check, blocking, for startup: TargetError for a refused address. A name
        that does not resolve now passes (DNS may be down at boot; every send checks again)."""
        if self.allow_private:
            return
        parsed = httpx.URL(url)
        try:
            infos = socket.getaddrinfo(_host(parsed), _port(parsed), type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            return
        _check(_host(parsed), _addresses(infos))


async def _resolve(url: httpx.URL) -> list[Address]:
    host = _host(url)
    literal = _literal(host)
    if literal is not None:
        return [literal]
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, _port(url), type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, TimeoutError) as exc:
        raise TargetError(f"cannot resolve {host!r}: {exc or 'timed out'}") from None
    addresses = _addresses(infos)
    if not addresses:
        raise TargetError(f"cannot resolve {host!r}: no address")
    return addresses


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _addresses(infos: Iterable[tuple[Any, ...]]) -> list[Address]:
    found = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    return list(dict.fromkeys(found))


def _check(host: str, addresses: list[Address]) -> None:
    for address in addresses:
        problem = address_problem(address)
        if problem is not None:
            shown = host if str(address) == host else f"{host} ({address})"
            raise TargetError(
                f"{shown} is {problem}: the relay does not post to loopback, private, "
                "link-local or metadata addresses unless server.allow_private_targets is true",
                address=str(address))


def _pinned(url: httpx.URL, address: Address) -> Target:
    if str(address) == _host(url):
        return Target(str(url))
    extensions = {"sni_hostname": _host(url)} if url.scheme == "https" else {}
    return Target(str(url.copy_with(host=str(address))), {"Host": url.netloc.decode("ascii")},
                  extensions)


def _host(url: httpx.URL) -> str:
    """The host as DNS and TLS want it: IDNA-encoded, IPv6 without brackets."""
    return url.raw_host.decode("ascii")


def _port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)
