"""The client's network address, as seen through trusted reverse proxies only.

Behind an ingress every connection comes from the ingress, so the TCP peer is the same for every
client: anything keyed by it (a rate limit) becomes global. A proxy says who its client was in
``X-Forwarded-For`` or ``Forwarded`` (RFC 7239), but any client can send those headers too. So the
headers are read only when the TCP peer is a trusted proxy, and only from the right: each trusted
hop appends the address it saw, so the rightmost address that is *not* a trusted proxy is the first
one no trusted party vouches for beyond: the client. Everything left of it may be made up.

Which of the two headers is read is configured, never guessed: a proxy that appends to one of them
passes the other through untouched, so reading the other would let a client choose its address.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from litestar import Request  # noqa: TC002 - resolved at runtime: Litestar reads the provider's signature

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ("ForwardedHeader", "ClientAddressResolver", "parse_forwarded", "parse_x_forwarded_for")

ForwardedHeader: TypeAlias = Literal["x-forwarded-for", "forwarded"]
Network: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network
Address: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

UNKNOWN = "unknown"
"""The address of a connection without a peer (a unix socket, a test transport without one)."""
_MAX_HOPS = 32
"""Hops examined from the right at most: a longer chain is cut, never parsed in full."""


def _address(text: str) -> Address | None:
    """An address from one hop as proxies write it: bare, ``[v6]:port``, ``v4:port``, quoted."""
    value = text.strip().strip('"').strip()
    if value.startswith("["):
        value = value[1 : value.find("]")] if "]" in value else ""
    elif value.count(":") == 1:  # IPv4 with a port; a bare IPv6 address has several colons
        value = value.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def parse_x_forwarded_for(values: Iterable[str]) -> list[Address | None]:
    """The hops of every ``X-Forwarded-For`` header, left to right; None for a hop that is not an address."""
    return [_address(hop) for value in values for hop in value.split(",") if hop.strip()]


def parse_forwarded(values: Iterable[str]) -> list[Address | None]:
    """The ``for=`` of every element of every ``Forwarded`` header, left to right (RFC 7239).

    An element without ``for=``, or with an obfuscated identifier (``for=_hidden``, ``for=unknown``),
    is a hop whose address is None.
    """
    hops: list[Address | None] = []
    for value in values:
        for element in value.split(","):
            if not element.strip():
                continue
            found: Address | None = None
            for pair in element.split(";"):
                name, _, raw = pair.partition("=")
                if name.strip().lower() == "for":
                    found = _address(raw)
            hops.append(found)
    return hops


class ClientAddressResolver:
    """Finds the client's address from the TCP peer and, behind trusted proxies, the forwarding header.

    Args:
        trusted_proxies: CIDRs (or single addresses) of the proxies whose forwarding header is believed.
            Empty: the TCP peer is the client, and forwarding headers are ignored.
        header: Which header the trusted proxies append to.

    Raises:
        ValueError: A trusted proxy entry is not an address or a network.
    """

    def __init__(self, trusted_proxies: Iterable[str] = (), *, header: ForwardedHeader = "x-forwarded-for") -> None:
        self.networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(entry.strip(), strict=False) for entry in trusted_proxies if entry.strip()
        )
        self.header = header
        self._header_bytes = header.encode()

    def is_trusted(self, address: Address | None) -> bool:
        """Whether ``address`` is one of the trusted proxies."""
        return address is not None and any(address in network for network in self.networks)

    def resolve(self, peer: str | None, header_values: Iterable[str]) -> str:
        """The client's address, given the TCP peer and the values of the configured forwarding header.

        Walks from the peer leftwards through the header's hops while each hop is a trusted proxy;
        the first untrusted hop is the client. When every hop is trusted, the leftmost one is. A hop
        that is not an address (``unknown``, an obfuscated name) stops the walk: the trusted proxy
        right of it is then taken as the client, the most specific address anyone vouches for.
        """
        if not peer:
            return UNKNOWN
        current = _address(peer)
        if current is None or not self.is_trusted(current):
            return str(current) if current is not None else peer
        parse = parse_forwarded if self.header == "forwarded" else parse_x_forwarded_for
        hops = parse(header_values)
        for hop in reversed(hops[-_MAX_HOPS:]):
            if hop is None:
                break
            current = hop
            if not self.is_trusted(hop):
                break
        return str(current)

    def of(self, request: Request[Any, Any, Any]) -> str:
        """The client's address of an HTTP request (the ``client_address`` dependency of every service)."""
        return self.of_scope(request.scope)

    def of_scope(self, scope: Any) -> str:
        """The client's address of an ASGI scope."""
        client = scope.get("client")
        peer = client[0] if client else None
        values = (
            [value.decode("latin-1") for name, value in scope.get("headers", ()) if name == self._header_bytes]
            if self.networks
            else []
        )
        return self.resolve(peer, values)
