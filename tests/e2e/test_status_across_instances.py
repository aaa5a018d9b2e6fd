"""Status and live events across processes: what one gateway and a worker write, another
gateway shows.

Two real ``reelflow gateway`` processes on one PostgreSQL catalog and one local store (the
scale-out setup of issue 10). A creator uploads through gateway A; gateway B answers its
status while the bytes arrive, and B's event stream follows the pipeline, run by the child
process A handed the upload to (the embedded hand-off), through to ``stored`` and ``end``.
Then a DELETE on B of the stored upload is 409. Nothing here shares memory with a gateway.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.gateway import GatewaySetup, auth
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

REQUEST_TIMEOUT_S = 60.0
STREAM_TIMEOUT_S = 240.0  # the child run starts its own Prefect API server (~10-20 s), then ffmpeg
MAX_MESSAGES = 500


def sse(url: str, headers: dict[str, str], out: list[dict[str, Any]]) -> None:
    """Collect the stream's messages into ``out`` until `end` (bounded)."""
    with httpx.stream(
        "GET", url, headers=headers, timeout=httpx.Timeout(STREAM_TIMEOUT_S)
    ) as reply:
        assert reply.status_code == 200, reply.read()
        msg: dict[str, Any] = {}
        for line in reply.iter_lines():
            if line == "":
                if "event" in msg:
                    out.append(msg)
                    if msg["event"] in ("end", "timeout") or len(out) >= MAX_MESSAGES:
                        return
                msg = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(": ")
                if key == "data":
                    msg["data"] = json.loads(value)
                elif key in ("id", "event"):
                    msg[key] = value


def test_another_gateway_shows_the_upload_and_the_pipeline_live(
    tmp_path: Path, pg_url: str, clips: Any
) -> None:
    setup = GatewaySetup(home=tmp_path / "home", database_url=pg_url)
    data = clips.valid().read_bytes()
    half = len(data) // 2
    with setup.process("a") as a, setup.process("b") as b:
        try:
            token = setup.token("alice")
            headers = auth(token)
            with httpx.Client(timeout=REQUEST_TIMEOUT_S) as http:
                made = http.post(
                    a.uploads_url,
                    headers=headers
                    | {
                        "Upload-Length": str(len(data)),
                        "Upload-Metadata": "filename Y2xpcC5tcDQ=,filetype dmlkZW8vbXA0",
                    },
                )
                assert made.status_code == 201, made.text
                upload_id = made.headers["location"].rstrip("/").rsplit("/", 1)[1]
                on_a, on_b = f"{a.uploads_url}{upload_id}", f"{b.uploads_url}{upload_id}"
                first = http.patch(
                    on_a,
                    content=data[:half],
                    headers=headers
                    | {"Upload-Offset": "0", "Content-Type": "application/offset+octet-stream"},
                )
                assert first.status_code == 204, first.text
                seen = http.get(f"{on_b}/status", headers=headers).json()
                assert seen["stage"] == "receiving" and seen["bytes_received"] == half
                assert seen["filename"] == "clip.mp4"

                messages: list[dict[str, Any]] = []
                listener = threading.Thread(
                    target=sse, args=(f"{on_b}/events", headers, messages), daemon=True
                )
                listener.start()
                wait_for(lambda: messages, "B's stream to start", timeout_s=30, poll_s=0.05)
                rest = http.patch(
                    on_a,
                    content=data[half:],
                    headers=headers
                    | {
                        "Upload-Offset": str(half),
                        "Content-Type": "application/offset+octet-stream",
                    },
                )
                assert rest.status_code == 204, rest.text
                listener.join(timeout=STREAM_TIMEOUT_S)
                assert not listener.is_alive(), messages[-3:]

                stage_events = [m for m in messages if m["event"] == "status" and "id" in m]
                shown = [m["data"]["stage"] for m in stage_events]
                assert shown[0] == "receiving"
                for stage in ("validating", "storing", "stored"):
                    assert stage in shown, shown
                ids = [int(m["id"]) for m in stage_events]
                assert ids == sorted(ids) and len(set(ids)) == len(ids)
                end = messages[-1]
                assert end["event"] == "end", messages[-3:]
                final = end["data"]
                assert final["stage"] == "stored" and final["media_id"] and final["flow_run_id"]
                assert final["percent"] == 100.0 and final["size_bytes"] == len(data)
                thumb = http.get(f"{b.base_url}{final['thumbnail_url']}", headers=headers)
                assert thumb.status_code == 200 and thumb.content[:3] == b"\xff\xd8\xff"

                gone = http.delete(on_b, headers=headers)
                assert gone.status_code == 409 and final["media_id"] in gone.text
                listed = http.get(b.uploads_url, headers=headers).json()
                assert [u["id"] for u in listed["uploads"]] == [upload_id]
        finally:
            setup.end_runs()
