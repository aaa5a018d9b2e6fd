"""A run an event started trusts the event only as far as the policy allows (issue 8 §3).

The ``ingest-video`` flow runs for real against the session's Prefect API. Anyone who can
``POST /api/events`` can make the trigger start it with any payload, so these runs carry the
trigger's fixed ``origin: s3-event`` and forged sources: each must fail with a validation error
before anything is read or stored. The trigger path itself (event → automation → run) is
covered end to end in tests/e2e/test_event_path.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.ingest import ingest_video
from reelflow.errors import InputRejectedError

REPO = Path(__file__).resolve().parents[2]
BUCKET = "raw-uploads"


@pytest.fixture
def event_env(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("REELFLOW_EVENT_BUCKETS", f"{BUCKET}/in")
    monkeypatch.setenv("REELFLOW_EVENT_ACCOUNTS", f"{BUCKET}/in=acme")
    return home


def stored_anything(home: Path) -> bool:
    return home.exists() and any(p.is_file() for p in home.rglob("*"))


@pytest.mark.parametrize(
    ("source", "account", "reason"),
    [
        ("LOCAL_CLIP", None, "event_source_not_s3"),
        ("file://LOCAL_CLIP", None, "event_source_not_s3"),
        ("http://127.0.0.1:9/latest/meta-data/clip.mp4", None, "event_source_not_s3"),
        ("s3://someone-elses-bucket/in/evil.mp4", None, "event_source_not_allowed"),
        (f"s3://{BUCKET}/in/../secret/x.mp4", None, "event_source_not_allowed"),
        (f"s3://{BUCKET}/in/\x00x.mp4", None, "event_source_not_allowed"),
        (f"s3://{BUCKET}/in/evil.mp4", "studio", "event_account_not_allowed"),
    ],
)
def test_event_started_run_refuses_what_the_policy_does_not_allow(
    prefect_api: str, event_env: Path, clips: Any, source: str, account: str | None, reason: str
) -> None:
    """Repro: an event naming a worker-local file (a valid clip), an internal URL, another
    bucket, an unsafe key or an account not allowed there: the run fails validation (exit 2
    semantics, no retry) and stores nothing."""
    source = source.replace("LOCAL_CLIP", str(clips.valid()))
    with pytest.raises(InputRejectedError) as info:
        ingest_video(source=source, account=account, origin="s3-event")
    assert info.value.reason == reason
    assert info.value.exit_code == 2 and not info.value.retryable
    assert not stored_anything(event_env)


def test_person_started_run_is_not_limited_by_the_event_policy(
    prefect_api: str, event_env: Path, tmp_path: Path
) -> None:
    """Without an origin (CLI, UI, API) a local path is read as before: a missing one fails as
    source_not_found, not as an event-policy refusal."""
    with pytest.raises(InputRejectedError) as info:
        ingest_video(source=str(tmp_path / "missing.mp4"))
    assert info.value.reason == "source_not_found"


def test_trigger_sets_origin_as_a_fixed_value() -> None:
    """prefect.yaml's triggers pass origin literally (s3-event, gateway), never from the event."""
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    [ingest] = [d for d in spec["deployments"] if d["name"] == "ingest-video"]
    origins = {t["name"]: t["parameters"]["origin"] for t in ingest["triggers"]}
    assert origins == {"s3-object-created": "s3-event", "upload-received": "gateway"}
    assert "origin" not in ingest.get("parameters", {})
