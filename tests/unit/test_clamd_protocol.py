"""clamd's INSTREAM framing, reply parsing and URL parsing (pure code, no daemon)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reelflow.clamd import (
    CLAMAV_MAX_SCAN_BYTES,
    ClamdEndpoint,
    check_scannable,
    frames,
    parse_clamd_url,
    parse_scan_reply,
)
from reelflow.cli_errors import exit_code_for
from reelflow.errors import (
    ConfigurationError,
    InfectedError,
    InputRejectedError,
    ScanLimitExceededError,
    ScannerUnavailableError,
    is_retryable,
)


def decode_frames(stream: bytes) -> list[bytes]:
    """Split an INSTREAM body back into its chunks (the inverse of what clamd reads)."""
    out, pos = [], 0
    while pos < len(stream):
        (n,) = struct.unpack(">I", stream[pos : pos + 4])
        out.append(stream[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return out


@given(block=st.binary(max_size=5000), frame_bytes=st.integers(min_value=1, max_value=2048))
def test_frames_round_trip(block: bytes, frame_bytes: int) -> None:
    """Frames are 4-byte big-endian lengths then bytes, never zero-length, and add up to the block."""
    body = b"".join(bytes(p) for p in frames(block, frame_bytes))
    chunks = decode_frames(body)
    assert b"".join(chunks) == block
    assert all(0 < len(c) <= frame_bytes for c in chunks)
    assert len(body) == len(block) + 4 * len(chunks)


def test_empty_block_sends_no_terminator() -> None:
    """An empty block yields no frame, so it can never end the stream early."""
    assert list(frames(b"")) == []


def test_frames_are_views_not_copies() -> None:
    """A frame's payload is a view into the caller's block (memory stays one block)."""
    block = bytearray(b"a" * 10)
    payload = list(frames(block, 4))[1]
    block[0] = ord("z")
    assert bytes(payload)[0] == ord("z")


def test_clean_reply() -> None:
    """``stream: OK`` is a clean verdict."""
    assert parse_scan_reply(b"stream: OK\x00") is None
    assert parse_scan_reply(b"stream: OK") is None


@given(
    sig=st.text(
        alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=80
    ).filter(lambda s: not s.startswith("Heuristics.Limits.Exceeded"))
)
def test_found_reply_returns_signature(sig: str) -> None:
    """``stream: <Signature> FOUND`` returns the signature name as clamd sent it."""
    assert parse_scan_reply(f"stream: {sig} FOUND\x00".encode()) == sig


def test_size_limit_reply_says_raise_stream_max_length() -> None:
    """The size-limit reply is a terminal typed error telling the operator which knob to turn."""
    with pytest.raises(ScanLimitExceededError) as info:
        parse_scan_reply(b"INSTREAM size limit exceeded. ERROR\x00")
    assert info.value.limit == "StreamMaxLength" and "StreamMaxLength" in str(info.value)
    assert not info.value.retryable and exit_code_for(info.value) == 2


@pytest.mark.parametrize("limit", ["MaxFileSize", "MaxScanSize", "MaxScanTime"])
def test_limit_heuristic_is_no_verdict(limit: str) -> None:
    """AlertExceedsMax's ``Heuristics.Limits.Exceeded.*`` means "not scanned whole", not infected."""
    with pytest.raises(ScanLimitExceededError) as info:
        parse_scan_reply(f"stream: Heuristics.Limits.Exceeded.{limit} FOUND\x00".encode())
    assert info.value.limit == limit and limit in str(info.value)


@pytest.mark.parametrize(
    "reply",
    [b"Can't allocate memory ERROR\x00", b"stream: \x00", b"PONG\x00", b"", b"stream: FOUND"],
)
def test_errors_and_garbage_are_retryable(reply: bytes) -> None:
    """An ERROR reply or one reelflow cannot parse is a retryable 'scanner unavailable'."""
    with pytest.raises(ScannerUnavailableError) as info:
        parse_scan_reply(reply)
    assert is_retryable(info.value) and exit_code_for(info.value) == 1


def test_urls() -> None:
    """unix:///abs/path and tcp://host:port (IPv6 too) parse; the path keeps every segment."""
    assert parse_clamd_url("unix:///run/clamav/clamd.ctl") == ClamdEndpoint(
        "unix", path="/run/clamav/clamd.ctl"
    )
    assert parse_clamd_url("tcp://127.0.0.1:3310") == ClamdEndpoint(
        "tcp", host="127.0.0.1", port=3310
    )
    assert parse_clamd_url("tcp://[::1]:3310").host == "::1"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:3310",
        "/run/clamav/clamd.ctl",
        "unix://relative/sock",
        "unix:",
        "tcp://127.0.0.1",
        "tcp://127.0.0.1:notaport",
        "tcp://:3310",
        "tcp://127.0.0.1:3310/path",
    ],
)
def test_bad_urls_are_configuration_errors(url: str) -> None:
    """Anything but unix:///path or tcp://host:port is a configuration error (exit 2)."""
    with pytest.raises(ConfigurationError) as info:
        parse_clamd_url(url)
    assert exit_code_for(info.value) == 2


def test_clamav_size_ceiling() -> None:
    """Objects ClamAV cannot scan whole (over 2 GiB - 3) are refused rather than passed unscanned."""
    check_scannable(CLAMAV_MAX_SCAN_BYTES)
    with pytest.raises(ScanLimitExceededError):
        check_scannable(CLAMAV_MAX_SCAN_BYTES + 1)


def test_infected_is_terminal_validation() -> None:
    """A hit is a terminal validation error: reason infected, exit 2, signature kept."""
    exc = InfectedError("ClamAV found X in the video", signature="X")
    assert isinstance(exc, InputRejectedError)
    assert exc.reason == "infected" and exc.signature == "X" and not exc.retryable
    assert exit_code_for(exc) == 2
