"""The client's address: the TCP peer, unless a trusted proxy says otherwise (rightmost untrusted hop)."""

from __future__ import annotations

import pytest

from shared.client_address import ClientAddressResolver, parse_forwarded, parse_x_forwarded_for

INGRESS = ("10.0.0.0/8", "fd00::/8")


def _scope(peer: str | None, headers: list[tuple[str, str]]) -> dict[str, object]:
    return {
        "client": (peer, 50000) if peer is not None else None,
        "headers": [(name.lower().encode(), value.encode("latin-1")) for name, value in headers],
    }


@pytest.mark.parametrize(
    ("peer", "headers", "expected"),
    [
        pytest.param("198.51.100.1", [], "198.51.100.1", id="direct-client"),
        pytest.param("198.51.100.1", [("X-Forwarded-For", "203.0.113.9")], "198.51.100.1", id="untrusted-peer-spoofs"),
        pytest.param("10.0.0.5", [], "10.0.0.5", id="trusted-peer-without-header"),
        pytest.param("10.0.0.5", [("X-Forwarded-For", "203.0.113.9")], "203.0.113.9", id="one-proxy"),
        pytest.param(
            "10.0.0.5", [("X-Forwarded-For", "192.0.2.66, 203.0.113.9")], "203.0.113.9", id="client-prepends-a-lie"
        ),
        pytest.param(
            "10.0.0.5", [("X-Forwarded-For", "192.0.2.66, 203.0.113.9, 10.3.3.3")], "203.0.113.9", id="two-proxies"
        ),
        pytest.param(
            "10.0.0.5",
            [("X-Forwarded-For", "192.0.2.66"), ("X-Forwarded-For", "203.0.113.9")],
            "203.0.113.9",
            id="header-repeated",
        ),
        pytest.param("10.0.0.5", [("X-Forwarded-For", "10.9.9.9, 10.8.8.8")], "10.9.9.9", id="all-trusted-leftmost"),
        pytest.param("10.0.0.5", [("X-Forwarded-For", "unknown")], "10.0.0.5", id="unparseable-hop-stops"),
        pytest.param(
            "10.0.0.5", [("X-Forwarded-For", "203.0.113.9, garbage, 10.1.1.1")], "10.1.1.1", id="garbage-mid-chain"
        ),
        pytest.param("10.0.0.5", [("X-Forwarded-For", "203.0.113.9:4711")], "203.0.113.9", id="v4-with-port"),
        pytest.param("10.0.0.5", [("X-Forwarded-For", "2001:db8::1")], "2001:db8::1", id="v6"),
        pytest.param("10.0.0.5", [("X-Forwarded-For", "[2001:db8::1]:443")], "2001:db8::1", id="v6-bracketed-port"),
        pytest.param("::ffff:10.0.0.5", [("X-Forwarded-For", "203.0.113.9")], "203.0.113.9", id="v4-mapped-peer"),
        pytest.param("fd00::1", [("X-Forwarded-For", "203.0.113.9")], "203.0.113.9", id="v6-proxy"),
        pytest.param(
            "10.0.0.5", [("Forwarded", "for=203.0.113.9")], "10.0.0.5", id="other-header-than-configured-is-ignored"
        ),
        pytest.param(None, [("X-Forwarded-For", "203.0.113.9")], "unknown", id="no-peer"),
    ],
)
def test_x_forwarded_for_is_believed_only_from_trusted_proxies(
    peer: str | None, headers: list[tuple[str, str]], expected: str
) -> None:
    assert ClientAddressResolver(INGRESS).of_scope(_scope(peer, headers)) == expected


def test_without_trusted_proxies_every_header_is_ignored() -> None:
    resolver = ClientAddressResolver()
    scope = _scope("10.0.0.5", [("X-Forwarded-For", "203.0.113.9"), ("Forwarded", "for=203.0.113.9")])
    assert resolver.of_scope(scope) == "10.0.0.5"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("for=203.0.113.9", "203.0.113.9"),
        ('for="[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17"),
        ("for=192.0.2.60;proto=http;by=203.0.113.43", "192.0.2.60"),
        ("for=192.0.2.66, for=203.0.113.9;proto=https", "203.0.113.9"),
        ('For="203.0.113.9:8080"', "203.0.113.9"),
        ("for=_hidden", "10.0.0.5"),
        ("proto=https", "10.0.0.5"),
    ],
)
def test_forwarded_header_when_configured(header: str, expected: str) -> None:
    resolver = ClientAddressResolver(INGRESS, header="forwarded")
    scope = _scope("10.0.0.5", [("Forwarded", header), ("X-Forwarded-For", "192.0.2.200")])
    assert resolver.of_scope(scope) == expected


def test_parsers_keep_one_entry_per_hop() -> None:
    assert [str(hop) for hop in parse_x_forwarded_for(["1.2.3.4, 5.6.7.8", "9.9.9.9"])] == [
        "1.2.3.4",
        "5.6.7.8",
        "9.9.9.9",
    ]
    assert parse_forwarded(["for=unknown, for=1.2.3.4"])[0] is None


def test_a_long_chain_is_not_walked_past_its_last_hops() -> None:
    chain = ", ".join(["10.7.7.7"] * 1000)
    assert ClientAddressResolver(INGRESS).of_scope(_scope("10.0.0.5", [("X-Forwarded-For", chain)])) == "10.7.7.7"


@pytest.mark.parametrize("entry", ["not-a-network", "10.0.0.0/33", "300.1.1.1"])
def test_a_bad_trusted_proxy_entry_is_refused_at_start(entry: str) -> None:
    with pytest.raises(ValueError, match=r".+"):
        ClientAddressResolver([entry])
