"""Deployment runs: the real source URL comes from a Prefect Secret block named by source_secret."""

from __future__ import annotations

import uuid

import pytest

from reelflow import credentials
from reelflow.errors import ConfigurationError
from reelflow.logging import redact_text


def test_secret_block_reveals_the_url_and_teaches_the_redactor(prefect_api: str) -> None:
    """A Secret block holding the URL is revealed for its public form; its secrets are masked."""
    from prefect.blocks.system import Secret

    token = f"blocktoken{uuid.uuid4().hex}"
    url = f"https://u:pw-{token}@cdn.example/clip.mp4?token={token}"
    name = f"src-{uuid.uuid4().hex[:8]}"
    Secret(value=url).save(name)
    public = credentials.public_url(url)
    assert credentials.reveal(public, name) == url
    assert token not in redact_text(f"GET {url} failed")


def test_missing_secret_block_is_a_configuration_error(prefect_api: str) -> None:
    """A source_secret naming no block fails as a configuration error, not a crash."""
    with pytest.raises(ConfigurationError):
        credentials.reveal("https://cdn.example/clip.mp4?token=REDACTED", "no-such-block-x")
