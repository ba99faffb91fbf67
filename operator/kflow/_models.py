"""The records kflow keeps about a run, shared by the store, the context and the engine.

Plain data, no I/O: statuses, step states, suspension reasons and segment outcomes.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = [
    "ACTIVE",
    "TERMINAL",
    "AuthContext",
    "DefinitionConflict",
    "RunRecord",
    "RunStatus",
    "SegmentOutcome",
    "StepKind",
    "StepState",
    "StepStatus",
    "SuspendKind",
    "SuspendReason",
]


class RunStatus(StrEnum):
    """A run's lifecycle state (Forge's set; shown as the WorkflowRun's phase)."""

    CREATED = "Created"
    RUNNING = "Running"
    WAITING = "Waiting"
    COMPLETED = "Completed"
    COMPENSATING = "Compensating"
    COMPENSATED = "Compensated"
    FAILED = "Failed"
    BLOCKED_MISSING_VERSION = "BlockedMissingVersion"
    BLOCKED_SIGNATURE_MISMATCH = "BlockedSignatureMismatch"
    BLOCKED_MISSING_HANDLER = "BlockedMissingHandler"
    RETIRED_UNRESUMABLE = "RetiredUnresumable"
    CANCELLED_BY_OPERATOR = "CancelledByOperator"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL

    @property
    def is_blocked(self) -> bool:
        return self.value.startswith("Blocked")


TERMINAL = frozenset(
    {
        RunStatus.COMPLETED,
        RunStatus.COMPENSATED,
        RunStatus.FAILED,
        RunStatus.RETIRED_UNRESUMABLE,
        RunStatus.CANCELLED_BY_OPERATOR,
    }
)
ACTIVE = frozenset(RunStatus) - TERMINAL


class StepKind(StrEnum):
    STEP = "step"
    SLEEP = "sleep"
    EVENT = "event"


class StepStatus(StrEnum):
    RUNNING = "running"
    """Started (recorded only with persist_step_start) and not finished."""
    RETRYING = "retrying"
    """An attempt failed; the next one is due at ``wake_at``."""
    COMPLETED = "completed"
    FAILED = "failed"
    """Failed for good: replays raise the same error."""
    WAITING = "waiting"
    """A sleep or an event wait that has not finished."""
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"

    @property
    def has_result(self) -> bool:
        """The step completed (whatever its compensation did since): replays return its
        recorded result."""
        return self in _WITH_RESULT


_WITH_RESULT = frozenset(
    {StepStatus.COMPLETED, StepStatus.COMPENSATED, StepStatus.COMPENSATION_FAILED}
)


class AuthContext(BaseModel):
    """Who started the run (for the operator: the Kubernetes user that created it)."""

    model_config = ConfigDict(frozen=True)

    subject: str | None = None
    groups: tuple[str, ...] = ()
    claims: dict[str, Any] = {}


@dataclass(slots=True)
class StepState:
    """One durable operation of a run: a step, a sleep or an event wait.

    ``key`` identifies it within the run: the step's name for its first call,
    ``name#2``, ``name#3``... for later calls of the same name, ``name[key]`` for an
    explicit key; sleeps are ``@sleep#n`` and event waits ``@event:<name>#n``.
    """

    key: str
    name: str
    kind: StepKind = StepKind.STEP
    status: StepStatus = StepStatus.RUNNING
    attempts: int = 0
    result: Any = None
    error: str | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    wake_at: datetime | None = None
    compensation: dict[str, Any] | None = None
    seq: int | None = None
    """Completion order within the run; compensation runs in reverse of it."""


class SuspendKind(StrEnum):
    SLEEP = "sleep"
    EVENT = "event"
    RETRY = "retry"


@dataclass(frozen=True, slots=True)
class SuspendReason:
    """Why a segment ended without finishing the run."""

    kind: SuspendKind
    key: str
    wake_at: datetime | None = None
    """When to resume: the sleep's end, the event's deadline, or the next retry."""
    event: str | None = None


@dataclass(slots=True)
class RunRecord:
    """A run's row in the store."""

    run_id: uuid.UUID
    workflow_name: str
    workflow_version: int | None
    signature: str | None
    status: RunStatus
    input: Any = None
    output: Any = None
    error: str | None = None
    tenant_id: uuid.UUID | None = None
    auth: AuthContext = field(default_factory=AuthContext)
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    deadline: datetime | None = None
    timeout_seconds: float | None = None
    wake_at: datetime | None = None
    waiting_event: str | None = None
    suspend_kind: SuspendKind | None = None
    segments: int = 0
    lease_epoch: int = 0
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    idempotency_key: str | None = None


@dataclass(frozen=True, slots=True)
class SegmentOutcome:
    """What a segment left behind, for the executor that ran it."""

    run_id: uuid.UUID
    status: RunStatus
    ready_at: datetime | None = None
    """When the run should be advanced next: ``None`` when only an event (or nothing,
    for finished and blocked runs) can move it; a time at or before now to go on at once."""
    waiting_event: str | None = None
    output: Any = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class DefinitionConflict:
    """A workflow version the database records with another contract than this code's:
    its runs block (`Engine.register_definitions` reports it; the record is kept)."""

    name: str
    version: int
    stored: str
    """The signature recorded for (name, version)."""
    code: str
    """The signature of the code that tried to register it."""

    @property
    def message(self) -> str:
        return (
            f"workflow {self.name!r} v{self.version} is recorded with signature "
            f"{self.stored[:12]} but this code has {self.code[:12]}: its steps, events, "
            "timeout or types changed without a new version; deploy the recorded code, or "
            "give the new code a new version"
        )
