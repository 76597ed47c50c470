"""Server-side request forgery guard: user-supplied URLs may only reach public addresses.

Two checks, one rule (:func:`is_public`):

- :func:`check_url` at submission: the scheme must be http(s) and every address the host
  resolves to must be public, so an obviously internal URL is a 400 at once;
- :func:`guard_connections` while downloading: every name resolution made in this process
  (Python's ``socket.getaddrinfo``, which urllib, requests and yt-dlp all go through for
  each connection, redirect hops included, and IP literals too) must return only public
  addresses, and the connection then goes to the address that was checked, so neither a
  redirect to ``http://169.254.169.254/`` nor a DNS answer that changed since submission
  gets through.

"Public" means globally routable: loopback, private ranges, link-local (cloud metadata
endpoints), carrier-grade NAT, documentation/benchmark nets, multicast and reserved ranges
are refused, in IPv4 and IPv6, including IPv4 addresses wrapped in IPv6 (mapped, NAT64,
6to4, Teredo). ``allowed_networks`` (CIDRs) opens chosen ranges, e.g. an intranet.
No Ray here.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any

from rescored_ray.errors import NonPublicAddress, NonRetryableError

__all__ = ["NonPublicAddress", "check_url", "guard_connections", "is_public", "networks", "unguard_connections"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

NAT64 = ipaddress.ip_network("64:ff9b::/96")
REFUSAL = "resolves to a non-public address"
"""Words every refusal carries: the download stage maps them to a permanent error."""


def networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4, Teredo client), if any."""
    if address.version != 6:
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def is_public(address: Address | str, allowed: tuple[Network, ...] = ()) -> bool:
    """True for globally routable unicast addresses (or ones inside ``allowed``)."""
    address = ipaddress.ip_address(str(address).split("%")[0])
    if any(address in network for network in allowed if network.version == address.version):
        return True
    inner = embedded_ipv4(address)
    if inner is not None:
        return is_public(inner, allowed)
    return address.is_global and not address.is_multicast


def check_url(url: str, allowed: tuple[Network, ...] = (), resolve: Callable[..., Any] = socket.getaddrinfo) -> None:
    """Refuse (NonRetryableError, stage "source") a URL that is not http(s) or whose host
    resolves to a non-public address. An unresolvable host passes: the download then fails
    as a transient error, which is right for a DNS hiccup."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ("http", "https"):
        raise NonRetryableError(f"only http(s) URLs are accepted, not {parts.scheme or 'no scheme'!r}", stage="source")
    host = parts.hostname or ""
    if not host:
        raise NonRetryableError("the URL has no host", stage="source")
    try:
        infos = resolve(host, None)
    except (socket.gaierror, UnicodeError):
        return
    for info in infos:
        if not is_public(info[4][0], allowed):
            raise NonRetryableError(f"URL host {host!r} {REFUSAL} ({info[4][0]})", stage="source")


_lock = threading.Lock()
_original_getaddrinfo = socket.getaddrinfo
_allowed: tuple[Network, ...] | None = None  # None: not installed


def guard_connections(allowed: tuple[Network, ...] = ()) -> None:
    """From now on, in this process, a name resolution that yields a non-public address
    raises :class:`NonPublicAddress` (the connection is never made). Idempotent; the last
    ``allowed`` wins. Install it in processes that fetch user-supplied URLs."""
    global _allowed
    with _lock:
        _allowed = tuple(allowed)
        socket.getaddrinfo = _guarded_getaddrinfo


def unguard_connections() -> None:
    global _allowed
    with _lock:
        _allowed = None
        socket.getaddrinfo = _original_getaddrinfo


def _guarded_getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
    infos = _original_getaddrinfo(host, port, *args, **kwargs)
    allowed = _allowed
    if allowed is not None:
        for info in infos:
            if info[0] in (socket.AF_INET, socket.AF_INET6) and not is_public(str(info[4][0]), allowed):
                raise NonPublicAddress(f"refused: {host!r} {REFUSAL} ({info[4][0]})")
    return infos
