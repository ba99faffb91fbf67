"""`Background`: tasks started from callbacks (timers, watch events), held until they end.

asyncio keeps only weak references to tasks, so a task nobody holds can vanish mid-way;
and a task nobody awaits reports its exception only when it is garbage-collected, if
ever. Here each is held until it ends, and a failure is logged at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

__all__ = ["Background"]

log = logging.getLogger(__name__)


class Background:
    def __init__(self, what: str) -> None:
        self._what = what
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s task failed", self._what, exc_info=task.exception())

    async def drain(self) -> None:
        """Wait for the tasks running now (and those they start)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
