"""Where a run's next segment Pod goes, or why it cannot go anywhere (as values).

Read from the store each time: the runner binds the run's workflow version on its first
segment, and the `WorkflowDefinition` resource of that version (in the run's namespace) gives the
pod template. A run whose Workflow is missing or has no template, or an operator without
the Secret runners read their database DSN from, is `Unplaceable`: the pod executor
reports it and marks the run blocked until a Workflow resource changes.
"""

from __future__ import annotations

from dataclasses import dataclass

from kflow._engine import Engine
from kflow._errors import RunNotFound
from kflow.controller.catalog import Catalog
from kflow.controller.runs import RunRef, TrackedRun
from kflow.resources import PodTemplate

__all__ = ["PodTarget", "Unplaceable", "place"]


@dataclass(frozen=True)
class PodTarget:
    """Where a run's next segment Pod goes: its WorkflowRun, and the pod template."""

    ref: RunRef
    template: PodTemplate


@dataclass(frozen=True)
class Unplaceable:
    """Why a run's next segment Pod cannot be made."""

    reason: str


async def place(
    run: TrackedRun, *, engine: Engine, catalog: Catalog, dsn_secret: str | None
) -> PodTarget | Unplaceable | None:
    """Where the run's next segment Pod goes; None: the run is gone from the store."""
    try:
        stored = await engine.get_run(run.run_id)
    except RunNotFound:
        return None
    run.version = stored.workflow_version
    ref = run.ref
    placement = catalog.placement(ref.namespace, stored.workflow_name, stored.workflow_version)
    if placement.problem is not None or placement.template is None:
        return Unplaceable(placement.problem or "no pod template")
    if not dsn_secret:
        return Unplaceable("the pod executor is off: the operator has no KFLOW_RUNNER_DSN_SECRET")
    return PodTarget(ref, placement.template)
