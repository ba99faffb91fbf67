"""Holding a run's lease: a new fencing epoch, renewed in the background, given back.

Every executor advances a run under its lease (`Engine.run_segment`, cancel, retry...).
The lease is renewed every third of its TTL by a timer — not a task per segment, since
most segments end before it first fires — and given back whatever happens inside, so the
next executor need not wait for it to expire; a superseded lease makes the holder's next
write fail (`LeaseLost`), which stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

from kflow._clock import Clock
from kflow._errors import LeaseLost, PersistenceError, TransientError
from kflow._models import RunRecord
from kflow._store import Store

__all__ = ["hold_lease"]


@contextlib.asynccontextmanager
async def hold_lease(
    store: Store, run_id: uuid.UUID, *, owner: str, clock: Clock, ttl: timedelta, steal: bool,
    segment: bool,
) -> AsyncIterator[RunRecord]:  # fmt: skip
    """Hold the run's lease; ``steal`` takes it even from a live holder, ``segment``
    counts a segment (see `Store.acquire_lease`)."""
    run = await store.acquire_lease(
        run_id, owner=owner, now=clock.now(), ttl=ttl, steal=steal, segment=segment
    )
    if segment and run.status.is_terminal:  # not leased: a finished run stays as it is
        yield run
        return
    renewal = _Renewal(store, clock, ttl, run)
    try:
        yield run
    except Exception:
        with contextlib.suppress(PersistenceError):
            await store.release_lease(run.run_id, run.lease_epoch)
        raise
    finally:
        await renewal.stop()


class _Renewal:
    """Renews a lease every third of its TTL until stopped."""

    def __init__(self, store: Store, clock: Clock, ttl: timedelta, run: RunRecord) -> None:
        self._store, self._clock, self._ttl, self._run = store, clock, ttl, run
        self._loop = asyncio.get_running_loop()
        self._interval = ttl.total_seconds() / 3
        self._task: asyncio.Task[None] | None = None
        self._timer = self._loop.call_later(self._interval, self._fire)

    def _fire(self) -> None:
        self._task = asyncio.create_task(self._renew(), name=f"kflow-lease-{self._run.run_id}")

    async def _renew(self) -> None:
        run = self._run
        try:
            await self._store.renew_lease(
                run.run_id, run.lease_epoch, now=self._clock.now(), ttl=self._ttl
            )
        except LeaseLost:
            return  # superseded: the segment's next write fails the same way and stops it
        except TransientError:
            pass  # a blip: try again at the next interval, before the lease runs out
        self._timer = self._loop.call_later(self._interval, self._fire)

    async def stop(self) -> None:
        self._timer.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
