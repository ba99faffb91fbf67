"""`RunControl`: what adoption and annotation delivery may ask of the controller.

`kflow.controller.adoption` and `kflow.controller.delivery` act on runs the controller
tracks; they see it through this narrow interface only (the `Controller` satisfies it
structurally), so neither imports the controller nor touches its internals, and the
controller's modules form layers without a cycle.
"""

from __future__ import annotations

import uuid
from typing import Protocol

from kflow._engine import Engine
from kflow._models import RunRecord, SegmentOutcome
from kflow.controller.catalog import Catalog
from kflow.controller.mirror import StatusMirror
from kflow.controller.runs import RunRef, TrackedRun
from kflow.controller.tasks import Background
from kflow.resources import WorkflowRunSpec, WorkflowRunStatus

__all__ = ["RunControl"]


class RunControl(Protocol):
    @property
    def engine(self) -> Engine: ...

    @property
    def catalog(self) -> Catalog: ...

    @property
    def mirror(self) -> StatusMirror: ...

    @property
    def background(self) -> Background: ...

    def record(self, run_id: uuid.UUID) -> TrackedRun | None:
        """The run's record; None once it is forgotten (or before it is known)."""

    def enter(self, ref: RunRef) -> TrackedRun:
        """The WorkflowRun's record, made now if it has none (an adoption begins)."""

    async def begin(
        self, record: TrackedRun, run: RunRecord, spec: WorkflowRunSpec,
        status: WorkflowRunStatus | None, *, resumed: bool,
    ) -> None:  # fmt: skip
        """The run exists: track it and set it moving if it has anything to do
        (``status``: the object's own)."""

    def submit(self, run_id: uuid.UUID) -> None:
        """Advance the run soon, in the executor its Workflow chooses."""

    def in_pods(self, run_id: uuid.UUID) -> bool:
        """The run's segments run in Pods (not inline)."""

    async def cancel(self, run_id: uuid.UUID, reason: str) -> SegmentOutcome:
        """Cancel the run (its running segment stopped first)."""

    async def settle(self, outcome: SegmentOutcome) -> None:
        """The run changed outside its executors (retired, retried): drop its pending
        wake-up and act on where it stands now."""

    async def warn(self, ref: RunRef, reason: str, message: str) -> None:
        """Post a Warning Event on the WorkflowRun (never fails the caller)."""

    async def event(self, ref: RunRef, kind: str, reason: str, message: str) -> None:
        """Post an Event (``kind``: Normal or Warning) on the WorkflowRun (never fails the
        caller)."""
