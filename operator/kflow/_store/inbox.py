"""A run's inbox: events kept until a wait consumes them (or sets them aside), each once.

Sending locks the run row, so a segment suspending on the event either commits first
(the sender learns the run waits for it) or finds it in the inbox. Consuming is one
statement that takes the oldest pending event and records the wait as done, fenced by
the segment's lease epoch; so is setting aside an event whose payload does not fit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kflow._errors import LeaseLost, RunNotFound
from kflow._models import TERMINAL, RunStatus
from kflow._store.base import StoreBase, guarded
from kflow._store.rows import CONSUME_EVENT

__all__ = ["Inbox", "SendResult"]


@dataclass(frozen=True, slots=True)
class SendResult:
    """What happened to an event sent to a run."""

    stored: bool
    """False when the run is finished (nothing stored) or the dedupe key was seen before."""
    duplicate: bool
    status: RunStatus
    wakes_run: bool
    """The run is waiting for exactly this event: advance it now."""


class Inbox(StoreBase):
    @guarded
    async def consume_event(
        self,
        run_id: uuid.UUID,
        epoch: int,
        *,
        name: str,
        wait_key: str,
        now: datetime,
        seq: int,
        event_id: int | None = None,
    ) -> tuple[bool, Any]:
        """Atomically take the oldest pending ``name`` event (or exactly ``event_id``, if
        it is still pending) and record the wait as done."""
        row = await self.pool.fetchrow(
            CONSUME_EVENT, run_id, epoch, name, wait_key, now, seq, event_id
        )
        if not row["leased"]:
            raise LeaseLost(f"run {run_id}: lease epoch {epoch} was superseded")
        return bool(row["found"]), row["payload"]

    @guarded
    async def next_event(self, run_id: uuid.UUID, name: str) -> tuple[int, Any] | None:
        """The oldest pending ``name`` event (id, payload), left pending."""
        row = await self.pool.fetchrow(
            "SELECT id, payload FROM events WHERE run_id = $1 AND name = $2"
            " AND consumed_by IS NULL ORDER BY id LIMIT 1",
            run_id,
            name,
        )
        return None if row is None else (int(row["id"]), row["payload"])

    @guarded
    async def reject_event(
        self, run_id: uuid.UUID, epoch: int, event_id: int, *, wait_key: str, reason: str,
        now: datetime,
    ) -> None:  # fmt: skip
        """Set a pending event aside with ``reason``: no wait will consume it."""
        leased = await self.pool.fetchval(
            """WITH lease AS (SELECT run_id FROM runs
                              WHERE run_id = $1 AND lease_epoch = $2 FOR SHARE),
               upd AS (UPDATE events SET consumed_by = $4, consumed_at = $5, rejected = $6
                       WHERE id = $3 AND run_id = $1 AND consumed_by IS NULL
                         AND EXISTS (SELECT 1 FROM lease))
               SELECT EXISTS (SELECT 1 FROM lease)""",
            run_id, epoch, event_id, wait_key, now, reason,
        )  # fmt: skip
        if not leased:
            raise LeaseLost(f"run {run_id}: lease epoch {epoch} was superseded")

    @guarded
    async def has_pending_event(self, run_id: uuid.UUID, name: str) -> bool:
        found = await self.pool.fetchval(
            "SELECT 1 FROM events WHERE run_id = $1 AND name = $2 AND consumed_by IS NULL LIMIT 1",
            run_id,
            name,
        )
        return found is not None

    @guarded
    async def send_event(
        self,
        run_id: uuid.UUID,
        *,
        name: str,
        payload: Any,
        dedupe_key: str | None,
        now: datetime,
    ) -> SendResult:
        """Put an event in the run's inbox, unless the run is finished.

        The run row is locked first, so a segment that is suspending on this event either
        commits before (and this call reports ``wakes_run``) or checks the inbox after."""
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "SELECT status, waiting_event FROM runs WHERE run_id = $1 FOR UPDATE", run_id
            )
            if row is None:
                raise RunNotFound(f"no run {run_id}")
            status = RunStatus(row["status"])
            if status in TERMINAL:
                return SendResult(stored=False, duplicate=False, status=status, wakes_run=False)
            event_id = await conn.fetchval(
                """INSERT INTO events (run_id, name, payload, dedupe_key, received_at)
                   VALUES ($1, $2, $3, $4, $5) ON CONFLICT (run_id, dedupe_key) DO NOTHING
                   RETURNING id""",
                run_id,
                name,
                payload,
                dedupe_key,
                now,
            )
        waiting = status == RunStatus.WAITING and row["waiting_event"] == name
        return SendResult(
            stored=event_id is not None,
            duplicate=event_id is None,
            status=status,
            wakes_run=waiting,
        )

    @guarded
    async def list_events(self, run_id: uuid.UUID) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT id, name, payload, dedupe_key, received_at, consumed_by, consumed_at,"
            " rejected"
            " FROM events WHERE run_id = $1 ORDER BY id",
            run_id,
        )
        return [dict(r) for r in rows]
