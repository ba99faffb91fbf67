"""`InlineExecutor`: runs segments as asyncio tasks in the operator, a bounded number at once.

One segment per run at a time: a run submitted while its segment runs is run again right
after. What a segment leaves behind goes to ``on_outcome``; failures that leave the run
intact (the store is down, another executor holds the lease) are retried with backoff
through ``retry_at``. A segment superseded by a takeover (a cancel took the lease) ends
quietly: whoever took over reports the run. The state of each run (its task, whether it
runs again, the steal flag and failure count) is on the run's record.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta

from kflow._engine import Engine
from kflow._errors import LeaseHeld, LeaseLost, RunNotFound, TransientError
from kflow._models import SegmentOutcome
from kflow._retry import backoff
from kflow.controller.runs import TrackedRun

__all__ = ["InlineExecutor"]

log = logging.getLogger(__name__)


class InlineExecutor:
    def __init__(
        self,
        engine: Engine,
        *,
        runs: Mapping[uuid.UUID, TrackedRun],
        concurrency: int,
        on_outcome: Callable[[SegmentOutcome], Awaitable[None]],
        retry_at: Callable[[uuid.UUID, datetime], None],
    ) -> None:
        self._engine = engine
        self._runs = runs
        """The controller's records: a run missing from it (or replaced) is forgotten."""
        self._slots = asyncio.Semaphore(concurrency)
        self._on_outcome = on_outcome
        self._retry_at = retry_at
        self._tasks: set[asyncio.Task[None]] = set()
        """The segments running now (those of forgotten runs too, until they end)."""

    def submit(self, run: TrackedRun, *, steal: bool = False) -> None:
        """Advance the run soon. ``steal`` takes over a lease left by a dead operator."""
        if steal:
            run.steal = True
        if run.segment is not None:
            run.again = True
            return
        task = asyncio.create_task(self._segment(run), name=f"kflow-segment-{run.run_id}")
        run.segment = task
        self._tasks.add(task)
        task.add_done_callback(lambda _: self._done(run, task))

    def _done(self, run: TrackedRun, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        run.segment = None
        if run.again:
            run.again = False
            if self._runs.get(run.run_id) is run:  # not forgotten meanwhile
                self.submit(run)

    async def _segment(self, run: TrackedRun) -> None:
        run_id = run.run_id
        async with self._slots:
            steal, run.steal = run.steal, False
            try:
                outcome = await self._engine.run_segment(run_id, steal=steal)
            except LeaseLost:
                log.info("run %s was taken over by another executor", run_id)
                return
            except RunNotFound:
                log.warning("run %s no longer exists", run_id)
                return
            except (LeaseHeld, TransientError) as exc:
                self._back_off(run, f"{type(exc).__name__}: {exc}")
                return
            except Exception:
                log.exception("run %s: the segment failed unexpectedly", run_id)
                self._back_off(run, "unexpected error")
                return
            run.inline_failures = 0
        await self._on_outcome(outcome)

    def _back_off(self, run: TrackedRun, why: str) -> None:
        run.inline_failures += 1
        delay = backoff(run.inline_failures)
        log.warning("run %s: %s; trying again in %.0fs", run.run_id, why, delay)
        self._retry_at(run.run_id, self._engine.clock.now() + timedelta(seconds=delay))

    async def kill(self, run: TrackedRun) -> None:
        """Stop the run's running segment (a cancel): its step is interrupted where it
        awaits, as a segment Pod is stopped, instead of finishing after the cancel."""
        run.again = False
        task = run.segment
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.wait([task])

    async def drain(self) -> None:
        """Wait for the segments running now (for shutdown and tests)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
