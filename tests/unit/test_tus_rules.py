"""The pure tus 1.0 rules (reelflow.tus): every status code they decide, metadata, checksums."""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reelflow.errors import ConfigurationError
from reelflow.ingest_options import MAX_CAPTION_UTF16_UNITS, PUBLISH_AT_PAST_GRACE
from reelflow.settings import Settings
from reelflow.tus import (
    CHECKSUM_ALGORITHMS,
    CHECKSUM_MISMATCH_STATUS,
    CORS_ALLOW_HEADERS,
    CORS_EXPOSE_HEADERS,
    EXTENSIONS,
    MAX_METADATA_HEADER_BYTES,
    OFFSET_CONTENT_TYPE,
    TUS_VERSION,
    Checksum,
    Concat,
    TusError,
    check_final_creation,
    check_not_expired,
    check_patch,
    check_size,
    check_version,
    check_within_length,
    creation_has_upload,
    effective_method,
    encode_metadata,
    expired,
    head_headers,
    http_date,
    options_headers,
    parse_checksum,
    parse_concat,
    parse_length,
    parse_metadata,
    parse_offset,
    patch_headers,
    patch_length,
    upload_options,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
MIB = 1024 * 1024
SETTINGS = Settings(chunk_size_bytes=8 * MIB, upload_concurrency=4, memory_budget_bytes=512 * MIB)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def refused(status: int, fn: Any, *args: Any, **kwargs: Any) -> TusError:
    with pytest.raises(TusError) as info:
        fn(*args, **kwargs)
    assert info.value.status == status, info.value
    assert "\n" not in str(info.value)
    assert info.value.retryable is False
    return info.value


def patch(**kw: Any) -> int:
    base: dict[str, Any] = {
        "state_offset": 10,
        "state_length": 100,
        "kind": "single",
        "content_type": OFFSET_CONTENT_TYPE,
        "offset_header": "10",
        "body_length": None,
    }
    return check_patch(**(base | kw))


# ----- core ------------------------------------------------------------------------------------


def test_supported_version_passes() -> None:
    """Tus-Resumable: 1.0.0 is accepted on every method."""
    for method in ("POST", "HEAD", "PATCH", "DELETE"):
        check_version("1.0.0", method)


@pytest.mark.parametrize("header", [None, "0.2.2", "1.0", "", "2.0.0"])
def test_other_or_missing_version_is_412_with_tus_version(header: str | None) -> None:
    """A missing or other Tus-Resumable is 412 and names the supported versions."""
    err = refused(412, check_version, header, "PATCH")
    assert err.headers == {"Tus-Version": TUS_VERSION}


def test_options_ignores_the_version_header() -> None:
    """An OPTIONS request's Tus-Resumable is ignored, whatever it says."""
    check_version(None, "OPTIONS")
    check_version("9.9.9", "options")


def test_method_override_is_honoured() -> None:
    """X-HTTP-Method-Override replaces the method (any case); absent or blank keeps it."""
    assert effective_method("POST", "patch") == "PATCH"
    assert effective_method("POST", " DELETE ") == "DELETE"
    assert effective_method("post", None) == "POST"
    assert effective_method("HEAD", "") == "HEAD"


def test_unknown_method_override_is_400() -> None:
    """An override naming a method the endpoint does not serve is 400."""
    refused(400, effective_method, "POST", "TRACE")


def test_options_headers_announce_everything() -> None:
    """OPTIONS announces version, every extension, the max size and the checksum algorithms."""
    headers = options_headers(4096)
    assert headers["Tus-Version"] == "1.0.0"
    assert headers["Tus-Extension"].split(",") == list(EXTENSIONS)
    assert headers["Tus-Max-Size"] == "4096"
    assert set(headers["Tus-Checksum-Algorithm"].split(",")) == {"sha1", "sha256", "md5"}


def test_cors_lists_carry_what_browsers_need() -> None:
    """Browsers may send the checksum (and a status stream's Last-Event-ID) and read
    Location, offsets, metadata and expiry."""
    assert {"Authorization", "Upload-Checksum", "Upload-Concat", "Tus-Resumable"} <= set(
        CORS_ALLOW_HEADERS
    )
    assert "Last-Event-ID" in CORS_ALLOW_HEADERS
    expose = set(CORS_EXPOSE_HEADERS)
    assert {"Location", "Upload-Offset", "Upload-Length", "Upload-Metadata"} <= expose
    assert {"Upload-Expires", "Tus-Version", "Tus-Max-Size", "Tus-Extension"} <= expose


# ----- lengths and offsets ---------------------------------------------------------------------


def test_upload_length_is_parsed() -> None:
    """Upload-Length N within the limit is N; 0 is an empty upload."""
    assert parse_length({"Upload-Length": "100"}, max_size=100) == 100
    assert parse_length({"upload-length": "0"}, max_size=100) == 0


def test_deferred_length_is_none() -> None:
    """Upload-Defer-Length: 1 defers the length (None)."""
    assert parse_length({"Upload-Defer-Length": "1"}, max_size=100) is None


def test_length_over_max_is_413() -> None:
    """A length over the limit is 413, even one too long to parse as a number."""
    refused(413, parse_length, {"Upload-Length": "101"}, max_size=100)
    refused(413, parse_length, {"Upload-Length": "9" * 5000}, max_size=100)
    refused(413, check_size, 2, 1)
    assert check_size(1, 1) == 1


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Upload-Length": "-1"},
        {"Upload-Length": "1e3"},
        {"Upload-Length": "0x10"},
        {"Upload-Length": ""},
        {"Upload-Length": "٣"},  # a digit, but not an ASCII one
        {"Upload-Defer-Length": "0"},
        {"Upload-Defer-Length": "true"},
        {"Upload-Length": "5", "Upload-Defer-Length": "1"},
    ],
)
def test_bad_length_headers_are_400(headers: dict[str, str]) -> None:
    """No length, a non-number, a defer value other than 1, or both headers: 400."""
    refused(400, parse_length, headers, max_size=100)


def test_upload_offset_is_parsed() -> None:
    """Upload-Offset is a non-negative whole number."""
    assert parse_offset("0") == 0
    assert parse_offset("5242880") == 5242880


@pytest.mark.parametrize("header", [None, "", "-5", "abc", "1.5", " "])
def test_bad_upload_offset_is_400(header: str | None) -> None:
    """A missing or malformed Upload-Offset is 400."""
    refused(400, parse_offset, header)


# ----- PATCH -----------------------------------------------------------------------------------


def test_patch_at_the_offset_passes() -> None:
    """A PATCH with the right type, at the upload's offset, within its length returns it."""
    assert patch() == 10
    assert patch(body_length=90) == 10
    assert patch(content_type="Application/Offset+Octet-Stream; x=1") == 10
    assert patch(state_length=None, body_length=10**12) == 10  # deferred: no bound yet


@pytest.mark.parametrize("content_type", [None, "application/octet-stream", "text/plain", ""])
def test_patch_content_type_is_415(content_type: str | None) -> None:
    """A PATCH without Content-Type: application/offset+octet-stream is 415."""
    refused(415, patch, content_type=content_type)


def test_patch_without_offset_is_400() -> None:
    """A PATCH without Upload-Offset is 400."""
    refused(400, patch, offset_header=None)


@pytest.mark.parametrize("offset", ["0", "9", "11", "100"])
def test_patch_at_another_offset_is_409(offset: str) -> None:
    """A PATCH at any offset but the upload's is 409 (nothing changes)."""
    err = refused(409, patch, offset_header=offset)
    assert err.reason == "offset_mismatch"


def test_patch_on_a_final_upload_is_403() -> None:
    """A final (concatenated) upload refuses every PATCH with 403, before the offset check."""
    refused(403, patch, kind="final")
    refused(403, patch, kind="final", offset_header="0")


def test_patch_past_the_length_is_400() -> None:
    """A body that would end past Upload-Length is 400; streaming callers use the same rule."""
    refused(400, patch, body_length=91)
    refused(400, check_within_length, 101, 100)
    check_within_length(100, 100)


def test_content_type_is_checked_before_the_offset() -> None:
    """A PATCH that is wrong twice gets 415 first (tusd's order)."""
    refused(415, patch, content_type="text/plain", offset_header="3", kind="final")


def test_deferred_length_is_declared_once() -> None:
    """A deferred upload takes its length from a PATCH once; then it may only repeat it."""
    assert patch_length(None, state_length=None, state_offset=0, max_size=100) is None
    assert patch_length("50", state_length=None, state_offset=20, max_size=100) == 50
    assert patch_length("50", state_length=50, state_offset=20, max_size=100) == 50
    assert patch_length(None, state_length=50, state_offset=20, max_size=100) == 50
    refused(400, patch_length, "60", state_length=50, state_offset=20, max_size=100)
    refused(400, patch_length, "10", state_length=None, state_offset=20, max_size=100)
    refused(400, patch_length, "x", state_length=None, state_offset=0, max_size=100)
    refused(413, patch_length, "101", state_length=None, state_offset=0, max_size=100)


def test_creation_with_upload_is_recognised_by_content_type() -> None:
    """A creation POST carries bytes only with the offset+octet-stream content type."""
    assert creation_has_upload(OFFSET_CONTENT_TYPE)
    assert not creation_has_upload(None)
    assert not creation_has_upload("application/json")


def test_head_headers() -> None:
    """HEAD says the offset, the length, metadata and expiry as given, and is never cached."""
    at = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    assert head_headers(offset=0, length=10, metadata_header="k YQ==", expires_at=at) == {
        "Cache-Control": "no-store",
        "Upload-Offset": "0",
        "Upload-Length": "10",
        "Upload-Metadata": "k YQ==",
        "Upload-Expires": "Wed, 02 Dec 2026 12:00:00 GMT",
    }


def test_head_of_a_deferred_upload_says_so() -> None:
    """Until its length is known, HEAD carries Upload-Defer-Length: 1 (and the offset)."""
    headers = head_headers(offset=5, length=None)
    assert (headers["Upload-Offset"], headers["Upload-Defer-Length"]) == ("5", "1")
    assert "Upload-Length" not in headers


def test_head_of_an_unfinished_final_has_no_offset() -> None:
    """A final upload whose concatenation is not done echoes Upload-Concat, no offset."""
    headers = head_headers(offset=None, length=None, concat_header="final;/uploads/a")
    assert headers == {"Cache-Control": "no-store", "Upload-Concat": "final;/uploads/a"}


def test_patch_headers_carry_offset_and_expiry() -> None:
    """A 204 PATCH says the new offset and, when the upload expires, when."""
    at = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    assert patch_headers(offset=7, expires_at=None) == {"Upload-Offset": "7"}
    assert patch_headers(offset=7, expires_at=at)["Upload-Expires"] == http_date(at)


# ----- checksum --------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", CHECKSUM_ALGORITHMS)
def test_checksum_matches_hashlib(algorithm: str) -> None:
    """Each algorithm's digest of a body is hashlib's, and matches its own header."""
    body = b"\x00\x01video bytes" * 1000
    expected = hashlib.new(algorithm, body).digest()
    checksum = parse_checksum(f"{algorithm} {base64.b64encode(expected).decode()}")
    assert checksum == Checksum(algorithm, expected)
    hasher = checksum.hasher()
    hasher.update(body[:7])
    hasher.update(body[7:])
    assert hasher.digest() == expected
    assert checksum.matches(hasher.digest())
    checksum.verify(hasher.digest())
    assert parse_checksum(checksum.header()) == checksum


@pytest.mark.parametrize("algorithm", CHECKSUM_ALGORITHMS)
def test_checksum_mismatch_is_460(algorithm: str) -> None:
    """Another body's digest does not match, and verify answers 460."""
    checksum = Checksum(algorithm, hashlib.new(algorithm, b"sent").digest())
    other = hashlib.new(algorithm, b"received").digest()
    assert not checksum.matches(other)
    err = refused(CHECKSUM_MISMATCH_STATUS, checksum.verify, other)
    assert err.reason == "checksum_mismatch"


def test_no_checksum_header_is_none() -> None:
    """Without Upload-Checksum there is nothing to verify."""
    assert parse_checksum(None) is None


@pytest.mark.parametrize(
    "header",
    [
        "crc32 AAAAAA==",
        "SHA1 " + base64.b64encode(hashlib.sha1(b"").digest()).decode(),  # names are lower case
        "sha1",
        "sha1 not*base64",
        "sha1 " + base64.b64encode(b"short").decode(),
        "sha256 " + base64.b64encode(hashlib.sha1(b"").digest()).decode(),
        "",
    ],
)
def test_bad_checksum_header_is_400(header: str) -> None:
    """An unknown algorithm, a digest that is not base64 or of the wrong size: 400."""
    refused(400, parse_checksum, header)


# ----- metadata --------------------------------------------------------------------------------


def test_metadata_is_decoded() -> None:
    """Pairs are split on commas, values base64-decoded as UTF-8; a bare key is None."""
    header = f"filename {b64('clip é.mp4')},caption {b64('')},is_confidential, mode {b64('inbox')}"
    assert parse_metadata(header) == {
        "filename": "clip é.mp4",
        "caption": "",
        "is_confidential": None,
        "mode": "inbox",
    }


def test_missing_metadata_is_empty() -> None:
    """No header or a blank one is no metadata."""
    assert parse_metadata(None) == {}
    assert parse_metadata("  ") == {}


def test_unpadded_base64_is_accepted() -> None:
    """A value whose encoder dropped the padding still decodes."""
    assert parse_metadata("k YQ") == {"k": "a"}


@pytest.mark.parametrize(
    "header",
    [
        f"filename {b64('a')},filename {b64('b')}",  # duplicate key
        "filename not-base64!",
        f"filename {b64('a')} extra",  # a space inside the value
        "k " + base64.b64encode(b"\xff\xfe").decode(),  # not UTF-8
        f"a {b64('x')},,b {b64('y')}",  # an empty pair
        f"k  {b64('x')}",  # two spaces: the value is not base64
        "ké " + b64("x"),  # non-ASCII key
        "k\x01 " + b64("x"),  # control character in a key
        "k Y",  # impossible base64 length
        "k " + "A" * MAX_METADATA_HEADER_BYTES,
    ],
)
def test_malformed_metadata_is_400(header: str) -> None:
    """Duplicates, bad base64, non-UTF-8 values, bad keys, an oversized header: 400."""
    refused(400, parse_metadata, header)


KEY = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=","),
    min_size=1,
    max_size=20,
)
METADATA = st.dictionaries(KEY, st.none() | st.text(max_size=50), max_size=8)
# The first text strategy of a fresh machine builds Hypothesis' Unicode tables (seconds).
RELAXED = settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)


@RELAXED
@given(METADATA)
def test_metadata_round_trips(meta: dict[str, str | None]) -> None:
    """Any keys and values the grammar allows survive encode then parse unchanged."""
    assert parse_metadata(encode_metadata(meta)) == meta


@RELAXED
@given(st.text(max_size=200))
def test_arbitrary_metadata_raises_only_tus_errors(header: str) -> None:
    """Garbage in the header is parsed or refused with a 400, nothing else."""
    try:
        parsed = parse_metadata(header)
    except TusError as exc:
        assert exc.status == 400
    else:
        assert all(isinstance(k, str) and k for k in parsed)


@RELAXED
@given(st.text(max_size=120))
def test_arbitrary_headers_raise_only_tus_errors(header: str) -> None:
    """Garbage in any parsed header is a TusError (400/413/415/403/409), never a crash."""
    for parse in (
        parse_offset,
        parse_checksum,
        parse_concat,
        lambda h: parse_length({"Upload-Length": h}, max_size=10**12),
        lambda h: parse_length({"Upload-Defer-Length": h}, max_size=10**12),
        lambda h: patch(content_type=h),
        lambda h: patch(offset_header=h),
        lambda h: effective_method("POST", h),
        lambda h: check_version(h, "HEAD"),
    ):
        try:
            parse(header)
        except TusError as exc:
            assert 400 <= exc.status < 500


# ----- concatenation ---------------------------------------------------------------------------


def test_partial_concat() -> None:
    """Upload-Concat: partial makes a partial upload; no header, a plain one."""
    assert parse_concat("partial") == Concat("partial")
    assert parse_concat(None) is None


def test_final_concat_lists_ids_from_paths_and_urls() -> None:
    """A final lists its partials by relative path or absolute URL, in order."""
    header = "final;/uploads/aB3_-x http://127.0.0.1:8080/uploads/second https://h/p/uploads/c/"
    assert parse_concat(header) == Concat("final", ("aB3_-x", "second", "c"))


@pytest.mark.parametrize(
    "header",
    [
        "final;",
        "final",
        "final; ",
        "partial;x",
        "whole",
        "final;/files/a",
        "final;/uploads/",
        "final;/uploads/a/b",
        "final;/uploads/a%2Fb",
        "final;/uploads/a /uploads/a",
        "final;http://[::1/uploads/a",
    ],
)
def test_bad_concat_is_400(header: str) -> None:
    """Anything but partial or final with upload URLs of this server, each once: 400."""
    refused(400, parse_concat, header)


def test_final_creation_takes_no_length() -> None:
    """A final upload's length is its partials': sending one is 400."""
    check_final_creation({})
    refused(400, check_final_creation, {"Upload-Length": "5"})
    refused(400, check_final_creation, {"Upload-Defer-Length": "1"})


# ----- expiration ------------------------------------------------------------------------------


def test_http_date_is_rfc9110() -> None:
    """Upload-Expires is an IMF-fixdate in GMT; a naive time is taken as UTC."""
    assert http_date(datetime(2026, 12, 2, 12, 0, 5, tzinfo=UTC)) == "Wed, 02 Dec 2026 12:00:05 GMT"
    assert http_date(datetime(2026, 12, 2, 12, 0, 5)) == "Wed, 02 Dec 2026 12:00:05 GMT"
    east = datetime(2026, 12, 2, 13, 0, 5, tzinfo=UTC).astimezone()
    assert http_date(east) == "Wed, 02 Dec 2026 13:00:05 GMT"


def test_expired_uploads_are_410() -> None:
    """An upload is expired from its expiry on (410); never, without one."""
    at = NOW + timedelta(hours=1)
    assert not expired(at, NOW)
    assert expired(at, at)
    assert not expired(None, NOW)
    assert expired(at.replace(tzinfo=None), at + timedelta(seconds=1))  # SQLite's naive times
    check_not_expired(at, NOW)
    err = refused(410, check_not_expired, at, at)
    assert http_date(at) in str(err)


# ----- options ---------------------------------------------------------------------------------


def opts(meta: dict[str, str | None], accounts: tuple[str, ...] = ("main",)) -> Any:
    return upload_options(meta, allowed_accounts=accounts, settings=SETTINGS, now=NOW)


def test_no_metadata_is_store_only() -> None:
    """Without options the upload is stored and not published."""
    got = opts({})
    assert got.ingest.mode == "none"
    assert got.publish is None
    assert got.filename is None


def test_options_are_checked_and_defaulted() -> None:
    """The options become the CLI's ingest options, defaults applied."""
    later = NOW + timedelta(days=1)
    got = opts(
        {
            "filename": "clip.mp4",
            "filetype": "video/mp4",
            "account": "main",
            "caption": "hello\nworld",
            "privacy_level": "PUBLIC_TO_EVERYONE",
            "publish_at": later.isoformat(),
        }
    )
    assert got.ingest.mode == "direct"
    assert got.publish is not None
    assert (got.publish.account, got.publish.privacy) == ("main", "PUBLIC_TO_EVERYONE")
    assert got.publish.caption == "hello\nworld"
    assert got.ingest.publish_at == later
    assert got.ingest.chunk_size_bytes == 8 * MIB
    assert got.as_json() == {
        "filename": "clip.mp4",
        "filetype": "video/mp4",
        "account": "main",
        "caption": "hello\nworld",
        "privacy_level": "PUBLIC_TO_EVERYONE",
        "mode": None,
        "publish_at": later.isoformat(),
        "disable_comment": None,
        "disable_duet": None,
        "disable_stitch": None,
        "brand_content_toggle": "false",
        "brand_organic_toggle": "false",
    }


def test_post_options_in_metadata_reach_the_publish_request() -> None:
    """The page's "true"/"false" post options become the request's; the recorded metadata
    gives the same options back (the run re-checks them)."""
    got = opts(
        {
            "account": "main",
            "privacy_level": "MUTUAL_FOLLOW_FRIENDS",
            "disable_comment": "true",
            "disable_duet": "false",
            "disable_stitch": "",
            "brand_content_toggle": "true",
            "brand_organic_toggle": "false",
        }
    )
    assert got.publish is not None
    post = got.publish.post
    assert (post.disable_comment, post.disable_duet, post.disable_stitch) == (True, False, None)
    assert (post.brand_content_toggle, post.brand_organic_toggle) == (True, False)
    again = opts({k: v for k, v in got.as_json().items() if v is not None})
    assert again.publish is not None and again.publish.post == post


def test_blank_values_are_absent() -> None:
    """An empty or bare key means the option was not given (browsers send empty filetypes)."""
    got = opts({"filetype": "", "caption": None, "account": " "})
    assert (got.filetype, got.caption, got.account) == (None, None, None)


def test_client_keys_are_ignored() -> None:
    """tus-js-client's and Uppy's own keys (name, type, relativePath...) are ignored."""
    got = opts(
        {"name": "x.mp4", "type": "video/mp4", "relativePath": None, "filetype": "video/mp4"}
    )
    assert got.filetype == "video/mp4"


def test_publish_at_zulu_is_accepted() -> None:
    """publish_at may end in Z."""
    got = opts({"account": "main", "publish_at": "2026-12-02T18:00:00Z"})
    assert got.publish_at == datetime(2026, 12, 2, 18, tzinfo=UTC)


@pytest.mark.parametrize(
    ("meta", "reason"),
    [
        ({"caption": "x" * (MAX_CAPTION_UTF16_UNITS + 1)}, "caption_too_long"),
        ({"privacy_level": "FRIENDS"}, "invalid_privacy"),
        ({"mode": "broadcast", "account": "main"}, "invalid_mode"),
        ({"mode": "direct"}, "no_account"),
        ({"account": "bad name"}, "invalid_account_name"),
        ({"account": "main", "publish_at": "tomorrow"}, "bad_publish_at"),
        ({"account": "main", "publish_at": "2026-12-02T18:00:00"}, "naive_publish_at"),
        (
            {"account": "main", "publish_at": (NOW - PUBLISH_AT_PAST_GRACE * 2).isoformat()},
            "publish_at_in_past",
        ),
        ({"publish_at": "2026-12-02T18:00:00+00:00"}, "no_account"),
        ({"filename": "a\x00b"}, "bad_metadata"),
        ({"filename": "a\nb"}, "bad_metadata"),
        ({"caption": "a\x00b"}, "bad_metadata"),
        ({"filename": "x" * 1025}, "bad_metadata"),
        ({"account": "main", "disable_comment": "yes please"}, "invalid_post_option"),
        ({"account": "main", "brand_content_toggle": "true"}, "branded_content_private"),
        (
            {"account": "main", "mode": "inbox", "disable_duet": "true"},
            "post_options_need_direct",
        ),
        ({"brand_organic_toggle": "true"}, "no_account"),
    ],
)
def test_bad_options_are_400_with_the_cli_reason(meta: dict[str, str], reason: str) -> None:
    """Each option the CLI would refuse is 400, with the same rule's reason, in one line."""
    err = refused(400, opts, meta)
    assert err.reason == reason


def test_account_the_token_does_not_allow_is_403() -> None:
    """An account outside the token's is 403; a token with none may only store."""
    err = refused(403, opts, {"account": "other"})
    assert err.reason == "account_not_allowed"
    refused(403, opts, {"account": "main"}, accounts=())
    assert opts({}, accounts=()).publish is None


def test_invalid_account_is_400_before_403() -> None:
    """A malformed account name is a bad request, whatever the token allows."""
    refused(400, opts, {"account": "no spaces"}, accounts=())


OPTION_VALUES = (
    st.none()
    | st.text(max_size=40)
    | st.sampled_from(
        ["main", "other", "direct", "inbox", "none", "SELF_ONLY", "2026-12-02T18:00:00+00:00"]
    )
)


@RELAXED
@given(
    st.dictionaries(
        st.sampled_from(
            ["filename", "filetype", "account", "caption", "privacy_level", "mode", "publish_at"]
        )
        | st.text(max_size=10),
        OPTION_VALUES,
        max_size=8,
    )
)
def test_arbitrary_options_raise_only_tus_errors(meta: dict[str, str | None]) -> None:
    """Any metadata is checked options, or a 400/403 TusError, never another exception."""
    try:
        got = opts(meta)
    except TusError as exc:
        assert exc.status in (400, 403)
    else:
        assert got.account in (None, "main")


def test_inconsistent_settings_are_the_operators_error() -> None:
    """Defaults that break the memory budget are a ConfigurationError, not a client's 400."""
    tight = Settings(chunk_size_bytes=64 * MIB, upload_concurrency=4, memory_budget_bytes=64 * MIB)
    with pytest.raises(ConfigurationError):
        upload_options({}, allowed_accounts=(), settings=tight, now=NOW)
