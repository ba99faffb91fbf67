"""`InlineExecutor`: runs segments as asyncio tasks in the operator, a bounded number at once.

One segment per run at a time: a run submitted while its segment runs is run again right
after. What a segment leaves behind goes to ``on_outcome``; failures that leave the run
intact (the store is down, another executor holds the lease) are retried with backoff
through ``retry_at``. A segment superseded by a takeover (a cancel took the lease) ends
quietly: whoever took over reports the run.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from kflow.engine import Engine
from kflow.errors import LeaseHeld, LeaseLost, RunNotFound, TransientError
from kflow.models import SegmentOutcome
from kflow.retry import backoff

__all__ = ["InlineExecutor"]

log = logging.getLogger(__name__)


class InlineExecutor:
    def __init__(
        self,
        engine: Engine,
        *,
        concurrency: int,
        on_outcome: Callable[[SegmentOutcome], Awaitable[None]],
        retry_at: Callable[[uuid.UUID, datetime], None],
    ) -> None:
        self._engine = engine
        self._slots = asyncio.Semaphore(concurrency)
        self._on_outcome = on_outcome
        self._retry_at = retry_at
        self._running: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._again: set[uuid.UUID] = set()
        self._steal: set[uuid.UUID] = set()
        self._failures: dict[uuid.UUID, int] = {}

    def submit(self, run_id: uuid.UUID, *, steal: bool = False) -> None:
        """Advance the run soon. ``steal`` takes over a lease left by a dead operator."""
        if steal:
            self._steal.add(run_id)
        if run_id in self._running:
            self._again.add(run_id)
            return
        task = asyncio.create_task(self._segment(run_id), name=f"kflow-segment-{run_id}")
        self._running[run_id] = task
        task.add_done_callback(lambda _: self._done(run_id))

    def _done(self, run_id: uuid.UUID) -> None:
        self._running.pop(run_id, None)
        if run_id in self._again:
            self._again.discard(run_id)
            self.submit(run_id)

    async def _segment(self, run_id: uuid.UUID) -> None:
        async with self._slots:
            steal = run_id in self._steal
            self._steal.discard(run_id)
            try:
                outcome = await self._engine.run_segment(run_id, steal=steal)
            except LeaseLost:
                log.info("run %s was taken over by another executor", run_id)
                return
            except RunNotFound:
                log.warning("run %s no longer exists", run_id)
                return
            except (LeaseHeld, TransientError) as exc:
                self._back_off(run_id, f"{type(exc).__name__}: {exc}")
                return
            except Exception:
                log.exception("run %s: the segment failed unexpectedly", run_id)
                self._back_off(run_id, "unexpected error")
                return
            self._failures.pop(run_id, None)
        await self._on_outcome(outcome)

    def _back_off(self, run_id: uuid.UUID, why: str) -> None:
        failures = self._failures.get(run_id, 0) + 1
        self._failures[run_id] = failures
        delay = backoff(failures)
        log.warning("run %s: %s; trying again in %.0fs", run_id, why, delay)
        self._retry_at(run_id, self._engine.clock.now() + timedelta(seconds=delay))

    async def kill(self, run_id: uuid.UUID) -> None:
        """Stop the run's running segment (a cancel): its step is interrupted where it
        awaits, as a segment Pod is stopped, instead of finishing after the cancel."""
        self._again.discard(run_id)
        task = self._running.get(run_id)
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.wait([task])

    async def drain(self) -> None:
        """Wait for the segments running now (for shutdown and tests)."""
        while self._running:
            await asyncio.gather(*self._running.values(), return_exceptions=True)

    @property
    def busy(self) -> int:
        return len(self._running)
