"""The suite's warning policy: reelflow's own warnings are errors, not noise."""

from __future__ import annotations

import warnings

import pytest


@pytest.mark.parametrize("module", ["reelflow.sources", "flows.ingest", "tasks.scan", "storage"])
def test_a_warning_from_reelflow_code_fails(module: str) -> None:
    """A DeprecationWarning attributed to one of reelflow's packages raises under the suite's filters."""
    with pytest.raises(DeprecationWarning):
        warnings.warn_explicit("old API", DeprecationWarning, f"{module}.py", 1, module=module)


def test_a_third_party_warning_is_not_an_error() -> None:
    """A warning from another package is reported, not raised (it is not ours to fix)."""
    with pytest.warns(DeprecationWarning):
        warnings.warn_explicit("old API", DeprecationWarning, "somelib.py", 1, module="somelib")
