"""One segment of a run: replay its handler (or its compensations) under a held lease.

`Segments` is the engine's friend, as `kflow._engine.steps` is the context's: `Engine` takes the
lease and calls `advance` (bind the run to its code, replay the handler until it suspends
or ends) or `compensate` (a cancelled run's undoing), and `finish` records how the segment
left the run and gives the lease back. Store failures and lost leases propagate.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pydantic import ValidationError

from kflow._clock import Clock
from kflow._engine.compensations import outstanding
from kflow._engine.context import WorkflowContext
from kflow._engine.journal import CodeMismatch, Journal, SegmentEnded, Suspended
from kflow._engine.services import Services
from kflow._errors import InvalidInput, TransientError, WorkflowTimeout
from kflow._models import (
    DefinitionConflict,
    RunRecord,
    RunStatus,
    SegmentOutcome,
    StepState,
    StepStatus,
    SuspendReason,
)
from kflow._serde import decode, describe_validation_error, encode
from kflow._store import Store
from kflow._workflow import Registry, WorkflowDefinition

__all__ = ["CANCELLED", "UNDONE", "Segments", "decode_input", "segment_outcome"]

CANCELLED = "cancelled: "
"""How a cancelled run's error starts (and how retry tells a cancel from a failure)."""

UNDONE = "undone after a failure: "
"""How the error of a run that compensated itself after a failure starts (a retry of it
finishes the undoing, as a cancelled run's does)."""


class Segments:
    def __init__(self, store: Store, registry: Registry, clock: Clock, services: Services) -> None:
        self.store, self.registry, self.clock, self._services = store, registry, clock, services
        self.conflicts: dict[tuple[str, int], DefinitionConflict] = {}
        """Versions of this code the database records with another contract: refused."""

    async def finish(
        self,
        run: RunRecord,
        status: RunStatus,
        *,
        reason: SuspendReason | None = None,
        **fields: Any,
    ) -> None:
        """Record the run's state after the segment (``fields``: run columns) and give
        the lease back; a run that suspends for ``reason`` records when it is due."""
        await self.store.update_run(
            run.run_id,
            run.lease_epoch,
            now=self.clock.now(),
            release=True,
            status=status,
            wake_at=reason.wake_at if reason else None,
            waiting_event=reason.event if reason else None,
            suspend_kind=reason.kind if reason else None,
            **fields,
        )
        if status.is_terminal:
            self._services.closures.pop(run.run_id, None)

    def _resolve(self, run: RunRecord) -> tuple[WorkflowDefinition | None, RunStatus, str]:
        name, version = run.workflow_name, run.workflow_version
        if not self.registry.has_workflow(name):
            return None, RunStatus.BLOCKED_MISSING_HANDLER, f"no handler for workflow {name!r}"
        definition = (
            self.registry.active(name) if version is None else self.registry.get(name, version)
        )
        if definition is None:
            return None, RunStatus.BLOCKED_MISSING_VERSION, f"workflow {name!r} has no v{version}"
        conflict = self.conflicts.get((definition.name, definition.version))
        if conflict is not None and (run.signature is None or definition.binds(run.signature)):
            # The code has this version's name but not its recorded contract.
            return None, RunStatus.BLOCKED_SIGNATURE_MISMATCH, conflict.message
        if run.signature is not None and not definition.binds(run.signature):
            return (
                None,
                RunStatus.BLOCKED_SIGNATURE_MISMATCH,
                f"run was bound to signature {run.signature[:12]} but the code of {name!r} "
                f"v{definition.version} has {definition.signature[:12]}: its steps, events, "
                "timeout or types changed without a new version",
            )
        return definition, RunStatus.RUNNING, ""

    async def advance(self, run: RunRecord) -> SegmentOutcome:
        """Bind the run to its code (or block it), then replay its handler."""
        definition, status, why = self._resolve(run)
        if definition is None:
            await self.finish(run, status, error=why)
            return segment_outcome(run.run_id, status, error=why)
        now = self.clock.now()
        if run.signature is None:  # created before its code was known: bind it now
            timeout = run.timeout_seconds or (
                definition.timeout.total_seconds() if definition.timeout else None
            )
            run.workflow_version, run.signature = definition.version, definition.signature
            run.timeout_seconds = timeout
            run.deadline = run.deadline or (now + timedelta(seconds=timeout) if timeout else None)
            await self.store.update_run(
                run.run_id, run.lease_epoch, now=now, status=RunStatus.RUNNING,
                workflow_version=run.workflow_version, signature=run.signature,
                timeout_s=timeout, deadline=run.deadline, error=None,
            )  # fmt: skip
        elif run.status != RunStatus.RUNNING:
            await self.store.update_run(
                run.run_id, run.lease_epoch, now=now, status=RunStatus.RUNNING, error=None
            )
        try:
            arg = decode_input(definition, run.input)
        except InvalidInput as exc:
            await self.finish(run, RunStatus.FAILED, error=str(exc), completed_at=now)
            return segment_outcome(run.run_id, RunStatus.FAILED, error=str(exc))
        # Every record is written under a lease, so a run on its first lease has none.
        history, saved = await self.store.load_history(run.run_id) if run.segments > 1 else ([], {})
        journal = Journal(
            run=run, definition=definition, history=history, saved_state=saved,
            services=self._services,
        )  # fmt: skip
        return await self._execute(run, definition, journal, arg)

    async def _execute(
        self, run: RunRecord, definition: WorkflowDefinition, journal: Journal, arg: Any
    ) -> SegmentOutcome:
        error: str | None = None
        output: Any = None
        remaining = (run.deadline - self.clock.now()).total_seconds() if run.deadline else None
        limit = asyncio.timeout(remaining)
        try:
            if remaining is not None and remaining <= 0:
                raise WorkflowTimeout(f"run passed its deadline {run.deadline}")
            async with limit:
                ctx = WorkflowContext(journal)
                args = (ctx, arg) if definition.takes_input else (ctx,)
                result = await definition.handler(*args)
            output = encode(result)
        except (Suspended, SegmentEnded, CodeMismatch):
            pass
        except BaseExceptionGroup as group:  # a TaskGroup in the handler
            error = _group_error(group)
        except TransientError:
            raise
        except TimeoutError as exc:
            # The deadline on the engine's clock, or the loop's timer for it (the two
            # differ under a virtual clock): either way the run timed out.
            expired = run.deadline is not None and self.clock.now() >= run.deadline
            if expired or limit.expired() or isinstance(exc, WorkflowTimeout):
                exc = WorkflowTimeout(f"run passed its deadline {run.deadline}")
            error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        finally:
            journal.close()
        if journal.poisoned is not None:
            raise journal.poisoned
        if journal.mismatched is not None:  # before a suspension: the replay cannot go on
            status = RunStatus.BLOCKED_SIGNATURE_MISMATCH
            await self.finish(run, status, error=journal.mismatched)
            return segment_outcome(run.run_id, status, error=journal.mismatched)
        reason = journal.take_suspend_reason()
        now = self.clock.now()
        if reason is not None:
            if run.deadline is not None and (
                reason.wake_at is None or reason.wake_at > run.deadline
            ):
                reason = SuspendReason(reason.kind, reason.key, run.deadline, reason.event)
            await self.finish(run, RunStatus.WAITING, reason=reason)
            ready_at = reason.wake_at
            if reason.event and await self.store.has_pending_event(run.run_id, reason.event):
                ready_at = now  # the event arrived while this segment was suspending
            return segment_outcome(
                run.run_id, RunStatus.WAITING, ready_at=ready_at, waiting_event=reason.event
            )
        if error is not None:
            if definition.compensate_on_failure and outstanding(journal.records.values()):
                # A saga undoes itself: the run is Compensating (durably: a crash resumes
                # the undoing) until its completed steps' compensations have run.
                run.error = f"{UNDONE}{error}"
                await self.store.update_run(
                    run.run_id, run.lease_epoch, now=now, status=RunStatus.COMPENSATING,
                    error=run.error,
                )  # fmt: skip
                history = list(journal.records.values())
                return await self._undo(run, self._undoing(run, definition, history, journal.saved))
            await self.finish(run, RunStatus.FAILED, error=error, completed_at=now)
            return segment_outcome(run.run_id, RunStatus.FAILED, error=error)
        await self.finish(run, RunStatus.COMPLETED, output=output, error=None, completed_at=now)
        return segment_outcome(run.run_id, RunStatus.COMPLETED, output=output)

    def _undoing(
        self, run: RunRecord, definition: WorkflowDefinition | None, history: list[StepState],
        saved: dict[str, Any],
    ) -> _Undoing:  # fmt: skip
        journal = Journal(
            run=run, definition=definition, history=history, saved_state=saved,
            services=self._services,
        )  # fmt: skip
        return _Undoing(journal, WorkflowContext(journal))

    async def compensate(self, run: RunRecord) -> SegmentOutcome:
        """Run a compensating run's compensations that have not run (or failed) yet."""
        definition = None
        if run.workflow_version is not None:
            definition = self.registry.get(run.workflow_name, run.workflow_version)
        history, saved = await self.store.load_history(run.run_id)
        return await self._undo(run, self._undoing(run, definition, history, saved))

    async def _undo(self, run: RunRecord, undoing: _Undoing) -> SegmentOutcome:
        journal, ctx = undoing.journal, undoing.ctx
        try:
            results = await ctx.run_compensation()
        finally:
            journal.close()
        failed = [step for step, ok in results if not ok]
        now = self.clock.now()
        states = ctx.all_step_states()
        error: str | None
        if failed:
            detail = "; ".join(f"{k}: {states[k].error}" for k in failed)
            error = f"{run.error}; compensation failed for {', '.join(failed)} ({detail})"
            status = RunStatus.FAILED
        else:
            # From the history, not this pass: an earlier pass may have done them all.
            undone = any(s.status == StepStatus.COMPENSATED for s in states.values())
            error = run.error
            status = RunStatus.COMPENSATED if undone else RunStatus.CANCELLED_BY_OPERATOR
        await self.finish(run, status, error=error, completed_at=now)
        return segment_outcome(run.run_id, status, error=error)


def decode_input(definition: WorkflowDefinition, raw: Any) -> Any:
    try:
        return decode(raw, definition.input_type)
    except ValidationError as exc:
        raise InvalidInput(
            f"input of workflow {definition.name!r} v{definition.version}: "
            f"{describe_validation_error(exc)}"
        ) from exc


def _group_error(group: BaseExceptionGroup) -> str | None:
    """What a TaskGroup's exceptions mean for the segment: None when its tasks only
    suspended; a store failure propagates; otherwise the first error fails the run."""
    _, errors = group.split((Suspended, SegmentEnded, CodeMismatch))
    if errors is None:
        return None
    transient, _ = errors.split(TransientError)
    if transient is not None:
        raise _leaves(transient)[0]
    first = _leaves(errors)[0]
    return f"{type(first).__name__}: {first}"


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found


def segment_outcome(run_id: uuid.UUID, status: RunStatus, **kwargs: Any) -> SegmentOutcome:
    return SegmentOutcome(run_id=run_id, status=status, **kwargs)


@dataclass(frozen=True)
class _Undoing:
    """A journal and a context over it, for running a run's compensations."""

    journal: Journal
    ctx: WorkflowContext
