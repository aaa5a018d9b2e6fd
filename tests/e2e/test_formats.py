"""The formats creators record, end to end: ingest, a gateway upload, and the publish.

Four real ffmpeg clips (tests/support/clips.py): an iPhone-style MOV in H.264 and in HEVC
(QuickTime ``qt  `` brand, ``moov`` after ``mdat``, a landscape picture turned to portrait by its
display matrix), a VP9 + Opus WebM, and an OBS-style Matroska with H.264 + AAC. Each is ingested
by the real flow onto moto's S3 (so ffprobe reads it through the loopback relay's range reads,
``moov`` last and all) and uploaded through a real ``reelflow gateway`` process with tuspy; MOV
and WebM are then posted to the TikTok sandbox over HTTP; Matroska is stored as
``video/x-matroska`` and its publish refused before any call to TikTok (docs/formats.md).

The demuxer rule of issue 8 §1 is checked on the processes themselves: ``ffprobe`` and ``ffmpeg``
on the PATH are wrappers that record their argv and exec the real binaries; every call reelflow
made must name the container's demuxer (``-f mov`` / ``-f matroska``) and a protocol whitelist.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import text
from tusclient import client as tus_client
from typer.testing import CliRunner

from flows.ingest import ingest_video
from flows.publish import publish_media
from reelflow.cli import app
from reelflow.errors import PublishRefusedError
from reelflow.planning import media_id_for
from reelflow.samples import make_clip
from reelflow.settings import Settings
from reelflow.tiktok.sandbox import RunningSandbox
from storage.base import ObjectStore
from storage.catalog import make_engine
from storage.publishing import list_publishes
from storage.runtime import Runtime
from tests.support.catalog_rows import catalog_row
from tests.support.clips import ClipCache, probe, top_level_boxes
from tests.support.files import sha256_file
from tests.support.gateway import GatewayProcess, GatewaySetup
from tests.support.tiktok import add_account
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MIB = 2**20
PART_BYTES = 5 * MIB
TUS_CHUNK_BYTES = 256 * 1024  # several PATCHes even for these small clips
ACCOUNT = "creator"
CAPTION = "formats creators record #reelflow"
# From the last byte: the gateway's child starts an embedded Prefect API, verifies, thumbnails,
# stores, then posts to the sandbox and polls (~30-60 s on 2 loaded cores).
SETTLED_TIMEOUT_S = 240.0
UPLOAD_TERMINAL = {"stored", "failed", "cancelled", "expired"}
PUBLISH_TERMINAL = {"published", "sent_to_inbox", "failed"}
RECORD_SEP, ARG_SEP = "\x1e", "\x1f"


@dataclass(frozen=True)
class Format:
    clip: str  # ClipCache method
    args: tuple[str, ...]
    filename: str
    container: str
    content_type: str
    video_codec: str
    demuxer: str
    postable: bool

    def path(self, clips: ClipCache) -> Path:
        made: Path = getattr(clips, self.clip)(*self.args)
        return made


FORMATS = {
    "mov_h264": Format(
        "iphone_mov", ("h264",), "IMG_0001.MOV", "mov", "video/quicktime", "h264", "mov", True
    ),
    "mov_hevc": Format(
        "iphone_mov", ("hevc",), "IMG_0002.MOV", "mov", "video/quicktime", "h265", "mov", True
    ),
    "webm_vp9": Format(
        "valid_webm_vp9", (), "clip.webm", "webm", "video/webm", "vp9", "matroska", True
    ),
    "mkv_h264": Format(
        "mkv_h264", (), "obs.mkv", "mkv", "video/x-matroska", "h264", "matroska", False
    ),
}
FORMAT_IDS = list(FORMATS)
LONG = {"mov_h264", "mkv_h264"}  # their gateway runs are in `make chaos`


# ----- the ffmpeg spy ---------------------------------------------------------------------------


class ToolSpy:
    """``ffprobe``/``ffmpeg`` wrappers in a directory put first on PATH: each call appends its
    argv to ``log`` and execs the real binary (same arguments, same exit status)."""

    def __init__(self, root: Path) -> None:
        self.bin = root / "spy-bin"
        self.log = root / "ffmpeg-calls.log"
        self.bin.mkdir(parents=True, exist_ok=True)
        for tool in ("ffprobe", "ffmpeg"):
            real = shutil.which(tool)
            assert real is not None, f"{tool} is not installed"
            wrapper = self.bin / tool
            wrapper.write_text(
                "#!/bin/sh\n"
                f"printf '%s\\037' {tool} \"$@\" >> '{self.log}'\n"
                f"printf '\\036' >> '{self.log}'\n"
                f'exec {real} "$@"\n'
            )
            wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)

    def path_env(self) -> str:
        return f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}"

    def calls(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        records = self.log.read_text().split(RECORD_SEP)
        return [r.rstrip(ARG_SEP).split(ARG_SEP) for r in records if r.strip(ARG_SEP)]


def inputs_of(argv: list[str]) -> list[tuple[str, dict[str, str]]]:
    """Each input of an ffmpeg/ffprobe command line with the options given before it."""
    tool, args = argv[0], argv[1:]
    found: list[tuple[str, dict[str, str]]] = []
    opts: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if tool == "ffmpeg" and arg == "-i":
            found.append((args[i + 1], opts))
            opts, i = {}, i + 2
        elif arg.startswith("-") and i + 1 < len(args) and not args[i + 1].startswith("-"):
            opts[arg[1:]] = args[i + 1]
            i += 2
        elif arg.startswith("-"):
            opts[arg[1:]] = ""
            i += 1
        else:  # ffprobe's one positional argument is its input
            if tool == "ffprobe":
                found.append((arg, opts))
            i += 1
    return found


def assert_demuxer_rule(spy: ToolSpy, fmt: Format) -> None:
    """Every input reelflow opened was read with the container's demuxer and a whitelist."""
    calls = spy.calls()
    tools = {argv[0] for argv in calls}
    assert tools == {"ffprobe", "ffmpeg"}, calls  # a probe and a thumbnail, at least
    for argv in calls:
        opened = inputs_of(argv)
        assert opened, argv
        for url, opts in opened:
            assert opts.get("f") == fmt.demuxer, (fmt.container, argv)
            assert opts.get("protocol_whitelist") in ("file", "http,tcp"), argv
            if opts["protocol_whitelist"] == "file":
                assert url.startswith("file:/"), argv
            else:
                assert url.startswith("http://127.0.0.1:"), argv  # the loopback relay only


@pytest.mark.parametrize(
    "argv",
    [
        ["ffprobe", "-show_format", "-of", "json", "file:/x.mkv"],  # ffmpeg guesses the format
        ["ffprobe", "-f", "mov", "-protocol_whitelist", "file", "file:/x.mkv"],  # wrong demuxer
        ["ffprobe", "-f", "matroska", "/x.mkv"],  # no whitelist
        ["ffmpeg", "-f", "matroska", "-protocol_whitelist", "file,http", "-i", "http://h/x"],
        ["ffmpeg", "-f", "matroska", "-protocol_whitelist", "file", "-i", "a", "-i", "b"],
    ],
)
def test_the_demuxer_check_catches_a_guessing_call(tmp_path: Path, argv: list[str]) -> None:
    """The spy's check fails on a call without the container's demuxer or whitelist (so the
    tests above could fail), and passes on the calls reelflow makes."""
    spy = ToolSpy(tmp_path)
    good_probe = ["ffprobe", "-f", "matroska", "-protocol_whitelist", "file", "file:/x.mkv"]
    good_grab = ["ffmpeg", "-f", "matroska", "-protocol_whitelist", "http,tcp", "-ss", "1"]
    good_grab += ["-i", "http://127.0.0.1:9/x.mkv", "-f", "image2", "/tmp/t.jpg", "-y"]
    log = RECORD_SEP.join(ARG_SEP.join(a) + ARG_SEP for a in (good_probe, good_grab))
    spy.log.write_text(log + RECORD_SEP)
    assert_demuxer_rule(spy, FORMATS["mkv_h264"])
    spy.log.write_text(log + RECORD_SEP + ARG_SEP.join(argv) + ARG_SEP + RECORD_SEP)
    with pytest.raises(AssertionError):
        assert_demuxer_rule(spy, FORMATS["mkv_h264"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"container": "mov", "vcodec": "libx265", "faststart": False, "rotate_deg": 90,
         "width": 640, "height": 360, "preset": "ultrafast"},
        {"container": "mkv", "vcodec": "libx264"},
    ],
    ids=["mov_hevc_turned", "mkv_h264"],
)  # fmt: skip
def test_new_sample_clips_are_byte_identical_each_time(
    tmp_path: Path, kwargs: dict[str, Any]
) -> None:
    """HEVC (one x265 pool and frame thread), the rotation pass and Matroska muxing are
    deterministic: the same arguments give the same bytes, so content keys stay stable."""
    first = make_clip(tmp_path / "a", duration_s=1, **kwargs)
    second = make_clip(tmp_path / "b", duration_s=1, **kwargs)
    assert sha256_file(first) == sha256_file(second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no temp file left


# ----- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(params=FORMAT_IDS)
def fmt(request: pytest.FixtureRequest) -> Format:
    return FORMATS[request.param]


@pytest.fixture
def spy(tmp_path: Path) -> ToolSpy:
    return ToolSpy(tmp_path)


def hash_object(store: ObjectStore, key: str) -> str:
    size = store.size(key)
    assert size is not None, f"{key} is not in the store"
    h = hashlib.sha256()
    for start in range(0, size, PART_BYTES):
        h.update(store.read_range(key, start, min(PART_BYTES, size - start)))
    return h.hexdigest()


def thumbnail_size(store: ObjectStore, key: str, tmp: Path) -> tuple[int, int]:
    size = store.size(key)
    assert size, f"no thumbnail at {key}"
    data = store.read_range(key, 0, size)
    assert data[:3] == b"\xff\xd8\xff", "the thumbnail is not a JPEG"
    (tmp / "thumb.jpg").write_bytes(data)
    [video] = probe(tmp / "thumb.jpg")["streams"]
    return int(video["width"]), int(video["height"])


def assert_clip_is_what_it_claims(fmt: Format, clip: Path) -> None:
    """The test input itself: an iPhone-style MOV really has moov last and a qt brand."""
    info = probe(clip)
    [video] = [s for s in info["streams"] if s["codec_type"] == "video"]
    assert video["codec_name"] == {"h265": "hevc"}.get(fmt.video_codec, fmt.video_codec)
    if fmt.container == "mov":
        kinds = [kind for kind, _, _ in top_level_boxes(clip)]
        assert kinds.index("moov") > kinds.index("mdat"), kinds
        assert clip.read_bytes()[8:12] == b"qt  "
        assert (video["width"], video["height"]) == (1280, 720)  # turned by its display matrix
    else:
        assert clip.read_bytes()[:4] == b"\x1a\x45\xdf\xa3"


def assert_stored(rt: Runtime, media: Any, fmt: Format, sha: str, tmp: Path) -> None:
    assert (media["container"], media["content_type"], media["video_codec"]) == (
        fmt.container,
        fmt.content_type,
        fmt.video_codec,
    ), media
    assert (media["width"], media["height"], media["sha256"]) == (720, 1280, sha), media
    # Stored where it was uploaded, never copied: an ingest at videos/<session>.<ext>, a
    # gateway upload where it was received (incoming/<id>/video).
    assert re.fullmatch(
        rf"videos/u_[0-9a-f]{{24}}\.{fmt.container}|incoming/[^/]+/video", media["video_key"]
    ), media
    assert hash_object(rt.store, media["video_key"]) == sha
    width, height = thumbnail_size(rt.store, media["thumbnail_key"], tmp)
    assert width == 640 and height > width, (width, height)  # portrait, as the creator saw it


def sandbox_calls(sandbox: RunningSandbox) -> dict[str, int]:
    calls: dict[str, int] = sandbox.state.stats()["calls"]
    return {route: n for route, n in calls.items() if not route.startswith("POST /v2/oauth")}


# ----- ingest + publish -------------------------------------------------------------------------


def test_ingest_then_publish(
    fmt: Format,
    clips: ClipCache,
    s3_env: str,
    sandbox: RunningSandbox,
    spy: ToolSpy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`ingest-video` stores each format byte for byte under its own label and extension, with
    a portrait thumbnail, reading it only with its demuxer; MOV and WebM then post once to the
    sandbox (those bytes, that content type); Matroska's publish is refused with a typed reason
    before any call to TikTok, leaving no ledger row."""
    clip = fmt.path(clips)
    assert_clip_is_what_it_claims(fmt, clip)
    sha = sha256_file(clip)
    rt = Runtime.from_settings(Settings())
    add_account(rt, sandbox, ACCOUNT)

    with monkeypatch.context() as m:
        m.setenv("PATH", spy.path_env())  # reelflow's ffmpeg calls only: the sandbox's come later
        summary = ingest_video(source=str(clip))
    assert_demuxer_rule(spy, fmt)
    media_id = summary["media_id"]
    media = catalog_row(rt.settings.resolved_database_url, "media", "media_id", media_id)
    assert media is not None, summary
    assert_stored(rt, media, fmt, sha, tmp_path)

    if not fmt.postable:
        before = sandbox_calls(sandbox)
        with pytest.raises(PublishRefusedError) as err:
            publish_media(media_id=media_id, account=ACCOUNT, caption=CAPTION)
        assert err.value.reason == "container_not_postable"
        assert "video/x-matroska" in str(err.value) and "-c copy" in str(err.value)
        assert sandbox_calls(sandbox) == before  # not even creator_info
        assert sandbox.state.stats()["inits"] == 0
        assert list_publishes(rt.catalog.engine, media_id=media_id) == []
        return

    done = publish_media(media_id=media_id, account=ACCOUNT, caption=CAPTION)
    assert (done["status"], done["ledger_status"]) == ("PUBLISH_COMPLETE", "published"), done
    stats = sandbox.state.stats()
    assert (stats["inits"], stats["posts"]) == (1, 1), stats
    post = stats["publishes"][done["publish_id"]]
    assert (post["video_size"], post["sha256"]) == (clip.stat().st_size, sha), post


@pytest.mark.parametrize("name", ["mov_hevc", "mkv_h264"])
def test_cli_ingest_with_account_on_the_local_store(
    name: str,
    clips: ClipCache,
    home: Path,
    sandbox: RunningSandbox,
    spy: ToolSpy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`reelflow ingest CLIP --account` on the local store (ffmpeg reads ``file:`` paths with
    the container's demuxer): an iPhone HEVC MOV is stored and posted once; an .mkv is stored
    as video/x-matroska and the command exits 2 with one `container_not_postable` line, no
    init and no video byte sent to TikTok, and no publish row."""
    fmt = FORMATS[name]
    clip = fmt.path(clips)
    sha = sha256_file(clip)
    rt = Runtime.from_settings(Settings())
    add_account(rt, sandbox, ACCOUNT)
    monkeypatch.setenv("PATH", spy.path_env())  # the sandbox probes with the real ffprobe too
    result = CliRunner().invoke(
        app, ["ingest", str(clip), "--account", ACCOUNT, "--caption", CAPTION, "--json"]
    )
    monkeypatch.setenv("PATH", spy.path_env().split(os.pathsep, 1)[1])
    # The sandbox (TikTok's stand-in, in this process) probes what it received its own way.
    theirs = str(tmp_path / "sandbox")
    ours = [argv for argv in spy.calls() if not any(theirs in arg for arg in argv)]
    spy.log.write_text("".join(ARG_SEP.join(a) + ARG_SEP + RECORD_SEP for a in ours))
    assert_demuxer_rule(spy, fmt)
    whitelists = {o.get("protocol_whitelist") for argv in ours for _, o in inputs_of(argv)}
    assert "file" in whitelists, ours  # the staged object read in place, not over HTTP
    row = catalog_row(rt.settings.resolved_database_url, "media", "media_id", media_id_for(sha))
    assert row is not None, result.output
    assert_stored(rt, row, fmt, sha, tmp_path)
    stats = sandbox.state.stats()
    if fmt.postable:
        assert result.exit_code == 0, result.output
        assert (stats["inits"], stats["posts"]) == (1, 1), stats
        return
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: container_not_postable:"), lines
    assert "video/x-matroska" in lines[0]
    sent = [r for r in sandbox_calls(sandbox) if "/video/init/" in r or r.startswith("PUT")]
    assert stats["inits"] == 0 and sent == [], stats
    assert list_publishes(rt.catalog.engine, media_id=row["media_id"]) == []


# ----- gateway upload + publish -----------------------------------------------------------------


@pytest.fixture
def setup(
    tmp_path: Path, s3_server: Any, bucket: str, sandbox: RunningSandbox, spy: ToolSpy
) -> GatewaySetup:
    """A gateway (and the pipeline child it starts, which inherits this environment, the
    ffmpeg spy included) on moto's S3, a SQLite catalog under the home, the sandbox as TikTok."""
    return GatewaySetup(
        home=tmp_path / "home",
        store_url=f"s3://{bucket}/media",
        s3_endpoint_url=s3_server.endpoint_url,
        extra_env={
            "REELFLOW_GATEWAY_PART_SIZE_BYTES": str(PART_BYTES),
            "REELFLOW_TIKTOK_API_BASE": sandbox.base_url,
            "PATH": spy.path_env(),
        },
    )


@pytest.fixture
def gateway(setup: GatewaySetup) -> Iterator[GatewayProcess]:
    with setup.running("gw") as gw:
        yield gw


def logs(setup: GatewaySetup) -> str:
    return "\n".join(
        f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
        for log in sorted(setup.home.rglob("*.log"))
    )


def publish_rows(db: str, media_id: str) -> list[dict[str, Any]]:
    engine = make_engine(db)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text("SELECT * FROM tiktok_publish WHERE media_id = :m"), {"m": media_id}
            )
            return [dict(row._mapping) for row in rows]
    finally:
        engine.dispose()


# make test sends HEVC MOV and WebM through the gateway; H.264 MOV and Matroska (whose ingest
# tests above run in make test) go in `make chaos`: ~1 min each.
@pytest.mark.parametrize(
    "fmt",
    [
        pytest.param(FORMATS[name], id=name, marks=[pytest.mark.long] if name in LONG else [])
        for name in FORMAT_IDS
    ],
)
def test_gateway_upload_then_publish(
    fmt: Format,
    clips: ClipCache,
    setup: GatewaySetup,
    gateway: GatewayProcess,
    sandbox: RunningSandbox,
    spy: ToolSpy,
    tmp_path: Path,
) -> None:
    """tuspy uploads each format with account metadata in several PATCHes: the gateway's magic
    check takes it, its run stores it under its own label (SHA-256 = the file's) reading it only
    with its demuxer; MOV and WebM end as one sandbox post of those bytes; Matroska stays stored
    and its publish is refused (container_not_postable) with no call to TikTok."""
    clip = fmt.path(clips)
    size, sha = clip.stat().st_size, sha256_file(clip)
    rt = Runtime.from_settings(setup.settings())
    add_account(rt, sandbox, ACCOUNT)
    token = setup.token("creator-formats", accounts=(ACCOUNT,))

    uploader = tus_client.TusClient(
        gateway.uploads_url, headers={"Authorization": f"Bearer {token}"}
    ).uploader(
        file_path=str(clip),
        chunk_size=TUS_CHUNK_BYTES,
        upload_checksum=True,
        metadata={
            "filename": fmt.filename,
            "filetype": fmt.content_type,
            "account": ACCOUNT,
            "caption": CAPTION,
            "privacy_level": "SELF_ONLY",
            "mode": "direct",
        },
    )
    for _ in range(-(-size // TUS_CHUNK_BYTES)):
        uploader.upload_chunk()
    assert uploader.offset == size
    assert uploader.url is not None
    upload_id = urlsplit(uploader.url).path.rstrip("/").rsplit("/", 1)[-1]

    db = setup.settings().resolved_database_url
    deadline = SETTLED_TIMEOUT_S

    def settled_upload() -> dict[str, Any] | None:
        row = catalog_row(db, "gateway_upload", "id", upload_id)
        return row if row is not None and row["state"] in UPLOAD_TERMINAL else None

    row = wait_for(
        settled_upload, f"upload {upload_id} to settle", deadline, 1.0,
        detail=lambda: logs(setup),
    )  # fmt: skip
    assert row["state"] == "stored", f"{row}\n{logs(setup)}"
    media_id = row["media_id"]
    media = catalog_row(db, "media", "media_id", media_id)
    assert media is not None, row
    assert_stored(rt, media, fmt, sha, tmp_path)

    if not fmt.postable:
        wait_for(
            lambda: "container_not_postable" in logs(setup) or None,
            "the publish refusal in the run's log", deadline, 1.0,
            detail=lambda: logs(setup),
        )  # fmt: skip
        # The run asked creator_info before the bytes were judged (privacy is checked first,
        # as for any upload); no init, no video byte was sent.
        sent = [r for r in sandbox_calls(sandbox) if "/video/init/" in r or r.startswith("PUT")]
        assert sandbox.state.stats()["inits"] == 0 and sent == [], sandbox_calls(sandbox)
        assert publish_rows(db, media_id) == []
        assert_demuxer_rule(spy, fmt)
        return

    def settled_publish() -> list[dict[str, Any]] | None:
        rows = publish_rows(db, media_id)
        return rows if rows and all(r["status"] in PUBLISH_TERMINAL for r in rows) else None

    [ledger] = wait_for(
        settled_publish, f"the publish of {media_id}", deadline, 1.0,
        detail=lambda: f"{publish_rows(db, media_id)}\n{logs(setup)}",
    )  # fmt: skip
    assert (ledger["status"], ledger["tiktok_status"]) == ("published", "PUBLISH_COMPLETE"), (
        f"{ledger}\n{logs(setup)}"
    )
    stats = sandbox.state.stats()
    assert stats["posts"] == 1, stats
    post = stats["publishes"][ledger["publish_id"]]
    assert (post["video_size"], post["sha256"], post["title"]) == (size, sha, CAPTION), post
    assert_demuxer_rule(spy, fmt)
