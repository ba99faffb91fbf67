"""Live progress between processes: PostgreSQL ``NOTIFY`` from runners, ``LISTEN`` in the operator.

A segment Pod records its steps in PostgreSQL; the operator, the only writer of WorkflowRun
status, learns of them through a notification carrying the run id, then reads what it
needs. Notifications are hints, not data: one lost (the listener reconnecting) costs a
late status, never a wrong one, because the listener reports every reconnection so the
operator can refresh what it watches. The channel is per store schema, so several stores
in one database do not hear each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable

import asyncpg

from kflow._retry import backoff
from kflow._store.postgres import Store

__all__ = ["ProgressListener", "Progressor", "channel"]

log = logging.getLogger(__name__)

_PING = 15.0
"""Seconds between liveness checks of the listening connection."""


def channel(schema: str) -> str:
    return f"kflow_progress_{schema}"[:63]


class Progressor:
    """Notifies the store's channel about a run, at most once per ``interval`` per run:
    a segment making hundreds of steps a second sends a few notifications."""

    def __init__(self, store: Store, *, interval: float = 0.1) -> None:
        self._store = store
        self._interval = interval
        self._pending: dict[uuid.UUID, asyncio.Task[None]] = {}
        """Runs whose notification waits out the interval."""
        self._sending: set[asyncio.Task[None]] = set()

    def touch(self, run_id: uuid.UUID) -> None:
        if run_id in self._pending:
            return
        task = asyncio.create_task(self._send(run_id))
        self._pending[run_id] = task
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, run_id: uuid.UUID) -> None:
        await asyncio.sleep(self._interval)
        self._pending.pop(run_id, None)
        await self._notify(run_id)

    async def _notify(self, run_id: uuid.UUID) -> None:
        try:
            await self._store.pool.execute(
                "SELECT pg_notify($1, $2)", channel(self._store.schema), str(run_id)
            )
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            # A hint lost: the step itself is recorded; the operator reads it later.
            log.warning("progress notification for run %s not sent: %s", run_id, exc)

    async def flush(self) -> None:
        """Send what is pending now, without waiting out the interval (before the
        process exits: a segment Pod's end should not wait for a hint)."""
        waiting, self._pending = self._pending, {}
        for task in waiting.values():
            task.cancel()  # still in its interval: sent here instead
        for run_id in waiting:
            await self._notify(run_id)
        for task in list(self._sending):  # already sending: let them finish
            with contextlib.suppress(asyncio.CancelledError):
                await task


class ProgressListener:
    """Listens on the store's channel on a connection of its own, reconnecting with
    back-off; calls ``on_progress(run_id)`` per notification and ``on_reconnect()``
    after every (re)connection, when notifications may have been missed."""

    def __init__(
        self,
        dsn: str,
        schema: str,
        *,
        on_progress: Callable[[uuid.UUID], None],
        on_reconnect: Callable[[], None],
        timeout: float = 30.0,
    ) -> None:
        self._dsn = dsn
        self._channel = channel(schema)
        self._on_progress = on_progress
        self._on_reconnect = on_reconnect
        self._timeout = timeout

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        try:
            run_id = uuid.UUID(str(payload))
        except ValueError:
            log.warning("ignoring a progress notification that is not a run id: %r", payload)
            return
        self._on_progress(run_id)

    async def run(self) -> None:
        """Listen until cancelled."""
        failures = 0
        while True:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(self._dsn, timeout=self._timeout)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                failures += 1
                delay = backoff(failures, cap=30.0)
                log.warning("progress listener cannot connect (%s); again in %.0fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            try:
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                await conn.add_listener(self._channel, self._notified)
                failures = 0
                self._on_reconnect()
                while not lost.is_set():
                    # A peer that vanished without closing the socket is found by a ping.
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), timeout=_PING)
                    await conn.execute("SELECT 1", timeout=self._timeout)
                log.warning("progress listener lost its connection; reconnecting")
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                log.warning("progress listener failed (%s); reconnecting", exc)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await conn.close(timeout=1)
