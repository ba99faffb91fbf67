"""kflow: durable workflows for Kubernetes, with their state in PostgreSQL.

The public API is exactly what ``__all__`` lists (pinned by a test); everything else is
internal. See ``docs/api.md`` for the WorkflowContext reference.
"""

from kflow.clock import Clock, SystemClock, VirtualClock
from kflow.engine import Engine, WorkflowContext
from kflow.env import EnvProvider, MappingEnv, OsEnv
from kflow.errors import (
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
    RunNotFound,
    StepFailed,
    StepTimeout,
    TransientError,
    UndeclaredNameError,
    WorkflowTimeout,
)
from kflow.models import AuthContext, RunStatus, SegmentOutcome, StepState, StepStatus
from kflow.retry import RetryPolicy
from kflow.store import Store
from kflow.workflow import (
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
