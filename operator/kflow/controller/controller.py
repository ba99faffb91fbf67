"""`Controller`: what the operator does with WorkflowRuns, below the kopf handlers.

Handlers parse bodies and call one method here. The controller keeps one record per
WorkflowRun (`kflow.controller.runs.TrackedRun`), binds each to a run (its id is the
object's uid, so creation is idempotent: `kflow.controller.adoption`), hands each segment
to the executor its `WorkflowDefinition` resource chooses (`kflow.controller.workflows`: inline, or
a Pod per segment), parks
sleeping runs in the timer wheel, delivers annotation events and actions
(`kflow.controller.delivery`), mirrors status (also from runners' progress
notifications), deletes finished WorkflowRuns whose TTL passed, and posts Kubernetes
Events on phase changes, refusals and failing segment Pods. `Controller.forget` is the
one place a run is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import timedelta

from kflow._clock import Clock
from kflow._engine import Engine
from kflow._errors import RunNotFound, TransientError
from kflow._models import RunRecord, RunStatus, SegmentOutcome, StepState
from kflow.controller.adoption import Adoption
from kflow.controller.bodies import Invalid
from kflow.controller.catalog import Catalog
from kflow.controller.delivery import AnnotationDelivery, rejected_event_text
from kflow.controller.expiry import Expiry
from kflow.controller.inline_executor import InlineExecutor
from kflow.controller.kube import KubeApi
from kflow.controller.metrics import Metrics
from kflow.controller.mirror import StatusMirror
from kflow.controller.pod_executor import PodExecutor
from kflow.controller.runs import RunRef, TrackedRun
from kflow.controller.tasks import Background
from kflow.controller.timers import TimerWheel
from kflow.controller.workflows import WorkflowObjects
from kflow.resources import ExecutorView, WorkflowRunSpec, WorkflowRunStatus
from kflow.settings import OperatorSettings

__all__ = ["Controller"]

log = logging.getLogger(__name__)

_NORMAL = {RunStatus.COMPLETED, RunStatus.COMPENSATED, RunStatus.CANCELLED_BY_OPERATOR}

QUEUED_STATUS_AFTER = 5.0
"""Seconds after adoption by which an inline run's first status is written even if it has
recorded nothing yet (it waits for a free slot). A started run records a step within
100 ms (`RUNNING_AFTER`), which brings its first status to one status interval."""

Executor = InlineExecutor | PodExecutor


class Controller:
    """Satisfies `kflow.controller.control.RunControl` for adoption and delivery."""

    def __init__(
        self,
        *,
        engine: Engine,
        kube: KubeApi,
        settings: OperatorSettings,
        clock: Clock,
        metrics: Metrics | None = None,
    ) -> None:
        self.engine = engine
        self.metrics = metrics or Metrics()
        self._kube = kube
        self._clock = clock
        self._settings = settings
        self._runs: dict[uuid.UUID, TrackedRun] = {}
        """A record per WorkflowRun known, from its first adoption attempt to `forget`."""
        self.timers = TimerWheel(clock, fire=self.submit)
        self.timers.lateness = self.metrics.timer_lateness.observe
        self.catalog = Catalog(settings.default_executor)
        self.workflows = WorkflowObjects(
            catalog=self.catalog, kube=kube, metrics=self.metrics, namespaces=settings.namespaces,
            runs=self._runs, submit=self.submit,
        )  # fmt: skip
        self.inline = InlineExecutor(
            engine, runs=self._runs, concurrency=settings.concurrency,
            on_outcome=self._outcome, retry_at=self.timers.schedule,
        )  # fmt: skip
        self.pods = PodExecutor(
            engine=engine, kube=kube, settings=settings, runs=self._runs,
            catalog=self.catalog, on_outcome=self._outcome,
            on_problem=self._pod_problem, on_placed=self._pod_placed,
            retry_at=self.timers.schedule,
        )  # fmt: skip
        self.mirror = StatusMirror(
            engine=engine, kube=kube, clock=clock, interval=settings.status_interval,
            ref=self._ref, executor=self._executor_view, on_rejected=self._payload_rejected,
            spec_changed=self._spec_changed,
            max_steps=settings.max_status_steps,
            max_output_bytes=settings.max_status_output_bytes,
        )  # fmt: skip
        self.background = Background("controller")
        self.expiry = Expiry(
            clock=clock, kube=kube, finished=self._finished, warn=self.warn,
            background=self.background,
        )  # fmt: skip
        self._delivery = AnnotationDelivery(
            self, kube=kube, max_event_bytes=settings.max_event_bytes
        )
        self.adoption = Adoption(self, kube=kube, redeliver=self._delivery.retry)
        """Adoption, a spec edited under a run, a refused WorkflowRun's retry."""
        engine.subscribe(self.recorded)  # one way: the engine never knows the controller

    async def run(self) -> None:
        """The controller's background work (timers) until cancelled."""
        async with asyncio.TaskGroup() as group:  # one failing stops both, and is reported
            group.create_task(self.timers.run())
            group.create_task(self.expiry.run())

    # -- records ------------------------------------------------------------------------

    def record(self, run_id: uuid.UUID) -> TrackedRun | None:
        return self._runs.get(run_id)

    def enter(self, ref: RunRef) -> TrackedRun:
        record = self._runs.get(ref.run_id)
        if record is None:
            record = self._runs[ref.run_id] = TrackedRun(ref)
        return record

    def _tracked(self, run_id: uuid.UUID) -> TrackedRun | None:
        """The run's record if the run is adopted."""
        record = self._runs.get(run_id)
        return record if record is not None and record.adopted else None

    def _finished(self, run_id: uuid.UUID) -> RunRef | None:
        """The WorkflowRun of a tracked run that is finished now (it may expire)."""
        record = self._tracked(run_id)
        if record is None or record.phase is None or not record.phase.is_terminal:
            return None
        return record.ref

    def forget(self, run_id: uuid.UUID) -> None:
        """Drop the run (its WorkflowRun is gone): the one place this happens. Its record
        goes with the timers it owns, and the mirror and timer wheels let go of it; work
        in flight finds the record gone and stops."""
        record = self._runs.pop(run_id, None)
        self.timers.cancel(run_id)
        self.expiry.cancel(run_id)
        self.mirror.forget(run_id)
        if record is None:
            return
        record.close()
        if record.phase is not None:
            self.metrics.forgotten(record.phase)

    def adopted(self, ref: RunRef) -> bool:
        return self._tracked(ref.run_id) is not None

    def refused(self, ref: RunRef) -> bool:
        """Refused for an invalid spec or input (it has no run)."""
        record = self._runs.get(ref.run_id)
        return record is not None and record.refused

    async def has_run(self, ref: RunRef) -> bool:
        """The WorkflowRun's run exists in PostgreSQL."""
        try:
            await self.engine.get_run(ref.run_id)
        except RunNotFound:
            return False
        return True

    def knows(self, ref: RunRef) -> bool:
        """Adopted, refused, or being adopted (perhaps again later): nothing to do on a new
        event."""
        return ref.run_id in self._runs

    # -- executors ----------------------------------------------------------------------

    def _executor(self, record: TrackedRun) -> Executor:
        placement = self.catalog.placement(record.ref.namespace, record.workflow, record.version)
        return self.pods if placement.executor == "pod" else self.inline

    def in_pods(self, run_id: uuid.UUID) -> bool:
        record = self._tracked(run_id)
        return record is not None and self._executor(record) is self.pods

    def submit(self, run_id: uuid.UUID) -> None:
        self._submit(run_id)

    def _submit(self, run_id: uuid.UUID, *, steal: bool = False) -> Executor | None:
        """Hand the run to its executor (a run not tracked, or no more, goes nowhere)."""
        record = self._tracked(run_id)
        if record is None:
            return None
        executor = self._executor(record)
        executor.submit(record, steal=steal)
        return executor

    def _pod_placed(self, run_id: uuid.UUID) -> None:
        self.mirror.touch(run_id)  # status.executor.pod names it

    async def _pod_problem(self, run_id: uuid.UUID, reason: str, message: str) -> None:
        self.metrics.pod_problems.labels(reason).inc()
        record = self._tracked(run_id)
        if record is None or record.problem == message:
            return  # gone, or said already (a finalizer polling a run nothing can undo, say)
        record.problem = message
        self.mirror.touch(run_id)
        await self.warn(record.ref, reason, message)

    # -- status -------------------------------------------------------------------------

    def _ref(self, run_id: uuid.UUID) -> RunRef | None:
        record = self._tracked(run_id)
        return None if record is None else record.ref

    async def _payload_rejected(self, run_id: uuid.UUID, name: str, reason: str) -> None:
        ref = self._ref(run_id)
        if ref is not None:
            await self.warn(ref, "EventRejected", rejected_event_text(name, reason))

    def _executor_view(self, run_id: uuid.UUID) -> ExecutorView | None:
        record = self._tracked(run_id)
        if record is None or self._executor(record) is self.inline:
            return None
        return ExecutorView(kind="pod", pod=record.pod.pod, message=record.problem)

    def _spec_changed(self, run_id: uuid.UUID) -> str | None:
        record = self._tracked(run_id)
        return None if record is None else record.spec_changed

    def progress(self, run_id: uuid.UUID) -> None:
        """A runner announced a record of the run (PostgreSQL NOTIFY): mirror it."""
        if self._tracked(run_id) is not None:
            self.mirror.touch(run_id)

    def progress_reconnected(self) -> None:
        """Notifications may have been missed: refresh every run a Pod is advancing."""
        for run_id in self.pods.running():
            self.progress(run_id)

    def recorded(self, run_id: uuid.UUID, step: StepState) -> None:
        """A segment stored a record: mirror it, and count it."""
        self.mirror.touch(run_id)
        record = self._runs.get(run_id)
        self.metrics.step_recorded(record.workflow if record else "", step)

    # -- WorkflowRun lifecycle -----------------------------------------------------

    async def adopt(
        self, ref: RunRef, spec: WorkflowRunSpec | Invalid, *,
        status: WorkflowRunStatus | None, resumed: bool,
    ) -> None:  # fmt: skip
        """A WorkflowRun exists (created, or seen again after a restart): make sure its
        run exists and is moving, or report why it cannot (`kflow.controller.adoption`).
        ``resumed``: a previous operator may have died mid-run; ``status`` is the
        object's (a previous operator wrote it)."""
        await self.adoption.adopt(ref, spec, status=status, resumed=resumed)

    async def begin(
        self, record: TrackedRun, run: RunRecord, spec: WorkflowRunSpec,
        status: WorkflowRunStatus | None, *, resumed: bool,
    ) -> None:  # fmt: skip
        """Track an adopted run and set it moving, if it has anything to do."""
        # Read first (a store failure retries the adoption with nothing tracked yet): an
        # event may have come while no operator ran.
        pending = run.status == RunStatus.WAITING and run.waiting_event is not None and (
            await self.engine.store.has_pending_event(run.run_id, run.waiting_event)
        )  # fmt: skip
        seconds = spec.ttl_seconds_after_finished
        ttl = self._settings.run_ttl if seconds is None else timedelta(seconds=seconds)
        self._track(record, run, ttl=ttl)
        self.mirror.seed(run.run_id, status)
        if run.status.is_terminal:
            self.expiry.after(record, run.completed_at or self._clock.now())
        queued = self._continue(run, steal=resumed, event_pending=pending) is self.inline
        # A run the inline executor starts soon shows with its first records or its end:
        # one status PATCH for a fast run, not one more for the queue.
        self.mirror.touch(run.run_id, within=QUEUED_STATUS_AFTER if queued else None)

    def _track(self, record: TrackedRun, run: RunRecord, *, ttl: timedelta | None = None) -> None:
        before = record.phase
        record.workflow, record.version = run.workflow_name, run.workflow_version
        record.phase, record.ttl = run.status, ttl
        if before != run.status:
            self.metrics.phase_changed(before, run.status)

    def _continue(self, run: RunRecord, *, steal: bool, event_pending: bool) -> Executor | None:
        """Submit the run if it can move; the executor it went to. A waiting run moves
        only for what came (its event, ``event_pending``) or comes (its wake time, a
        timer): a restart runs no code for a run that has nothing new."""
        if run.status.is_terminal:
            return None
        if run.status == RunStatus.WAITING:
            if run.wake_at is not None:
                self.timers.schedule(run.run_id, run.wake_at)
            if not event_pending:
                return None
        return self._submit(run.run_id, steal=steal and run.status != RunStatus.WAITING)

    async def delete(self, ref: RunRef) -> bool:
        """The WorkflowRun is being deleted: cancel its run first if it is active. False
        while a segment Pod still undoes the run (ask again later)."""
        run_id = ref.run_id
        try:
            try:
                run: RunRecord | None = await self.engine.get_run(run_id)
            except RunNotFound:
                run = None
            if run is not None and not run.status.is_terminal:
                record = self.enter(ref)
                if not record.adopted:  # kopf resumes no object already being deleted
                    self._track(record, run)
                if self.in_pods(run_id):
                    if run.status != RunStatus.COMPENSATING:
                        await self.cancel(run_id, "the WorkflowRun was deleted")
                    elif record.pod.pod is None:
                        self.submit(run_id)  # e.g. after a restart: nothing undoes it yet
                    return False
                await self.cancel(run_id, "the WorkflowRun was deleted")
        except TransientError as exc:
            await self.warn(
                ref, "DeletionDelayed",
                f"the run must be cancelled before its WorkflowRun goes; retrying: {exc}",
            )  # fmt: skip
            raise
        self.forget(run_id)
        return True

    async def cancel(self, run_id: uuid.UUID, reason: str) -> SegmentOutcome:
        """Cancel the run: inline, compensations run now; in Pods, the running segment Pod
        is stopped (the lease taken from it first) and the next Pod compensates."""
        record = self._tracked(run_id)
        in_pods = record is not None and self._executor(record) is self.pods
        if record is not None:
            if in_pods:
                self.pods.cancelling(record)
            else:
                await self.inline.kill(record)
        outcome = await self.engine.cancel(run_id, reason, compensate=not in_pods)
        if record is not None and in_pods:
            await self.pods.kill(record)
        await self.settle(outcome)
        return outcome

    async def settle(self, outcome: SegmentOutcome) -> None:
        self.timers.cancel(outcome.run_id)
        await self._outcome(outcome)

    async def _outcome(self, outcome: SegmentOutcome) -> None:
        run_id = outcome.run_id
        self.mirror.touch(run_id, urgent=True)
        if outcome.ready_at is not None:
            if outcome.ready_at <= self._clock.now():
                self.submit(run_id)
            else:
                self.timers.schedule(run_id, outcome.ready_at)
        self.metrics.segments.labels(outcome.status.value).inc()
        record = self._tracked(run_id)
        if record is None:  # its WorkflowRun was deleted meanwhile
            return
        if not (outcome.status == RunStatus.FAILED or outcome.status.is_blocked):
            record.problem = None  # a segment went through
        if record.event_at is not None:
            self.metrics.event_to_resume.observe(time.monotonic() - record.event_at)
            record.event_at = None
        before, record.phase = record.phase, outcome.status
        if before == outcome.status:
            return
        self.metrics.phase_changed(before, outcome.status)
        if outcome.status.is_terminal:
            self.expiry.after(record, self._clock.now())
        if outcome.status.is_terminal or outcome.status.is_blocked:
            kind = "Normal" if outcome.status in _NORMAL else "Warning"
            message = outcome.error or f"run {outcome.status.value}"
            await self.event(record.ref, kind, outcome.status.value, message)

    # -- Events, annotations ------------------------------------------------------------

    async def warn(self, ref: RunRef, reason: str, message: str) -> None:
        await self.event(ref, "Warning", reason, message)

    async def event(self, ref: RunRef, kind: str, reason: str, message: str) -> None:
        try:
            await self._kube.post_event(
                namespace=ref.namespace, name=ref.name, uid=ref.uid,
                type=kind, reason=reason, message=message,
            )  # fmt: skip
        except Exception as exc:  # an Event is a courtesy: never fail the caller for it
            log.warning(
                "could not post Event %s on %s/%s: %s", reason, ref.namespace, ref.name, exc
            )

    async def annotations(self, ref: RunRef, annotations: dict[str, str]) -> None:
        """Deliver ``event.kflow.io/*`` annotations and act on ``kflow.io/*`` ones
        (`kflow.controller.delivery`)."""
        await self._delivery.handle(ref, annotations)
