"""REELFLOW_MAX_SIZE_BYTES at the gateway (a real uvicorn on 127.0.0.1, httpx over TCP) and at
the worker that verifies a received upload: the gateway's limit is the lower of it and
REELFLOW_GATEWAY_MAX_SIZE_BYTES, a token can only lower it further, and a worker configured
lower than the gateway refuses the assembled object as ``too_large``."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from hypothesis import given
from hypothesis import strategies as st

from deployments.gateway.app import build_app
from reelflow.errors import InputRejectedError
from reelflow.gateway_tokens import mint
from reelflow.settings import MAX_SIZE_BYTES, Settings
from storage.runtime import Runtime
from tasks.verify_received import probe_stored
from tests.support.waiting import wait_for

SECRET = "test-gateway-secret-" + "m" * 32
LIMIT = 10_000
STARTUP_S = 30.0


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # a thread of the test process
        pass


class _Handoff:
    def received(self, row: Any) -> None:  # nothing here completes an upload
        pass


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[str, Settings]]:
    """A gateway whose only limit is REELFLOW_MAX_SIZE_BYTES (the gateway's own left at 4 GiB)."""
    settings = Settings(home=tmp_path / "home", gateway_secret=SECRET, max_size_bytes=LIMIT)
    app = build_app(settings, runtime=Runtime.from_settings(settings), handoff=_Handoff())  # type: ignore[arg-type]
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    wait_for(lambda: server.started, "the gateway to start", timeout_s=STARTUP_S, poll_s=0.05)
    try:
        yield f"http://127.0.0.1:{port}", settings
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def headers(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Tus-Resumable": "1.0.0", **extra}


def token(max_size: int | None = None) -> str:
    return mint(SECRET, "creator", ttl_s=600, max_size=max_size, now=datetime.now(UTC))


def test_the_gateway_answers_the_max_size_setting(gateway: tuple[str, Settings]) -> None:
    """Tus-Max-Size is REELFLOW_MAX_SIZE_BYTES; one byte over is 413; a token lowers it."""
    base, _ = gateway
    with httpx.Client(timeout=30) as client:
        options = client.options(f"{base}/uploads/", headers={"Tus-Resumable": "1.0.0"})
        assert options.headers["tus-max-size"] == str(LIMIT)
        url = f"{base}/uploads/"

        def create(tok: str, length: int) -> int:
            return client.post(
                url, headers=headers(tok, **{"Upload-Length": str(length)})
            ).status_code

        assert create(token(), LIMIT + 1) == 413
        assert create(token(max_size=LIMIT * 2), LIMIT + 1) == 413  # a token cannot raise it
        assert create(token(max_size=100), 101) == 413
        assert create(token(max_size=100), 100) == 201
        assert create(token(), LIMIT) == 201


@given(
    max_size=st.integers(min_value=1, max_value=MAX_SIZE_BYTES),
    gateway_max=st.integers(min_value=1, max_value=MAX_SIZE_BYTES),
)
def test_the_gateway_limit_is_the_lower_of_the_two(max_size: int, gateway_max: int) -> None:
    """Whichever is set lower wins; neither may exceed TikTok's 4 GiB."""
    s = Settings(max_size_bytes=max_size, gateway_max_size_bytes=gateway_max)
    assert s.gateway_max_size_bytes == min(max_size, gateway_max)
    assert s.max_size_bytes == max_size


def test_over_4_gib_is_not_a_setting() -> None:
    """REELFLOW_MAX_SIZE_BYTES above TikTok's limit is a settings error, not a silent cap."""
    with pytest.raises(ValueError, match="max_size_bytes"):
        Settings(max_size_bytes=MAX_SIZE_BYTES + 1)


def test_a_worker_below_the_gateway_refuses_the_assembled_upload(
    tmp_path: Path, clips: Any
) -> None:
    """A received upload's object over the worker's limit (the gateway allowed more): too_large
    at verify, before the probe; at the limit it is judged as usual."""
    clip = clips.valid()
    size = clip.stat().st_size
    rt = Runtime.from_settings(Settings(home=tmp_path / "w", max_size_bytes=size - 1))
    rt.store.put_file("staging/gw_x/source.mp4", clip, "video/mp4")
    with pytest.raises(InputRejectedError) as info:
        probe_stored("staging/gw_x/source.mp4", rt)
    assert info.value.reason == "too_large"
    ok = Runtime.from_settings(Settings(home=tmp_path / "w", max_size_bytes=size))
    assert probe_stored("staging/gw_x/source.mp4", ok).container == "mp4"
