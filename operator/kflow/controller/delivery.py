"""Delivering what a WorkflowRun's annotations ask for: events to its run, actions on it.

``event.kflow.io/<name>`` delivers an event to the run's inbox, then the annotation is
removed with a patch that tests its exact value; ``kflow.io/cancel``, ``retire`` and
``retry`` act on the run (`kflow.controller.annotations` parses them). kopf does not
retry event handlers, so a transient failure (database or API server) schedules another
pass, one per object (a timer on the run's record), reading the annotations as they are
then; every step is idempotent (dedupe keys, tested removals), and an annotation stays
until it is handled. Refusals go to the run's status and to a Warning Event.
"""

from __future__ import annotations

import logging
import time

from kflow._errors import ApiError, KflowError, RunNotFound, TransientError, UndeclaredNameError
from kflow._models import RunStatus
from kflow.controller.annotations import (
    EVENT_PREFIX,
    Action,
    EventAnnotation,
    Rejected,
    parse_annotations,
)
from kflow.controller.bodies import kflow_annotations
from kflow.controller.control import RunControl
from kflow.controller.kube import KubeApi
from kflow.controller.runs import RETRY_AFTER, Purpose, RunRef, TimerKey
from kflow.controller.status import rejection

__all__ = ["AnnotationDelivery", "rejected_event_text"]

log = logging.getLogger(__name__)

_DONE = {"cancel": "Cancelled", "retire": "Retired", "retry": "Retried"}
"""The reason of the Event that answers an action it carried out."""


def rejected_event_text(name: str, reason: str) -> str:
    """A refused event's Warning Event text, one form for every refusal: the annotation,
    then the reason as the status shows it (`kflow.controller.status.rejection`)."""
    return f"{EVENT_PREFIX}{name}: {rejection(name, reason)}"


class AnnotationDelivery:
    """Acts on WorkflowRuns' annotations for the controller (`RunControl`)."""

    def __init__(self, control: RunControl, *, kube: KubeApi, max_event_bytes: int) -> None:
        self._c = control
        self._kube = kube
        self._max_bytes = max_event_bytes

    async def handle(self, ref: RunRef, annotations: dict[str, str]) -> None:
        """Deliver ``event.kflow.io/*`` annotations and act on ``kflow.io/*`` ones; on a
        transient failure, pass again later."""
        found = parse_annotations(annotations, max_bytes=self._max_bytes)
        try:
            for item in found:
                if isinstance(item, EventAnnotation):
                    await self._deliver(ref, item)
                elif isinstance(item, Rejected):
                    await self._reject(ref, item.key, item.value, item.name, item.reason)
                else:
                    await self._act(ref, item)
        except (ApiError, TransientError, OSError) as exc:
            if isinstance(exc, ApiError) and exc.permanent:  # refused again
                log.error("annotations of %s/%s: %s", ref.namespace, ref.name, exc)
                await self._c.warn(ref, "AnnotationFailed", str(exc))
                return
            log.warning("annotations of %s/%s: %s; trying again", ref.namespace, ref.name, exc)
            self.retry(ref)

    def retry(self, ref: RunRef) -> None:
        """One pending retry per object; it reads the annotations as they are *then*, so a
        pass that another one overtook does nothing twice."""
        record = self._c.record(ref.run_id)
        if record is None:
            return  # forgotten: the WorkflowRun is gone

        async def again() -> None:
            try:
                body = await self._kube.get_run(ref.namespace, ref.name)
            except (ApiError, OSError) as exc:
                if isinstance(exc, ApiError) and exc.status == 404:
                    return  # the WorkflowRun is gone
                self.retry(ref)
                return
            await self.handle(ref, kflow_annotations(body))

        record.arm(TimerKey(Purpose.ANNOTATIONS), RETRY_AFTER,
                   lambda: self._c.background.spawn(again()))  # fmt: skip

    async def _deliver(self, ref: RunRef, event: EventAnnotation) -> None:
        c = self._c
        run_id = ref.run_id
        try:
            sent = await c.engine.send_event(
                run_id, event.name, event.payload, dedupe_key=event.dedupe_key
            )
        except (UndeclaredNameError, RunNotFound) as exc:
            await self._reject(ref, event.key, event.value, event.name, str(exc))
            return
        if not sent.stored and not sent.duplicate:
            await self._reject(
                ref, event.key, event.value, event.name,
                f"the run is {sent.status.value}: it takes no more events",
            )  # fmt: skip
            return
        if sent.wakes_run:
            record = c.record(run_id)
            if record is not None:
                record.event_at = time.monotonic()
            c.submit(run_id)
        c.mirror.touch(run_id)
        removed = await self._kube.remove_annotation(
            ref.namespace, ref.name, event.key, event.value
        )
        if sent.duplicate and removed:
            # Delivery is exactly once per name and payload: a stale watch event finds
            # the annotation gone already; one still there was sent again on purpose.
            await self._report_rejected(
                ref, event.name,
                "this exact payload was delivered before; "
                "vary the payload (an id field) to send it again",
            )  # fmt: skip

    async def _reject(self, ref: RunRef, key: str, value: str, name: str, reason: str) -> None:
        await self._report_rejected(ref, name, reason)
        await self._kube.remove_annotation(ref.namespace, ref.name, key, value)

    async def _report_rejected(self, ref: RunRef, name: str, reason: str) -> None:
        """A refused event: in the run's status (``events[]``) and as a Warning Event."""
        run_id = ref.run_id
        self._c.mirror.reject(run_id, name, reason)
        await self._c.warn(ref, "EventRejected", rejected_event_text(name, reason))
        self._c.mirror.touch(run_id)

    async def _act(self, ref: RunRef, action: Action) -> None:
        """Do what the action asks, remove its annotation, and answer: an Event saying
        what was done, why nothing was, or why it was refused. The pass that removes the
        annotation answers, so a stale watch event that acts again says nothing."""
        c = self._c
        run_id = ref.run_id
        verb = action.verb
        reason = action.value or f"{verb} requested by annotation"
        try:
            run = await c.engine.get_run(run_id)
            if verb == "cancel":
                if c.in_pods(run_id) and run.status == RunStatus.COMPENSATING:
                    # Do not kill the Pod that undoes it.
                    raise KflowError(f"run {run_id} is being cancelled already")
                outcome = await c.cancel(run_id, reason)
            else:
                if verb == "retire":
                    outcome = await c.engine.retire(run_id, reason)
                else:
                    outcome = await c.engine.retry(run_id)
                await c.settle(outcome)
        except TransientError:
            raise  # not refused: try again (the annotation stays until then)
        except KflowError as exc:
            answer = ("Warning", f"{verb.capitalize()}Refused", str(exc))
        else:
            now = outcome.status.value
            if run.status.is_terminal and outcome.status == run.status:
                answer = ("Normal", f"NothingTo{verb.capitalize()}",
                          f"nothing to {verb}: the run is {now}")  # fmt: skip
            else:
                why = "" if verb == "retry" else f" ({reason})"
                answer = ("Normal", _DONE[verb], f"{verb}{why}: the run is {now}")
        if await self._kube.remove_annotation(ref.namespace, ref.name, action.key, action.value):
            await c.event(ref, *answer)
