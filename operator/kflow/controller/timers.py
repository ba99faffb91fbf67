"""`TimerWheel`: one task and one heap for every sleeping run.

A parked run costs an entry here and a row in PostgreSQL, not a task or a kopf daemon
(measured: a daemon per object costs ~2x the memory of plain watching at 10,000 runs).
Each run has at most one pending timer — scheduling again replaces it — so a timer
fires once. Wake times are persisted by the engine; after a restart the operator
re-schedules every waiting run from its row, so no timer is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import uuid
from collections.abc import Callable
from datetime import datetime

from kflow._clock import Clock

__all__ = ["TimerWheel"]


class TimerWheel:
    """Calls ``fire(run_id)`` when a run's time comes (on the clock it is given)."""

    def __init__(self, clock: Clock, fire: Callable[[uuid.UUID], None]) -> None:
        self._clock = clock
        self._fire = fire
        self._heap: list[tuple[datetime, uuid.UUID]] = []
        self._due: dict[uuid.UUID, datetime] = {}
        self._changed = asyncio.Event()
        self.lateness: Callable[[float], None] | None = None
        """Told how late (seconds) each timer fired, for metrics."""

    def __len__(self) -> int:
        return len(self._due)

    def schedule(self, run_id: uuid.UUID, when: datetime) -> None:
        """Fire for ``run_id`` at ``when``, replacing any earlier schedule of it."""
        self._due[run_id] = when
        heapq.heappush(self._heap, (when, run_id))
        self._changed.set()

    def cancel(self, run_id: uuid.UUID) -> None:
        self._due.pop(run_id, None)

    def when(self, run_id: uuid.UUID) -> datetime | None:
        return self._due.get(run_id)

    async def run(self) -> None:
        """Fire timers until cancelled."""
        while True:
            self._changed.clear()
            while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
                heapq.heappop(self._heap)  # replaced or cancelled
            if not self._heap:
                await self._changed.wait()
                continue
            when, run_id = self._heap[0]
            delay = (when - self._clock.now()).total_seconds()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=min(delay, 3600))
                continue
            heapq.heappop(self._heap)
            del self._due[run_id]
            if self.lateness is not None:
                self.lateness(-delay)
            self._fire(run_id)
