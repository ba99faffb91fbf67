"""`Journal`: what one segment knows of its run, and the one path its records take.

A segment replays the handler against the run's history. The journal holds that history
(records by key), the saved state, how calls are numbered (`kflow._engine.scopes`), the
workflow time reached so far, the lease epoch every write carries, and how the segment
ends (a suspension, the end, or a store failure). Steps, waits and compensations read and
write through it; `WorkflowContext` is the handler's view of it.

Every record goes to the store before anything else sees it. A store failure *poisons*
the journal: every later call raises that failure again, so nothing goes on from state
the database has not seen, and the engine propagates it when the segment ends.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable
from datetime import datetime
from typing import Any, TypeVar

from kflow._engine.scopes import Scopes
from kflow._engine.services import Services
from kflow._errors import PersistenceError, UndeclaredNameError, WorkflowTimeout
from kflow._models import RunRecord, StepState, SuspendReason
from kflow._serde import encode
from kflow._workflow import WorkflowDefinition

__all__ = ["CodeMismatch", "Journal", "SegmentEnded", "Suspended", "base_name"]

T = TypeVar("T")


class Suspended(BaseException):
    """Unwinds a handler at a sleep or event wait. Not an `Exception`, so user code's
    ``except Exception`` cannot swallow it; do not catch `BaseException` in handlers."""

    def __init__(self, reason: SuspendReason) -> None:
        super().__init__(reason)
        self.reason = reason


class SegmentEnded(BaseException):
    """Raised in tasks a handler left running after its segment ended."""


class CodeMismatch(BaseException):
    """The history does not fit the code replaying it (a recorded result no longer
    decodes into its declared type): the run blocks instead of going on. Not an
    `Exception`, so a handler's ``except Exception`` cannot go on past it."""


class Journal:
    """The in-memory record of one run during one segment."""

    def __init__(
        self,
        *,
        run: RunRecord,
        definition: WorkflowDefinition | None,
        history: list[StepState],
        saved_state: dict[str, Any],
        services: Services,
    ) -> None:
        self.run = run
        self.services = services
        self.definition = definition
        self.started_at: datetime = run.started_at or services.clock.now()
        self.records: dict[str, StepState] = {s.key: s for s in history}
        """The run's step, sleep and wait records by key, as the store has them."""
        self.saved: dict[str, Any] = dict(saved_state)
        """Saved state by key (JSON values), as the store has it."""
        self.persist_start = services.persist_step_start
        self._seq = max((s.seq or 0 for s in history), default=0)
        self._scopes = Scopes()
        self._time = self.started_at
        self._suspend: SuspendReason | None = None
        self._poison: PersistenceError | None = None
        self._mismatch: str | None = None
        self._closed = False

    @property
    def run_id(self) -> uuid.UUID:
        return self.run.run_id

    # -- workflow time ---------------------------------------------------------------

    @property
    def time(self) -> datetime:
        """The latest time the history has reached (see `WorkflowContext.workflow_time`)."""
        return self._time

    def reach(self, when: datetime | None) -> None:
        """The replay passed a record made at ``when``."""
        if when is not None and when > self._time:
            self._time = when

    # -- numbering -----------------------------------------------------------------

    def next_seq(self) -> int:
        """The completion order of the next record that completes."""
        self._seq += 1
        return self._seq

    def next_key(self, name: str, *, first_bare: bool = True) -> str:
        """The key of the next call of ``name`` (see `kflow._engine.scopes`)."""
        return self._scopes.next_key(name, first_bare=first_bare)

    def declared(self, kind: str, name: str) -> None:
        """Refuse a step or event name the run's workflow version did not declare."""
        definition = self.definition
        if definition is None:
            return
        names = definition.steps if kind == "step" else definition.events
        if name not in names:
            raise UndeclaredNameError(
                f"{kind} {name!r} is not declared by workflow {self.run.workflow_name!r} "
                f"v{self.run.workflow_version} (declared: {', '.join(names) or 'none'}); "
                f"declare it in @workflow({kind}s=[...]) under a new version"
            )

    # -- the write path ------------------------------------------------------------

    def guard(self, *, new_work: bool = False) -> None:
        """Refuse calls after the segment ended or the store failed; refuse *new* work
        (not the recording of work already done, nor compensation) past the deadline."""
        if self._closed:
            raise SegmentEnded(f"run {self.run_id}: this segment has ended")
        if self._poison is not None:
            raise self._poison
        if self._mismatch is not None:
            raise CodeMismatch(self._mismatch)
        deadline = self.run.deadline
        past = deadline is not None and self.services.clock.now() >= deadline
        if new_work and past:
            raise WorkflowTimeout(f"run {self.run_id} passed its deadline {deadline}")
        if new_work and self._suspend is not None and self._scopes.suspended():
            # A suspension came back as a value (gather(..., return_exceptions=True)):
            # the handler must not go on, on results this segment does not have.
            raise Suspended(self._suspend)

    async def store_call(self, call: Awaitable[T]) -> T:
        """Await a write of the store's (under the run's lease); a failure poisons the
        journal before it propagates."""
        try:
            return await call
        except PersistenceError as exc:
            self._poison = exc
            raise

    async def write(self, record: StepState) -> None:
        """Store ``record`` (under the lease), then take it into the history."""
        self.guard()
        try:  # store_call's work, inline: this is every step's path
            await self.services.store.write_step(self.run_id, self.run.lease_epoch, record)
        except PersistenceError as exc:
            self._poison = exc
            raise
        self.recorded(record)

    def recorded(self, record: StepState) -> None:
        """Take a record the store has already (written by another statement) into the
        history, and tell the engine's listeners."""
        self.records[record.key] = record
        for listener in self.services.listeners:
            listener(self.run_id, record)

    async def save_state(self, key: str, value: Any) -> None:
        """Store ``value`` as saved state (refused first if the segment cannot go on, so a
        stray call says why before its value is judged)."""
        self.guard(new_work=True)
        encoded = encode(value)
        store = self.services.store
        await self.store_call(store.save_state(self.run_id, self.run.lease_epoch, key, encoded))
        self.saved[key] = encoded

    # -- how the segment ends ------------------------------------------------------

    def suspending(self, reason: SuspendReason) -> Suspended:
        """Remember why the segment ends (for `take_suspend_reason`); raise the result."""
        self._suspend = reason
        self._scopes.mark_suspended()
        return Suspended(reason)

    def mismatch(self, record: str, problem: str) -> CodeMismatch:
        """The replay found ``record`` (``step 'charge'``) in the history, which this code
        cannot read for ``problem``: the segment blocks the run with a message that says
        what to do; raise the result."""
        run = self.run
        self._mismatch = self._mismatch or (
            f"{record}: {problem}: the code of workflow {run.workflow_name!r} "
            f"v{run.workflow_version} changed under this run. Deploy the code the run "
            "started with (or give the new code a new version, for new runs), then retry "
            f"the run; the {record.split(' ', 1)[0]} does not run again"
        )
        return CodeMismatch(self._mismatch)

    @property
    def mismatched(self) -> str | None:
        """Why the replay could not go on, if the history did not fit the code."""
        return self._mismatch

    def take_suspend_reason(self) -> SuspendReason | None:
        """Why the handler stopped, if it suspended; cleared by reading."""
        reason, self._suspend = self._suspend, None
        return reason

    def close(self) -> None:
        """End the segment: later calls from stray tasks raise `SegmentEnded`."""
        self._closed = True

    @property
    def poisoned(self) -> PersistenceError | None:
        """The store failure that stopped the segment, if one did."""
        return self._poison


def base_name(key: str) -> str:
    """The step name of a record key (``charge#2`` and ``charge[o-1]`` are ``charge``)."""
    return key.split("#", 1)[0].split("[", 1)[0]
