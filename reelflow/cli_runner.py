"""``reelflow runner status|stop``: the CLI's view of this environment's warm runner.

Runs in the CLI's own process (never through the runner: it must work when the runner is
wedged). The runner itself is reelflow/runner.py; what it is for is in docs/runner.md.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import typer

from reelflow import runner_rules as rules

runner_app = typer.Typer(help="The warm runner that serves ingest/publish/status/media")


def _ask(op: str) -> dict[str, Any] | None:
    sock = rules.connect(rules.socket_path(os.environ, sys.prefix))
    if sock is None:
        return None
    with sock:
        sock.settimeout(rules.REQUEST_TIMEOUT_S)
        rules.send_message(sock, {"op": op})
        return rules.LineReader(sock).next()


@runner_app.command("status")
def status_command(as_json: bool = typer.Option(False, "--json")) -> None:
    """Show this environment's runner (exit 1 if none is running)."""
    answer = _ask("status")
    if as_json:
        typer.echo(json.dumps(answer))
    elif answer is None:
        typer.echo(f"no runner ({rules.socket_path(os.environ, sys.prefix)})")
    else:
        for name in ("pid", "socket", "api_url", "api_pid", "children", "idle_in_s"):
            typer.echo(f"{name}: {answer.get(name)}")
    if answer is None:
        raise typer.Exit(1)


@runner_app.command("stop")
def stop_command() -> None:
    """Stop this environment's runner and its local Prefect API (runs still going are ended)."""
    answer = _ask("stop")
    if answer is None:
        typer.echo("no runner")
        return
    pid = int(answer["stopping"])
    deadline = time.monotonic() + rules.STOP_WAIT_S
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            typer.echo(f"stopped runner {pid}")
            return
        time.sleep(0.05)
    typer.echo(f"runner {pid} is still stopping", err=True)
    raise typer.Exit(1)
