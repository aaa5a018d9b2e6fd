"""Which network addresses a URL source may reach (issue 8 §2): pure rules, no sockets.

A URL source is user input, so a request for it must never be a way into the worker's network:
only ``http``/``https``, and every address its host resolves to must be public. Loopback,
private (RFC 1918, ULA), link-local (cloud metadata at 169.254.169.254), multicast, reserved,
unspecified and other non-global addresses are refused, also when written in an IPv6 form that
embeds an IPv4 address (``::ffff:127.0.0.1``, 6to4, NAT64). ``REELFLOW_SOURCE_ALLOWED_HOSTS``
(``host`` or ``host:port``, comma-separated) lifts the address rule for the hosts it names.

The check runs where the connection is made (``reelflow.safehttp`` connects to exactly the
addresses checked here, so a name that resolves differently on a second lookup cannot slip
through) and again for every redirect hop. Resolution is a function passed in (``Resolver``), so
tests map names to private and link-local addresses without ever connecting to them. This module
must not open sockets itself; ``system_resolver`` is the one default that touches DNS.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from reelflow.errors import SourceRefusedError

ALLOWED_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_REDIRECTS = 5
NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")

Resolver = Callable[[str, int], Sequence[str]]
Allowlist = frozenset[tuple[str, int | None]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the OS resolver), in the order it gives them."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def normalize_host(host: str) -> str:
    """Lower case, no brackets or trailing dot; IP literals in their canonical form."""
    h = host.strip().lower().removeprefix("[").removesuffix("]").rstrip(".")
    try:
        return ipaddress.ip_address(h.split("%", 1)[0]).compressed
    except ValueError:
        return h


def _split_entry(entry: str) -> tuple[str, int | None]:
    entry = entry.strip()
    if entry.startswith("["):  # [v6] or [v6]:port
        host, _, rest = entry[1:].partition("]")
        port = rest.removeprefix(":")
        return normalize_host(host), int(port) if port else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return normalize_host(host), int(port)
    return normalize_host(entry), None  # a name, an IPv4 address or a bare IPv6 address


def parse_allowlist(raw: str | None) -> Allowlist:
    """``"a.example, 127.0.0.1:9000, [::1]:8080"`` → {(host, port or None)}."""
    out: set[tuple[str, int | None]] = set()
    for item in (raw or "").split(","):
        if item.strip():
            try:
                out.add(_split_entry(item))
            except ValueError as exc:
                raise ValueError(f"bad REELFLOW_SOURCE_ALLOWED_HOSTS entry {item!r}") from exc
    return frozenset(out)


def is_allowed_host(host: str, port: int, allowlist: Allowlist) -> bool:
    h = normalize_host(host)
    return (h, None) in allowlist or (h, port) in allowlist


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in NAT64_PREFIX:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_refusal(address: str | IPAddress) -> str | None:
    """Why ``address`` may not be reached from a URL source, or None when it is public."""
    ip = (
        address
        if isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address)
        else ipaddress.ip_address(str(address).split("%", 1)[0])
    )
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None and (why := address_refusal(inner)) is not None:
            return f"{why} (embedded in {ip.compressed})"
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("not globally routable", not ip.is_global),
    )
    return next((name for name, hit in checks if hit), None)


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int


def check_url(url: str) -> Target:
    """The scheme, host and port of an http(s) URL; anything else is refused (no I/O)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise SourceRefusedError("the source URL is malformed", reason="bad_url") from exc
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise SourceRefusedError(
            f"URL scheme {scheme or '(none)'!r} is not allowed for sources (http, https, s3)",
            reason="scheme_refused",
        )
    if not parts.hostname:
        raise SourceRefusedError("the source URL has no host", reason="bad_url")
    if any(ord(c) < 0x21 or c == "\x7f" for c in url):
        raise SourceRefusedError("the source URL contains control characters", reason="bad_url")
    return Target(scheme, normalize_host(parts.hostname), port or DEFAULT_PORTS[scheme])


def check_addresses(
    host: str, port: int, allowlist: Allowlist, resolver: Resolver = system_resolver
) -> list[str]:
    """The addresses to connect to for ``host:port``, each one checked; refuses otherwise.

    Every address the name resolves to must pass, not just the first: which one a connection
    ends up using is not ours to choose after the check.
    """
    h = normalize_host(host)
    try:
        literal: IPAddress | None = ipaddress.ip_address(h)
    except ValueError:
        literal = None
    addresses = [literal.compressed] if literal is not None else list(resolver(h, port))
    if not addresses:
        raise SourceRefusedError(f"{h} does not resolve to any address", reason="unresolvable")
    if is_allowed_host(h, port, allowlist):
        return addresses
    for address in addresses:
        why = address_refusal(address)
        if why is not None:
            shown = h if literal is not None else f"{h} ({address})"
            raise SourceRefusedError(
                f"source host {shown}:{port} is a {why} address; URL sources may only reach "
                "public addresses (or hosts listed in REELFLOW_SOURCE_ALLOWED_HOSTS)",
                reason="address_refused",
            )
    return addresses
