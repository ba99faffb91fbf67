"""The engine: creates runs and advances them one segment at a time.

`Engine.run_segment` takes the run's lease (a new fencing epoch), binds the run to a
workflow version on its first segment, replays the handler from the top until it
suspends or ends, records the outcome and gives the lease back. It is what every
executor calls: the inline executor in the operator, ``kflow runner`` in a Pod, and
`kflow.testing.WorkflowTestEnv`. Executors decide *when* to call it again from the
returned `SegmentOutcome.ready_at`.

Outcomes: the handler returns -> Completed; raises -> Failed; suspends -> Waiting; the
code cannot serve the run -> Blocked*; `cancel` -> Compensating, then Compensated (or
CancelledByOperator when there was nothing to compensate, Failed when a compensation
failed or was lost); `retire` -> RetiredUnresumable. Store failures and lost leases are
not outcomes: they propagate (`TransientError`) and leave the run as the database has it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from kflow._clock import Clock, SystemClock
from kflow._engine.compensations import outstanding
from kflow._engine.conflicts import conflict
from kflow._engine.leases import hold_lease
from kflow._engine.segment import CANCELLED, UNDONE, Segments, decode_input, segment_outcome
from kflow._engine.services import Services
from kflow._env import EnvProvider, OsEnv
from kflow._errors import InvalidInput, KflowError, UndeclaredNameError
from kflow._http import CircuitBreakers
from kflow._models import (
    AuthContext,
    DefinitionConflict,
    RunRecord,
    RunStatus,
    SegmentOutcome,
    StepState,
    SuspendKind,
    SuspendReason,
)
from kflow._serde import encode
from kflow._store import Database, SendResult, Store
from kflow._workflow import Registry, WorkflowDefinition

if TYPE_CHECKING:  # httpx costs ~70 ms to import: only code that makes requests pays
    import httpx

__all__ = ["CANCELLED", "RUNNING_AFTER", "Engine"]

RUNNING_AFTER = timedelta(milliseconds=100)
"""What the operator and runners pass as ``record_running_after``: a step running longer
shows as running in the status (one more write); a faster one costs no write for it."""


class Engine:
    """Runs workflows from a `Registry` against a `Store`.

    ``owner`` names this executor in leases (default: host and pid). ``lease_ttl`` is how
    long a crashed executor keeps a run locked; live segments renew it every third of it.
    ``on_record(run_id, record)`` is called after each step, sleep or wait record is stored
    (as are the listeners `subscribe` adds).
    ``record_running_after`` records a step as running once it has run that long (the
    operator uses it for live status); ``persist_step_start`` records every start.
    """

    def __init__(
        self,
        store: Store,
        registry: Registry,
        *,
        clock: Clock | None = None,
        owner: str | None = None,
        lease_ttl: timedelta = timedelta(seconds=60),
        persist_step_start: bool = False,
        record_running_after: timedelta | None = None,
        max_inline_backoff: timedelta = timedelta(seconds=30),
        env: EnvProvider | None = None,
        app_db: Database | None = None,
        http_client: httpx.AsyncClient | None = None,
        on_record: Callable[[uuid.UUID, StepState], None] | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.clock: Clock = clock or SystemClock()
        self.owner = owner or f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self.lease_ttl = lease_ttl
        self._services = Services(
            store=store,
            registry=registry,
            clock=self.clock,
            env=env or OsEnv(),
            breakers=CircuitBreakers(self.clock),
            given_http_client=http_client,
            app_db=app_db,
            persist_step_start=persist_step_start,
            record_running_after=record_running_after,
            max_inline_backoff=max_inline_backoff,
            listeners=[on_record] if on_record is not None else [],
        )
        self._segments = Segments(store, registry, self.clock, self._services)

    def subscribe(self, listener: Callable[[uuid.UUID, StepState], None]) -> None:
        """Call ``listener(run_id, record)`` after each record a segment stores, from then
        on (the operator mirrors them into status; a runner announces them). It must not
        block: it runs in the segment, between a write and the handler going on."""
        self._services.listeners.append(listener)

    async def close(self) -> None:
        await self._services.close()

    async def register_definitions(self) -> list[DefinitionConflict]:
        """Record every workflow of the registry (name, version, signature, schemas).

        A version the database records with another contract is not overwritten: it is
        returned as a conflict, and this engine blocks its runs (naming both signatures)
        until the code and the record agree again."""
        conflicts = []
        for d in self.registry.workflows():
            stored = await self.store.upsert_definition(
                name=d.name,
                version=d.version,
                signature=d.signature,
                same=[d.signature, d.legacy_signature],
                steps=d.steps,
                events=d.events,
                timeout_s=d.timeout.total_seconds() if d.timeout else None,
                input_schema=d.input_schema,
                output_schema=d.output_schema,
                now=self.clock.now(),
            )
            if stored is not None:
                conflicts.append(DefinitionConflict(d.name, d.version, stored, d.signature))
        self._segments.conflicts = {(c.name, c.version): c for c in conflicts}
        return conflicts

    # -- creating runs and talking to them -----------------------------------------

    async def start(
        self,
        workflow: str | WorkflowDefinition,
        input: Any = None,
        *,
        version: int | None = None,
        run_id: uuid.UUID | None = None,
        idempotency_key: str | None = None,
        tenant_id: uuid.UUID | None = None,
        auth: AuthContext | None = None,
        timeout: timedelta | None = None,
        signature: str | None = None,
    ) -> RunRecord:
        """Create a run (idempotent by ``run_id`` or ``idempotency_key``); it does not run
        until an executor calls `run_segment`. Input is validated now when the workflow
        is known; otherwise the run binds (or blocks) on its first segment — to
        ``version`` and ``signature`` when given (a `WorkflowDefinition` resource declares them for
        code that runs elsewhere, in a Pod): code with another signature blocks it."""
        if isinstance(workflow, WorkflowDefinition):
            name, version = workflow.name, version or workflow.version
        else:
            name = workflow
        definition = self.registry.get(name, version) if version else self.registry.active(name)
        encoded = encode(input)
        asked = version
        run_id = run_id or uuid.uuid4()
        if definition is not None:  # bind now: the run keeps this version and signature
            try:
                decode_input(definition, encoded)
            except InvalidInput:
                # An existing run's input was valid: this is another request for its id.
                existing = await self.store.find_run(run_id, idempotency_key)
                refused = None if existing is None else conflict(existing, name, asked, encoded)
                if refused is not None:
                    raise refused from None
                raise
            version = definition.version
            timeout = timeout or definition.timeout
        record, created = await self.store.create_run(
            run_id=run_id,
            workflow_name=name,
            workflow_version=version,
            signature=definition.signature if definition else signature,
            status=RunStatus.CREATED,
            input=encoded,
            tenant_id=tenant_id,
            auth=auth or AuthContext(),
            timeout_s=timeout.total_seconds() if timeout else None,
            idempotency_key=idempotency_key,
            now=self.clock.now(),
        )
        refused = None if created else conflict(record, name, asked, encoded)
        if refused is not None:
            raise refused
        return record

    def check_input(self, workflow: str, input: Any, *, version: int | None = None) -> None:
        """Raise `InvalidInput` (naming the field) if the workflow is known here and
        ``input`` does not fit its input model; unknown workflows pass (they may block)."""
        definition = (
            self.registry.get(workflow, version) if version else self.registry.active(workflow)
        )
        if definition is not None:
            decode_input(definition, encode(input))

    async def get_run(self, run_id: uuid.UUID) -> RunRecord:
        return await self.store.get_run(run_id)

    async def history(self, run_id: uuid.UUID) -> list[StepState]:
        steps, _ = await self.store.load_history(run_id)
        return sorted(steps, key=lambda s: (s.seq is None, s.seq or 0, s.started_at, s.key))

    async def send_event(
        self, run_id: uuid.UUID, name: str, payload: Any = None, *, dedupe_key: str | None = None
    ) -> SendResult:
        """Deliver an event to a run's inbox. ``wakes_run`` says the run waits for it."""
        run = await self.store.get_run(run_id)
        definition = self.registry.get(run.workflow_name, run.workflow_version or 0)
        if definition is not None and name not in definition.events:
            raise UndeclaredNameError(
                f"event {name!r} is not declared by workflow {run.workflow_name!r} "
                f"v{run.workflow_version} (declared: {', '.join(definition.events) or 'none'})"
            )
        return await self.store.send_event(
            run_id, name=name, payload=encode(payload), dedupe_key=dedupe_key, now=self.clock.now()
        )

    # -- advancing runs ------------------------------------------------------------

    async def run_segment(self, run_id: uuid.UUID, *, steal: bool = False) -> SegmentOutcome:
        """Advance the run to its next suspension or its end.

        ``steal=True`` takes the lease even from a live holder (whose writes are then
        refused): for an executor that knows the previous one is gone. A finished run is
        reported as it is, and nothing about it changes (no lease, no segment counted)."""
        async with self._lease(run_id, steal=steal) as run:
            if run.status.is_terminal:  # not leased (see `Store.acquire_lease`)
                return _as_it_is(run)
            if run.status == RunStatus.COMPENSATING:
                return await self._segments.compensate(run)
            return await self._segments.advance(run)

    async def cancel(
        self, run_id: uuid.UUID, reason: str = "cancelled", *, compensate: bool = True
    ) -> SegmentOutcome:
        """Stop the run and compensate its completed steps (taking over its lease, so a
        segment running elsewhere can no longer write). ``compensate=False`` only marks
        the run Compensating: the next segment, wherever it runs, does the undoing.

        A Failed run whose completed steps are not all undone is undone too; a run that
        is Compensating already keeps the reason it was first cancelled (or failed) for;
        another finished run is reported as it is."""
        async with self._lease(run_id, steal=True, segment=False) as run:
            if run.status == RunStatus.FAILED and outstanding(await self.history(run_id)):
                run.error = f"{CANCELLED}{reason} (after it failed: {run.error})"
            elif run.status.is_terminal:
                return await self._unchanged(run)
            elif run.status != RunStatus.COMPENSATING:
                run.error = f"{CANCELLED}{reason}"
            if compensate:
                await self.store.update_run(
                    run.run_id, run.lease_epoch, now=self.clock.now(),
                    status=RunStatus.COMPENSATING, error=run.error, wake_at=None,
                    waiting_event=None, completed_at=None,
                )  # fmt: skip
                return await self._segments.compensate(run)
            await self._segments.finish(
                run, RunStatus.COMPENSATING, error=run.error, completed_at=None
            )
            return segment_outcome(run.run_id, RunStatus.COMPENSATING, ready_at=self.clock.now())

    async def fail(self, run_id: uuid.UUID, error: str, *, blocked: bool = False) -> SegmentOutcome:
        """Mark an unfinished run Failed with ``error``: its executor gave up on it (e.g. its
        segment Pods kept failing). ``blocked``: BlockedMissingHandler instead — nothing
        can run its code yet (no `WorkflowDefinition` resource says where). It keeps its steps;
        `retry` resumes it, and a blocked run resumes when its code appears."""
        # Steal: the caller knows no segment runs (a dead one's lease may not have expired).
        async with self._lease(run_id, steal=True, segment=False) as run:
            if run.status.is_terminal:
                return await self._unchanged(run)
            if run.status == RunStatus.COMPENSATING:
                if blocked:  # it stays a cancel that waits for code to undo its steps
                    await self._segments.finish(run, run.status, error=run.error)
                    return segment_outcome(run.run_id, run.status, error=f"{run.error}; {error}")
                error = f"{run.error}; {error}"  # still a cancel: retry undoes on
            status = RunStatus.BLOCKED_MISSING_HANDLER if blocked else RunStatus.FAILED
            done = None if blocked else self.clock.now()
            await self._segments.finish(run, status, error=error, completed_at=done)
            return segment_outcome(run.run_id, status, error=error)

    async def outcome(self, run_id: uuid.UUID) -> SegmentOutcome:
        """The run as it stands, as the segment that left it so would have reported it (for
        executors whose segments ran in another process)."""
        run = await self.store.get_run(run_id)
        ready_at = run.wake_at
        if run.status in (RunStatus.CREATED, RunStatus.COMPENSATING):
            ready_at = self.clock.now()
        elif run.status == RunStatus.WAITING and run.waiting_event is not None:
            if await self.store.has_pending_event(run.run_id, run.waiting_event):
                ready_at = self.clock.now()
        elif run.status != RunStatus.WAITING:
            ready_at = None
        return segment_outcome(
            run.run_id, run.status, ready_at=ready_at, waiting_event=run.waiting_event,
            output=run.output, error=run.error,
        )  # fmt: skip

    async def retire(self, run_id: uuid.UUID, reason: str = "retired") -> SegmentOutcome:
        """Mark a run that no code can resume as RetiredUnresumable (no compensation)."""
        # No steal: a live segment means the run is resumable after all (LeaseHeld).
        async with self._lease(run_id, steal=False, segment=False) as run:
            if run.status.is_terminal:
                return await self._unchanged(run)
            error = f"retired: {reason}"
            await self._segments.finish(
                run, RunStatus.RETIRED_UNRESUMABLE, error=error, completed_at=self.clock.now()
            )
            return segment_outcome(run.run_id, RunStatus.RETIRED_UNRESUMABLE, error=error)

    async def retry(self, run_id: uuid.UUID) -> SegmentOutcome:
        """Make a Failed or Blocked run runnable again, keeping its completed steps: failed
        steps and timed-out waits run again, and a passed deadline starts over. A cancelled
        run goes back to Compensating instead: its failed (or never run) compensations run,
        the handler does not. (Compensations a handler ran itself are its own
        business: retrying such a run replays the handler.)"""
        # No steal: a Failed or Blocked run has no live holder, and a refused retry must
        # not fence out a segment that is running.
        async with self._lease(run_id, steal=False, segment=False) as run:
            if run.status != RunStatus.FAILED and not run.status.is_blocked:
                raise KflowError(
                    f"run {run_id} is {run.status.value}: only Failed or Blocked runs retry"
                )
            now = self.clock.now()
            if (run.error or "").startswith((CANCELLED, UNDONE)):
                # A cancel stopped this run, or it was undoing itself after a failure:
                # retrying finishes the undoing (failed compensations run again, or all
                # of them if its executor never got to them); it never runs the handler
                # forward again.
                await self._segments.finish(run, RunStatus.COMPENSATING, error=run.error)
                return segment_outcome(run.run_id, RunStatus.COMPENSATING, ready_at=now)
            await self.store.forget_failures(run.run_id, run.lease_epoch)
            timeout = run.timeout_seconds
            await self._segments.finish(
                run, RunStatus.WAITING, reason=SuspendReason(SuspendKind.RETRY, "retry", now),
                error=None, completed_at=None,
                deadline=now + timedelta(seconds=timeout) if timeout else None,
            )  # fmt: skip
            return segment_outcome(run.run_id, RunStatus.WAITING, ready_at=now)

    async def _unchanged(self, run: RunRecord) -> SegmentOutcome:
        """A finished run: give the lease back and report it as it is."""
        await self._segments.finish(run, run.status)
        return _as_it_is(run)

    def _lease(
        self, run_id: uuid.UUID, *, steal: bool, segment: bool = True
    ) -> contextlib.AbstractAsyncContextManager[RunRecord]:
        return hold_lease(
            self.store, run_id, owner=self.owner, clock=self.clock, ttl=self.lease_ttl,
            steal=steal, segment=segment,
        )  # fmt: skip


def _as_it_is(run: RunRecord) -> SegmentOutcome:
    return segment_outcome(run.run_id, run.status, output=run.output, error=run.error)
