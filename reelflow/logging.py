"""structlog set-up, the one redactor, and a bridge into Prefect logs.

Events are past-tense snake_case facts with data in keys. Inside a Prefect flow or task run the
event goes to ``get_run_logger()`` instead, so it shows under the run in the UI: the message is
the readable ``event key=value ...`` line and the fields stay structured, as the record's
``extra`` (one attribute per field, and all of them under ``event_fields``).

The redactor (:func:`redact_text`) is the only one in reelflow: structlog runs it as a processor,
:class:`RedactingFilter` runs it on every stdlib record that reaches Prefect's handlers (console,
the API log handler that ships run logs to the server) and urllib3's loggers, the CLI runs it on
its error line, and :class:`reelflow.errors.ReelflowError` runs it on every message it is given.
It masks secret *shapes* (URL userinfo, ``token=`` / ``X-Amz-Signature=`` values, bearer
headers, TikTok tokens) and secret *values* this process knows (:func:`remember_secret`: the
configured client secret, webhook secret, AWS keys, encryption key, DB URL password, and the
credential parts of a sealed source URL) wherever they appear verbatim.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import structlog
from structlog.typing import EventDict

REDACTED = "***"
# Shorter values would mask ordinary words; shapes (key=value, userinfo) still catch them.
MIN_SECRET_CHARS = 6

SECRET_KEY_PATTERN = re.compile(
    r"(token|secret|password|passwd|authorization|api_key|apikey|credential|signature|cookie)",
    re.IGNORECASE,
)

# Names whose value is a secret wherever they appear as name=value, "name": "value" or name: value.
_SECRET_NAMES = (
    r"upload_token|access_token|refresh_token|id_token|client_secret|code_verifier|"
    r"x-amz-security-token|x-amz-signature|x-amz-credential|aws_secret_access_key|"
    r"aws_session_token|secret_key|webhook_secret|api_key|apikey|password|passwd|"
    r"signature|sig|token|secret|proxy-authorization|authorization|credentials|credential"
)
_NAMED_VALUE = re.compile(
    rf"(?<![A-Za-z0-9_.-])((?:{_SECRET_NAMES})['\"]?\s*[:=]\s*['\"]?"
    # An Authorization value's scheme is kept, its credentials go.
    r"(?:(?:Bearer|Basic|Token|Digest)\s+)?)"
    r"([^'\"&\s,;}<>)\]]+)",
    re.IGNORECASE,
)
# A whole Cookie / Set-Cookie value (several name=value pairs, any of them a session secret).
_COOKIE = re.compile(
    r"(?<![A-Za-z0-9_.-])((?:set-)?cookie['\"]?\s*[:=]\s*['\"]?)([^\r\n'\"]+)", re.IGNORECASE
)
# The same names as structlog keys (``code_verifier=...``, ``sig=...``): the two rule sets
# cover the same names whether a secret arrives as a key or inside text.
_SECRET_KEY_EXACT = re.compile(rf"(?:{_SECRET_NAMES}|(?:set-)?cookie)", re.IGNORECASE)
# ``code`` is an OAuth authorization code as a ``code=`` pair (query, form, message); TikTok's
# JSON ``"code": "spam_risk"`` and ``tiktok_code=`` are error codes worth keeping.
_OAUTH_CODE = re.compile(r"((?<![A-Za-z0-9_.-])code=)([^&\s\"'<>]+)", re.IGNORECASE)
# scheme://userinfo@ : the whole userinfo goes (a lone user part is often a token itself).
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^\s/?#@\"'<>]+(?:@[^\s/?#@\"'<>]+)*)@")
_AUTH_SCHEME = re.compile(r"\b(Bearer|Basic|Token)\s+[^\s\"',;]+", re.IGNORECASE)
# TikTok's user tokens look like act.<...> and rft.<...>; client tokens clt.<...>.
_TIKTOK_TOKEN = re.compile(r"\b(act|rft|clt)\.[A-Za-z0-9!._~+/=*%-]{6,}")

_known: set[str] = set()
_known_pattern: re.Pattern[str] | None = None
_known_lock = threading.Lock()

# Environment variables whose value is a secret in any process reelflow runs in.
SECRET_ENV_VARS = (
    "REELFLOW_TIKTOK_CLIENT_SECRET",
    "REELFLOW_WEBHOOK_SECRET",
    "REELFLOW_SECRET_KEY",
    "REELFLOW_GATEWAY_SECRET",
    "REELFLOW_TIKTOK_ACCESS_TOKEN",
    "REELFLOW_TIKTOK_REFRESH_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "PREFECT_API_KEY",
)
# Environment variables holding URLs whose userinfo is a secret.
SECRET_URL_ENV_VARS = ("REELFLOW_DATABASE_URL", "PREFECT_API_DATABASE_CONNECTION_URL")


def remember_secret(value: str | None) -> None:
    """Mask ``value`` (and its percent-encoded forms) wherever it appears from now on."""
    if not value or len(value) < MIN_SECRET_CHARS:
        return
    forms = {value, quote(value, safe=""), quote(value, safe="/:"), unquote(value)}
    global _known_pattern
    with _known_lock:
        if forms <= _known:
            return
        _known.update(f for f in forms if len(f) >= MIN_SECRET_CHARS)
        # Longest first, so a secret that contains another is masked whole.
        ordered = sorted(_known, key=len, reverse=True)
        _known_pattern = re.compile("|".join(re.escape(s) for s in ordered))


def remember_url_credentials(url: str | None) -> None:
    """Remember the userinfo (user and password) of a URL such as a database URL."""
    if not url or "@" not in url:
        return
    try:
        parts = urlsplit(url)
    except ValueError:
        return
    remember_secret(parts.password)
    remember_secret(parts.username)


def remember_environment_secrets(environ: dict[str, str] | None = None) -> None:
    """Remember the secrets this process was configured with through its environment."""
    env = os.environ if environ is None else environ
    for name in SECRET_ENV_VARS:
        remember_secret(env.get(name))
    for name in SECRET_URL_ENV_VARS:
        remember_url_credentials(env.get(name))


def remember_settings_secrets(settings: Any) -> None:
    """Remember the secret fields of a :class:`reelflow.settings.Settings`."""
    for field in ("tiktok_client_secret", "webhook_secret", "secret_key", "gateway_secret"):
        value = getattr(settings, field, None)
        if value is not None:
            remember_secret(value.get_secret_value())
    remember_url_credentials(getattr(settings, "database_url", None))


def redact_text(text: str) -> str:
    """``text`` with every secret this module recognises replaced by ``***``."""
    pattern = _known_pattern
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    text = _USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    text = _COOKIE.sub(lambda m: m.group(1) + REDACTED, text)
    text = _NAMED_VALUE.sub(lambda m: m.group(1) + REDACTED, text)
    text = _OAUTH_CODE.sub(lambda m: m.group(1) + REDACTED, text)
    text = _AUTH_SCHEME.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return _TIKTOK_TOKEN.sub(lambda m: f"{m.group(1)}.{REDACTED}", text)


def redact_value(value: Any) -> Any:
    """Redact strings inside ``value`` (dicts, lists, tuples too); other scalars stay as they are."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: REDACTED if _names_secret(k) else redact_value(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(redact_value(v) for v in value)
    if isinstance(value, list | set | frozenset):
        return [redact_value(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    text = str(value)
    redacted = redact_text(text)
    return value if redacted == text else redacted


def _names_secret(key: Any) -> bool:
    if not isinstance(key, str) or key == "event":
        return False
    return bool(SECRET_KEY_PATTERN.search(key) or _SECRET_KEY_EXACT.fullmatch(key))


def redact_secrets(_: Any, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: drop the value of any key that names a secret, scrub the rest."""
    exc_info = event_dict.pop("exc_info", None)
    if exc_info:
        # Rendered here so the traceback (URLs in exception messages) is scrubbed too.
        event_dict["exception"] = structlog.processors.format_exc_info(
            None, "", {"exc_info": exc_info}
        ).get("exception", "")
    for key, value in list(event_dict.items()):
        event_dict[key] = REDACTED if _names_secret(key) else redact_value(value)
    return event_dict


class RedactingFilter(logging.Filter):
    """A stdlib filter that redacts a record's rendered message, traceback and stack in place.

    The traceback is folded into the message (``exc_info`` cleared) so that no handler, Prefect's
    API log handler included, formats the unredacted exception again.
    """

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_reelflow_redacted", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken %-format: keep the raw template, never crash logging
            message = str(record.msg)
        if record.exc_info:
            message += "\n" + self._formatter.formatException(record.exc_info)
        elif record.exc_text:
            message += "\n" + record.exc_text
        if record.stack_info:
            message += "\n" + record.stack_info
        record.msg = redact_text(message)
        record.args = ()
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        record._reelflow_redacted = True  # type: ignore[attr-defined]  # seen by the next handler
        return True


# Loggers whose records are redacted at the logger and at every handler they reach.
REDACTED_LOGGERS = ("", "prefect", "urllib3", "httpx", "httpcore", "botocore", "uvicorn")


def _ensure_filter(target: logging.Logger | logging.Handler) -> None:
    if not any(isinstance(f, RedactingFilter) for f in target.filters):
        target.addFilter(RedactingFilter())


def install_log_redaction(extra_loggers: Iterable[str] = ()) -> None:
    """Put :class:`RedactingFilter` on Prefect's loggers (``prefect`` and every child that exists
    now), on the root logger, and on every handler they have; idempotent.

    Handler filters are what count: a record logged to ``prefect.flow_runs`` propagates to the
    handlers of ``prefect`` and the root without passing their loggers' filters.
    """
    remember_environment_secrets()
    # Lazy (here and below): prefect is slow to import, and the CLI loads this module first.
    try:  # Prefect configures its loggers lazily; their handlers must exist to be filtered
        from prefect.logging.configuration import ensure_logging_setup
    except ImportError:  # pragma: no cover - prefect is a hard dependency
        pass
    else:
        ensure_logging_setup()
    names = set(REDACTED_LOGGERS) | set(extra_loggers)
    manager = logging.Logger.manager
    for name in list(manager.loggerDict):
        if any(name == n or name.startswith(n + ".") for n in names if n):
            names.add(name)
    for name in names:
        logger = logging.getLogger(name)
        _ensure_filter(logger)
        for handler in logger.handlers:
            _ensure_filter(handler)


# LogRecord's own attributes: an ``extra`` key with one of these names makes ``makeRecord``
# raise, so such an event field reaches the record under ``event_fields`` only.
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def prefect_record_fields(event_dict: EventDict, taken: Any = ()) -> dict[str, Any]:
    """The ``extra`` of the stdlib record an event becomes under a Prefect run.

    Every field (``event`` and ``level`` aside) is a record attribute of its own, so handlers
    and formatters that read attributes (a JSON formatter, a filter, a test) query it as a
    value, not as a substring of the message. A field whose name is a LogRecord attribute or one
    of ``taken`` (the run logger's own ``extra``: ``flow_run_id``, ``task_run_id``, ... that
    Prefect's API handler routes the record by) is left out at the top level; ``event_fields``
    always holds them all, and ``event`` names the event.
    """
    fields = {k: v for k, v in event_dict.items() if k not in {"event", "level"}}
    reserved = _RECORD_ATTRS | set(taken) | {"event", "event_fields"}
    extra = {k: v for k, v in fields.items() if k not in reserved}
    extra["event"] = event_dict.get("event")
    extra["event_fields"] = fields
    return extra


def to_prefect_run_logger(_: Any, method: str, event_dict: EventDict) -> EventDict:
    """Forward the event to the current Prefect run's logger, if there is a run: the message is
    the readable ``event key=value ...`` line, the fields ride along as the record's ``extra``
    (:func:`prefect_record_fields`)."""
    try:
        from prefect.exceptions import MissingContextError
        from prefect.logging import get_run_logger
    except ImportError:  # pragma: no cover - prefect is a hard dependency
        return event_dict
    try:
        logger = get_run_logger()
    except MissingContextError:
        return event_dict
    level = logging.getLevelName(method.upper()) if method != "exception" else logging.ERROR
    extra = prefect_record_fields(event_dict, taken=getattr(logger, "extra", None) or ())
    text = " ".join(f"{k}={v}" for k, v in extra["event_fields"].items())
    logger.log(
        level if isinstance(level, int) else logging.INFO,
        f"{event_dict.get('event')} {text}",
        extra=extra,
    )
    raise structlog.DropEvent  # the run logger already printed it to the console


class _StderrLogger:
    """Writes to whatever ``sys.stderr`` is *now* (test runners and daemons swap it)."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


_configured = False


def configure_logging(*, json: bool | None = None, level: int = logging.INFO) -> None:
    """Configure structlog once per process (JSON when stderr is not a TTY), and put the
    redactor on Prefect's loggers (again on every call: Prefect may have added handlers)."""
    global _configured
    install_log_redaction()
    if _configured:
        return
    use_json = (not sys.stderr.isatty()) if json is None else json
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            redact_secrets,
            to_prefect_run_logger,
            structlog.processors.TimeStamper(fmt="iso"),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=lambda *_: _StderrLogger(),
        cache_logger_on_first_use=True,
    )
    _configured = True


def get_logger(name: str = "reelflow", **bound: Any) -> Any:
    return structlog.get_logger(name).bind(**bound)
