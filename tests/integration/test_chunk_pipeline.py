"""The chunk pipeline hands each window task a feed of its chunks, never the bytes, and bounds
the PUTs on the wire with slots owned by the call (no module-global state outlives it)."""

from __future__ import annotations

import dataclasses
import hashlib
import pickle
import threading
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.utilities.collections import visit_collection

import tasks.chunk_upload as chunk_upload
from flows.chunk_pipeline import send_source
from reelflow.planning import MIB, Chunk
from reelflow.settings import Settings
from storage.runtime import Runtime
from tasks.chunk_upload import WindowFeed, open_upload_session
from tasks.validate import validate_video


def test_window_feed_is_opaque_to_prefect_and_never_serialized() -> None:
    """Prefect's parameter traversal does not descend into it; pickling (a hash or a process
    hop) is refused; its repr names counts, not the content."""
    feed = WindowFeed(1)
    feed.put(Chunk(1, 0, 120), bytearray(b"secret-bytes" * 10))
    seen: list[Any] = []
    visit_collection({"feed": feed}, visit_fn=lambda x: seen.append(x) or x, return_data=False)
    assert all(not isinstance(x, (bytes, bytearray)) for x in seen)
    with pytest.raises(TypeError, match="never serialized"):
        pickle.dumps(feed)
    assert repr(feed) == "WindowFeed(1/1 fed, 0 sent)" and "secret" not in repr(feed)


class PeakStore:
    """The real store, counting UploadPart requests on the wire at once."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.now, self.peak = inner, 0, 0
        self.lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def upload_part(self, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            return self.inner.upload_part(*args, **kwargs)
        finally:
            with self.lock:
                self.now -= 1


@pytest.mark.usefixtures("prefect_api")
def test_send_source_bounds_puts_by_concurrency_with_its_own_slots(home: Path, clips: Any) -> None:
    """concurrency=2: never more than two UploadParts at once; every part is sent once and
    hashed right; the task module keeps no slots of its own."""
    clip = clips.medium(16 * MIB)
    base = Runtime.from_settings(Settings())
    store = PeakStore(base.store)
    rt = dataclasses.replace(base, store=store)  # type: ignore[arg-type]

    @flow(name="send-source-slots")
    def run() -> Any:
        checked = validate_video(str(clip), rt)
        state = open_upload_session(checked.source, checked.meta, 5 * MIB, rt, concurrency=2)
        return state, send_source(checked.source, state, rt, concurrency=2)

    state, sent = run()
    assert sent.chunks_uploaded == state.plan.count == len(sent.part_digests_b64)
    assert sent.sha256_hex == hashlib.sha256(clip.read_bytes()).hexdigest()
    assert 1 <= store.peak <= 2
    assert not hasattr(chunk_upload, "_PUT_SLOTS")
