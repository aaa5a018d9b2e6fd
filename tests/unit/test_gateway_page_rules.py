"""The upload page's pure parts: its config block (nothing in it can end the script element)
and the creator_info cache (one answer per account for its TTL)."""

from __future__ import annotations

import html
import json
import re
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from deployments.gateway.accounts import CreatorInfoCache, CreatorOptions
from deployments.gateway.page import CONFIG_MARKER, render_page

BLOCK = re.compile(r'<script type="application/json" id="config">(.*?)</script>', re.S)


@given(
    config=st.dictionaries(st.text(max_size=20), st.text(max_size=60), max_size=5),
    notice=st.none() | st.text(max_size=60),
)
def test_config_block_round_trips_and_stays_closed(
    config: dict[str, Any], notice: str | None
) -> None:
    """Any strings in the config or the notice: the page has exactly the one script element
    the block opened, its JSON reads back as given, and the notice is never raw HTML."""
    body = render_page(f"<body>{CONFIG_MARKER}</body>", config, notice=notice)
    assert body.count("<script") == 1 and body.count("</script>") == 1, body
    found = BLOCK.search(body)
    assert found is not None
    assert json.loads(found.group(1)) == {**config, "notice": notice}
    tail = body.split("</script>", 1)[1]
    if notice:
        assert f'role="alert">{html.escape(notice)}</p>' in tail
        assert tail.count("<") == 3  # <p>, </p>, </body>: nothing of the notice is a tag


def _options(name: str) -> CreatorOptions:
    return CreatorOptions(name, name.title(), ["SELF_ONLY"], False, False, False, 600)


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.floats(0, 100)), max_size=30))
def test_cache_answers_only_within_its_ttl(steps: list[tuple[str, float]]) -> None:
    """An account's answer is served until ``ttl_s`` after it was put, never after, and never
    for another account."""
    clock = FakeClock()
    cache = CreatorInfoCache(ttl_s=60.0, clock=clock)
    put_at: dict[str, float] = {}
    for name, advance in steps:
        clock.t += advance
        hit = cache.get(name)
        fresh = name in put_at and clock.t - put_at[name] < 60.0
        assert (hit is not None) == fresh
        if hit is not None:
            assert hit.creator_username == name
        else:
            cache.put(name, _options(name))
            put_at[name] = clock.t
