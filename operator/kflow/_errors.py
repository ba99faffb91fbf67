"""The exceptions kflow raises, and what each asks of the caller.

::

    KflowError                      anything kflow raises on purpose
    ├── DefinitionError             a @workflow/@compensation or registry is malformed
    ├── UndeclaredNameError         a step or event name the workflow did not declare
    ├── RunNotFound                 no run with that id
    ├── RunConflict                 a run id or idempotency key names a run with another
    │                               workflow, version or input (``existing`` is that run)
    ├── InvalidInput                input does not validate against the workflow's model
    ├── StepFailed                  a step failed for good (retries exhausted or non-retryable)
    ├── StepTimeout                 one attempt of a step exceeded its timeout
    ├── EventTimeout                wait_for_event() passed its deadline without an event
    ├── EventPayloadError           an event's payload does not parse into the wanted type
    ├── WorkflowTimeout             the run passed its workflow-level deadline
    ├── EnvError                    a required environment variable is missing or unparseable
    ├── CircuitOpenError            ctx.http refused a call: the host's breaker is open
    ├── SchemaError                 the database holds a newer kflow schema than this code
    └── TransientError              try again later; nothing was lost
        ├── PersistenceError        the store failed; the segment stops, state is intact
        │   └── LeaseLost           a write carried a stale fencing epoch (another executor
        │                           took the run over); this executor must stop
        └── LeaseHeld               another executor is advancing the run right now

    NonRetryable                    raise from a step to fail it without further attempts

    ApiError                        the Kubernetes API server refused a request (or was out of
                                    reach: status 0); ``permanent`` (400, 403, 422): the same
                                    request is refused again, so retrying cannot help

`ApiError` is not a `KflowError`: it is the API server's answer, passed on (a handler that
refuses what kflow raises on purpose must not swallow it); `kflow.apierrors` decodes it.

Suspension (sleep, event wait) is not an error: it is `kflow._engine.Suspended`, a
`BaseException` so that ``except Exception`` in user code cannot swallow it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ApiError",
    "CircuitOpenError",
    "DefinitionError",
    "EnvError",
    "EventPayloadError",
    "EventTimeout",
    "InvalidInput",
    "KflowError",
    "LeaseHeld",
    "LeaseLost",
    "NonRetryable",
    "PersistenceError",
    "RunConflict",
    "RunNotFound",
    "SchemaError",
    "StepFailed",
    "StepTimeout",
    "TransientError",
    "UndeclaredNameError",
    "WorkflowTimeout",
]


class KflowError(Exception):
    """Base class of every error kflow raises on purpose."""


class DefinitionError(KflowError):
    """A workflow or compensation definition, or a registry, is malformed."""


class UndeclaredNameError(KflowError):
    """A step or event name was used that the workflow did not declare."""


class RunNotFound(KflowError):
    """No run has the given id."""


class RunConflict(KflowError):
    """A run id or idempotency key is taken by a run with another workflow, version or
    input: the existing run is not returned as if it were the one asked for."""

    def __init__(self, message: str, existing: Any) -> None:
        super().__init__(message)
        self.existing = existing
        """The run that holds the id or key (a `RunRecord`; typed loosely because the
        error tree sits below the models)."""


class InvalidInput(KflowError):
    """The run's input does not validate against the workflow's input model."""


class StepFailed(KflowError):
    """A step failed for good; replays raise the same error without calling the step again."""

    def __init__(self, step: str, error_type: str, message: str) -> None:
        super().__init__(f"step {step!r} failed: {error_type}: {message}")
        self.step = step
        self.error_type = error_type
        self.message = message


class StepTimeout(KflowError, TimeoutError):
    """One attempt of a step ran longer than its ``timeout``."""


class EventTimeout(KflowError, TimeoutError):
    """`wait_for_event` reached its deadline before the event arrived."""


class EventPayloadError(KflowError):
    """An event's payload did not parse into the type the wait asked for."""


class WorkflowTimeout(KflowError, TimeoutError):
    """The run passed its workflow-level deadline."""


class EnvError(KflowError):
    """A required environment variable is missing, or set but unparseable."""


class CircuitOpenError(KflowError):
    """`ctx.http` refused a request because the host's circuit breaker is open."""


class SchemaError(KflowError):
    """The database's kflow schema is newer than this code: upgrade kflow, do not retry."""


class TransientError(KflowError):
    """A failure that leaves all durable state intact: retry the segment later."""


class PersistenceError(TransientError):
    """The store failed. The segment stops; nothing unrecorded is treated as done."""


class LeaseLost(PersistenceError):
    """A write carried a stale fencing epoch: another executor owns the run now."""


class LeaseHeld(TransientError):
    """Another executor holds the run's lease."""


class NonRetryable(Exception):
    """Raise (or subclass) from a step to fail it at once, whatever its retry policy."""


_PERMANENT = frozenset({400, 403, 422})
"""Bad request, forbidden, invalid: answers the same request gets again."""


class ApiError(RuntimeError):
    """The API server answered with an error status; ``message`` is its own words."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"Kubernetes API {status}: {message}")
        self.status = status
        self.message = message

    @property
    def permanent(self) -> bool:
        """The same request will be refused again: report it, do not retry it."""
        return self.status in _PERMANENT
