"""One error line for the whole ``reelflow`` CLI, typer's own usage errors included.

Typer reports a bad option value (``--chunk-size abc``), a missing argument or an unknown option
in a boxed, multi-line panel; reelflow's own refusals are one line. :class:`OneLineErrors` (the
click group class of every reelflow typer app) prints typer's the same way, with the same exit
code (2):

    error: <reason>: <message>

It also holds what every command shares when it fails: :func:`exit_code_for` (2 for terminal
errors, 1 for the rest), :func:`fail` (that line, then the exit) and
:func:`failing_in_one_line` (a command body that fails that way), and :func:`quiet_prefect_console`.

Must not: import prefect or anything that starts a server (it runs before every command).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import typer
from typer.core import TyperGroup

from reelflow.errors import ConfigurationError, InputRejectedError, PublishError, ReelflowError
from reelflow.logging import redact_text, remember_environment_secrets

# Typer (0.29) carries its own copy of click; its exception classes are matched by name, which
# also holds for a typer built on the click package.
REASONS = (
    ("MissingParameter", "missing_parameter"),
    ("BadParameter", "bad_parameter"),
    ("NoSuchOption", "no_such_option"),
    ("BadOptionUsage", "bad_usage"),
    ("BadArgumentUsage", "bad_usage"),
    ("UsageError", "usage"),
)


def usage_reason(exc: BaseException) -> str:
    """A snake_case reason for a typer/click usage error."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return next((reason for name, reason in REASONS if name in names), "cli_error")


def error_line(reason: str, message: str) -> str:
    """``error: <reason>: <message>`` on one line, secrets scrubbed."""
    text = " ".join(redact_text(message).split()) or reason
    return f"error: {reason}: {text}"


def exit_code_for(exc: BaseException) -> int:
    """2 for terminal errors a re-run cannot fix (bad input, TikTok refusals, bad settings);
    1 for everything else."""
    terminal_kinds = (InputRejectedError, PublishError, ConfigurationError)
    if isinstance(exc, ReelflowError) and not exc.retryable and isinstance(exc, terminal_kinds):
        return 2
    return 1


def fail(exc: BaseException) -> None:
    """One line on stderr (reason or TikTok's error code, secrets scrubbed), then exit."""
    remember_environment_secrets()
    kind = getattr(exc, "code", None) or getattr(exc, "reason", None) or type(exc).__name__
    typer.echo(error_line(kind, str(exc).strip() or type(exc).__name__), err=True)
    raise typer.Exit(exit_code_for(exc))


@contextlib.contextmanager
def failing_in_one_line() -> Iterator[None]:
    """A command's body: any error but ``typer.Exit`` ends it through :func:`fail`."""
    try:
        yield
    except typer.Exit:
        raise
    except Exception as exc:
        fail(exc)


def quiet_prefect_console() -> None:
    """Keep Prefect's per-run console chatter out of the CLI (it still reaches the API/UI)."""
    # Lazy: prefect is slow to import, and this module loads before every command.
    from prefect.logging.handlers import PrefectConsoleHandler

    for name in ("", "prefect"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, PrefectConsoleHandler):
                handler.setLevel(logging.CRITICAL + 1)


class OneLineErrors(TyperGroup):
    """A typer group whose usage errors are one line on stderr (exit 2), like reelflow's."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            # Not standalone: usage errors come back raised instead of printed as a panel, and
            # an Exit's code is returned instead of exiting.
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.TyperException as exc:
            ctx = getattr(exc, "ctx", None)
            if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
                typer.echo(ctx.get_help(), err=True)  # a bare command: its help, as before
                sys.exit(exc.exit_code)
            message = exc.format_message()
            if ctx is not None and usage_reason(exc) != "cli_error":
                message += f" (see `{ctx.command_path} --help`)"
            typer.echo(error_line(usage_reason(exc), message), err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo(error_line("aborted", "aborted"), err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)
