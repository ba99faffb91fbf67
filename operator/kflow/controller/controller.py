"""`Controller`: what the operator does with WorkflowRuns, below the kopf handlers.

Handlers parse bodies and call one method here. The controller binds each WorkflowRun to
a run (its id is the object's uid, so creation is idempotent), hands each segment to the
executor its `Workflow` resource chooses (inline, or a Pod per segment), parks sleeping
runs in the timer wheel, delivers annotation events and actions, mirrors status (also
from runners' progress notifications), and posts Kubernetes Events on phase changes,
refusals and failing segment Pods.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError

from kflow.clock import Clock
from kflow.controller.adoption import Adoption
from kflow.controller.catalog import Catalog
from kflow.controller.delivery import RETRY_AFTER, Annotations
from kflow.controller.inline_executor import InlineExecutor
from kflow.controller.kube import KubeApi
from kflow.controller.metrics import Metrics
from kflow.controller.mirror import RunRef, StatusMirror
from kflow.controller.pod_executor import Placement, PodExecutor
from kflow.controller.tasks import Background
from kflow.controller.timers import TimerWheel
from kflow.engine import Engine
from kflow.errors import ApiError, RunNotFound, TransientError
from kflow.models import RunRecord, RunStatus, SegmentOutcome, StepState
from kflow.resources import ExecutorView, WorkflowRunSpec, WorkflowSpec
from kflow.serde import describe_validation_error
from kflow.settings import OperatorSettings

__all__ = ["Controller"]

log = logging.getLogger(__name__)

_NORMAL = {RunStatus.COMPLETED, RunStatus.COMPENSATED, RunStatus.CANCELLED_BY_OPERATOR}


@dataclass
class Tracked:
    """What the controller keeps of a run it adopted."""

    ref: RunRef
    workflow: str
    version: int | None
    phase: RunStatus
    event_at: float | None = None
    """When an event that wakes the run was stored (monotonic; the latency metric)."""
    problem: str | None = None
    """The last segment Pod failure, shown on the status until a segment goes through."""
    ttl: timedelta | None = None
    """How long after the run finished its WorkflowRun is deleted (None: kept)."""


QUEUED_STATUS_AFTER = 5.0
"""Seconds after adoption by which an inline run's first status is written even if it has
recorded nothing yet (it waits for a free slot). A started run records a step within
100 ms (`RUNNING_AFTER`), which brings its first status to one status interval."""


class Controller:
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
        engine.subscribe(self.recorded)  # one way: the engine never knows the controller
        self.metrics = metrics or Metrics()
        self._kube = kube
        self._clock = clock
        self._settings = settings
        self._runs: dict[uuid.UUID, Tracked] = {}
        """The runs adopted, until their WorkflowRun is deleted."""
        self.timers = TimerWheel(clock, fire=self._wake)
        self.timers.lateness = self.metrics.timer_lateness.observe
        self.expiry = TimerWheel(clock, fire=self._expire)
        """When finished runs' WorkflowRuns are deleted (their TTL)."""
        self.catalog = Catalog(settings.default_executor)
        self.inline = InlineExecutor(
            engine,
            concurrency=settings.concurrency,
            on_outcome=self._outcome,
            retry_at=self.timers.schedule,
        )
        self.pods = PodExecutor(
            engine=engine,
            kube=kube,
            settings=settings,
            placement=self._pod_placement,
            on_outcome=self._outcome,
            on_problem=self._pod_problem,
            retry_at=self.timers.schedule,
        )
        self.mirror = StatusMirror(
            engine=engine,
            kube=kube,
            clock=clock,
            interval=settings.status_interval,
            ref=self._ref,
            executor=self._executor_view,
            on_rejected=self._payload_rejected,
            max_steps=settings.max_status_steps,
            max_output_bytes=settings.max_status_output_bytes,
        )
        self.background = Background("controller")
        self._annotations = Annotations(self)
        self._adoption = Adoption(self)

    async def run(self) -> None:
        """The controller's background work (timers) until cancelled."""
        async with asyncio.TaskGroup() as group:  # one failing stops both, and is reported
            group.create_task(self.timers.run())
            group.create_task(self.expiry.run())

    def _wake(self, run_id: uuid.UUID) -> None:
        self._submit(run_id)

    def _ref(self, run_id: uuid.UUID) -> RunRef | None:
        tracked = self._runs.get(run_id)
        return None if tracked is None else tracked.ref

    def _executor(self, run_id: uuid.UUID) -> InlineExecutor | PodExecutor:
        tracked = self._runs.get(run_id)
        if tracked is None:
            return self.inline
        placement = self.catalog.placement(tracked.ref.namespace, tracked.workflow, tracked.version)
        return self.pods if placement.executor == "pod" else self.inline

    def _submit(self, run_id: uuid.UUID, *, steal: bool = False) -> InlineExecutor | PodExecutor:
        executor = self._executor(run_id)
        executor.submit(run_id, steal=steal)
        return executor

    async def _pod_placement(self, run_id: uuid.UUID) -> Placement:
        """The WorkflowRun and pod template of the run's next segment Pod (read from the
        store each time: the runner binds the run's version on its first segment)."""
        tracked = self._runs.get(run_id)
        if tracked is None:
            return None
        try:
            run = await self.engine.get_run(run_id)
        except RunNotFound:
            return None
        tracked.version = run.workflow_version
        ref = tracked.ref
        placement = self.catalog.placement(ref.namespace, run.workflow_name, run.workflow_version)
        if placement.problem is not None or placement.template is None:
            return placement.problem or "no pod template"
        if not self._settings.runner_dsn_secret:
            return "the pod executor is off: the operator has no KFLOW_RUNNER_DSN_SECRET"
        return ref, placement.template

    async def _pod_problem(self, run_id: uuid.UUID, reason: str, message: str) -> None:
        self.metrics.pod_problems.labels(reason).inc()
        tracked = self._runs.get(run_id)
        if tracked is None or tracked.problem == message:
            return  # gone, or said already (a finalizer polling a run nothing can undo, say)
        tracked.problem = message
        self.mirror.touch(run_id)
        await self._event(tracked.ref, "Warning", reason, message)

    async def _payload_rejected(self, run_id: uuid.UUID, name: str, reason: str) -> None:
        ref = self._ref(run_id)
        if ref is not None:
            await self._event(ref, "Warning", "EventRejected", f"{name}: {reason}")

    def _executor_view(self, run_id: uuid.UUID) -> ExecutorView | None:
        tracked = self._runs.get(run_id)
        if tracked is None or self._executor(run_id) is self.inline:
            return None
        return ExecutorView(kind="pod", pod=self.pods.pod_of(run_id), message=tracked.problem)

    def progress(self, run_id: uuid.UUID) -> None:
        """A runner announced a record of the run (PostgreSQL NOTIFY): mirror it."""
        if run_id in self._runs:
            self.mirror.touch(run_id)

    def progress_reconnected(self) -> None:
        """Notifications may have been missed: refresh every run a Pod is advancing."""
        for run_id in self.pods.running():
            self.progress(run_id)

    # -- Workflow resources ------------------------------------------------------------

    async def load_workflows(self) -> None:
        """Read the `Workflow` objects before any run is adopted: a run must not start
        inline for want of the object that sends it to a Pod."""
        for body in await self._kube.list_workflows(self._settings.namespaces):
            self.workflow_seen(body)

    def workflow_seen(self, body: dict[str, Any], *, deleted: bool = False) -> None:
        """A `Workflow` resource was created, changed or deleted. Runs that were blocked
        for want of it, or of its code, are tried again."""
        meta = body["metadata"]
        uid = meta["uid"]
        if deleted:
            self.catalog.remove(uid)
            return
        try:
            spec = WorkflowSpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:  # the CRD's schema lets little through
            log.error(
                "ignoring Workflow %s/%s: %s",
                meta.get("namespace"), meta["name"], describe_validation_error(exc),
            )  # fmt: skip
            self.catalog.remove(uid)
            return
        self.catalog.put(uid, meta["namespace"], spec)
        for run_id, tracked in list(self._runs.items()):
            if tracked.ref.namespace != meta["namespace"] or tracked.workflow != spec.workflow:
                continue
            if tracked.phase.is_blocked or (
                tracked.phase == RunStatus.COMPENSATING and run_id not in self.pods.running()
            ):
                self._submit(run_id)

    def recorded(self, run_id: uuid.UUID, step: StepState) -> None:
        """A segment stored a record: mirror it, and count it."""
        self.mirror.touch(run_id)
        tracked = self._runs.get(run_id)
        self.metrics.step_recorded(tracked.workflow if tracked else "", step)

    # -- WorkflowRun lifecycle -----------------------------------------------------

    async def adopt(
        self,
        ref: RunRef,
        raw_spec: dict[str, Any],
        *,
        status: dict[str, Any] | None = None,
        resumed: bool,
    ) -> None:
        """A WorkflowRun exists (created, or seen again after a restart): make sure its
        run exists and is moving, or report why it cannot (`kflow.controller.adoption`).
        ``resumed``: a previous operator may have died mid-run; ``status`` is the
        object's (a previous operator wrote it)."""
        await self._adoption.adopt(ref, raw_spec, status=status, resumed=resumed)

    def _begin(
        self, ref: RunRef, run: RunRecord, spec: WorkflowRunSpec, status: dict[str, Any] | None,
        *, resumed: bool,
    ) -> None:  # fmt: skip
        """Track an adopted run and set it moving."""
        run_id = run.run_id
        ttl = spec.ttl_seconds_after_finished
        self._track(ref, run, ttl=self._settings.run_ttl if ttl is None else timedelta(seconds=ttl))
        self.mirror.seed(run_id, status)
        if run.status.is_terminal:
            self._expire_after(run_id, run.completed_at or self._clock.now())
        queued = self._continue(run, steal=resumed) is self.inline
        # A run the inline executor starts soon shows with its first records or its end:
        # one status PATCH for a fast run, not one more for the queue.
        self.mirror.touch(run_id, within=QUEUED_STATUS_AFTER if queued else None)

    def _track(self, ref: RunRef, run: RunRecord, *, ttl: timedelta | None = None) -> None:
        before = self._runs.get(run.run_id)
        self._runs[run.run_id] = Tracked(
            ref, run.workflow_name, run.workflow_version, run.status, ttl=ttl
        )
        if before is None or before.phase != run.status:
            self.metrics.phase_changed(before.phase if before else None, run.status)

    def _continue(self, run: RunRecord, *, steal: bool) -> InlineExecutor | PodExecutor | None:
        """Submit the run if it can move; the executor it went to."""
        if run.status.is_terminal:
            return None
        if run.status == RunStatus.WAITING:
            if run.wake_at is not None:
                self.timers.schedule(run.run_id, run.wake_at)
            if run.waiting_event is None:
                return None
            # An event may have come while no operator ran: look once now.
        return self._submit(run.run_id, steal=steal and run.status != RunStatus.WAITING)

    async def delete(self, ref: RunRef) -> bool:
        """The WorkflowRun is being deleted: cancel its run first if it is active. False
        while a segment Pod still undoes the run (ask again later)."""
        run_id = uuid.UUID(ref.uid)
        try:
            try:
                run: RunRecord | None = await self.engine.get_run(run_id)
            except RunNotFound:
                run = None
            if run is not None and not run.status.is_terminal:
                if run_id not in self._runs:  # kopf resumes no object already being deleted
                    self._track(ref, run)
                if self._executor(run_id) is self.pods:
                    if run.status != RunStatus.COMPENSATING:
                        await self._cancel(run_id, "the WorkflowRun was deleted")
                    elif self.pods.pod_of(run_id) is None:
                        self._submit(run_id)  # e.g. after a restart: nothing undoes it yet
                    return False
                await self._cancel(run_id, "the WorkflowRun was deleted")
        except TransientError as exc:
            await self._event(
                ref, "Warning", "DeletionDelayed",
                f"the run must be cancelled before its WorkflowRun goes; retrying: {exc}",
            )  # fmt: skip
            raise
        self.timers.cancel(run_id)
        self.expiry.cancel(run_id)
        self.mirror.forget(run_id)
        self._annotations.forget(ref.uid)
        self._adoption.forget(ref.uid)
        self.pods.forget(run_id)
        tracked = self._runs.pop(run_id, None)
        if tracked is not None:
            self.metrics.forgotten(tracked.phase)
        return True

    async def _cancel(self, run_id: uuid.UUID, reason: str) -> SegmentOutcome:
        """Cancel the run: inline, compensations run now; in Pods, the running segment Pod
        is stopped (the lease taken from it first) and the next Pod compensates."""
        in_pods = self._executor(run_id) is self.pods
        if in_pods:
            self.pods.cancelling(run_id)
        else:
            await self.inline.kill(run_id)
        outcome = await self.engine.cancel(run_id, reason, compensate=not in_pods)
        if in_pods:
            await self.pods.kill(run_id)
        self.timers.cancel(run_id)
        await self._outcome(outcome)
        return outcome

    async def _outcome(self, outcome: SegmentOutcome) -> None:
        run_id = outcome.run_id
        self.mirror.touch(run_id, urgent=True)
        if outcome.ready_at is not None:
            if outcome.ready_at <= self._clock.now():
                self._submit(run_id)
            else:
                self.timers.schedule(run_id, outcome.ready_at)
        self.metrics.segments.labels(outcome.status.value).inc()
        tracked = self._runs.get(run_id)
        if tracked is None:  # its WorkflowRun was deleted meanwhile
            return
        if not (outcome.status == RunStatus.FAILED or outcome.status.is_blocked):
            tracked.problem = None  # a segment went through
        if tracked.event_at is not None:
            self.metrics.event_to_resume.observe(time.monotonic() - tracked.event_at)
            tracked.event_at = None
        before, tracked.phase = tracked.phase, outcome.status
        if before == outcome.status:
            return
        self.metrics.phase_changed(before, outcome.status)
        if outcome.status.is_terminal:
            self._expire_after(run_id, self._clock.now())
        if outcome.status.is_terminal or outcome.status.is_blocked:
            kind = "Normal" if outcome.status in _NORMAL else "Warning"
            message = outcome.error or f"run {outcome.status.value}"
            await self._event(tracked.ref, kind, outcome.status.value, message)

    def _expire_after(self, run_id: uuid.UUID, finished_at: datetime) -> None:
        tracked = self._runs.get(run_id)
        if tracked is not None and tracked.ttl is not None:
            self.expiry.schedule(run_id, finished_at + tracked.ttl)

    def _expire(self, run_id: uuid.UUID) -> None:
        """A finished run's TTL passed: delete its WorkflowRun (the deletion goes through
        the finalizer as any other; a run retried since is not finished any more)."""
        tracked = self._runs.get(run_id)
        if tracked is not None and tracked.phase.is_terminal:
            self.background.spawn(self._delete_expired(run_id, tracked.ref))

    async def _delete_expired(self, run_id: uuid.UUID, ref: RunRef) -> None:
        try:
            await self._kube.delete_run(ref.namespace, ref.name, uid=ref.uid)
        except (ApiError, OSError) as exc:
            # Refused for good (e.g. no right to delete): asking again cannot help.
            if isinstance(exc, ApiError) and exc.permanent:
                log.error("cannot delete expired %s/%s: %s", ref.namespace, ref.name, exc)
                await self._event(ref, "Warning", "ExpiryFailed", f"not deleted: {exc}")
                return
            log.warning("cannot delete expired %s/%s yet: %s", ref.namespace, ref.name, exc)
            self.expiry.schedule(run_id, self._clock.now() + timedelta(seconds=RETRY_AFTER))

    async def _event(self, ref: RunRef, kind: str, reason: str, message: str) -> None:
        try:
            await self._kube.post_event(
                namespace=ref.namespace, name=ref.name, uid=ref.uid,
                type=kind, reason=reason, message=message,
            )  # fmt: skip
        except Exception as exc:  # an Event is a courtesy: never fail the caller for it
            log.warning(
                "could not post Event %s on %s/%s: %s", reason, ref.namespace, ref.name, exc
            )

    # -- annotations (kflow.controller.delivery) -------------------------------------

    async def annotations(self, ref: RunRef, annotations: dict[str, str]) -> None:
        """Deliver ``event.kflow.io/*`` annotations and act on ``kflow.io/*`` ones."""
        await self._annotations.handle(ref, annotations)

    def adopted(self, ref: RunRef) -> bool:
        return uuid.UUID(ref.uid) in self._runs

    def tracked(self, run_id: uuid.UUID) -> Tracked | None:
        return self._runs.get(run_id)

    def knows(self, ref: RunRef) -> bool:
        """Adopted, refused, or about to be adopted again: nothing to do on a new event."""
        uid = ref.uid
        return uuid.UUID(uid) in self._runs or self._adoption.pending(uid)
