"""Adopting WorkflowRuns: from an object seen on the watch to a run that is moving.

An object seen (created, or listed again after a restart) gets its run: created in
PostgreSQL (idempotent by the object's uid) and bound to what its `Workflow` declares
when its code runs in Pods, then handed to the controller to track and submit. Runs are
tenants of their namespace (`tenant_of`: ``ctx.kv`` is never shared across namespaces).

Once the run exists, PostgreSQL's record is the truth: a spec whose workflow, version or
input was edited since (`RunConflict`) does not change the run; the run is adopted as it
is and the edit reported (`SpecChanged`: a Warning Event, once, and a condition). A spec
or input that cannot run is refused once, on the status and in a Warning Event; the
status says so after a restart too, so the object stays refused (and is not reported
again) until ``kflow.io/retry`` re-validates its spec as it is then. kopf does
not retry event handlers, so a failure of the store or the API server is retried here,
one attempt at a time per object (the next one is a timer on the run's record); a
deletion during an attempt (the record is forgotten) cancels what it started.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

from kflow._errors import ApiError, InvalidInput, RunConflict, TransientError
from kflow._models import RunRecord, RunStatus
from kflow.controller.annotations import RETRY
from kflow.controller.bodies import Invalid, spec_edits
from kflow.controller.control import RunControl
from kflow.controller.kube import KubeApi
from kflow.controller.runs import RETRY_AFTER, Purpose, RunRef, TimerKey, TrackedRun
from kflow.resources import WorkflowRunSpec, WorkflowRunStatus

__all__ = ["TENANTS", "Adoption", "tenant_of"]

log = logging.getLogger(__name__)

TENANTS = uuid.UUID("de8785fa-719c-5318-8f0c-85a25e8ba048")
"""The namespace of tenant ids: ``uuid5(NAMESPACE_DNS, "tenants.kflow.io")``."""


def tenant_of(namespace: str) -> uuid.UUID:
    """The tenant of a WorkflowRun's run: its Kubernetes namespace, as
    ``uuid5(TENANTS, namespace)`` (stable across operators and restarts)."""
    return uuid.uuid5(TENANTS, namespace)


def refused_before(status: WorkflowRunStatus | None) -> bool:
    """The object's status says an operator refused it (Failed, with an error, and no
    run: a run's status always names it)."""
    return (
        status is not None and status.phase == RunStatus.FAILED.value
        and status.run_id is None and bool(status.error)
    )  # fmt: skip


SPEC_CHANGED = "SpecChanged"


class Adoption:
    """Adopts WorkflowRuns for the controller (`RunControl`)."""

    def __init__(
        self, control: RunControl, *, kube: KubeApi, redeliver: Callable[[RunRef], None]
    ) -> None:
        self._c = control
        self._kube = kube
        self._redeliver = redeliver
        """Pass over a run's annotations again (those set while it waited for its run)."""

    async def adopt(
        self, ref: RunRef, spec: WorkflowRunSpec | Invalid, *,
        status: WorkflowRunStatus | None, resumed: bool,
    ) -> None:  # fmt: skip
        """See `Controller.adopt`."""
        await self._attempt(self._c.enter(ref), spec, status, resumed=resumed)

    def _current(self, record: TrackedRun) -> bool:
        """Not forgotten (its WorkflowRun deleted) since the attempt began."""
        return self._c.record(record.run_id) is record

    async def _attempt(
        self, record: TrackedRun, spec: WorkflowRunSpec | Invalid,
        status: WorkflowRunStatus | None, *, resumed: bool,
    ) -> None:  # fmt: skip
        ref = record.ref
        if refused_before(status):  # reported already: at most `retry` takes it again
            record.refused = True
            return
        try:
            if isinstance(spec, Invalid):
                await self._refuse(record, "InvalidSpec", f"invalid spec: {spec.message}")
            else:
                await self._start(record, spec, status, resumed=resumed)
        except (TransientError, ApiError, OSError) as exc:
            if not self._current(record):
                return
            log.warning("cannot adopt %s/%s yet: %s", ref.namespace, ref.name, exc)
            again = self._again(record, spec, status, resumed=resumed)
            record.arm(TimerKey(Purpose.ADOPTION), RETRY_AFTER,
                       lambda: self._c.background.spawn(again()))  # fmt: skip

    def _again(
        self, record: TrackedRun, spec: WorkflowRunSpec | Invalid,
        status: WorkflowRunStatus | None, *, resumed: bool,
    ) -> Callable[[], Coroutine[Any, Any, None]]:  # fmt: skip
        async def again() -> None:
            if not self._current(record):  # deleted after the timer fired
                return
            await self._attempt(record, spec, status, resumed=resumed)
            if record.adopted:  # annotations set meanwhile waited for the run
                self._redeliver(record.ref)

        return again

    async def _start(
        self, record: TrackedRun, spec: WorkflowRunSpec, status: WorkflowRunStatus | None, *,
        resumed: bool,
    ) -> None:  # fmt: skip
        c, ref, run_id = self._c, record.ref, record.run_id
        # Code that runs in Pods is not here: bind the run to what its Workflow declares.
        declared = None
        if c.catalog.placement(ref.namespace, spec.workflow, spec.version).executor == "pod":
            declared = c.catalog.find(ref.namespace, spec.workflow, spec.version)
        try:
            run = await c.engine.start(
                spec.workflow,
                spec.input,
                version=declared.version if declared else spec.version,
                signature=declared.signature if declared else None,
                run_id=run_id,
                tenant_id=tenant_of(ref.namespace),
                timeout=timedelta(seconds=spec.timeout_seconds) if spec.timeout_seconds else None,
            )
        except InvalidInput as exc:
            await self._refuse(record, "InvalidInput", str(exc))
            return
        except RunConflict as exc:  # the spec was edited since: the run stays as it is
            run = exc.existing
        if not self._current(record):  # deleted while this attempt ran: nothing may run it
            await c.engine.cancel(run_id, "the WorkflowRun was deleted")
            return
        await c.begin(record, run, spec, status, resumed=resumed)  # a failed start retries
        await self.check_spec(record, spec, run, status)

    async def check_spec(
        self, record: TrackedRun, spec: WorkflowRunSpec, run: RunRecord,
        status: WorkflowRunStatus | None = None,
    ) -> None:  # fmt: skip
        """Compare the object's spec with the run's and report an edit of its fixed
        fields (once: not again if ``status``, the object's, reports it already)."""
        started = WorkflowRunSpec.model_construct(
            workflow=run.workflow_name,
            version=None if spec.version is None else run.workflow_version,
            input=run.input,
        )
        edits = spec_edits(started, spec)
        message = None
        if edits:
            message = (
                f"{', '.join(edits)} changed after the run started: the run keeps the spec "
                f"it started with (workflow {run.workflow_name!r} v{run.workflow_version}, "
                "its input in PostgreSQL); create a new WorkflowRun to run another"
            )
        before, record.spec_changed = record.spec_changed, message
        if message == before:
            return
        self._c.mirror.touch(record.run_id)
        said = status is not None and any(
            c.type == SPEC_CHANGED and c.status == "True" and c.message == message
            for c in status.conditions
        )
        if message is not None and not said:
            await self._c.warn(record.ref, SPEC_CHANGED, message)

    async def retry_refused(self, ref: RunRef, spec: WorkflowRunSpec | Invalid) -> bool:
        """``kflow.io/retry`` on a refused WorkflowRun: validate its spec as it is now and
        adopt it if it is valid (else it is refused again, with the new reason). True
        once the attempt is made (adopted, refused, or to be tried again)."""
        record = self._c.record(ref.run_id)
        if record is None or not record.refused:
            return False
        record.ref, record.refused = ref, False
        await self._attempt(record, spec, None, resumed=False)
        return True

    async def spec_seen(
        self, ref: RunRef, read_spec: Callable[[], WorkflowRunSpec | Invalid]
    ) -> None:
        """A watch event of an adopted run: if its spec was edited since it was last seen
        (its generation), the run does not change; the edit is reported. The spec is read
        (``read_spec``) only then: most events are the operator's own status writes."""
        record = self._c.record(ref.run_id)
        if record is None or not record.adopted or ref.generation == record.ref.generation:
            return
        before, record.ref = record.ref, ref  # its status observes this generation
        self._c.mirror.touch(ref.run_id)
        spec = read_spec()
        if isinstance(spec, Invalid):  # the API server's schema lets little through
            await self._c.warn(ref, "InvalidSpec", f"the edited spec is invalid, and ignored: "
                            f"{spec.message}")  # fmt: skip
            return
        try:
            run = await self._c.engine.get_run(ref.run_id)
        except TransientError as exc:
            log.warning("cannot compare %s/%s with its run yet: %s", ref.namespace, ref.name, exc)
            record.ref = before  # the next watch event looks again
            return
        await self.check_spec(record, spec, run)

    async def retry_annotation(
        self, ref: RunRef, spec: WorkflowRunSpec | Invalid, annotations: dict[str, str]
    ) -> None:
        """``kflow.io/retry`` on a refused WorkflowRun re-validates its spec as it is now
        (`retry_refused`); the other annotations wait
        for the run, as they would on a new object."""
        value = annotations.get(RETRY)
        if value is None or not await self.retry_refused(ref, spec):
            return
        removed = await self._kube.remove_annotation(ref.namespace, ref.name, RETRY, value)
        annotations.pop(RETRY)
        record = self._c.record(ref.run_id)
        if not removed or record is None or record.refused:
            return  # refused again: its Warning (InvalidInput, InvalidSpec) answers
        message = "the spec is valid now; the run starts" if record.adopted else (
            "the spec is being validated again (the store did not answer; trying again)"
        )  # fmt: skip
        await self._c.event(ref, "Normal", "Retried", f"retry: {message}")

    async def _refuse(self, record: TrackedRun, reason: str, message: str) -> None:
        """Report a WorkflowRun that cannot be run, instead of running it (once)."""
        ref = record.ref
        await self._kube.patch_run_status(
            ref.namespace,
            ref.name,
            {
                "phase": RunStatus.FAILED.value,
                "error": message,
                "observedGeneration": ref.generation,
            },
        )
        record.refused = True  # reported: later watch events of it change nothing
        await self._c.warn(ref, reason, message)
