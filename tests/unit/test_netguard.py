"""Pure SSRF rules (reelflow.netguard), URL redaction and container sniffing: property tests."""

from __future__ import annotations

import ipaddress
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reelflow import netguard
from reelflow.errors import InputRejectedError, SourceRefusedError
from reelflow.rules import VideoMeta, compare_meta, sniff_container
from reelflow.safehttp import public_url

INTERNAL_V4 = [
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "0.0.0.0/8",
]


@given(st.sampled_from(INTERNAL_V4).flatmap(lambda n: st.ip_addresses(network=n)))
def test_internal_ipv4_and_its_ipv6_forms_are_refused(ip: ipaddress.IPv4Address) -> None:
    """Every internal IPv4 address is refused, also IPv4-mapped, 6to4 and NAT64."""
    assert netguard.address_refusal(ip) is not None
    for v6 in (
        f"::ffff:{ip}",
        f"64:ff9b::{ip}",
        str(ipaddress.IPv6Address((0x2002 << 112) | (int(ip) << 80))),
    ):
        assert netguard.address_refusal(v6) is not None, v6


@given(
    st.sampled_from(["::1/128", "fe80::/10", "fc00::/7", "ff00::/8", "::/128"]).flatmap(
        lambda n: st.ip_addresses(network=n)
    )
)
def test_internal_ipv6_is_refused(ip: ipaddress.IPv6Address) -> None:
    """Loopback, link-local, unique-local, multicast and unspecified IPv6 are refused."""
    assert netguard.address_refusal(ip) is not None


@given(st.ip_addresses(network="8.0.0.0/7"))
def test_public_addresses_pass(ip: ipaddress.IPv4Address) -> None:
    """Ordinary public addresses are reachable."""
    assert netguard.address_refusal(ip) is None


@given(st.integers(1, 65535), st.integers(1, 65535))
def test_allowlist_matches_host_or_exact_host_port(port: int, other: int) -> None:
    """'host' allows every port, 'host:port' only that port."""
    allow = netguard.parse_allowlist(f"minio, 127.0.0.1:{port}, [::1]:{port}")
    assert netguard.is_allowed_host("MINIO.", other, allow)
    assert netguard.is_allowed_host("127.0.0.1", port, allow)
    assert netguard.is_allowed_host("[0:0::1]", port, allow)
    assert netguard.is_allowed_host("127.0.0.1", other, allow) == (other == port)


def test_check_addresses_refuses_if_any_resolved_address_is_internal() -> None:
    """A name resolving to one public and one link-local address is refused (no choice later)."""
    with pytest.raises(SourceRefusedError):
        netguard.check_addresses(
            "x.example", 80, frozenset(), lambda h, p: ["8.8.8.8", "169.254.169.254"]
        )
    assert netguard.check_addresses("x.example", 80, frozenset(), lambda h, p: ["8.8.8.8"]) == [
        "8.8.8.8"
    ]


@given(st.from_regex(r"\A[a-z][a-z0-9+.-]{0,10}\Z"))
def test_only_http_and_https_schemes_pass(scheme: str) -> None:
    """Any scheme but http/https is refused by check_url."""
    url = f"{scheme}://host.example/x"
    if scheme in ("http", "https"):
        assert netguard.check_url(url).host == "host.example"
    else:
        with pytest.raises(SourceRefusedError):
            netguard.check_url(url)


SAFE = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12)


@given(SAFE, SAFE, st.lists(st.tuples(SAFE, SAFE), max_size=4))
def test_public_url_drops_userinfo_and_every_query_value(
    user: str, password: str, query: list[tuple[str, str]]
) -> None:
    """No password and no query value survives; keys and the path do."""
    secret = f"S3CR3T{password}"
    q = "&".join(f"{k}={secret}{v}" for k, v in query)
    shown = public_url(f"https://{user}:{secret}@h.example:8443/p/clip.mp4?{q}")
    assert secret not in shown and "@" not in shown
    assert shown.startswith("https://h.example:8443/p/clip.mp4")
    assert all(f"{k}=REDACTED" in shown for k, _ in query)


def _ebml(doctype: bytes) -> bytes:
    body = b"\x42\x86\x81\x01" + b"\x42\x82" + bytes([0x80 | len(doctype)]) + doctype
    return b"\x1a\x45\xdf\xa3" + bytes([0x80 | len(body)]) + body + b"\x18\x53\x80\x67"


def test_matroska_is_labelled_honestly_and_webm_accepted() -> None:
    """EBML DocType decides: webm → webm; matroska → mkv (never WebM); anything else refused."""
    assert sniff_container(_ebml(b"webm")) == "webm"
    assert sniff_container(_ebml(b"matroska")) == "mkv"
    with pytest.raises(InputRejectedError) as err:
        sniff_container(_ebml(b"mka"))
    assert err.value.reason == "container"


@given(st.binary(max_size=64))
def test_playlists_and_transport_streams_are_never_containers(tail: bytes) -> None:
    """#EXTM3U / ffconcat heads and 0x47-synced 188-byte packets are refused, whatever follows."""
    for head, reason in (
        (b"#EXTM3U\n" + tail, "playlist"),
        (b"\xef\xbb\xbf #EXTM3U" + tail, "playlist"),
        (b"ffconcat version 1.0\n" + tail, "playlist"),
        ((b"\x47" + b"\xff" * 187) * 3 + tail, "container"),
    ):
        with pytest.raises(InputRejectedError) as err:
            sniff_container(head)
        assert err.value.reason == reason


META = VideoMeta("mp4", "video/mp4", 3.0, 720, 1280, 30.0, "h264", 800_000, True, "aac")


@given(st.sampled_from(["width", "height", "video_codec", "has_audio", "container", "duration_s"]))
def test_compare_meta_finds_each_changed_field(name: str) -> None:
    """The same meta compares equal; changing any checked field shows up by name."""
    assert compare_meta(META, META) == []
    changed = {
        "width": 1080,
        "height": 1920,
        "video_codec": "vp9",
        "has_audio": False,
        "container": "mov",
        "duration_s": 9.0,
    }[name]
    diffs = compare_meta(META, replace(META, **{name: changed}))
    assert any(d.startswith(name) for d in diffs)
