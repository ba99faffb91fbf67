"""Adopting WorkflowRuns: from an object seen on the watch to a run that is moving.

An object seen (created, or listed again after a restart) gets its run: created in
PostgreSQL (idempotent by the object's uid) and bound to what its `Workflow` declares
when its code runs in Pods, then handed to the controller to track and submit. A spec or
input that cannot run is refused once, on the status and in a Warning Event. kopf does
not retry event handlers, so a failure of the store or the API server is retried here,
one attempt at a time per object; a deletion during an attempt cancels what it started.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from kflow.controller.delivery import RETRY_AFTER
from kflow.controller.mirror import RunRef
from kflow.errors import ApiError, InvalidInput, TransientError
from kflow.models import RunStatus
from kflow.resources import WorkflowRunSpec
from kflow.serde import describe_validation_error

if TYPE_CHECKING:
    from kflow.controller.controller import Controller

__all__ = ["Adoption"]

log = logging.getLogger(__name__)


class Adoption:
    """The controller's adoption of WorkflowRuns (its friend: it uses its internals)."""

    def __init__(self, controller: Controller) -> None:
        self._c = controller
        self._refused: set[str] = set()
        """WorkflowRuns refused for good (invalid spec or input): not tried again."""
        self._attempts: dict[str, asyncio.TimerHandle | None] = {}
        """WorkflowRuns being adopted (None: an attempt runs; a timer: the next attempt,
        after a failure of the store or the API server)."""
        self._gone: set[str] = set()
        """WorkflowRuns deleted while an attempt to adopt them ran."""

    def pending(self, uid: str) -> bool:
        """Refused, or an attempt runs or is due: a new watch event changes nothing."""
        return uid in self._refused or uid in self._attempts

    def forget(self, uid: str) -> None:
        """The WorkflowRun is being deleted: a pending attempt is dropped, a running one
        cancels what it starts."""
        if uid in self._attempts:
            attempt = self._attempts.pop(uid)
            if attempt is None:
                self._gone.add(uid)
            else:
                attempt.cancel()
        self._refused.discard(uid)

    async def adopt(
        self, ref: RunRef, raw_spec: dict[str, Any], *, status: dict[str, Any] | None,
        resumed: bool,
    ) -> None:  # fmt: skip
        """See `Controller.adopt`."""
        self._attempts[ref.uid] = None  # an attempt runs
        try:
            try:
                spec = WorkflowRunSpec.model_validate(raw_spec)
            except ValidationError as exc:
                await self.refuse(
                    ref, "InvalidSpec", f"invalid spec: {describe_validation_error(exc)}"
                )
            else:
                await self._start(ref, spec, status, resumed=resumed)
        except (TransientError, ApiError, OSError) as exc:
            if ref.uid in self._gone:
                self._gone.discard(ref.uid)
                self._attempts.pop(ref.uid, None)
                return
            log.warning("cannot adopt %s/%s yet: %s", ref.namespace, ref.name, exc)

            def again() -> None:
                self._c.background.spawn(self._again(ref, raw_spec, status, resumed=resumed))

            loop = asyncio.get_running_loop()
            self._attempts[ref.uid] = loop.call_later(RETRY_AFTER, again)
            return
        self._attempts.pop(ref.uid, None)
        self._gone.discard(ref.uid)

    async def _again(
        self, ref: RunRef, raw_spec: dict[str, Any], status: dict[str, Any] | None, *,
        resumed: bool,
    ) -> None:  # fmt: skip
        await self.adopt(ref, raw_spec, status=status, resumed=resumed)
        if self._c.adopted(ref):  # annotations set meanwhile waited for the run
            self._c._annotations.retry(ref)

    async def _start(
        self, ref: RunRef, spec: WorkflowRunSpec, status: dict[str, Any] | None, *,
        resumed: bool,
    ) -> None:  # fmt: skip
        c = self._c
        run_id = uuid.UUID(ref.uid)
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
            await self.refuse(ref, "InvalidInput", str(exc))
            return
        if ref.uid in self._gone:  # deleted while this attempt ran: nothing may run it
            await c.engine.cancel(run_id, "the WorkflowRun was deleted")
            return
        c._begin(ref, run, spec, status, resumed=resumed)  # only now: a failed start retries

    async def refuse(self, ref: RunRef, reason: str, message: str) -> None:
        """Report a WorkflowRun that cannot be run, instead of running it (once)."""
        await self._c._kube.patch_run_status(
            ref.namespace,
            ref.name,
            {
                "phase": RunStatus.FAILED.value,
                "error": message,
                "observedGeneration": ref.generation,
            },
        )
        self._refused.add(ref.uid)  # reported: later watch events of it change nothing
        await self._c._event(ref, "Warning", reason, message)
