"""structlog set-up: one configuration, a redaction processor, and a bridge into Prefect logs.

Events are past-tense snake_case facts with data in keys. Inside a Prefect flow or task run the
rendered event also goes to ``get_run_logger()`` so it shows under the run in the UI.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog
from structlog.typing import EventDict

SECRET_KEY_PATTERN = re.compile(
    r"(token|secret|password|authorization|api_key|credential)", re.IGNORECASE
)
SECRET_VALUE_PATTERNS = (
    re.compile(r"(upload_token=)[^&\s\"']+"),
    re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(r"((?:access|refresh)_token['\"]?\s*[:=]\s*['\"]?)[^'\"&\s,}]+"),
)
REDACTED = "***"


def redact_text(text: str) -> str:
    for pattern in SECRET_VALUE_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def redact_secrets(_: Any, __: str, event_dict: EventDict) -> EventDict:
    """Drop the value of any key that names a secret, and scrub token-shaped substrings."""
    for key, value in list(event_dict.items()):
        if SECRET_KEY_PATTERN.search(key) and key != "event":
            event_dict[key] = REDACTED
        elif isinstance(value, str):
            event_dict[key] = redact_text(value)
    return event_dict


def to_prefect_run_logger(_: Any, method: str, event_dict: EventDict) -> EventDict:
    """Forward the event to the current Prefect run's logger, if there is a run."""
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
    fields = " ".join(f"{k}={v}" for k, v in event_dict.items() if k not in {"event", "level"})
    logger.log(
        level if isinstance(level, int) else logging.INFO, f"{event_dict.get('event')} {fields}"
    )
    raise structlog.DropEvent  # the run logger already printed it to the console


class _StderrLogger:
    """Writes to whatever ``sys.stderr`` is *now* (test runners and daemons swap it)."""

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


_configured = False


def configure_logging(*, json: bool | None = None, level: int = logging.INFO) -> None:
    """Configure structlog once per process (JSON when stderr is not a TTY)."""
    global _configured
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
