"""`StatusMirror`: a WorkflowRun's status follows its run, at most one PATCH per interval.

Every record a segment writes *touches* the run; touches are coalesced into one flush per
interval, so a run making hundreds of fast steps costs a few PATCHes a second. A phase
change is *urgent* and flushes at once (an event's effect shows without waiting), which
also absorbs the pending step touches: a fast run costs one PATCH, not one per step. A
touch may give a later deadline (a run queued for the inline executor shows nothing until
its first records, or a deadline, so a fast run is not first written as pending). A
flush reads the run from PostgreSQL (the operator is the only writer of the status) and
skips the PATCH when nothing changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from kflow._clock import Clock
from kflow._engine import Engine
from kflow._errors import ApiError, RunNotFound, TransientError
from kflow._models import RunStatus
from kflow.controller.kube import KubeApi
from kflow.controller.runs import RunRef
from kflow.controller.status import MAX_EVENTS, build_status, rejection
from kflow.resources import EventDelivery, ExecutorView, WorkflowRunStatus

__all__ = ["StatusMirror"]

log = logging.getLogger(__name__)

_TOP_LEVEL = [field.alias or name for name, field in WorkflowRunStatus.model_fields.items()]
_OBJECTS = {"waiting", "executor"}
"""Top-level fields that are objects: written whole, their unset keys as null."""


class StatusMirror:
    def __init__(
        self,
        *,
        engine: Engine,
        kube: KubeApi,
        clock: Clock,
        interval: timedelta,
        ref: Callable[[uuid.UUID], RunRef | None],
        executor: Callable[[uuid.UUID], ExecutorView | None],
        spec_changed: Callable[[uuid.UUID], str | None],
        on_rejected: Callable[[uuid.UUID, str, str], Awaitable[None]],
        max_steps: int,
        max_output_bytes: int,
    ) -> None:
        self._engine = engine
        self._kube = kube
        self._clock = clock
        self._interval = interval.total_seconds()
        self._ref = ref
        self._executor = executor
        self._spec_changed = spec_changed
        self._on_rejected = on_rejected
        self._since = clock.now()
        self._reported: dict[uuid.UUID, set[int]] = {}
        self._max_steps = max_steps
        self._max_output = max_output_bytes
        self._dirty: set[uuid.UUID] = set()
        self._flushers: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._wakeups: dict[uuid.UUID, asyncio.Event] = {}
        self._due: dict[uuid.UUID, float] = {}  # loop time by which the run's flush is due
        self._last: dict[uuid.UUID, _Written] = {}
        self.rejected: dict[uuid.UUID, list[EventDelivery]] = {}
        """Annotations refused for a run, shown beside its delivered events."""
        self.patches = 0

    def touch(
        self, run_id: uuid.UUID, *, urgent: bool = False, within: float | None = None
    ) -> None:
        """The run changed: write its status within the interval (at once if ``urgent``,
        within ``within`` seconds if given), together with whatever changes meanwhile."""
        self._dirty.add(run_id)
        delay = 0.0 if urgent else self._interval if within is None else within
        due = asyncio.get_running_loop().time() + delay
        if due < self._due.get(run_id, float("inf")):
            self._due[run_id] = due
            wakeup = self._wakeups.setdefault(run_id, asyncio.Event())
            wakeup.set()  # the flusher waits for an earlier deadline now
        if run_id not in self._flushers:
            self._flushers[run_id] = asyncio.create_task(
                self._flush_loop(run_id, self._wakeups[run_id]), name=f"kflow-status-{run_id}"
            )

    def forget(self, run_id: uuid.UUID) -> None:
        self._dirty.discard(run_id)
        self._last.pop(run_id, None)
        self.rejected.pop(run_id, None)
        self._reported.pop(run_id, None)
        self._wakeups.pop(run_id, None)
        self._due.pop(run_id, None)
        task = self._flushers.pop(run_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    def seed(self, run_id: uuid.UUID, live: WorkflowRunStatus | None) -> None:
        """The status the WorkflowRun has now (from the watch, at adoption): the first
        flush keeps its conditions' transition times and writes nothing if it is current
        (after an operator restart, most are)."""
        if run_id in self._last or live is None:
            return
        self._last[run_id] = _written(live)

    def reject(self, run_id: uuid.UUID, name: str, reason: str) -> None:
        """An event annotation refused for the run (it never reached the inbox): shown
        with its events, in time order (the last few)."""
        delivery = EventDelivery.model_validate(
            {"name": name, "state": "rejected", "message": rejection(name, reason),
             "at": self._clock.now()}
        )  # fmt: skip
        rejected = self.rejected.setdefault(run_id, [])
        rejected.append(delivery)
        del rejected[:-MAX_EVENTS]

    async def _flush_loop(self, run_id: uuid.UUID, wakeup: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        try:
            while run_id in self._dirty:
                wait = self._due.get(run_id, 0.0) - loop.time()
                if wait > 0:
                    wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wakeup.wait(), timeout=wait)
                    continue  # due now, or a touch moved the deadline: look again
                self._dirty.discard(run_id)
                self._due.pop(run_id, None)
                try:
                    await self.flush(run_id)
                except (ApiError, TransientError, OSError) as exc:
                    if isinstance(exc, ApiError) and exc.permanent:
                        log.error("status of run %s refused: %s", run_id, exc)
                        continue  # retrying the same PATCH cannot help
                    log.warning("status of run %s not mirrored yet: %s", run_id, exc)
                    await asyncio.sleep(max(self._interval, 1.0))
                    self._dirty.add(run_id)  # and due at once
        finally:
            if self._flushers.get(run_id) is asyncio.current_task():
                del self._flushers[run_id]
                self._wakeups.pop(run_id, None)
                self._due.pop(run_id, None)

    async def _report_rejections(self, run_id: uuid.UUID, events: list[dict[str, Any]]) -> None:
        """Events a wait set aside (their payload did not fit its type) are reported once,
        as they are seen; those set aside before this operator started are on the status."""
        reported = self._reported.setdefault(run_id, set())
        for e in events:
            if not e.get("rejected") or e["id"] in reported:
                continue
            reported.add(e["id"])
            at = e.get("consumed_at")
            if at is None or datetime.fromisoformat(at) >= self._since:
                await self._on_rejected(run_id, e["name"], e["rejected"])

    async def flush(self, run_id: uuid.UUID) -> None:
        """Write the run's status now (if it changed)."""
        ref = self._ref(run_id)
        if ref is None:
            return
        try:
            run, history, total, events = await self._engine.store.snapshot(
                run_id, last_steps=self._max_steps
            )
        except RunNotFound:
            return
        status = build_status(
            run,
            history,
            events,
            total_steps=total,
            now=self._clock.now(),
            generation=ref.generation,
            previous=before.status if (before := self._last.get(run_id)) else None,
            max_steps=self._max_steps,
            max_output_bytes=self._max_output,
            refused=self.rejected.get(run_id, []),
            spec_changed=self._spec_changed(run_id),
        )
        await self._report_rejections(run_id, events)
        status.executor = self._executor(run_id)
        written = _written(status)
        if written == before:
            return
        body = _patch_body(status)
        try:
            await self._kube.patch_run_status(ref.namespace, ref.name, body)
        except ApiError as exc:
            if exc.status == 404:  # the WorkflowRun is gone
                return
            raise
        self.patches += 1
        self._last[run_id] = written


def _patch_body(status: WorkflowRunStatus) -> dict[str, Any]:
    """The merge patch that makes the object's status ``status``. A merge patch keeps
    every key it does not name and deletes those it sets to null: so each top-level field
    left out is null, and so is each key of a top-level object left out (a Pod that ended
    leaves ``executor.pod``, a wait without a deadline ``waiting.until``); inside list
    items (replaced whole, and whose schema refuses null) None is left out."""
    body = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    body.update({name: None for name in _TOP_LEVEL if name not in body})
    for name in _OBJECTS:
        value = getattr(status, name)
        if value is not None:
            body[name] = value.model_dump(mode="json", by_alias=True)
    return body


class _Written(NamedTuple):
    """What is kept of a status once written (compared whole with the next one)."""

    status: WorkflowRunStatus
    digest: str = ""
    """For a finished run: its steps and output, hashed."""


def _written(status: WorkflowRunStatus) -> _Written:
    """A finished run's steps and output no longer change (until a retry), and an operator
    keeps every finished run it adopted until its WorkflowRun is deleted: of those it
    keeps a digest, not up to `max_steps` records."""
    try:
        finished = RunStatus(status.phase or "").is_terminal
    except ValueError:  # no phase yet
        finished = False
    if not finished:
        return _Written(status)
    bulk = status.model_dump_json(include={"steps", "output"})
    slim = status.model_copy(update={"steps": [], "output": None})
    return _Written(slim, hashlib.sha256(bulk.encode()).hexdigest())
