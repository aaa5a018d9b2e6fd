"""The pure rules of a batch ingest (reelflow.batch): what expands, what is a video, order and
de-duplication, outcomes, the exit code and the JSON document."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reelflow import batch
from reelflow.batch import FAILED, REJECTED, Result

OUTCOMES = st.sampled_from([*batch.OK_OUTCOMES, REJECTED, FAILED])
RESULTS = st.lists(
    st.builds(Result, source=st.text(max_size=8), outcome=OUTCOMES, bytes_sent=st.integers(0, 99)),
    max_size=12,
)


@given(RESULTS)
def test_exit_code_rule(results: list[Result]) -> None:
    """0 only if every source succeeded (and there was one); 2 as soon as any was rejected;
    else 1."""
    code = batch.exit_code(results)
    if not results or any(r.outcome == REJECTED for r in results):
        assert code == 2
    elif any(r.outcome == FAILED for r in results):
        assert code == 1
    else:
        assert code == 0
    doc = batch.document(results)
    assert doc["exit_code"] == code and doc["ok"] == (code == 0)
    counts = doc["counts"]
    assert counts["succeeded"] + counts["rejected"] + counts["failed"] == counts["total"]
    assert doc["bytes_sent"] == sum(r.bytes_sent for r in results)
    json.dumps(doc)  # one JSON document, whatever the rows


@given(st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=20))
def test_unique_keeps_the_first_of_each_in_order(sources: list[str]) -> None:
    """Each source once, in the order it first appeared."""
    out = batch.unique(sources)
    assert len(out) == len(set(sources))
    assert sorted(out, key=sources.index) == out


@pytest.mark.parametrize(
    ("name", "video"),
    [
        ("clip.mp4", True),
        ("IMG_0001.MOV", True),
        ("a/b/c.webm", True),
        ("x.mkv", True),
        ("x.m4v", True),
        ("clip.mp4.json", False),  # a sidecar
        (".clip.mp4", False),  # hidden
        ("._IMG_0001.MOV", False),  # macOS AppleDouble
        ("notes.txt", False),
        ("dir/", False),
    ],
)
def test_which_listed_names_are_videos(name: str, video: bool) -> None:
    assert batch.is_video_name(name) is video


@pytest.mark.parametrize(
    ("arg", "prefix", "pattern"),
    [
        ("s3://bucket/inbox/", True, False),
        ("s3://bucket", True, False),
        ("s3://bucket/", True, False),
        ("s3://bucket/inbox/clip.mp4", False, False),
        ("s3://bucket/in/*.mp4", False, False),  # S3 keys are never globs
        ("https://cdn.example.com/a?b=*", False, False),
        ("clips/*.mov", False, True),
        ("clips/**/[ab].mp4", False, True),
        ("clips/a.mp4", False, False),
    ],
)
def test_what_expands(arg: str, prefix: bool, pattern: bool) -> None:
    assert batch.is_s3_prefix(arg) is prefix
    assert batch.is_pattern(arg) is pattern


@pytest.mark.parametrize(
    ("publish", "outcome"),
    [
        (None, "stored"),
        ({"status": "PUBLISH_COMPLETE"}, "published"),
        ({"status": "SCHEDULED"}, "scheduled"),
        ({"status": "SEND_TO_USER_INBOX"}, "sent_to_inbox"),
        ({"status": "PROCESSING_UPLOAD"}, "publishing"),
        ({"status": "FAILED", "fail_reason": "spam_risk"}, FAILED),
    ],
)
def test_outcome_of_a_summary(publish: dict[str, str] | None, outcome: str) -> None:
    """A stored video's outcome is what became of the publish it asked for."""
    row = batch.succeeded("a.mp4", {"media_id": "m_1", "publish": publish})
    assert row.outcome == outcome and row.media_id == "m_1"
    assert row.ok is (outcome != FAILED)
    if outcome == FAILED:
        assert row.reason == "spam_risk"
