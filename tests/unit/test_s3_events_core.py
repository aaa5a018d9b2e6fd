"""The bridge's pure core: notification parsing, key filter, publish options, event shape, auth."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from email.header import Header
from typing import Any
from urllib.parse import quote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from structlog.testing import capture_logs

from deployments.s3_events import (
    DEFAULT_SUFFIXES,
    EVENT_CREATED,
    Bridge,
    KeyFilter,
    MalformedNotificationError,
    ObjectOptions,
    PublishOptions,
    S3Object,
    authorized,
    build_event,
    check_webhook_secret,
    event_id,
    make_webhook_app,
    options_from_metadata,
    options_from_sidecar,
    own_store_of,
    parse_notification,
    resolve_options,
    sidecar_key,
)
from reelflow.errors import ConfigurationError, InputRejectedError
from reelflow.event_policy import EventPolicy
from reelflow.ingest_options import (
    INGEST_MODES,
    check_account_name,
    check_caption,
    check_mode,
    check_privacy,
    check_publish_at,
)

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def aws_record(
    key: str,
    *,
    bucket: str = "raw-uploads",
    name: str = "ObjectCreated:Put",
    encode: bool = True,
    **obj: Any,
) -> dict[str, Any]:
    """A record as S3 sends it: the key URL-encoded, '+' for spaces."""
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": "2026-11-21T11:59:58.123Z",
        "eventName": name,
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "reelflow",
            "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
            "object": {"key": quote_plus(key, safe="/") if encode else key, **obj},
        },
    }


def body(*records: dict[str, Any]) -> str:
    return json.dumps({"Records": list(records)})


# --- parsing -------------------------------------------------------------------------------


def test_aws_record_is_parsed_and_key_decoded() -> None:
    """An AWS ObjectCreated record gives bucket, decoded key, size, etag, version, sequencer."""
    rec = aws_record(
        "in/my clip+1 é.mp4",
        size=1234,
        eTag='"abc123"',
        versionId="v1",
        sequencer="0062E99A88DC407460",
    )
    [obj] = parse_notification(body(rec))
    assert obj == S3Object(
        bucket="raw-uploads",
        key="in/my clip+1 é.mp4",
        size=1234,
        etag="abc123",
        version_id="v1",
        sequencer="0062E99A88DC407460",
        event_name="ObjectCreated:Put",
        event_time="2026-11-21T11:59:58.123Z",
    )
    assert obj.uri == "s3://raw-uploads/in/my clip+1 é.mp4"


def test_slash_encoded_key_is_decoded() -> None:
    """moto encodes '/' as %2F (AWS does not); both decode to the same key."""
    [obj] = parse_notification(body(aws_record("in%2Fa+b.mp4", encode=False)))
    assert obj.key == "in/a b.mp4"


@given(st.text(min_size=1, max_size=60).filter(lambda k: "\x00" not in k))
def test_any_key_round_trips_through_s3_encoding(key: str) -> None:
    """Whatever the key, decoding S3's form-encoding gives it back unchanged."""
    [obj] = parse_notification(body(aws_record(key)))
    assert obj.key == key


def test_test_event_yields_nothing() -> None:
    """S3's s3:TestEvent (sent when notifications are configured) is not an object."""
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "raw-uploads"}
    assert parse_notification(json.dumps(test_event)) == []


def test_sns_envelope_is_unwrapped() -> None:
    """An SNS-wrapped body (Message is a JSON string) parses like the bare body."""
    inner = body(aws_record("in/a.mp4", size=1, eTag="e"))
    envelope = {"Type": "Notification", "MessageId": "m", "TopicArn": "arn:t", "Message": inner}
    assert parse_notification(json.dumps(envelope)) == parse_notification(inner)
    test_event = json.dumps({"Event": "s3:TestEvent"})
    wrapped_test = {"Type": "Notification", "Message": test_event}
    assert parse_notification(json.dumps(wrapped_test)) == []


def test_minio_webhook_body_is_parsed() -> None:
    """MinIO prefixes event names with s3: and adds top-level EventName/Key."""
    rec = aws_record("in/a b.mp4", name="s3:ObjectCreated:Put", size=5, eTag="e", sequencer="17")
    minio = {"EventName": "s3:ObjectCreated:Put", "Key": "raw-uploads/in/a b.mp4", "Records": [rec]}
    [obj] = parse_notification(json.dumps(minio).encode())
    assert (obj.key, obj.event_name, obj.sequencer) == ("in/a b.mp4", "ObjectCreated:Put", "17")


def test_other_event_kinds_are_dropped() -> None:
    """ObjectRemoved and friends are not new objects."""
    records = [
        aws_record("in/a.mp4", name="ObjectRemoved:Delete"),
        aws_record("in/b.mp4", name="ObjectCreated:CompleteMultipartUpload", size=9),
    ]
    assert [o.key for o in parse_notification(body(*records))] == ["in/b.mp4"]


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b"{}",
        json.dumps({"Records": "x"}),
        json.dumps({"Records": [1]}),
        json.dumps({"Records": [{"eventName": "ObjectCreated:Put"}]}),
        body({**aws_record("k.mp4"), "eventName": None}),
        body(aws_record("k.mp4", size="12")),
        body(aws_record("k.mp4", size=-1)),
        body(aws_record("k.mp4", eTag=5)),
        body(aws_record("", encode=False)),
        json.dumps({"Type": "Notification", "Message": "not json"}),
        json.dumps({"Type": "Notification", "Message": {"Records": []}}),
    ],
)
def test_malformed_bodies_are_validation_errors(raw: bytes | str) -> None:
    """Anything not understood is a MalformedNotificationError (a InputRejectedError), never a crash."""
    with pytest.raises(MalformedNotificationError) as info:
        parse_notification(raw)
    assert isinstance(info.value, InputRejectedError)
    assert info.value.reason == "malformed_notification"


# --- filter --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("in/clip.mp4", None),
        ("in/CLIP.MOV", None),
        ("in/a.WebM", None),
        ("in/obs.MKV", None),
        ("in/clip.json", "sidecar"),
        ("in/clip.JSON", "sidecar"),
        ("in/notes.txt", "suffix"),
        ("in/", "suffix"),
        ("in/clip.mp4.part", "suffix"),
    ],
)
def test_default_filter(key: str, reason: str | None) -> None:
    """Default suffixes .mp4 .mov .webm .mkv, case-insensitive; .json sidecars never pass."""
    assert KeyFilter().rejects(key) == reason


def test_prefix_is_case_sensitive_and_custom_suffixes_replace_defaults() -> None:
    """--prefix matches keys as S3 does (case-sensitive); --suffix replaces the default list."""
    f = KeyFilter(prefix="in/", suffixes=(".MKV",))
    assert f.rejects("in/a.mkv") is None
    assert f.rejects("In/a.mkv") == "prefix"
    assert f.rejects("in/a.mp4") == "suffix"


def test_json_suffix_is_refused() -> None:
    """A filter that would treat sidecars as videos is a configuration error."""
    with pytest.raises(ConfigurationError):
        KeyFilter(suffixes=(".mp4", ".JSON"))
    with pytest.raises(ConfigurationError):
        KeyFilter(suffixes=())


@given(st.text(max_size=30), st.lists(st.sampled_from([".mp4", ".mov", "v", ".x"]), min_size=1))
def test_sidecars_never_pass_any_filter(stem: str, suffixes: list[str]) -> None:
    """Whatever the suffixes, a .json key is never a video."""
    assert KeyFilter(suffixes=tuple(suffixes)).rejects(stem + ".json") is not None


@pytest.mark.parametrize(
    ("video", "sidecar"),
    [("in/clip.mp4", "in/clip.json"), ("a.b.MOV", "a.b.json"), ("clip", "clip.json")],
)
def test_sidecar_key(video: str, sidecar: str) -> None:
    """The sidecar sits next to the video, its extension replaced by .json."""
    assert sidecar_key(video) == sidecar


def test_default_suffixes() -> None:
    assert DEFAULT_SUFFIXES == (".mp4", ".mov", ".webm", ".mkv")


# --- options -------------------------------------------------------------------------------


def test_valid_sidecar() -> None:
    """All five fields, publish_at timezone-aware ISO 8601."""
    raw = json.dumps(
        {
            "account": "acme",
            "caption": "hello 👋",
            "privacy_level": "SELF_ONLY",
            "mode": "inbox",
            "publish_at": "2026-12-01T10:00:00+01:00",
        }
    ).encode()
    opts = resolve_options(metadata={}, sidecar=options_from_sidecar(raw, where="b/in/c.json"))
    assert opts.account == "acme"
    assert opts.mode == "inbox"
    assert opts.publish_at == datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"{not json", "not JSON"),
        (b"\xff", "not UTF-8"),
        (b"[]", "JSON object"),
        (json.dumps({"acount": "x"}).encode(), "acount: Extra inputs are not permitted"),
        (json.dumps({"account": 5}).encode(), "account: Input should be a valid string"),
        (json.dumps({"account": ""}).encode(), "account"),
        (json.dumps({"mode": "publish"}).encode(), "mode: mode 'publish' is not one of direct,"),
        (json.dumps({"privacy_level": "public"}).encode(), "privacy_level"),
        (json.dumps({"publish_at": "2026-12-01T10:00:00"}).encode(), "timezone"),
        (json.dumps({"publish_at": 1795000000}).encode(), "ISO 8601"),
        (json.dumps({"caption": "é" * 2201}).encode(), "UTF-16 units; TikTok allows 2200"),
        (json.dumps({"caption": "👋" * 1101}).encode(), "UTF-16 units; TikTok allows 2200"),
        (b" " * (64 * 1024 + 1), "larger than"),
    ],
)
def test_bad_sidecar_is_a_clear_validation_error(raw: bytes, needle: str) -> None:
    """Not JSON, unknown field, wrong type, bad value: InputRejectedError naming the sidecar."""
    with pytest.raises(InputRejectedError) as info:
        sidecar = options_from_sidecar(raw, where="b/in/c.json")
        resolve_options(metadata={}, sidecar=sidecar, sidecar_name="b/in/c.json")
    assert "sidecar b/in/c.json" in str(info.value)
    assert needle in str(info.value)
    assert info.value.reason == "bad_sidecar"


@pytest.mark.parametrize(
    ("fields", "check"),
    [
        ({"account": ""}, lambda: check_account_name("")),
        ({"account": "two words"}, lambda: check_account_name("two words")),
        ({"mode": "publish"}, lambda: check_mode("publish", INGEST_MODES)),
        ({"privacy_level": "public"}, lambda: check_privacy("public")),
        ({"caption": "é" * 2201}, lambda: check_caption("é" * 2201)),
        (
            {"publish_at": "2026-12-01T10:00:00"},
            lambda: check_publish_at(datetime(2026, 12, 1, 10), NOW),
        ),
    ],
)
def test_sidecar_options_are_refused_by_the_publish_rules(
    fields: dict[str, Any], check: Any
) -> None:
    """Each option is refused by the reelflow.ingest_options rule every entry point runs: the
    rule's reason code in ``rules`` and its own message after the sidecar and field names."""
    with pytest.raises(InputRejectedError) as own:
        check()
    with pytest.raises(InputRejectedError) as info:
        resolve_options(metadata={}, sidecar=fields, sidecar_name="b/in/c.json")
    [name] = fields
    assert info.value.reason == "bad_sidecar"
    assert info.value.context["rules"] == (own.value.reason,)
    assert str(info.value) == f"sidecar b/in/c.json: {name}: {own.value}"


def test_past_publish_at_and_mode_none_pass_the_bridge() -> None:
    """'Not in the past' is the run's check when it starts (an event may wait in a queue), so
    the bridge passes a past publish_at on; mode 'none' (only store) is a valid ingest mode."""
    opts = resolve_options(
        metadata={"mode": "none"}, sidecar={"publish_at": "2020-01-01T00:00:00+00:00"}
    )
    assert (opts.mode, opts.publish_at) == ("none", datetime(2020, 1, 1, tzinfo=UTC))


@given(st.integers(0, 2300), st.integers(0, 1200))
def test_caption_passes_exactly_when_the_publish_rule_passes(bmp: int, emoji: int) -> None:
    """The bridge's caption limit is ingest_options' (2200 UTF-16 units), not a copy of it."""
    caption = "é" * bmp + "👋" * emoji
    try:
        check_caption(caption)
        allowed = True
    except InputRejectedError:
        allowed = False
    try:
        PublishOptions(caption=caption)
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted == allowed


def test_caption_limit_counts_utf16_units() -> None:
    """2200 units is the limit: 1100 emoji (2 units each) fit, 2200 BMP characters fit."""
    assert PublishOptions(caption="👋" * 1100).caption
    assert PublishOptions(caption="é" * 2200).caption


def test_metadata_fields_and_rfc2047_caption() -> None:
    """x-amz-meta-reelflow-* map onto the fields; non-ASCII captions arrive RFC 2047-encoded."""
    caption = "café 👋"
    meta = {
        "reelflow-account": "acme",
        "Reelflow-Caption": Header(caption, "utf-8").encode(),
        "reelflow-privacy": "FOLLOWER_OF_CREATOR",
        "reelflow-mode": "direct",
        "reelflow-publish-at": "2026-12-01T10:00:00Z",
        "other-app": "ignored",
    }
    opts = resolve_options(metadata=options_from_metadata(meta, where="b/k"), sidecar=None)
    assert (opts.account, opts.caption, opts.privacy_level, opts.mode) == (
        "acme",
        caption,
        "FOLLOWER_OF_CREATOR",
        "direct",
    )


def test_unknown_reelflow_metadata_is_rejected() -> None:
    """A typo in a reelflow-* metadata name is an error, not silently ignored."""
    with pytest.raises(InputRejectedError, match="x-amz-meta-reelflow-acount"):
        options_from_metadata({"reelflow-acount": "x"}, where="b/k")


def test_sidecar_wins_over_metadata_field_by_field() -> None:
    """Sidecar fields override metadata; a null sidecar field falls back to metadata."""
    opts = resolve_options(
        metadata={"account": "from-meta", "mode": "inbox", "caption": "meta"},
        sidecar={"account": "from-sidecar", "caption": None},
    )
    assert (opts.account, opts.mode, opts.caption) == ("from-sidecar", "inbox", "meta")


def test_bad_metadata_names_the_object() -> None:
    with pytest.raises(InputRejectedError, match="metadata of b/in/a.mp4: mode") as info:
        resolve_options(metadata={"mode": "loud"}, sidecar=None, object_name="b/in/a.mp4")
    assert info.value.reason == "bad_metadata"


# --- event ---------------------------------------------------------------------------------

OBJ = S3Object(
    bucket="raw-uploads",
    key="in/my clip.mp4",
    size=1234,
    etag="abc",
    version_id="v1",
    sequencer="seq1",
    event_time="2026-11-21T11:59:58.123Z",
)


def test_event_id_rule() -> None:
    """uuid5(URL, s3://bucket/key#version#etag-when-no-version): one id per object version."""
    expected = uuid.uuid5(uuid.NAMESPACE_URL, "s3://raw-uploads/in/my clip.mp4#v1#")
    assert event_id(OBJ) == expected
    no_version = S3Object(bucket="b", key="k.mp4", etag="e", sequencer="s")
    assert event_id(no_version) == uuid.uuid5(uuid.NAMESPACE_URL, "s3://b/k.mp4##e")


def test_resequenced_notification_has_the_same_event_id() -> None:
    """Two notifications differing only in sequencer are the same version: the same id."""
    a = S3Object(bucket="b", key="k.mp4", etag="e", sequencer="0062E99A88DC407460")
    b = S3Object(bucket="b", key="k.mp4", etag="e", sequencer="0062E99A88DC407461")
    assert event_id(a) == event_id(b)
    assert event_id(OBJ) == event_id(S3Object(**{**vars(OBJ), "sequencer": None, "etag": "x"}))


@given(
    st.builds(
        S3Object,
        bucket=st.sampled_from(["b1x", "b2x"]),
        key=st.text(min_size=1, max_size=20),
        version_id=st.none() | st.sampled_from(["v1", "v2"]),
        sequencer=st.none() | st.sampled_from(["s1", "s2"]),
        etag=st.none() | st.sampled_from(["e1", "e2"]),
    ),
    st.builds(
        S3Object,
        bucket=st.sampled_from(["b1x", "b2x"]),
        key=st.text(min_size=1, max_size=20),
        version_id=st.none() | st.sampled_from(["v1", "v2"]),
        sequencer=st.none() | st.sampled_from(["s1", "s2"]),
        etag=st.none() | st.sampled_from(["e1", "e2"]),
    ),
)
def test_event_ids_equal_exactly_for_the_same_version(a: S3Object, b: S3Object) -> None:
    """Same bucket, key and versionId (or, without one, ETag) <=> same id; the sequencer never
    counts."""

    def version(o: S3Object) -> tuple[str, str, str]:
        return (o.bucket, o.key, f"v:{o.version_id}" if o.version_id else f"e:{o.etag or ''}")

    assert (event_id(a) == event_id(b)) == (version(a) == version(b))


def test_event_shape() -> None:
    """Name, string-only resource, the payload the ingest-video trigger maps onto parameters."""
    opts = PublishOptions(
        account="acme", mode="inbox", publish_at=datetime(2026, 12, 1, 9, tzinfo=UTC)
    )
    found = ObjectOptions(options=opts, sidecar_key="in/my clip.json")
    event = build_event(OBJ, found, occurred=NOW)
    assert event["id"] == str(event_id(OBJ))
    assert event["event"] == EVENT_CREATED
    assert event["occurred"] == "2026-11-21T12:00:00+00:00"
    assert event["resource"] == {
        "prefect.resource.id": "reelflow.s3.raw-uploads.in/my clip.mp4",
        "prefect.resource.name": "my clip.mp4",
        "s3.bucket": "raw-uploads",
        "s3.key": "in/my clip.mp4",
    }
    assert all(isinstance(v, str) for v in event["resource"].values())
    assert event["payload"] == {
        "source": "s3://raw-uploads/in/my clip.mp4",
        "bucket": "raw-uploads",
        "key": "in/my clip.mp4",
        "size": 1234,
        "etag": "abc",
        "version_id": "v1",
        "sequencer": "seq1",
        "account": "acme",
        "caption": None,
        "privacy_level": None,
        "mode": "inbox",
        "publish_at": "2026-12-01T09:00:00+00:00",
        "disable_comment": None,
        "disable_duet": None,
        "disable_stitch": None,
        "brand_content_toggle": None,
        "brand_organic_toggle": None,
        "run_name": "ingest-my clip.mp4",
        "sidecar_key": "in/my clip.json",
        "options_error": None,
        "s3_event_name": "ObjectCreated:Put",
        "s3_event_time": "2026-11-21T11:59:58.123Z",
    }
    json.dumps(event)  # JSON-ready as it is


def test_invalid_options_never_publish() -> None:
    """With options_error set, no option is carried and mode is 'none'."""
    found = ObjectOptions(sidecar_key="in/c.json", error="sidecar b/in/c.json: not JSON")
    payload = build_event(OBJ, found, occurred=NOW)["payload"]
    assert payload["options_error"] == "sidecar b/in/c.json: not JSON"
    assert payload["mode"] == "none"
    assert [payload[k] for k in ("account", "caption", "privacy_level", "publish_at")] == [None] * 4


def test_size_falls_back_to_head() -> None:
    """A record without size (some S3-compatible servers) takes it from HEAD."""
    obj = S3Object(bucket="b", key="k.mp4")
    assert build_event(obj, ObjectOptions(size=77), occurred=NOW)["payload"]["size"] == 77


# --- webhook auth --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        ("Bearer s3cret-value", True),
        ("bearer s3cret-value", True),
        ("Bearer   s3cret-value ", True),
        ("s3cret-value", True),
        (None, False),
        ("", False),
        ("Bearer", False),
        ("Bearer ", False),
        ("Bearer wrong", False),
        ("s3cret-valu", False),
        ("Basic s3cret-value", False),
        ("Bearer s3cret-value2", False),
    ],
)
def test_authorized(header: str | None, ok: bool) -> None:
    """Bearer <secret> or the bare secret; nothing else."""
    assert authorized(header, "s3cret-value") is ok


def test_empty_secret_authorizes_nothing() -> None:
    assert not authorized("", "")
    assert not authorized("Bearer ", "")


class NoSink:
    def emit(self, events: list[dict[str, Any]]) -> None:  # pragma: no cover - must not run
        raise AssertionError(events)


class NoS3:
    """Any S3 call fails the test: refused objects are never looked at."""

    def __getattr__(self, name: str) -> Any:  # pragma: no cover - must not run
        raise AssertionError(f"S3 {name} called")


def record(bucket: str, key: str) -> dict[str, Any]:
    return {
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": 10, "eTag": "e"}},
    }


def test_bridge_ignores_objects_reelflow_wrote_to_its_own_store() -> None:
    """Stored videos/metadata under the store prefix never trigger another ingest."""
    assert own_store_of("s3://media-bucket/reelflow") == ("media-bucket", "reelflow")
    assert own_store_of("file:///tmp/x") is None
    bridge = Bridge(
        s3=NoS3(),
        sink=NoSink(),
        key_filter=KeyFilter(),
        policy=EventPolicy.parse("media-bucket"),
        own_store=own_store_of("s3://media-bucket/reelflow"),
    )
    assert bridge.handle(body(record("media-bucket", "reelflow/videos/abc.mp4"))) == []


@pytest.mark.parametrize(
    ("bucket", "key"),
    [
        ("someone-elses-bucket", "in/evil.mp4"),
        ("raw-uploads", "in/../secret/x.mp4"),
        ("raw-uploads", "in/%2E%2E/secret/x.mp4"),
        ("raw-uploads", "in/\x00x.mp4"),
        ("raw-uploads", "in/%00x.mp4"),
        ("raw-uploads", "in/x%0A.mp4"),
        ("raw-uploads", "inbox/x.mp4"),
    ],
)
def test_bridge_refuses_foreign_buckets_and_unsafe_keys(bucket: str, key: str) -> None:
    """Not in REELFLOW_EVENT_BUCKETS, or a '..'/NUL/control key: logged as refused, no S3
    call, no event (the message is then deleted like any handled one)."""
    bridge = Bridge(
        s3=NoS3(),
        sink=NoSink(),
        key_filter=KeyFilter(prefix="in/"),
        policy=EventPolicy.parse("raw-uploads/in"),
    )
    with capture_logs() as logs:
        assert bridge.handle(body(record(bucket, key))) == []
    [refused] = [e for e in logs if e["event"] == "s3_object_refused"]
    assert "\x00" not in refused["key"] and "\n" not in refused["key"]


def test_bridge_without_buckets_refuses_everything() -> None:
    """An empty policy lets no notification through."""
    bridge = Bridge(s3=NoS3(), sink=NoSink(), key_filter=KeyFilter(), policy=EventPolicy())
    assert bridge.handle(body(record("raw-uploads", "in/a.mp4"))) == []


class FakeS3:
    """HEAD and a sidecar, as S3 answers them (an in-memory stand-in for the pure bridge)."""

    def __init__(self, sidecar: bytes | None, etag: str = '"e"') -> None:
        self.sidecar = sidecar
        self.etag = etag

    def head_object(self, **kwargs: Any) -> dict[str, Any]:
        return {"ContentLength": 10, "ETag": self.etag, "Metadata": {}}

    def get_object(self, **kwargs: Any) -> dict[str, Any]:
        import io

        from botocore.exceptions import ClientError

        if self.sidecar is None:
            raise ClientError({"Error": {"Code": "NoSuchKey"}}, "GetObject")
        return {"Body": io.BytesIO(self.sidecar)}


class ListSink:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def emit(self, events: list[dict[str, Any]]) -> None:
        self.events.extend(events)


def test_sidecar_naming_an_account_the_prefix_may_not_use_sets_options_error() -> None:
    """A sidecar choosing 'studio' and PUBLIC_TO_EVERYONE where only 'acme' is allowed: the
    event carries options_error and no options, so the run fails validation, posting nothing."""
    sidecar = json.dumps({"account": "studio", "privacy_level": "PUBLIC_TO_EVERYONE"}).encode()
    sink = ListSink()
    bridge = Bridge(
        s3=FakeS3(sidecar),
        sink=sink,
        key_filter=KeyFilter(),
        policy=EventPolicy.parse("raw-uploads/in", "raw-uploads/in=acme"),
    )
    assert len(bridge.handle(body(record("raw-uploads", "in/evil.mp4")))) == 1
    [payload] = [e["payload"] for e in sink.events]
    assert "account 'studio' is not allowed under raw-uploads/in/" in payload["options_error"]
    assert (payload["account"], payload["privacy_level"], payload["mode"]) == (None, None, "none")

    allowed = ListSink()
    bridge = Bridge(
        s3=FakeS3(json.dumps({"account": "acme"}).encode()),
        sink=allowed,
        key_filter=KeyFilter(),
        policy=EventPolicy.parse("raw-uploads/in", "raw-uploads/in=acme"),
    )
    bridge.handle(body(record("raw-uploads", "in/fine.mp4")))
    assert (
        allowed.events[0]["payload"]["account"],
        allowed.events[0]["payload"]["options_error"],
    ) == (
        "acme",
        None,
    )


def test_record_without_etag_takes_the_version_from_head() -> None:
    """A record that carries no ETag gets HEAD's, so its id still names the object version."""
    sink = ListSink()
    bridge = Bridge(
        s3=FakeS3(None, etag='"from-head"'),
        sink=sink,
        key_filter=KeyFilter(),
        policy=EventPolicy.parse("raw-uploads"),
    )
    rec = record("raw-uploads", "in/a.mp4")
    del rec["s3"]["object"]["eTag"]
    [ident] = bridge.handle(body(rec))
    assert ident == str(event_id(S3Object(bucket="raw-uploads", key="in/a.mp4", etag="from-head")))


@pytest.mark.parametrize("secret", ["", "   ", "x" * 31, " " + "x" * 31 + " "])
def test_short_webhook_secrets_are_refused(secret: str) -> None:
    """A webhook secret under 32 characters is a ConfigurationError before anything listens."""
    with pytest.raises(ConfigurationError, match="REELFLOW_WEBHOOK_SECRET"):
        check_webhook_secret(secret)
    bridge = Bridge(s3=NoS3(), sink=NoSink(), key_filter=KeyFilter(), policy=EventPolicy())
    with pytest.raises(ConfigurationError):
        make_webhook_app(bridge, secret=secret)
    check_webhook_secret("x" * 32)


def test_post_options_from_sidecar_and_metadata() -> None:
    """Sidecar JSON booleans and x-amz-meta-reelflow-disable-comment text give the same options;
    the sidecar wins field by field, and the event payload carries them to the trigger."""
    metadata = options_from_metadata(
        {"reelflow-disable-comment": "true", "reelflow-brand-organic-toggle": "TRUE"},
        where="b/in/c.mp4",
    )
    opts = resolve_options(
        metadata=metadata, sidecar={"disable_comment": False, "brand_content_toggle": True}
    )
    assert (opts.disable_comment, opts.brand_content_toggle, opts.brand_organic_toggle) == (
        False,
        True,
        True,
    )
    assert opts.disable_duet is None
    payload = build_event(OBJ, ObjectOptions(options=opts), occurred=NOW)["payload"]
    assert (payload["disable_comment"], payload["brand_content_toggle"]) == (False, True)


@pytest.mark.parametrize("value", [1, "on", "sure", 0.0])
def test_post_option_must_be_a_boolean_in_a_sidecar(value: Any) -> None:
    """1, "on" or a float is refused, naming the sidecar; never coerced to a boolean."""
    with pytest.raises(InputRejectedError) as info:
        resolve_options(metadata={}, sidecar={"disable_stitch": value}, sidecar_name="b/s.json")
    assert info.value.reason == "bad_sidecar"
    assert "disable_stitch" in str(info.value)
