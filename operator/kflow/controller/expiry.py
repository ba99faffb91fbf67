"""`Expiry`: a finished run's WorkflowRun is deleted once its TTL has passed.

The TTL is the object's ``spec.ttlSecondsAfterFinished`` (as a Job's) or the operator's
``KFLOW_RUN_TTL``; it is set on the run's record at adoption. The deletion goes through
the finalizer as any other, with a uid precondition, and the run's history stays in
PostgreSQL. A run retried since it finished is not finished any more: its timer does
nothing. A deletion the API server refuses for good is reported once (a Warning Event);
any other failure is tried again.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from kflow._clock import Clock
from kflow._errors import ApiError
from kflow.controller.kube import KubeApi
from kflow.controller.runs import RETRY_AFTER, RunRef, TrackedRun
from kflow.controller.tasks import Background
from kflow.controller.timers import TimerWheel

__all__ = ["Expiry"]

log = logging.getLogger(__name__)


class Expiry:
    def __init__(
        self,
        *,
        clock: Clock,
        kube: KubeApi,
        finished: Callable[[uuid.UUID], RunRef | None],
        warn: Callable[[RunRef, str, str], Awaitable[None]],
        background: Background,
    ) -> None:
        self._clock = clock
        self._kube = kube
        self._finished = finished
        """The WorkflowRun of a run that is tracked and finished now, else None."""
        self._warn = warn
        self._background = background
        self._wheel = TimerWheel(clock, fire=self._expire)

    async def run(self) -> None:
        """Delete WorkflowRuns as their time comes, until cancelled."""
        await self._wheel.run()

    def after(self, record: TrackedRun, finished_at: datetime) -> None:
        """The run finished at ``finished_at``: delete its WorkflowRun when its TTL is up."""
        if record.ttl is not None:
            self._wheel.schedule(record.run_id, finished_at + record.ttl)

    def cancel(self, run_id: uuid.UUID) -> None:
        self._wheel.cancel(run_id)

    def _expire(self, run_id: uuid.UUID) -> None:
        ref = self._finished(run_id)
        if ref is not None:
            self._background.spawn(self._delete(run_id, ref))

    async def _delete(self, run_id: uuid.UUID, ref: RunRef) -> None:
        try:
            await self._kube.delete_run(ref.namespace, ref.name, uid=ref.uid)
        except (ApiError, OSError) as exc:
            # Refused for good (e.g. no right to delete): asking again cannot help.
            if isinstance(exc, ApiError) and exc.permanent:
                log.error("cannot delete expired %s/%s: %s", ref.namespace, ref.name, exc)
                await self._warn(ref, "ExpiryFailed", f"not deleted: {exc}")
                return
            log.warning("cannot delete expired %s/%s yet: %s", ref.namespace, ref.name, exc)
            self._wheel.schedule(run_id, self._clock.now() + timedelta(seconds=RETRY_AFTER))
