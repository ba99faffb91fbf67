"""Adopting WorkflowRuns: from an object seen on the watch to a run that is moving.

An object seen (created, or listed again after a restart) gets its run: created in
PostgreSQL (idempotent by the object's uid) and bound to what its `Workflow` declares
when its code runs in Pods, then handed to the controller to track and submit. A spec or
input that cannot run is refused once, on the status and in a Warning Event. kopf does
not retry event handlers, so a failure of the store or the API server is retried here,
one attempt at a time per object (the next one is a timer on the run's record); a
deletion during an attempt (the record is forgotten) cancels what it started.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

from kflow._errors import ApiError, InvalidInput, TransientError
from kflow._models import RunStatus
from kflow.controller.bodies import Invalid
from kflow.controller.control import RunControl
from kflow.controller.kube import KubeApi
from kflow.controller.runs import RETRY_AFTER, Purpose, RunRef, TimerKey, TrackedRun
from kflow.resources import WorkflowRunSpec, WorkflowRunStatus

__all__ = ["Adoption"]

log = logging.getLogger(__name__)


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
                timeout=timedelta(seconds=spec.timeout_seconds) if spec.timeout_seconds else None,
            )
        except InvalidInput as exc:
            await self._refuse(record, "InvalidInput", str(exc))
            return
        if not self._current(record):  # deleted while this attempt ran: nothing may run it
            await c.engine.cancel(run_id, "the WorkflowRun was deleted")
            return
        await c.begin(record, run, spec, status, resumed=resumed)  # a failed start retries

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
