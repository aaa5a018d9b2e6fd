"""Key rules: a video is uploaded at its final key and never renamed; its thumbnail and metadata
sit beside it with the same stem; sessions staged under staging/ by older code still move."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from reelflow.planning import (
    CONTAINER_EXT,
    final_video_key,
    is_final_video_key,
    session_id_for,
    sidecar_key,
    staging_key,
    upload_key,
    video_key,
)

exts = st.sampled_from(sorted(CONTAINER_EXT.values()))
shas = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
fingerprints = st.text(min_size=1, max_size=40)


@given(fingerprints, st.integers(min_value=1, max_value=2**33), exts)
def test_upload_key_is_final_and_the_same_for_a_resumed_run(fp: str, chunk: int, ext: str) -> None:
    """Same source, store and chunk size → the same key; it is a final key, kept as stored."""
    sid = session_id_for(fp, "s3://b/p", chunk)
    key = upload_key(sid, ext)
    assert key == upload_key(session_id_for(fp, "s3://b/p", chunk), ext)
    assert key == f"videos/{sid}.{ext}"
    assert is_final_video_key(key)
    assert final_video_key(key, "0" * 64, ext) == key


@given(fingerprints, st.integers(min_value=1, max_value=2**33), exts, shas)
def test_an_older_staged_session_moves_to_its_content_key(
    fp: str, chunk: int, ext: str, sha: str
) -> None:
    """A staging/ key is not final: its video goes to videos/<sha256>.<ext>, as before."""
    staged = staging_key(session_id_for(fp, "file:///x", chunk), ext)
    assert not is_final_video_key(staged)
    assert final_video_key(staged, sha, ext) == video_key(sha, ext) == f"videos/{sha}.{ext}"


@given(st.one_of(shas, st.text(alphabet="u_0123456789abcdef", min_size=3, max_size=30)), exts)
def test_sidecars_share_the_video_stem_and_never_its_key(stem: str, ext: str) -> None:
    """Thumbnail and metadata: same folder and stem, their own extension, distinct keys."""
    video = f"videos/{stem}.{ext}"
    thumb, meta = sidecar_key(video, "jpg"), sidecar_key(video, "json")
    assert (thumb, meta) == (f"videos/{stem}.jpg", f"videos/{stem}.json")
    assert len({video, thumb, meta}) == 3
    assert sidecar_key(thumb, "json") == meta
