"""`Store`: every read and write of kflow's durable state, over an asyncpg pool.

Writes made on behalf of a segment are *fenced*: each carries the lease epoch the segment
was granted and locks the run row ``FOR SHARE`` while checking it, so a takeover (which
bumps the epoch) and a stale write cannot interleave. A fenced write that finds another
epoch raises `LeaseLost`; every database failure surfaces as `PersistenceError`, never as
a silent no-op. A step record is one statement, one round trip and one commit.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from kflow._errors import LeaseHeld, LeaseLost, PersistenceError, RunNotFound
from kflow._models import (
    TERMINAL,
    AuthContext,
    RunRecord,
    RunStatus,
    StepState,
    SuspendKind,
)
from kflow._store.base import guarded
from kflow._store.inbox import Inbox
from kflow._store.kvstore import KeyValues
from kflow._store.migrations import apply_migrations
from kflow._store.rows import (
    SNAPSHOT,
    WRITE_STEP,
    run_from_row,
    step_from_json,
    step_from_row,
)

__all__ = ["Database", "Store"]

Database = asyncpg.Pool
"""The type of ``ctx.db``: an asyncpg pool on the application's database."""

_RUN_COLUMNS = frozenset(
    {
        "workflow_version", "signature", "status", "output", "error", "started_at",
        "completed_at", "deadline", "wake_at", "waiting_event", "suspend_kind", "timeout_s",
    }
)  # fmt: skip


_FINISHED = sorted(status.value for status in TERMINAL)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset hook. asyncpg's default runs ``RESET ALL; UNLISTEN *; ...`` on
    every release: one more round trip per step. The store leaves no session state
    behind (no LISTEN, SET or advisory lock outside a closed transaction), so none is run;
    asyncpg still rolls back a transaction left open."""


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


class Store(Inbox, KeyValues):
    """kflow's tables in one PostgreSQL schema. Open with `Store.open`. Runs, leases and
    their records are here; the inbox (`Inbox`) and the KV store (`KeyValues`) beside."""

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        schema: str = "kflow",
        min_size: int = 1,
        max_size: int = 10,
        migrate: bool = True,
        timeout: float = 30.0,
    ) -> Store:
        """Connect (and by default bring the schema up to date). ``timeout`` bounds every
        connection attempt and statement: an unreachable or stalled database becomes a
        `PersistenceError`, never a hang."""
        try:
            if migrate:
                conn = await asyncpg.connect(dsn, timeout=timeout, command_timeout=timeout)
                try:
                    await apply_migrations(conn, schema)
                finally:
                    await conn.close()
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                init=_init_connection,
                reset=_keep_session,
                timeout=timeout,
                command_timeout=timeout,
                server_settings={"search_path": schema, "application_name": "kflow"},
            )
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise PersistenceError(f"cannot open the kflow store: {exc}") from exc
        return cls(pool, schema)

    async def close(self) -> None:
        await self.pool.close()

    @guarded
    async def ping(self) -> None:
        """One round trip: for health checks."""
        await self.pool.fetchval("SELECT 1")

    @guarded
    async def drop(self) -> None:
        """Drop the whole schema with every run in it: for throw-away test stores."""
        quoted = '"' + self.schema.replace('"', '""') + '"'
        await self.pool.execute(f"DROP SCHEMA {quoted} CASCADE")

    # -- definitions ---------------------------------------------------------------

    @guarded
    async def upsert_definition(
        self,
        *,
        name: str,
        version: int,
        signature: str,
        same: Sequence[str],
        steps: Sequence[str],
        events: Sequence[str],
        timeout_s: float | None,
        input_schema: dict[str, Any],
        output_schema: dict[str, Any],
        now: datetime,
    ) -> str | None:
        """Record a definition, unless (name, version) is recorded with another contract:
        ``same`` lists the signatures that are this one's (its scheme's and earlier
        schemes'). None when recorded; else the recorded signature, left as it is."""
        row = await self.pool.fetchrow(
            """INSERT INTO definitions AS d (name, version, signature, steps, events,
                   timeout_s, input_schema, output_schema, registered_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
               ON CONFLICT (name, version) DO UPDATE SET signature = EXCLUDED.signature,
                   steps = EXCLUDED.steps, events = EXCLUDED.events,
                   timeout_s = EXCLUDED.timeout_s, input_schema = EXCLUDED.input_schema,
                   output_schema = EXCLUDED.output_schema,
                   registered_at = EXCLUDED.registered_at
               WHERE d.signature = ANY($10::text[])
               RETURNING signature""",
            name, version, signature, list(steps), list(events), timeout_s,
            input_schema, output_schema, now, list(same),
        )  # fmt: skip
        if row is not None:
            return None
        stored: str | None = await self.pool.fetchval(
            "SELECT signature FROM definitions WHERE name = $1 AND version = $2", name, version
        )
        return stored

    # -- runs ----------------------------------------------------------------------

    @guarded
    async def create_run(
        self,
        *,
        run_id: uuid.UUID,
        workflow_name: str,
        workflow_version: int | None,
        signature: str | None,
        status: RunStatus,
        input: Any,
        tenant_id: uuid.UUID | None,
        auth: AuthContext,
        timeout_s: float | None,
        idempotency_key: str | None,
        now: datetime,
    ) -> tuple[RunRecord, bool]:
        """Insert a run; with a known idempotency key or run id, return the existing one.

        Returns the run and whether it was created by this call."""
        row = await self.pool.fetchrow(
            """INSERT INTO runs (run_id, idempotency_key, workflow_name, workflow_version,
                   signature, status, input, tenant_id, auth, timeout_s, created_at,
                   updated_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11)
               ON CONFLICT DO NOTHING RETURNING *""",
            run_id, idempotency_key, workflow_name, workflow_version, signature,
            status.value, input, tenant_id, auth.model_dump(mode="json"), timeout_s, now,
        )  # fmt: skip
        if row is not None:
            return run_from_row(row), True
        existing = await self.find_run(run_id, idempotency_key)
        if existing is None:  # pragma: no cover - the conflicting row was deleted meanwhile
            raise PersistenceError(f"run {run_id} conflicted but cannot be found")
        return existing, False

    @guarded
    async def find_run(self, run_id: uuid.UUID, idempotency_key: str | None) -> RunRecord | None:
        """The run with this id, or else with this idempotency key, if there is one."""
        row = await self.pool.fetchrow(
            """SELECT * FROM runs WHERE run_id = $1 OR idempotency_key = $2
               ORDER BY run_id = $1 DESC LIMIT 1""",
            run_id,
            idempotency_key,
        )
        return None if row is None else run_from_row(row)

    @guarded
    async def get_run(self, run_id: uuid.UUID) -> RunRecord:
        row = await self.pool.fetchrow("SELECT * FROM runs WHERE run_id = $1", run_id)
        if row is None:
            raise RunNotFound(f"no run {run_id}")
        return run_from_row(row)

    @guarded
    async def next_dispatch(self, run_id: uuid.UUID) -> int:
        """Count one more segment Pod for the run; its number (from 1)."""
        number = await self.pool.fetchval(
            "UPDATE runs SET dispatches = dispatches + 1 WHERE run_id = $1 RETURNING dispatches",
            run_id,
        )
        if number is None:
            raise RunNotFound(f"no run {run_id}")
        return int(number)

    @guarded
    async def acquire_lease(
        self,
        run_id: uuid.UUID,
        *,
        owner: str,
        now: datetime,
        ttl: timedelta,
        steal: bool,
        segment: bool = True,
    ) -> RunRecord:
        """Take the run's lease with a new epoch; `LeaseHeld` if another holds it.
        ``segment``: the lease is for a segment (a Created or Waiting run becomes Running,
        and counts a segment); otherwise (cancel, retire, retry) the status is left alone.
        A finished run is not leased for a segment: it is returned as it is, unchanged."""
        row = await self.pool.fetchrow(
            """UPDATE runs SET lease_epoch = lease_epoch + 1, lease_owner = $2,
                   lease_expires_at = $3, updated_at = $4,
                   segments = segments + CASE WHEN $6 THEN 1 ELSE 0 END,
                   status = CASE WHEN $6 AND status IN ('Created', 'Waiting') THEN 'Running'
                                 ELSE status END,
                   started_at = COALESCE(started_at, $4),
                   deadline = CASE WHEN deadline IS NULL AND signature IS NOT NULL
                                   THEN $4 + timeout_s * interval '1 second'
                                   ELSE deadline END
               WHERE run_id = $1
                 AND (lease_owner IS NULL OR lease_expires_at <= $4 OR $5)
                 AND NOT ($6 AND status = ANY($7::text[]))
               RETURNING *""",
            run_id, owner, now + ttl, now, steal, segment, _FINISHED,
        )  # fmt: skip
        if row is not None:
            return run_from_row(row)
        current = await self.get_run(run_id)
        if segment and current.status.is_terminal:
            return current
        raise LeaseHeld(
            f"run {run_id} is leased by {current.lease_owner} until {current.lease_expires_at}"
        )

    @guarded
    async def renew_lease(
        self, run_id: uuid.UUID, epoch: int, *, now: datetime, ttl: timedelta
    ) -> None:
        done = await self.pool.fetchval(
            "UPDATE runs SET lease_expires_at = $3 WHERE run_id = $1 AND lease_epoch = $2"
            " RETURNING 1",
            run_id,
            epoch,
            now + ttl,
        )
        if done is None:
            raise LeaseLost(f"run {run_id}: lease epoch {epoch} was superseded")

    @guarded
    async def release_lease(self, run_id: uuid.UUID, epoch: int) -> None:
        """Give the lease up without touching the run's state (no-op if superseded)."""
        await self.pool.execute(
            "UPDATE runs SET lease_owner = NULL, lease_expires_at = NULL"
            " WHERE run_id = $1 AND lease_epoch = $2",
            run_id,
            epoch,
        )

    @guarded
    async def update_run(
        self,
        /,
        run_id: uuid.UUID,
        epoch: int,
        *,
        now: datetime,
        release: bool = False,
        **fields: Any,
    ) -> None:
        """Fenced update of run columns; ``release`` also gives the lease up."""
        unknown = set(fields) - _RUN_COLUMNS
        if unknown:
            raise ValueError(f"update_run: unknown columns {sorted(unknown)}")
        values = [v.value if isinstance(v, RunStatus | SuspendKind) else v for v in fields.values()]
        sets = [f"{column} = ${i}" for i, column in enumerate(fields, start=4)]
        sets.append("updated_at = $3")
        if release:
            sets.append("lease_owner = NULL, lease_expires_at = NULL")
        done = await self.pool.fetchval(
            f"UPDATE runs SET {', '.join(sets)} WHERE run_id = $1 AND lease_epoch = $2 RETURNING 1",
            run_id,
            epoch,
            now,
            *values,
        )
        if done is None:
            raise LeaseLost(f"run {run_id}: lease epoch {epoch} was superseded")

    # -- history -------------------------------------------------------------------

    @guarded
    async def forget_failures(self, run_id: uuid.UUID, epoch: int) -> int:
        """Fenced: delete the run's failed records (steps and timed-out waits) so that a
        retry runs them again; completed ones stay. Returns how many were deleted."""
        deleted = await self.pool.fetchval(
            """WITH lease AS (SELECT run_id FROM runs
                              WHERE run_id = $1 AND lease_epoch = $2 FOR SHARE),
                    gone AS (DELETE FROM steps WHERE run_id = (SELECT run_id FROM lease)
                             AND status = 'failed' RETURNING 1)
               SELECT CASE WHEN EXISTS (SELECT 1 FROM lease)
                           THEN (SELECT count(*) FROM gone) END""",
            run_id,
            epoch,
        )
        if deleted is None:
            raise LeaseLost(f"run {run_id}: lease epoch {epoch} was superseded")
        return int(deleted)

    @guarded
    async def load_history(self, run_id: uuid.UUID) -> tuple[list[StepState], dict[str, Any]]:
        """Every step/sleep/wait record of a run, and its saved state."""
        async with self.pool.acquire() as conn:
            steps = await conn.fetch("SELECT * FROM steps WHERE run_id = $1", run_id)
            state = await conn.fetch("SELECT key, value FROM saved_state WHERE run_id = $1", run_id)
        return [step_from_row(r) for r in steps], {r["key"]: r["value"] for r in state}

    @guarded
    async def snapshot(
        self, run_id: uuid.UUID, *, last_steps: int
    ) -> tuple[RunRecord, list[StepState], int, list[dict[str, Any]]]:
        """In one round trip: the run, its last ``last_steps`` records (in record order),
        how many records it has, and its inbox (id, name, consumed_by)."""
        row = await self.pool.fetchrow(SNAPSHOT, run_id, last_steps)
        if row is None:
            raise RunNotFound(f"no run {run_id}")
        steps = [step_from_json(item) for item in row["last_steps"]]
        return run_from_row(row), steps, row["step_count"], row["inbox"]

    @guarded
    async def write_step(self, run_id: uuid.UUID, epoch: int, step: StepState) -> None:
        """Fenced upsert of one record: one statement, one round trip, one commit."""
        done = await self.pool.fetchval(
            WRITE_STEP,
            run_id, epoch, step.key, step.name, step.kind.value, step.status.value,
            step.attempts, step.result, step.error, step.started_at, step.completed_at,
            step.wake_at, step.compensation, step.seq,
        )  # fmt: skip
        if done is None:
            raise LeaseLost(f"run {run_id}: lease epoch {epoch} was superseded")

    @guarded
    async def save_state(self, run_id: uuid.UUID, epoch: int, key: str, value: Any) -> None:
        done = await self.pool.fetchval(
            """WITH lease AS (SELECT run_id FROM runs
                              WHERE run_id = $1 AND lease_epoch = $2 FOR SHARE)
               INSERT INTO saved_state (run_id, key, value) SELECT run_id, $3, $4 FROM lease
               ON CONFLICT (run_id, key) DO UPDATE SET value = EXCLUDED.value
               RETURNING 1""",
            run_id,
            epoch,
            key,
            value,
        )
        if done is None:
            raise LeaseLost(f"run {run_id}: lease epoch {epoch} was superseded")
