"""prefect.yaml and the flows agree: every entrypoint imports, every parameter exists."""

from __future__ import annotations

import inspect

import pytest

from deployments.serve import load_flow, load_spec, runner_deployment

SPECS = load_spec()


def test_expected_deployments_are_declared() -> None:
    """The deployments the product documents are all in prefect.yaml."""
    assert {s["name"] for s in SPECS} == {
        "ingest-video",
        "publish-media",
        "publish-due",
        "reconcile-publishes",
        "cleanup",
        "delete-media",
    }


@pytest.mark.parametrize("spec", SPECS, ids=[s["name"] for s in SPECS])
def test_entrypoint_parameters_match_the_flow(spec: dict) -> None:
    """Default and trigger parameters name real flow parameters; required ones are provided."""
    flow = load_flow(spec["entrypoint"])
    signature = inspect.signature(flow.fn)
    names = set(signature.parameters)
    assert set(spec.get("parameters") or {}) <= names
    for trigger in spec.get("triggers") or []:
        assert set(trigger["parameters"]) <= names, trigger["name"]
        required = {
            n for n, p in signature.parameters.items() if p.default is inspect.Parameter.empty
        }
        assert required <= set(trigger["parameters"]), trigger["name"]
    if not spec.get("triggers"):
        required = {
            n for n, p in signature.parameters.items() if p.default is inspect.Parameter.empty
        }
        # A scheduled deployment must be runnable with no parameters at all.
        if spec.get("schedules"):
            assert required <= set(spec.get("parameters") or {})


@pytest.mark.parametrize("spec", SPECS, ids=[s["name"] for s in SPECS])
def test_runner_deployments_build_with_schedules_and_triggers(spec: dict) -> None:
    """`reelflow serve` turns each entry into a RunnerDeployment with its schedules/triggers."""
    deployment = runner_deployment(spec)
    assert deployment.name == spec["name"]
    assert len(deployment.schedules or []) == len(spec.get("schedules") or [])
    assert len(deployment.triggers or []) == len(spec.get("triggers") or [])
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(load_flow(spec["entrypoint"]).fn).model_dump()
    for name, prop in schema.get("properties", {}).items():
        assert prop.get("description"), f"{spec['name']}.{name} has no description for the UI form"
