"""The pure rules of publishing: post options, the publish request, ledger states, the next step.

* What a post may carry: :data:`MODES`, :data:`PRIVACY_LEVELS` (:data:`DEFAULT_PRIVACY`), the
  caption limit (:data:`MAX_CAPTION_UTF16_UNITS`, counted as TikTok counts) and their checks.
* :class:`PostOptions`: what a creator sets on a post besides privacy and caption (interactions
  ``disable_comment`` / ``disable_duet`` / ``disable_stitch`` and TikTok's commercial content
  disclosure ``brand_content_toggle`` / ``brand_organic_toggle``); :func:`check_post_options`
  (no creator needed) and :func:`check_creator_settings` (against creator_info).
* :class:`PublishRequest`: one checked request (account, mode, privacy, caption, post options,
  again) instead of loose arguments; :func:`post_options` is what a ledger row records and
  TikTok is sent.
* The ledger's local states, and :func:`next_step`: the one way forward for a ledger row and
  TikTok's view of its session.
* :func:`select_publish`: which existing publish of a media to an account a request *is*.

Must not: do I/O, read settings or the clock, or import prefect, requests, sqlmodel or storage/
(rows and statuses are read through the small protocols below).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Protocol, TypeVar

from reelflow.errors import InputRejectedError, PublishRefusedError

DIRECT, INBOX = "direct", "inbox"  # Direct Post, or an upload the creator finishes in the app
MODES = (DIRECT, INBOX)  # how a publish reaches TikTok
SCOPE_PUBLISH = "video.publish"  # the scope Direct Post and creator_info need
PRIVACY_LEVELS = ("PUBLIC_TO_EVERYONE", "MUTUAL_FOLLOW_FRIENDS", "FOLLOWER_OF_CREATOR", "SELF_ONLY")
DEFAULT_PRIVACY = "SELF_ONLY"  # the only level an unaudited TikTok client may post
MAX_CAPTION_UTF16_UNITS = 2200  # TikTok's title limit, counted in UTF-16 code units
# The same values as parameter types (Prefect turns them into the UI's choices); "none" = only
# store the video, no publish.
Mode = Literal["direct", "inbox", "none"]
Privacy = Literal["PUBLIC_TO_EVERYONE", "MUTUAL_FOLLOW_FRIENDS", "FOLLOWER_OF_CREATOR", "SELF_ONLY"]

# Local publish states (TikTok's own status is kept beside them in ``tiktok_status``).
PENDING = "pending"  # row written; no live publish_id (never inited, or refused before init)
UPLOADING = "uploading"  # init returned a publish_id; chunks are being sent
UPLOADED = "uploaded"  # TikTok acknowledged every byte (201); only polling remains
PROCESSING = "processing"  # polled past the deadline; the reconcile deployment finishes it
PUBLISHED = "published"  # PUBLISH_COMPLETE
SENT_TO_INBOX = "sent_to_inbox"  # SEND_TO_USER_INBOX: the practical end of an inbox upload
FAILED = "failed"  # TikTok said FAILED
DONE_STATES = frozenset({PUBLISHED, SENT_TO_INBOX})
POLL_ONLY_STATES = frozenset({UPLOADED, PROCESSING})
SETTLED_STATES = DONE_STATES | {FAILED, PROCESSING}  # a run may rest there


# ----- post options -----------------------------------------------------------------------------


def utf16_units(text: str) -> int:
    """Length as TikTok counts it (an emoji outside the BMP is two units)."""
    return len(text.encode("utf-16-le")) // 2


def check_caption(caption: str | None) -> str | None:
    if caption is not None and utf16_units(caption) > MAX_CAPTION_UTF16_UNITS:
        raise InputRejectedError(
            f"the caption is {utf16_units(caption)} UTF-16 units; TikTok allows "
            f"{MAX_CAPTION_UTF16_UNITS}",
            reason="caption_too_long",
        )
    return caption


def check_privacy(privacy: str | None) -> str | None:
    if privacy is not None and privacy not in PRIVACY_LEVELS:
        raise InputRejectedError(
            f"privacy {privacy!r} is not one of {', '.join(PRIVACY_LEVELS)}",
            reason="invalid_privacy",
        )
    return privacy


def check_mode(mode: str, allowed: tuple[str, ...] = MODES) -> str:
    if mode not in allowed:
        raise InputRejectedError(
            f"mode {mode!r} is not one of {', '.join(allowed)}", reason="invalid_mode"
        )
    return mode


# The post options' names: Direct Post's post_info fields, and the keys of the flow parameters,
# S3 sidecars and tus upload metadata that carry them (one spelling everywhere).
INTERACTIONS = ("disable_comment", "disable_duet", "disable_stitch")
DISCLOSURES = ("brand_content_toggle", "brand_organic_toggle")
POST_OPTION_KEYS = (*INTERACTIONS, *DISCLOSURES)
# creator_info's name for the creator's own setting of each interaction.
CREATOR_SETTING = {
    "disable_comment": "comment_disabled",
    "disable_duet": "duet_disabled",
    "disable_stitch": "stitch_disabled",
}
PRIVATE_PRIVACY = "SELF_ONLY"  # "Only me": TikTok's UX rules forbid it for branded content


@dataclass(frozen=True)
class PostOptions:
    """A post's interaction settings and commercial content disclosure.

    ``disable_*`` None means "as the creator set it in TikTok" (creator_info's
    ``*_disabled``); True turns the interaction off for this post; False asks for it on, which
    a creator who turned it off in TikTok cannot (:func:`check_creator_settings`).
    ``brand_content_toggle`` marks a paid partnership ("Branded content", labelled "Paid
    partnership"), ``brand_organic_toggle`` the creator's own business ("Your brand",
    "Promotional content"); both may be on.
    """

    disable_comment: bool | None = None
    disable_duet: bool | None = None
    disable_stitch: bool | None = None
    brand_content_toggle: bool = False
    brand_organic_toggle: bool = False

    @property
    def asked(self) -> tuple[str, ...]:
        """The options turned on (what a post without a Direct Post would silently lose)."""
        return tuple(k for k in POST_OPTION_KEYS if getattr(self, k) is True)

    def recorded(self) -> dict[str, bool]:
        """The options a ledger row records: only those set, so a request without any has the
        same canonical options (and hash) as rows written before post options existed."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if getattr(self, f.name) is not None and getattr(self, f.name) != f.default
        }


def post_options_from(values: Mapping[str, Any]) -> PostOptions:
    """:class:`PostOptions` from a mapping (recorded options, parameters); other keys ignored,
    values type-checked (:func:`check_post_options`)."""
    picked = {k: values[k] for k in POST_OPTION_KEYS if k in values and values[k] is not None}
    for key, value in picked.items():
        if not isinstance(value, bool):
            raise InputRejectedError(
                f"{key} must be true or false, not {value!r}", reason="invalid_post_option"
            )
    return PostOptions(**picked)


def parse_flag(key: str, value: str | None) -> bool | None:
    """A post option's text value (upload metadata, sidecar): "true"/"false" (any case, or
    1/0, yes/no); empty or absent is None (not set)."""
    if value is None or value.strip() == "":
        return None
    text = value.strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    shown = value if value.isprintable() else ascii(value)
    raise InputRejectedError(
        f"{key} must be true or false, not {shown[:40]!r}", reason="invalid_post_option"
    )


def check_post_options(post: PostOptions, *, mode: str, privacy_level: str | None) -> PostOptions:
    """Rules that need no creator: types, Direct Post only, branded content not private.

    An inbox upload carries no ``post_info`` (the creator sets everything in the TikTok app,
    and TikTok drops what is sent), so asking it to disable an interaction or to disclose
    commercial content is refused rather than silently lost; False values are accepted there
    (they ask for nothing). Branded content cannot be ``SELF_ONLY``: TikTok's content sharing
    UX rules ("Branded content visibility cannot be set to private").
    """
    for f in fields(post):
        value = getattr(post, f.name)
        if value is not None and not isinstance(value, bool):
            raise InputRejectedError(
                f"{f.name} must be true or false, not {value!r}", reason="invalid_post_option"
            )
    if mode != DIRECT:
        if post.asked:
            raise InputRejectedError(
                f"{', '.join(post.asked)} need a Direct Post (mode direct): an inbox upload is "
                "finished in the TikTok app, where the creator sets them",
                reason="post_options_need_direct",
            )
        return post
    if post.brand_content_toggle and (privacy_level or DEFAULT_PRIVACY) == PRIVATE_PRIVACY:
        raise InputRejectedError(
            "branded content (brand_content_toggle, a paid partnership) cannot be posted "
            f"{PRIVATE_PRIVACY}: TikTok requires it to be visible; choose another privacy level",
            reason="branded_content_private",
        )
    return post


def check_creator_settings(post: PostOptions, creator: Mapping[str, Any], account: str) -> None:
    """Refuse turning on an interaction the creator turned off in TikTok (creator_info)."""
    for key in INTERACTIONS:
        setting = CREATOR_SETTING[key]
        if getattr(post, key) is False and creator.get(setting):
            what = key.removeprefix("disable_")
            whats = f"{what}es" if what.endswith("h") else f"{what}s"
            raise PublishRefusedError(
                f"TikTok account {account!r} has {whats} turned off ({setting}); a post "
                f"cannot allow them ({key}=false); leave {key} out or set it true",
                reason=f"{what}_disabled_by_creator",
            )


@dataclass(frozen=True)
class PublishRequest:
    """Checked publish options: ``privacy`` is filled in for Direct Post, None for inbox.

    ``again`` asks for one more publish (a new generation) of a media already published to
    ``account``. Build it with :func:`reelflow.ingest_options.check_publish_request`, or from
    a ledger row's options with :func:`request_from_options`.
    """

    account: str
    mode: str
    privacy: str | None
    caption: str | None
    again: bool = False
    post: PostOptions = field(default_factory=PostOptions)

    @property
    def is_direct(self) -> bool:
        return self.mode == DIRECT

    @property
    def privacy_level(self) -> str:
        """The privacy level sent to TikTok (Direct Post) or checked against the creator."""
        return self.privacy or DEFAULT_PRIVACY


def post_options(request: PublishRequest) -> dict[str, Any]:
    """The canonical post options a publish row records (what TikTok is sent)."""
    check_mode(request.mode)
    check_privacy(request.privacy)
    check_caption(request.caption)
    check_post_options(request.post, mode=request.mode, privacy_level=request.privacy_level)
    if not request.is_direct:  # the user picks caption and privacy in the app (UP)
        return {"mode": request.mode}
    return {
        "mode": request.mode,
        "privacy_level": request.privacy_level,
        "caption": request.caption or "",
        **request.post.recorded(),
    }


def request_from_options(
    options: dict[str, Any], account: str, *, again: bool = False
) -> PublishRequest:
    """The request a row's recorded post options are (a publish is driven with its own)."""
    mode = options["mode"]
    return PublishRequest(
        account=account,
        mode=mode,
        privacy=options.get("privacy_level", DEFAULT_PRIVACY) if mode == DIRECT else None,
        caption=options.get("caption") or None,
        again=again,
        post=post_options_from(options) if mode == DIRECT else PostOptions(),
    )


def asks_creator_info(request: PublishRequest, scopes: Collection[str]) -> bool:
    """Whether a publish checks the creator first: always for Direct Post; for inbox only with
    the publish scope (creator_info needs it, and an inbox-only grant lacks it)."""
    return request.is_direct or SCOPE_PUBLISH in scopes


def direct_post_info(
    request: PublishRequest, creator: dict[str, Any], cover_ms: int
) -> dict[str, Any] | None:
    """The ``post_info`` of a Direct Post init (None for inbox).

    An interaction the request leaves unset is sent as the creator set it; one the creator
    turned off stays off (:func:`check_creator_settings` refused asking otherwise). The two
    disclosure toggles are always sent: TikTok's table marks ``brand_content_toggle`` required
    although its examples omit it, so an explicit false is the safe reading.
    """
    if not request.is_direct:
        return None
    post = request.post
    info: dict[str, Any] = {"privacy_level": request.privacy_level}
    for key in INTERACTIONS:
        asked = getattr(post, key)
        info[key] = bool(creator.get(CREATOR_SETTING[key])) or bool(asked)
    info["brand_content_toggle"] = post.brand_content_toggle
    info["brand_organic_toggle"] = post.brand_organic_toggle
    info["video_cover_timestamp_ms"] = int(cover_ms)
    if request.caption:
        info["title"] = request.caption
    return info


# ----- the next step ----------------------------------------------------------------------------


class LedgerRow(Protocol):
    """What :func:`next_step` reads of a publish row."""

    @property
    def status(self) -> str: ...
    @property
    def fail_reason(self) -> str | None: ...
    @property
    def publish_id(self) -> str | None: ...
    @property
    def inits(self) -> int: ...
    @property
    def video_size(self) -> int: ...


class RemoteStatus(Protocol):
    """What :func:`next_step` reads of TikTok's status of a session."""

    @property
    def status(self) -> str: ...
    @property
    def uploaded_bytes(self) -> int | None: ...


@dataclass(frozen=True)
class Step:
    """What a run does next: ``init``, ``upload`` (from ``from_byte``), ``poll``, ``done`` or
    ``failed``; ``reason`` is recorded with an init."""

    action: str
    from_byte: int = 0
    reason: str = ""


def needs_remote_status(row: LedgerRow) -> bool:
    """Whether the next step depends on TikTok's view of the row's session (asked first)."""
    settled = DONE_STATES | POLL_ONLY_STATES | {FAILED, PENDING}
    return row.status not in settled and bool(row.publish_id)


def next_step(row: LedgerRow, remote: RemoteStatus | None) -> Step:
    """The one way forward for a ledger row and (for a live session) TikTok's status.

    ``remote`` is None when the row has no session, or TikTok does not know its publish_id.
    """
    if row.status in DONE_STATES:
        return Step("done")
    if row.status == FAILED:
        if row.fail_reason == "internal":  # TikTok documents it retryable: a fresh publish
            return Step("init", reason="retry_after_internal_failure")
        return Step("failed")
    if row.status in POLL_ONLY_STATES:
        return Step("poll")
    if row.publish_id is None or row.status == PENDING:
        return Step("init", reason="first_init" if row.inits == 0 else "init_after_refusal")
    if remote is None:
        return Step("init", reason="publish_id_unknown_to_tiktok")
    if remote.status == "FAILED":
        return Step("failed")
    if remote.status != "PROCESSING_UPLOAD":
        return Step("poll")
    uploaded = remote.uploaded_bytes or 0
    if uploaded >= row.video_size:
        return Step("poll")
    return Step("upload", from_byte=uploaded)


# ----- which publish a request is ---------------------------------------------------------------


class KnownPublish(Protocol):
    """What :func:`select_publish` reads of an existing publish row."""

    @property
    def status(self) -> str: ...
    @property
    def generation(self) -> int: ...
    @property
    def post_options(self) -> dict[str, Any]: ...
    @property
    def created_ts(self) -> float: ...


P = TypeVar("P", bound=KnownPublish)


def select_publish(rows: Sequence[P], options: dict[str, Any], *, again: bool) -> P | None:
    """The existing publish a request is, or None when a new one must be made.

    ``rows`` are every publish of one media to one account. Without ``again`` the request *is*
    the existing publish, whatever its caption: the plain one (generation 0) unless it failed,
    else the latest that did not fail, else the latest (so the answer stays the same one).
    With ``again`` it is an earlier ``again`` publish (generation ≥ 1) of exactly these options
    that did not fail, so re-running the same ``--again`` never posts a third time.
    """
    ordered = sorted(rows, key=lambda r: (r.generation, r.created_ts))
    if not again:
        alive = [r for r in ordered if r.status != FAILED]
        plain = [r for r in alive if r.generation == 0]
        best = plain or alive or ordered
        return best[-1] if best else None
    same = [
        r for r in ordered if r.generation >= 1 and r.post_options == options and r.status != FAILED
    ]
    return same[-1] if same else None
