"""The bucket-event policy (issue 8 §3): buckets, safe keys, accounts, the flow's run check."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reelflow.errors import ConfigurationError, InputRejectedError
from reelflow.event_policy import (
    AccountRule,
    EventPolicy,
    Scope,
    check_event_run,
    parse_event_accounts,
    parse_event_buckets,
    printable,
    unsafe_key_reason,
)

BUCKETS = "raw-uploads/in,studio-drop"
ACCOUNTS = "raw-uploads/in=acme|brand;raw-uploads/in/vip=studio;studio-drop=*"


# --- keys ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "in/../secret/x.mp4",
        "in/\x00x.mp4",
        "..",
        "in/..",
        "../x.mp4",
        "in/./x.mp4",
        "in\\..\\secret\\x.mp4",
        "in/\nx.mp4",
        "in/\rx.mp4",
        "in/\tx.mp4",
        "in/\x7fx.mp4",
        "in/\x85x.mp4",
        "in/\u202ex4pm.mp4",
        "in/\u2028x.mp4",
        "in/\ud800x.mp4",
        "",
        "in/" + "a" * 1022 + ".mp4",
    ],
)
def test_unsafe_keys_are_refused(key: str) -> None:
    """Dot segments, NUL, control/bidi/line-separator characters, surrogates, >1024 bytes."""
    assert unsafe_key_reason(key) is not None


@pytest.mark.parametrize(
    "key",
    ["in/clip.mp4", "in/my clip+1 é 👋.mp4", "in/a..b.mp4", "in/...mp4", "in//x.mp4", "x.mp4"],
)
def test_ordinary_keys_pass(key: str) -> None:
    """Spaces, non-ASCII, emoji and dots inside a name are fine."""
    assert unsafe_key_reason(key) is None


@given(st.text(max_size=20), st.sampled_from(["\x00", "\x01", "\x1f", "\x7f", "\x9b"]))
def test_any_control_character_is_refused(text: str, bad: str) -> None:
    """Wherever a C0/C1 control character or NUL sits, the key is refused."""
    cut = len(text) // 2
    assert unsafe_key_reason(f"in/{text[:cut]}{bad}{text[cut:]}.mp4") is not None


@given(
    st.lists(st.text(alphabet="ab.é 9", min_size=1, max_size=6), min_size=0, max_size=4),
    st.sampled_from([".", ".."]),
    st.integers(min_value=0, max_value=4),
)
def test_any_dot_segment_is_refused(parts: list[str], dots: str, at: int) -> None:
    """A '.' or '..' segment anywhere in the key refuses it."""
    parts.insert(min(at, len(parts)), dots)
    assert unsafe_key_reason("/".join(parts)) is not None


@given(st.text(max_size=40))
def test_printable_escapes_everything_unsafe(text: str) -> None:
    """What printable() returns never carries a character the key check refuses."""
    assert all(unsafe_key_reason(c) is None for c in printable(text) if c != ".")


# --- settings ------------------------------------------------------------------------------


def test_buckets_parse_with_prefixes_as_folders() -> None:
    """Comma-separated bucket or bucket/prefix; a prefix always ends with '/'."""
    assert parse_event_buckets(" raw-uploads/in , studio-drop,, b3x/a/b/ ") == (
        Scope("raw-uploads", "in/"),
        Scope("studio-drop", ""),
        Scope("b3x", "a/b/"),
    )
    assert parse_event_buckets("") == ()


@pytest.mark.parametrize(
    "text", ["Raw", "ab", "a" * 64, "-abc", "abc-", "a..b", "b3x/../x", "b3x/in/\x00", "b b"]
)
def test_bad_bucket_settings_are_configuration_errors(text: str) -> None:
    """Not an S3 bucket name, or an unsafe prefix: refused with the setting's name."""
    with pytest.raises(ConfigurationError, match="REELFLOW_EVENT_BUCKETS"):
        parse_event_buckets(text)


def test_accounts_parse() -> None:
    """'scope=a|b' lists accounts, '*' allows any, 'scope=' allows none."""
    assert parse_event_accounts("b3x/in=a|b ; b4x=* ;b5x=") == (
        AccountRule(Scope("b3x", "in/"), frozenset({"a", "b"})),
        AccountRule(Scope("b4x", ""), None),
        AccountRule(Scope("b5x", ""), frozenset()),
    )


@pytest.mark.parametrize("text", ["b3x", "b3x=a b", "b3x=a|*", "b3x=a;b3x/=b", "B3X=a", "=a"])
def test_bad_account_settings_are_configuration_errors(text: str) -> None:
    """No '=', a bad name, '*' mixed with names, a scope twice, a bad bucket: refused."""
    with pytest.raises(ConfigurationError, match="REELFLOW_EVENT_ACCOUNTS"):
        parse_event_accounts(text)


# --- the policy ----------------------------------------------------------------------------

POLICY = EventPolicy.parse(BUCKETS, ACCOUNTS)


@pytest.mark.parametrize(
    ("bucket", "key", "ok"),
    [
        ("raw-uploads", "in/clip.mp4", True),
        ("raw-uploads", "in/sub/clip.mp4", True),
        ("raw-uploads", "inbox/clip.mp4", False),
        ("raw-uploads", "clip.mp4", False),
        ("studio-drop", "any/where.mp4", True),
        ("someone-elses-bucket", "in/evil.mp4", False),
        ("raw-uploads", "in/../secret/x.mp4", False),
        ("raw-uploads", "in/\x00x.mp4", False),
    ],
)
def test_refuses(bucket: str, key: str, ok: bool) -> None:
    """Only listed buckets/folders and only safe keys."""
    assert (POLICY.refuses(bucket, key) is None) is ok


def test_empty_policy_refuses_everything() -> None:
    """No REELFLOW_EVENT_BUCKETS: nothing is accepted."""
    assert "outside REELFLOW_EVENT_BUCKETS (nothing)" in str(EventPolicy().refuses("b3x", "k.mp4"))


@pytest.mark.parametrize(
    ("key", "account", "ok"),
    [
        ("in/a.mp4", "acme", True),
        ("in/a.mp4", "studio", False),
        ("in/vip/a.mp4", "studio", True),
        ("in/vip/a.mp4", "acme", False),  # the most specific rule wins
        ("in/vipx/a.mp4", "studio", False),
    ],
)
def test_account_rules(key: str, account: str, ok: bool) -> None:
    """The most specific bucket/prefix rule decides which accounts a key may name."""
    assert (POLICY.account_refusal("raw-uploads", key, account) is None) is ok


def test_unlisted_scope_allows_no_account_and_star_allows_any() -> None:
    """A bucket without a rule may name no account; '*' lets any through."""
    assert POLICY.account_refusal("studio-drop", "x.mp4", "whoever") is None
    refusal = EventPolicy.parse("other-bkt").account_refusal("other-bkt", "x.mp4", "studio")
    assert refusal is not None and "no account" in refusal


# --- the flow's check ----------------------------------------------------------------------


def check(source: str, account: str | None = None, origin: str | None = "s3-event") -> None:
    check_event_run(
        origin=origin,
        source=source,
        account=account,
        event_buckets=BUCKETS,
        event_accounts=ACCOUNTS,
    )


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("/home/worker/private/other.mp4", "event_source_not_s3"),
        ("file:///etc/passwd", "event_source_not_s3"),
        ("http://127.0.0.1:18081/latest/meta-data/x.mp4", "event_source_not_s3"),
        ("https://internal.example/x.mp4", "event_source_not_s3"),
        ("S3://raw-uploads/in/x.mp4", "event_source_not_s3"),
        ("s3://someone-elses-bucket/in/evil.mp4", "event_source_not_allowed"),
        ("s3://raw-uploads/inbox/x.mp4", "event_source_not_allowed"),
        ("s3://raw-uploads/in/../secret/x.mp4", "event_source_not_allowed"),
        ("s3://raw-uploads/in/\x00x.mp4", "event_source_not_allowed"),
        ("s3://raw-uploads", "event_source_not_allowed"),
    ],
)
def test_event_run_refuses_sources_outside_the_policy(source: str, reason: str) -> None:
    """An event-started run reads only s3:// sources in REELFLOW_EVENT_BUCKETS."""
    with pytest.raises(InputRejectedError) as info:
        check(source)
    assert info.value.reason == reason
    assert info.value.exit_code == 2 and not info.value.retryable
    assert "\x00" not in str(info.value)


def test_event_run_refuses_an_account_the_scope_may_not_name() -> None:
    """studio is not allowed under raw-uploads/in: refused before anything is read."""
    with pytest.raises(InputRejectedError) as info:
        check("s3://raw-uploads/in/evil.mp4", account="studio")
    assert info.value.reason == "event_account_not_allowed"
    check("s3://raw-uploads/in/fine.mp4", account="acme")
    check("s3://raw-uploads/in/vip/fine.mp4", account="studio")
    check("s3://raw-uploads/in/fine.mp4")


def test_event_run_takes_no_source_secret() -> None:
    """With a source_secret the URL read would not be the source checked: refused."""
    with pytest.raises(InputRejectedError) as info:
        check_event_run(
            origin="s3-event",
            source="s3://raw-uploads/in/x.mp4",
            account=None,
            event_buckets=BUCKETS,
            event_accounts=ACCOUNTS,
            source_secret="process:abc",
        )
    assert info.value.reason == "event_source_not_s3"


def test_refusal_never_echoes_a_url() -> None:
    """A URL's credentials never reach the error (it ends up in Prefect's state message)."""
    with pytest.raises(InputRejectedError) as info:
        check("http://user:hunter2@10.0.0.1/x.mp4?token=sekrit123")
    assert "hunter2" not in str(info.value) and "sekrit123" not in str(info.value)


def test_runs_a_person_started_are_not_checked_and_unknown_origins_are_refused() -> None:
    """No origin: this check does nothing (other checks apply); an unknown origin is refused."""
    check("/any/local/path.mp4", account="studio", origin=None)
    check("/any/local/path.mp4", account="studio", origin="")
    with pytest.raises(InputRejectedError) as info:
        check("s3://raw-uploads/in/x.mp4", origin="s3-evnt")
    assert info.value.reason == "unknown_origin"


def test_bad_policy_setting_fails_the_run_as_configuration() -> None:
    """A malformed REELFLOW_EVENT_BUCKETS is a ConfigurationError, not a pass."""
    with pytest.raises(ConfigurationError):
        check_event_run(
            origin="s3-event",
            source="s3://raw-uploads/in/x.mp4",
            account=None,
            event_buckets="Not A Bucket",
            event_accounts="",
        )


def test_module_is_pure() -> None:
    """Importing the policy pulls in neither boto3 nor prefect."""
    code = (
        "import sys, reelflow.event_policy; "
        "bad = [m for m in ('boto3', 'botocore', 'prefect', 'requests') if m in sys.modules]; "
        "sys.exit(repr(bad) if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
