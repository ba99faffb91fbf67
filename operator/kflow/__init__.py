"""kflow: durable workflows for Kubernetes, with their state in PostgreSQL.

The public API is exactly what ``__all__`` lists (pinned by a test); everything else is
internal. See ``docs/api.md`` for the WorkflowContext reference.
"""

from kflow._clock import Clock, SystemClock, VirtualClock
from kflow._engine import Engine, WorkflowContext
from kflow._env import EnvProvider, MappingEnv, OsEnv
from kflow._errors import (
    CircuitOpenError,
    DefinitionError,
    EnvError,
    EventPayloadError,
    EventTimeout,
    InvalidInput,
    KflowError,
    LeaseHeld,
    LeaseLost,
    NonRetryable,
    PersistenceError,
    RunConflict,
    RunNotFound,
    StepFailed,
    StepTimeout,
    TransientError,
    UndeclaredNameError,
    WorkflowTimeout,
)
from kflow._models import (
    AuthContext,
    DefinitionConflict,
    RunStatus,
    SegmentOutcome,
    StepState,
    StepStatus,
)
from kflow._retry import RetryPolicy
from kflow._store import Store
from kflow._workflow import (
    CompensationDefinition,
    Registry,
    WorkflowDefinition,
    compensation,
    workflow,
)

__all__ = [
    "AuthContext",
    "CircuitOpenError",
    "Clock",
    "CompensationDefinition",
    "DefinitionConflict",
    "DefinitionError",
    "Engine",
    "EnvError",
    "EnvProvider",
    "EventPayloadError",
    "EventTimeout",
    "InvalidInput",
    "KflowError",
    "LeaseHeld",
    "LeaseLost",
    "MappingEnv",
    "NonRetryable",
    "OsEnv",
    "PersistenceError",
    "Registry",
    "RetryPolicy",
    "RunConflict",
    "RunNotFound",
    "RunStatus",
    "SegmentOutcome",
    "StepFailed",
    "StepState",
    "StepStatus",
    "StepTimeout",
    "Store",
    "SystemClock",
    "TransientError",
    "UndeclaredNameError",
    "VirtualClock",
    "WorkflowContext",
    "WorkflowDefinition",
    "WorkflowTimeout",
    "compensation",
    "workflow",
]
