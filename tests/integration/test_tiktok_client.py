"""TikTokClient against the project's TikTok sandbox over real HTTP on 127.0.0.1.

Nothing is mocked: the sandbox is a real uvicorn server, clips are real ffmpeg output, and the
sandbox runs ffprobe on what was uploaded. Faults come from the sandbox's admin routes.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from reelflow.tiktok.client import (
    JSON_CONTENT_TYPE,
    SEND_BLOCK_BYTES,
    InitResult,
    PublishStatus,
    TikTokClient,
    TokenSet,
    build_session,
)
from reelflow.tiktok.errors import (
    AccessTokenInvalidError,
    TikTokAuthError,
    TikTokInvalidRequestError,
    TikTokPolicyError,
    TikTokPublishFailedError,
    TikTokRateLimitedError,
    TikTokServerError,
    TikTokTransportError,
    TikTokUploadError,
    UploadOutOfSyncError,
    UploadSessionNotFoundError,
    UploadUrlExpiredError,
)
from reelflow.tiktok.plan import (
    MIN_CHUNK_BYTES,
    TikTokUploadPlan,
    content_range,
    first_unacknowledged_chunk,
    plan_tiktok_upload,
)
from reelflow.tiktok.sandbox import SandboxConfig, start_sandbox
from tests.support.files import sha256_file
from tests.support.waiting import wait_for

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs ffmpeg")

CONFIG = SandboxConfig()
PUBLIC_POST = {"privacy_level": "PUBLIC_TO_EVERYONE", "title": "reelflow test #cat 🎬 @tiktok"}
STATUS_TIMEOUT_S = 30.0


# ----- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid 3 s 720x1280 30 fps H.264 MP4 (a few hundred KB: one whole chunk)."""
    path = tmp_path_factory.mktemp("clips") / "clip.mp4"
    subprocess.run(
        [
            "ffmpeg", "-v", "error", "-y", "-f", "lavfi",
            "-i", "testsrc2=size=720x1280:rate=30", "-t", "3",
            "-c:v", "libx264", "-pix_fmt", "yuv420p", "-f", "mp4", str(path),
        ],
        check=True,
    )  # fmt: skip
    return path


@pytest.fixture(scope="module")
def big_clip(clip: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The clip padded with a trailing top-level ``free`` box to 16,000,123 bytes (3 chunks)."""
    target = 16_000_123
    data = clip.read_bytes()
    pad = target - len(data)
    assert pad > 8
    path = tmp_path_factory.mktemp("clips") / "big.mp4"
    path.write_bytes(data + pad.to_bytes(4, "big") + b"free" + b"\0" * (pad - 8))
    return path


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Any]:
    with start_sandbox(CONFIG, data_dir=tmp_path / "sandbox", host="127.0.0.1", port=0) as sb:
        yield sb


@pytest.fixture
def client(sandbox: Any) -> Iterator[TikTokClient]:
    with TikTokClient(
        sandbox.base_url, client_key=CONFIG.client_key, client_secret=CONFIG.client_secret
    ) as c:
        yield c


def admin(sandbox: Any, route: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = requests.post(f"{sandbox.base_url}/_sandbox/{route}", json=body, timeout=10)
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()
    return result


def stats(sandbox: Any) -> dict[str, Any]:
    resp = requests.get(f"{sandbox.base_url}/_sandbox/stats", timeout=10)
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()
    return result


def account(sandbox: Any, **overrides: Any) -> dict[str, Any]:
    body = {"name": "creator", "privacy": "public", "audited": True}
    body["scopes"] = ["user.info.basic", "video.publish", "video.upload"]
    return admin(sandbox, "accounts", {**body, **overrides})


def open_upload(
    client: TikTokClient, token: str, plan: TikTokUploadPlan, post_info: dict[str, Any] | None
) -> InitResult:
    """Init a FILE_UPLOAD of ``plan``'s sizes: a Direct Post with ``post_info``, or (None) an
    inbox upload."""
    sizes = {
        "video_size": plan.video_size,
        "chunk_size": plan.chunk_size,
        "total_chunk_count": plan.total_chunk_count,
    }
    if post_info is None:
        return client.init_inbox(token, **sizes)
    return client.init_direct_post(token, post_info=post_info, **sizes)


def upload(client: TikTokClient, url: str, path: Path, plan: TikTokUploadPlan) -> list[int]:
    """PUT every chunk from an open file, in order; returns the statuses."""
    statuses = []
    with path.open("rb") as fh:
        for chunk in plan.chunks:
            fh.seek(chunk.first_byte)
            result = client.put_chunk(
                url,
                data=fh,
                first_byte=chunk.first_byte,
                last_byte=chunk.last_byte,
                total=plan.video_size,
                content_type="video/mp4",
            )
            assert result.acknowledged_last_byte == chunk.last_byte
            statuses.append(result.http_status)
    return statuses


def settled_status(client: TikTokClient, token: str, publish_id: str) -> PublishStatus:
    """Poll status/fetch until the publish leaves PROCESSING_*."""

    def settled() -> PublishStatus | None:
        status = client.fetch_status(token, publish_id)
        return None if status.status.startswith("PROCESSING") else status

    return wait_for(settled, f"{publish_id} to leave PROCESSING_*", STATUS_TIMEOUT_S)


# ----- publishing -----------------------------------------------------------------------------


def test_direct_post_of_a_small_clip_end_to_end(
    sandbox: Any, client: TikTokClient, clip: Path
) -> None:
    """creator_info, init, one whole-file PUT (201), then PUBLISH_COMPLETE with string post ids."""
    acct = account(sandbox)
    token = acct["access_token"]
    info = client.creator_info(token)
    assert "PUBLIC_TO_EVERYONE" in info.privacy_level_options
    assert info.max_video_post_duration_sec and info.max_video_post_duration_sec >= 3

    plan = plan_tiktok_upload(clip.stat().st_size)
    assert plan.total_chunk_count == 1 and plan.chunk_size == plan.video_size
    init = open_upload(client, token, plan, PUBLIC_POST)
    assert init.publish_id.startswith("v_pub_file~") and len(init.publish_id) <= 64
    assert "upload_token" not in repr(init)

    assert upload(client, init.upload_url, clip, plan) == [201]
    status = settled_status(client, token, init.publish_id)
    assert status.status == "PUBLISH_COMPLETE", status
    assert status.failure() is None
    assert status.uploaded_bytes == plan.video_size
    assert status.post_ids and all(isinstance(i, str) for i in status.post_ids)
    assert int(status.post_ids[0]) > 2**53  # parsed losslessly

    published = stats(sandbox)["publishes"][init.publish_id]
    assert published["sha256"] == sha256_file(clip)
    assert published["title"] == PUBLIC_POST["title"]  # UTF-8 (emoji) arrived intact


def test_chunked_upload_of_a_file_over_5_mib(
    sandbox: Any, client: TikTokClient, big_clip: Path
) -> None:
    """A 16 MB file in 5 MiB chunks: 206, 206, 201, the bytes intact, then PUBLISH_COMPLETE."""
    token = account(sandbox)["access_token"]
    plan = plan_tiktok_upload(big_clip.stat().st_size, MIN_CHUNK_BYTES)
    assert plan.total_chunk_count == 3
    init = open_upload(client, token, plan, {"privacy_level": "SELF_ONLY"})
    assert upload(client, init.upload_url, big_clip, plan) == [206, 206, 201]
    status = settled_status(client, token, init.publish_id)
    assert status.status == "PUBLISH_COMPLETE", status
    assert status.post_ids == []  # SELF_ONLY posts never become publicly available
    assert stats(sandbox)["publishes"][init.publish_id]["sha256"] == sha256_file(big_clip)


class RecordingFile:
    """A file object that records the size of every read the HTTP stack asks for."""

    def __init__(self, raw: Any) -> None:
        self.raw, self.reads = raw, []

    def read(self, size: int = -1) -> bytes:
        self.reads.append(size)
        return bytes(self.raw.read(size))

    def tell(self) -> int:
        return int(self.raw.tell())

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self.raw.seek(offset, whence))


def test_streamed_chunks_go_out_in_large_blocks(
    sandbox: Any, client: TikTokClient, big_clip: Path
) -> None:
    """A file chunk is read in SEND_BLOCK_BYTES pieces, not urllib3's default 16 KiB."""
    big = _init_big(sandbox, client, big_clip)
    url, plan = big.url, big.plan
    with big_clip.open("rb") as fh:
        for chunk in plan.chunks:
            fh.seek(chunk.first_byte)
            recording = RecordingFile(fh)
            client.put_chunk(
                url,
                data=recording,  # type: ignore[arg-type]
                first_byte=chunk.first_byte,
                last_byte=chunk.last_byte,
                total=plan.video_size,
                content_type="video/mp4",
            )
            # Full blocks, then what is left of the chunk (the reader never reads past it).
            *full, last = recording.reads
            assert set(full) == {SEND_BLOCK_BYTES} and 0 < last <= SEND_BLOCK_BYTES
            assert len(recording.reads) == -(-chunk.length // SEND_BLOCK_BYTES)
    assert stats(sandbox)["publishes"][stats_publish_id(sandbox)]["sha256"] == sha256_file(big_clip)


def test_put_chunk_accepts_bytes(sandbox: Any, client: TikTokClient, big_clip: Path) -> None:
    """Chunks given as bytes upload the same as file objects."""
    token = account(sandbox)["access_token"]
    plan = plan_tiktok_upload(big_clip.stat().st_size, MIN_CHUNK_BYTES)
    init = open_upload(client, token, plan, None)
    data = big_clip.read_bytes()
    results = [
        client.put_chunk(
            init.upload_url,
            data=data[c.first_byte : c.last_byte + 1],
            first_byte=c.first_byte,
            last_byte=c.last_byte,
            total=plan.video_size,
            content_type="video/mp4",
        )
        for c in plan.chunks
    ]
    assert [r.complete for r in results] == [False, False, True]


def test_inbox_upload_reaches_send_to_user_inbox(
    sandbox: Any, client: TikTokClient, clip: Path
) -> None:
    """The inbox flow's practical success state is SEND_TO_USER_INBOX."""
    token = account(sandbox, scopes=["user.info.basic", "video.upload"])["access_token"]
    plan = plan_tiktok_upload(clip.stat().st_size)
    init = open_upload(client, token, plan, None)
    assert init.publish_id.startswith("v_inbox_file~")
    assert upload(client, init.upload_url, clip, plan) == [201]
    assert settled_status(client, token, init.publish_id).status == "SEND_TO_USER_INBOX"


def test_a_non_video_upload_fails_with_a_typed_terminal_reason(
    sandbox: Any, client: TikTokClient, tmp_path: Path
) -> None:
    """Bytes that are not media upload fine and then FAILED: file_format_check_failed."""
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all " * 100)
    token = account(sandbox)["access_token"]
    plan = plan_tiktok_upload(junk.stat().st_size)
    init = open_upload(client, token, plan, PUBLIC_POST)
    upload(client, init.upload_url, junk, plan)
    status = settled_status(client, token, init.publish_id)
    assert status.status == "FAILED" and status.fail_reason == "file_format_check_failed"
    failure = status.failure()
    assert isinstance(failure, TikTokPublishFailedError) and not failure.retryable
    assert failure.publish_id == init.publish_id


def test_wire_headers(sandbox: Any, clip: Path) -> None:
    """JSON calls send Bearer + UTF-8 JSON; PUTs send exact Content-Length/Range, no Authorization.

    The session carries a stray default Authorization header to prove the PUT strips it.
    """
    seen: list[requests.PreparedRequest] = []
    session = build_session()
    session.headers["Authorization"] = "Bearer stray-default"
    session.hooks["response"].append(lambda r, *args, **kwargs: seen.append(r.request))
    client = TikTokClient(
        sandbox.base_url,
        client_key=CONFIG.client_key,
        client_secret=CONFIG.client_secret,
        session=session,
    )
    token = account(sandbox)["access_token"]
    plan = plan_tiktok_upload(clip.stat().st_size)
    init = open_upload(client, token, plan, PUBLIC_POST)
    upload(client, init.upload_url, clip, plan)
    post, put = seen
    assert post.headers["Authorization"] == f"Bearer {token}"
    assert post.headers["Content-Type"] == JSON_CONTENT_TYPE
    assert put.method == "PUT" and put.url == init.upload_url  # used verbatim
    assert "Authorization" not in put.headers
    assert put.headers["Content-Length"] == str(plan.video_size)
    assert put.headers["Content-Range"] == content_range(plan.chunks[0], plan.video_size)
    assert put.headers["Content-Type"] == "video/mp4"
    client.close()
    session.close()


# ----- OAuth ----------------------------------------------------------------------------------


def test_exchange_code_then_refresh(sandbox: Any, client: TikTokClient) -> None:
    """An auth code becomes a TokenSet; refresh gives a working token and honours rotation."""
    acct = account(sandbox)
    tokens = client.exchange_code(acct["auth_code"], CONFIG.redirect_uri)
    assert isinstance(tokens, TokenSet)
    assert tokens.open_id == acct["open_id"]
    assert {"video.publish", "video.upload"} <= tokens.scopes
    assert tokens.expires_in > 0 and tokens.refresh_expires_in > 0
    assert tokens.access_token not in repr(tokens) and tokens.refresh_token not in str(tokens)

    refreshed = client.refresh(tokens.refresh_token)
    assert refreshed.access_token != tokens.access_token
    assert refreshed.refresh_token
    client.creator_info(refreshed.access_token)
    if refreshed.refresh_token != tokens.refresh_token:  # rotated: the old one is dead
        with pytest.raises(TikTokAuthError) as info:
            client.refresh(tokens.refresh_token)
        assert info.value.code == "invalid_grant" and not info.value.retryable
        assert tokens.refresh_token not in str(info.value)


def test_auth_codes_are_single_use_and_bound_to_the_redirect_uri(
    sandbox: Any, client: TikTokClient
) -> None:
    """A reused code or a different redirect_uri is OAuth invalid_grant (terminal)."""
    acct = account(sandbox)
    client.exchange_code(acct["auth_code"], CONFIG.redirect_uri)
    with pytest.raises(TikTokAuthError) as reused:
        client.exchange_code(acct["auth_code"], CONFIG.redirect_uri)
    assert reused.value.code == "invalid_grant"
    assert acct["auth_code"] not in str(reused.value)


def test_oauth_errors_key_on_the_body_even_with_http_200(tmp_path: Path) -> None:
    """With OAuth errors answered 200, the flat body still decides the error."""
    config = SandboxConfig(oauth_error_status=200)
    with start_sandbox(config, data_dir=tmp_path / "sb", host="127.0.0.1", port=0) as sb:
        client = TikTokClient(
            sb.base_url, client_key=config.client_key, client_secret=config.client_secret
        )
        with pytest.raises(TikTokAuthError) as info:
            client.refresh("rft.not-a-real-refresh-token")
        client.close()
    assert info.value.code == "invalid_grant" and info.value.http_status == 200


def test_wrong_client_secret_is_an_auth_error(sandbox: Any) -> None:
    """A bad client secret is refused with OAuth invalid_client; the secret is not quoted."""
    acct = account(sandbox)
    with (
        TikTokClient(
            sandbox.base_url, client_key=CONFIG.client_key, client_secret="wrong-secret-value"
        ) as client,
        pytest.raises(TikTokAuthError) as info,
    ):
        client.exchange_code(acct["auth_code"], CONFIG.redirect_uri)
    assert info.value.code == "invalid_client"
    assert "wrong-secret-value" not in str(info.value)


# ----- error typing ---------------------------------------------------------------------------


def test_bad_token_is_access_token_invalid(sandbox: Any, client: TikTokClient) -> None:
    """An unknown token is AccessTokenInvalidError (refreshable), and the token is not quoted."""
    bogus = "act.ThisTokenDoesNotExist1234567890"
    with pytest.raises(AccessTokenInvalidError) as info:
        client.creator_info(bogus)
    error = info.value
    assert error.refreshable and not error.retryable
    assert error.http_status == 401 and error.log_id
    assert bogus not in str(error)


def test_expired_token_is_refreshed_once(sandbox: Any, client: TikTokClient) -> None:
    """After expiry the call fails with AccessTokenInvalidError; one refresh makes it work again."""
    acct = account(sandbox)
    admin(sandbox, "tokens/expire", {"access_token": acct["access_token"]})
    with pytest.raises(AccessTokenInvalidError):
        client.creator_info(acct["access_token"])
    fresh = client.refresh(acct["refresh_token"])
    assert client.creator_info(fresh.access_token).privacy_level_options


def test_missing_scope_is_scope_not_authorized(
    sandbox: Any, client: TikTokClient, clip: Path
) -> None:
    """A token without video.publish cannot Direct Post (and refreshing would not help)."""
    token = account(sandbox, scopes=["user.info.basic", "video.upload"])["access_token"]
    plan = plan_tiktok_upload(clip.stat().st_size)
    with pytest.raises(TikTokAuthError) as info:
        open_upload(client, token, plan, PUBLIC_POST)
    assert info.value.code == "scope_not_authorized"
    assert not isinstance(info.value, AccessTokenInvalidError)


def test_injected_429_honours_retry_after(sandbox: Any, client: TikTokClient) -> None:
    """A 429 is TikTokRateLimitedError, retryable, with the server's Retry-After."""
    token = account(sandbox)["access_token"]
    admin(sandbox, "faults", {"rate_limit_rate": 1.0, "retry_after_s": 7})
    with pytest.raises(TikTokRateLimitedError) as info:
        client.creator_info(token)
    assert info.value.retryable and info.value.retry_after_s == 7.0
    assert info.value.code == "rate_limit_exceeded"


def test_real_init_rate_limit(sandbox: Any, client: TikTokClient, clip: Path) -> None:
    """The seventh init inside a minute is refused with 429 rate_limit_exceeded."""
    token = account(sandbox)["access_token"]
    plan = plan_tiktok_upload(clip.stat().st_size)
    for _ in range(6):
        open_upload(client, token, plan, PUBLIC_POST)
    with pytest.raises(TikTokRateLimitedError) as info:
        open_upload(client, token, plan, PUBLIC_POST)
    assert info.value.http_status == 429 and info.value.retryable


def test_injected_5xx_is_a_retryable_server_error(sandbox: Any, client: TikTokClient) -> None:
    """A 503 from the API is TikTokServerError, retryable, with TikTok's log id."""
    token = account(sandbox)["access_token"]
    admin(sandbox, "faults", {"error_rate": 1.0, "error_statuses": [503]})
    with pytest.raises(TikTokServerError) as info:
        client.creator_info(token)
    assert info.value.retryable and info.value.http_status == 503 and info.value.log_id


def test_unknown_publish_id_is_invalid_request(sandbox: Any, client: TikTokClient) -> None:
    """status/fetch of an unknown publish_id is 400 invalid_publish_id, terminal."""
    token = account(sandbox)["access_token"]
    with pytest.raises(TikTokInvalidRequestError) as info:
        client.fetch_status(token, "v_pub_file~v2-1.000000000000000000")
    assert info.value.code == "invalid_publish_id" and not info.value.retryable


def test_an_invalid_chunk_plan_is_invalid_params(sandbox: Any, client: TikTokClient) -> None:
    """The classic mistake (ceil instead of floor for the count) is refused at init."""
    token = account(sandbox)["access_token"]
    with pytest.raises(TikTokInvalidRequestError) as info:
        client.init_direct_post(
            token,
            post_info=PUBLIC_POST,
            video_size=50_000_123,
            chunk_size=10_000_000,
            total_chunk_count=6,
        )
    assert info.value.code == "invalid_params" and info.value.http_status == 400
    assert "chunk count" in str(info.value)


def test_policy_refusals_are_terminal(sandbox: Any, client: TikTokClient, clip: Path) -> None:
    """Unaudited client on a public account, and a privacy level not offered: 403 policy."""
    plan = plan_tiktok_upload(clip.stat().st_size)
    unaudited = account(sandbox, audited=False)["access_token"]
    with pytest.raises(TikTokPolicyError) as info:
        open_upload(client, unaudited, plan, {"privacy_level": "SELF_ONLY"})
    assert info.value.code == "unaudited_client_can_only_post_to_private_accounts"
    assert info.value.http_status == 403 and not info.value.retryable

    token = account(sandbox)["access_token"]
    with pytest.raises(TikTokPolicyError) as info:
        open_upload(client, token, plan, {"privacy_level": "FOLLOWER_OF_CREATOR"})
    assert info.value.code == "privacy_level_option_mismatch"


def test_creator_info_spam_refusal_arrives_with_http_200(
    sandbox: Any, client: TikTokClient
) -> None:
    """creator_info's spam codes come back as HTTP 200 and are still TikTokPolicyError."""
    acct = account(sandbox)
    admin(sandbox, f"accounts/{acct['open_id']}/policy", {"spam_risk_too_many_posts": True})
    with pytest.raises(TikTokPolicyError) as info:
        client.creator_info(acct["access_token"])
    assert info.value.code == "spam_risk_too_many_posts" and info.value.http_status == 200


# ----- upload errors --------------------------------------------------------------------------


@dataclass(frozen=True)
class BigUpload:
    """A fresh Direct Post session of ``big_clip`` in minimum-size chunks, ready to PUT."""

    client: TikTokClient
    token: str
    url: str
    plan: TikTokUploadPlan
    data: bytes

    def put(self, index: int, url: str | None = None) -> Any:
        c = self.plan.chunks[index]
        return self.client.put_chunk(
            url or self.url,
            data=self.data[c.first_byte : c.last_byte + 1],
            first_byte=c.first_byte,
            last_byte=c.last_byte,
            total=self.plan.video_size,
            content_type="video/mp4",
        )


def _init_big(sandbox: Any, client: TikTokClient, path: Path) -> BigUpload:
    token = account(sandbox)["access_token"]
    plan = plan_tiktok_upload(path.stat().st_size, MIN_CHUNK_BYTES)
    init = open_upload(client, token, plan, {"privacy_level": "SELF_ONLY"})
    return BigUpload(client, token, init.upload_url, plan, path.read_bytes())


def test_out_of_order_put_is_416_with_the_acknowledged_range(
    sandbox: Any, client: TikTokClient, big_clip: Path
) -> None:
    """Resending chunk 0 or skipping to chunk 2 is UploadOutOfSyncError; its range says resume at 1."""
    big = _init_big(sandbox, client, big_clip)
    assert big.put(0).http_status == 206
    for index in (0, 2):
        with pytest.raises(UploadOutOfSyncError) as info:
            big.put(index)
        error = info.value
        assert error.http_status == 416 and error.retryable
        assert error.acknowledged_last_byte == big.plan.chunks[0].last_byte
        assert error.next_byte == big.plan.chunks[1].first_byte
        assert "upload_token" not in str(error)
    # Reconcile as a resumed run would: TikTok's count picks the chunk to send next.
    uploaded = client.fetch_status(big.token, stats_publish_id(sandbox)).uploaded_bytes
    assert uploaded is not None
    resume = first_unacknowledged_chunk(big.plan, uploaded)
    assert resume == 1
    assert [big.put(i).http_status for i in (1, 2)] == [206, 201]


def stats_publish_id(sandbox: Any) -> str:
    (publish_id,) = stats(sandbox)["publishes"]
    return str(publish_id)


def test_expired_upload_url_is_upload_url_expired(
    sandbox: Any, client: TikTokClient, big_clip: Path
) -> None:
    """A PUT after the URL's hour is 403 UploadUrlExpiredError, terminal, and does not quote the URL."""
    big = _init_big(sandbox, client, big_clip)
    admin(sandbox, "clock/advance", {"seconds": 3601})
    with pytest.raises(UploadUrlExpiredError) as info:
        big.put(0)
    assert info.value.http_status == 403 and not info.value.retryable
    assert big.url.split("upload_token=")[1] not in str(info.value)


def test_unknown_upload_url_is_404(sandbox: Any, client: TikTokClient, big_clip: Path) -> None:
    """A URL whose token does not match any session is UploadSessionNotFoundError."""
    big = _init_big(sandbox, client, big_clip)
    with pytest.raises(UploadSessionNotFoundError):
        big.put(0, url=big.url + "tampered")


def test_put_5xx_is_retryable(sandbox: Any, client: TikTokClient, big_clip: Path) -> None:
    """An injected 502 on a PUT is a retryable TikTokUploadError; the retry then succeeds."""
    big = _init_big(sandbox, client, big_clip)
    admin(sandbox, "faults", {"error_rate": 1.0, "error_statuses": [502], "targets": ["upload"]})
    with pytest.raises(TikTokUploadError) as info:
        big.put(0)
    assert info.value.http_status == 502 and info.value.retryable
    admin(sandbox, "faults", {"error_rate": 0.0})
    assert big.put(0).http_status == 206


def test_dropped_connection_is_a_transport_error_without_secrets(
    sandbox: Any, client: TikTokClient, big_clip: Path
) -> None:
    """A PUT whose connection is cut is TikTokTransportError; no upload token leaks, even chained."""
    big = _init_big(sandbox, client, big_clip)
    admin(sandbox, "faults", {"drop_rate": 1.0})
    with pytest.raises(TikTokTransportError) as info:
        big.put(0)
    error = info.value
    assert error.retryable and error.http_status is None
    secret = big.url.split("upload_token=")[1]
    assert secret not in str(error)
    assert error.__cause__ is None and error.__context__ is None
    admin(sandbox, "faults", {"drop_rate": 0.0})
    assert big.put(0).http_status == 206  # nothing partial was kept


def test_connection_refused_is_a_transport_error() -> None:
    """No server at all: TikTokTransportError (retryable) after urllib3's connect retries."""
    with socket_port() as port:
        pass  # the port is free again: nothing listens on it
    with (
        TikTokClient(
            f"http://127.0.0.1:{port}", client_key="k", client_secret="s", connect_timeout_s=1
        ) as client,
        pytest.raises(TikTokTransportError) as info,
    ):
        client.creator_info("act.whatever-token-value")
    assert info.value.code == "connection_error" and info.value.retryable


class socket_port:
    """Reserve a free TCP port on 127.0.0.1 and release it on exit."""

    def __enter__(self) -> int:
        import socket

        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        port: int = self._sock.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        self._sock.close()
