"""Step 1, validate: decide before a single byte is uploaded whether SOURCE is publishable.

Order matters for clear errors and no wasted work: resolve (exists, readable) → size → magic
bytes → ffprobe on the path or a presigned/HTTP URL (range reads, no download) → the rules in
``reelflow.rules``. A ValidationError is terminal; only transient reads are retried.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from reelflow import media, rules
from reelflow.errors import retry_if_retryable
from reelflow.logging import get_logger
from reelflow.rules import VideoMeta
from reelflow.sources import SourceRef
from storage.runtime import Runtime


@dataclass(frozen=True)
class Validated:
    source: SourceRef
    meta: VideoMeta


def validate_source(source: str, rt: Runtime) -> Validated:
    ref = rt.sources.resolve(source)
    rules.check_size(ref.size_bytes)
    container = rules.sniff_container(rt.sources.read_head(ref))
    probed = media.probe(rt.sources.probe_url(ref))
    meta = rules.interpret_probe(
        probed, container=container, max_duration_s=rt.settings.max_duration_s
    )
    get_logger(source=ref.name).info(
        "video_validated",
        size_bytes=ref.size_bytes,
        duration_s=meta.duration_s,
        resolution=f"{meta.width}x{meta.height}",
        fps=meta.fps,
        codec=meta.video_codec,
    )
    return Validated(source=ref, meta=meta)


# NO_CACHE on purpose: validation is cheap and must judge the source as it is now.
@task(
    name="validate",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=[1, 5],
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_retryable,
)
def validate_video(source: str, rt: Runtime) -> Validated:
    return validate_source(source, rt)
