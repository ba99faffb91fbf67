"""What a WorkflowRun's annotations ask for: events to deliver, actions to take.

``event.kflow.io/<name>`` delivers an event to the run's inbox, then the annotation is
removed with a patch that tests its exact value; ``kflow.io/cancel``, ``retire`` and
``retry`` act on the run. kopf does not retry event handlers, so a transient failure
(database or API server) schedules another pass, one per object, reading the
annotations as they are then; every step is idempotent (dedupe keys, tested removals),
and an annotation stays until it is handled. Refusals go to the run's status and to a
Warning Event.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import TYPE_CHECKING

from kflow.controller.annotations import Action, EventAnnotation, Rejected, parse_annotations
from kflow.controller.mirror import RunRef
from kflow.controller.status import MAX_EVENTS
from kflow.errors import ApiError, KflowError, RunNotFound, TransientError, UndeclaredNameError
from kflow.models import RunStatus
from kflow.resources import EventDelivery

if TYPE_CHECKING:
    from kflow.controller.controller import Controller

__all__ = ["RETRY_AFTER", "Annotations"]

log = logging.getLogger(__name__)

RETRY_AFTER = 5.0
"""Seconds before annotations (or an adoption) that hit a transient failure are tried again."""


class Annotations:
    """The controller's annotation handling (its friend: it uses its internals)."""

    def __init__(self, controller: Controller) -> None:
        self._c = controller
        self._retries: dict[str, asyncio.TimerHandle] = {}

    def forget(self, uid: str) -> None:
        """The WorkflowRun is gone: drop its pending retry."""
        pending = self._retries.pop(uid, None)
        if pending is not None:
            pending.cancel()

    async def handle(self, ref: RunRef, annotations: dict[str, str]) -> None:
        """Deliver ``event.kflow.io/*`` annotations and act on ``kflow.io/*`` ones; on a
        transient failure, pass again later."""
        c = self._c
        found = parse_annotations(annotations, max_bytes=c._settings.max_event_bytes)
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
                await c._event(ref, "Warning", "AnnotationFailed", str(exc))
                return
            log.warning("annotations of %s/%s: %s; trying again", ref.namespace, ref.name, exc)
            self.retry(ref)

    def retry(self, ref: RunRef) -> None:
        """One pending retry per object; it reads the annotations as they are *then*, so a
        pass that another one overtook does nothing twice."""
        c = self._c
        pending = self._retries.pop(ref.uid, None)
        if pending is not None:
            pending.cancel()

        async def again() -> None:
            self._retries.pop(ref.uid, None)
            try:
                body = await c._kube.get_run(ref.namespace, ref.name)
            except (ApiError, OSError) as exc:
                if isinstance(exc, ApiError) and exc.status == 404:
                    return  # the WorkflowRun is gone
                self.retry(ref)
                return
            current = dict(body.get("metadata", {}).get("annotations") or {})
            await self.handle(ref, current)

        self._retries[ref.uid] = asyncio.get_running_loop().call_later(
            RETRY_AFTER, lambda: c.background.spawn(again())
        )

    async def _deliver(self, ref: RunRef, event: EventAnnotation) -> None:
        c = self._c
        run_id = uuid.UUID(ref.uid)
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
                f"the run is {sent.status.value}: event {event.name!r} was not delivered",
            )  # fmt: skip
            return
        if sent.wakes_run:
            tracked = c.tracked(run_id)
            if tracked is not None:
                tracked.event_at = time.monotonic()
            c._submit(run_id)
        c.mirror.touch(run_id)
        removed = await c._kube.remove_annotation(ref.namespace, ref.name, event.key, event.value)
        if sent.duplicate and removed:
            # Delivery is exactly once per name and payload: a stale watch event finds
            # the annotation gone already; one still there was sent again on purpose.
            await self._report_rejected(
                ref, event.name,
                f"event {event.name!r} with this exact payload was delivered before; "
                "vary the payload (an id field) to send it again",
            )  # fmt: skip

    async def _reject(self, ref: RunRef, key: str, value: str, name: str, reason: str) -> None:
        c = self._c
        await self._report_rejected(ref, name, reason, event_text=f"{key}: {reason}")
        await c._kube.remove_annotation(ref.namespace, ref.name, key, value)

    async def _report_rejected(
        self, ref: RunRef, name: str, reason: str, *, event_text: str | None = None
    ) -> None:
        """A refused event: in the run's status (``events[]``) and as a Warning Event."""
        c = self._c
        run_id = uuid.UUID(ref.uid)
        rejected = c.mirror.rejected.setdefault(run_id, [])
        rejected.append(
            EventDelivery.model_validate({"name": name, "state": "rejected", "message": reason})
        )
        del rejected[:-MAX_EVENTS]
        await c._event(ref, "Warning", "EventRejected", event_text or reason)
        c.mirror.touch(run_id)

    async def _act(self, ref: RunRef, action: Action) -> None:
        c = self._c
        run_id = uuid.UUID(ref.uid)
        reason = action.value or f"{action.verb} requested by annotation"
        try:
            if action.verb == "cancel":
                if c._executor(run_id) is c.pods:
                    run = await c.engine.get_run(run_id)
                    if run.status == RunStatus.COMPENSATING:  # do not kill the undoing Pod
                        raise KflowError(f"run {run_id} is being cancelled already")
                await c._cancel(run_id, reason)
            else:
                if action.verb == "retire":
                    outcome = await c.engine.retire(run_id, reason)
                else:
                    outcome = await c.engine.retry(run_id)
                c.timers.cancel(run_id)
                await c._outcome(outcome)
        except TransientError:
            raise  # not refused: try again (the annotation stays until then)
        except KflowError as exc:
            await c._event(ref, "Warning", f"{action.verb.capitalize()}Refused", str(exc))
        await c._kube.remove_annotation(ref.namespace, ref.name, action.key, action.value)
