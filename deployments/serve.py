"""`reelflow serve`: every deployment in prefect.yaml (schedules and triggers) from one process.

prefect.yaml is the single source of truth: `prefect deploy --all` reads it for the production
path (process work pool + `prefect worker start`); this module reads the same file and serves
the same deployments with Prefect's runner for the embedded path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from prefect import serve
from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger
from prefect.flows import load_flow_from_entrypoint

PROJECT_DIR = Path(__file__).resolve().parents[1]
PREFECT_YAML = PROJECT_DIR / "prefect.yaml"


def load_spec(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    """The deployments of prefect.yaml (YAML anchors resolved)."""
    data = yaml.safe_load(path.read_text())
    deployments: list[dict[str, Any]] = data["deployments"]
    return deployments


def load_flow(entrypoint: str) -> Any:
    return load_flow_from_entrypoint(str(PROJECT_DIR / entrypoint))


def runner_deployment(spec: dict[str, Any]) -> Any:
    """One prefect.yaml deployment as a RunnerDeployment (served by this process)."""
    flow = load_flow(spec["entrypoint"])
    schedules = spec.get("schedules") or []
    intervals = [s["interval"] for s in schedules if "interval" in s and s.get("active", True)]
    crons = [s["cron"] for s in schedules if "cron" in s and s.get("active", True)]
    triggers = [
        DeploymentEventTrigger(**{k: v for k, v in t.items() if k != "type"})
        for t in spec.get("triggers") or []
        if t.get("type", "event") == "event"
    ]
    return flow.to_deployment(
        name=spec["name"],
        interval=intervals or None,
        cron=crons or None,
        parameters=spec.get("parameters") or {},
        triggers=triggers or None,
        description=spec.get("description"),
        tags=spec.get("tags"),
        concurrency_limit=spec.get("concurrency_limit"),
    )


def serve_all(*, limit: int | None = None, only: list[str] | None = None) -> None:
    """Serve every deployment (or those named in ``only``) until interrupted."""
    specs = [s for s in load_spec() if not only or s["name"] in only]
    serve(*[runner_deployment(s) for s in specs], limit=limit)
