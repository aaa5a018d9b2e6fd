"""Source URL credentials: sealed at the entry point, public form everywhere else."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reelflow import credentials
from reelflow.errors import ConfigurationError, InputRejectedError
from reelflow.logging import redact_text

SECRET = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_~",
    min_size=8,
    max_size=32,
)
NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_-", min_size=1, max_size=12)


def test_public_url_drops_userinfo_and_query_values() -> None:
    """Userinfo goes, query names stay with REDACTED values, the fragment is replaced."""
    url = "https://user:hunter2@host.example:8443/a/clip.mp4?token=sekrit123&X-Amz-Signature=s#f"
    assert credentials.public_url(url) == (
        "https://host.example:8443/a/clip.mp4?token=REDACTED&X-Amz-Signature=REDACTED#REDACTED"
    )


def test_paths_and_s3_keys_are_unchanged() -> None:
    """Only http(s) URLs have a place for credentials."""
    for source in ("/tmp/a?b=c.mp4", "s3://bucket/in/a.mp4", "https://host/clip.mp4"):
        assert credentials.public_url(source) == source
        assert credentials.seal(source) == credentials.SealedSource(source, None)


@given(user=SECRET, password=SECRET, token=SECRET, key=NAME)
@settings(max_examples=200, deadline=None)
def test_sealed_url_round_trips_and_public_form_holds_no_secret(
    user: str, password: str, token: str, key: str
) -> None:
    """reveal(seal(url)) is the url; the public form contains none of its secret parts."""
    user, password, token = f"U9{user}", f"P9{password}", f"T9{token}"  # distinct from the key
    url = f"http://{user}:{password}@127.0.0.1:9/v/clip.mp4?{key}={token}"
    with credentials.sealed(url) as sealed:
        assert sealed.ref and sealed.ref.startswith(credentials.PROCESS_PREFIX)
        for secret in (user, password, token):
            assert secret not in sealed.public
            assert secret not in sealed.ref
        assert credentials.reveal(sealed.public, sealed.ref) == url
        # and once revealed, any text that quotes the URL is masked by the one redactor
        text = redact_text(f"cannot reach {url}: connection refused")
        for secret in (password, token):
            assert secret not in text


def test_vault_entry_is_gone_after_the_run() -> None:
    """A process reference does not outlive its ``sealed`` block, nor work in another process."""
    with credentials.sealed("https://h/x.mp4?token=abcdef123") as sealed:
        pass
    with pytest.raises(ConfigurationError):
        credentials.reveal(sealed.public, sealed.ref)


def test_credentialed_source_without_reference_is_refused() -> None:
    """A flow handed a credentialed URL directly refuses it, and its message has no secret."""
    with pytest.raises(InputRejectedError) as err:
        credentials.reveal("https://u:pw-canary-x@h/x.mp4?token=tok-canary-y", None)
    assert err.value.reason == "credentials_in_source"
    assert "canary" not in str(err.value)


def test_reference_must_match_public_source() -> None:
    """A source_secret naming another URL than ``source`` shows is refused."""
    with (
        credentials.sealed("https://h/a.mp4?token=abcdef123") as sealed,
        pytest.raises(InputRejectedError) as err,
    ):
        credentials.reveal("https://h/b.mp4?token=REDACTED", sealed.ref)
    assert err.value.reason == "source_secret_mismatch"
    assert "abcdef123" not in str(err.value)
