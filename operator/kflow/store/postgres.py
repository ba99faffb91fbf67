"""`Store`: every read and write of kflow's durable state, over an asyncpg pool.

Writes made on behalf of a segment are *fenced*: each carries the lease epoch the segment
was granted and locks the run row ``FOR SHARE`` while checking it, so a takeover (which
bumps the epoch) and a stale write cannot interleave. A fenced write that finds another
epoch raises `LeaseLost`; every database failure surfaces as `PersistenceError`, never as
a silent no-op. A step record is one statement, one round trip and one commit.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Concatenate, ParamSpec, TypeVar

import asyncpg

from kflow.errors import KflowError, LeaseHeld, LeaseLost, PersistenceError, RunNotFound
from kflow.models import (
    TERMINAL,
    AuthContext,
    RunRecord,
    RunStatus,
    StepState,
    SuspendKind,
)
from kflow.store.migrations import apply_migrations
from kflow.store.rows import (
    CONSUME_EVENT,
    SNAPSHOT,
    WRITE_STEP,
    run_from_row,
    step_from_json,
    step_from_row,
)

__all__ = ["Database", "SendResult", "Store"]

Database = asyncpg.Pool
"""The type of ``ctx.db``: an asyncpg pool on the application's database."""

P = ParamSpec("P")
R = TypeVar("R")

_RUN_COLUMNS = frozenset(
    {
        "workflow_version", "signature", "status", "output", "error", "started_at",
        "completed_at", "deadline", "wake_at", "waiting_event", "suspend_kind", "timeout_s",
    }
)  # fmt: skip


def _wrap_errors(
    fn: Callable[Concatenate[Store, P], Awaitable[R]],
) -> Callable[Concatenate[Store, P], Awaitable[R]]:
    """Turn driver and network failures into `PersistenceError`, keeping kflow's own."""

    @functools.wraps(fn)
    async def wrapper(self: Store, /, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(self, *args, **kwargs)
        except KflowError:
            raise
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            raise PersistenceError(f"store.{fn.__name__} failed: {exc}") from exc

    return wrapper


@dataclass(frozen=True, slots=True)
class SendResult:
    """What happened to an event sent to a run."""

    stored: bool
    """False when the run is finished (nothing stored) or the dedupe key was seen before."""
    duplicate: bool
    status: RunStatus
    wakes_run: bool
    """The run is waiting for exactly this event: advance it now."""


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


class Store:
    """kflow's tables in one PostgreSQL schema. Open with `Store.open`."""

    def __init__(self, pool: asyncpg.Pool, schema: str) -> None:
        self.pool = pool
        self.schema = schema

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

    @_wrap_errors
    async def ping(self) -> None:
        """One round trip: for health checks."""
        await self.pool.fetchval("SELECT 1")

    @_wrap_errors
    async def drop(self) -> None:
        """Drop the whole schema with every run in it: for throw-away test stores."""
        quoted = '"' + self.schema.replace('"', '""') + '"'
        await self.pool.execute(f"DROP SCHEMA {quoted} CASCADE")

    # -- definitions ---------------------------------------------------------------

    @_wrap_errors
    async def upsert_definition(
        self,
        *,
        name: str,
        version: int,
        signature: str,
        steps: Sequence[str],
        events: Sequence[str],
        timeout_s: float | None,
        input_schema: dict[str, Any],
        output_schema: dict[str, Any],
        now: datetime,
    ) -> None:
        await self.pool.execute(
            """INSERT INTO definitions (name, version, signature, steps, events, timeout_s,
                   input_schema, output_schema, registered_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
               ON CONFLICT (name, version) DO UPDATE SET signature = EXCLUDED.signature,
                   steps = EXCLUDED.steps, events = EXCLUDED.events,
                   timeout_s = EXCLUDED.timeout_s, input_schema = EXCLUDED.input_schema,
                   output_schema = EXCLUDED.output_schema,
                   registered_at = EXCLUDED.registered_at""",
            name, version, signature, list(steps), list(events), timeout_s,
            input_schema, output_schema, now,
        )  # fmt: skip

    # -- runs ----------------------------------------------------------------------

    @_wrap_errors
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
        row = await self.pool.fetchrow(
            "SELECT * FROM runs WHERE run_id = $1 OR idempotency_key = $2 LIMIT 1",
            run_id,
            idempotency_key,
        )
        if row is None:  # pragma: no cover - the conflicting row was deleted meanwhile
            raise PersistenceError(f"run {run_id} conflicted but cannot be found")
        return run_from_row(row), False

    @_wrap_errors
    async def get_run(self, run_id: uuid.UUID) -> RunRecord:
        row = await self.pool.fetchrow("SELECT * FROM runs WHERE run_id = $1", run_id)
        if row is None:
            raise RunNotFound(f"no run {run_id}")
        return run_from_row(row)

    @_wrap_errors
    async def next_dispatch(self, run_id: uuid.UUID) -> int:
        """Count one more segment Pod for the run; its number (from 1)."""
        number = await self.pool.fetchval(
            "UPDATE runs SET dispatches = dispatches + 1 WHERE run_id = $1 RETURNING dispatches",
            run_id,
        )
        if number is None:
            raise RunNotFound(f"no run {run_id}")
        return int(number)

    @_wrap_errors
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
        and counts a segment); otherwise (cancel, retire, retry) the status is left alone."""
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
               RETURNING *""",
            run_id, owner, now + ttl, now, steal, segment,
        )  # fmt: skip
        if row is not None:
            return run_from_row(row)
        current = await self.get_run(run_id)
        raise LeaseHeld(
            f"run {run_id} is leased by {current.lease_owner} until {current.lease_expires_at}"
        )

    @_wrap_errors
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

    @_wrap_errors
    async def release_lease(self, run_id: uuid.UUID, epoch: int) -> None:
        """Give the lease up without touching the run's state (no-op if superseded)."""
        await self.pool.execute(
            "UPDATE runs SET lease_owner = NULL, lease_expires_at = NULL"
            " WHERE run_id = $1 AND lease_epoch = $2",
            run_id,
            epoch,
        )

    @_wrap_errors
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

    @_wrap_errors
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

    @_wrap_errors
    async def load_history(self, run_id: uuid.UUID) -> tuple[list[StepState], dict[str, Any]]:
        """Every step/sleep/wait record of a run, and its saved state."""
        async with self.pool.acquire() as conn:
            steps = await conn.fetch("SELECT * FROM steps WHERE run_id = $1", run_id)
            state = await conn.fetch("SELECT key, value FROM saved_state WHERE run_id = $1", run_id)
        return [step_from_row(r) for r in steps], {r["key"]: r["value"] for r in state}

    @_wrap_errors
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

    @_wrap_errors
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

    @_wrap_errors
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

    # -- events --------------------------------------------------------------------

    @_wrap_errors
    async def consume_event(
        self,
        run_id: uuid.UUID,
        epoch: int,
        *,
        name: str,
        wait_key: str,
        now: datetime,
        seq: int,
    ) -> tuple[bool, Any]:
        """Atomically take the oldest pending ``name`` event and record the wait as done."""
        row = await self.pool.fetchrow(CONSUME_EVENT, run_id, epoch, name, wait_key, now, seq)
        if not row["leased"]:
            raise LeaseLost(f"run {run_id}: lease epoch {epoch} was superseded")
        return bool(row["found"]), row["payload"]

    @_wrap_errors
    async def next_event(self, run_id: uuid.UUID, name: str) -> tuple[int, Any] | None:
        """The oldest pending ``name`` event (id, payload), left pending."""
        row = await self.pool.fetchrow(
            "SELECT id, payload FROM events WHERE run_id = $1 AND name = $2"
            " AND consumed_by IS NULL ORDER BY id LIMIT 1",
            run_id,
            name,
        )
        return None if row is None else (int(row["id"]), row["payload"])

    @_wrap_errors
    async def reject_event(
        self, run_id: uuid.UUID, epoch: int, event_id: int, *, wait_key: str, reason: str,
        now: datetime,
    ) -> None:  # fmt: skip
        """Set a pending event aside with ``reason``: no wait will consume it."""
        leased = await self.pool.fetchval(
            """WITH lease AS (SELECT run_id FROM runs
                              WHERE run_id = $1 AND lease_epoch = $2 FOR SHARE),
               upd AS (UPDATE events SET consumed_by = $4, consumed_at = $5, rejected = $6
                       WHERE id = $3 AND run_id = $1 AND EXISTS (SELECT 1 FROM lease))
               SELECT EXISTS (SELECT 1 FROM lease)""",
            run_id, epoch, event_id, wait_key, now, reason,
        )  # fmt: skip
        if not leased:
            raise LeaseLost(f"run {run_id}: lease epoch {epoch} was superseded")

    @_wrap_errors
    async def has_pending_event(self, run_id: uuid.UUID, name: str) -> bool:
        found = await self.pool.fetchval(
            "SELECT 1 FROM events WHERE run_id = $1 AND name = $2 AND consumed_by IS NULL LIMIT 1",
            run_id,
            name,
        )
        return found is not None

    @_wrap_errors
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

    @_wrap_errors
    async def list_events(self, run_id: uuid.UUID) -> list[dict[str, Any]]:
        rows = await self.pool.fetch(
            "SELECT id, name, payload, dedupe_key, received_at, consumed_by, consumed_at,"
            " rejected"
            " FROM events WHERE run_id = $1 ORDER BY id",
            run_id,
        )
        return [dict(r) for r in rows]

    # -- kv ------------------------------------------------------------------------

    @_wrap_errors
    async def kv_get(self, namespace: str, key: str) -> tuple[bool, Any]:
        row = await self.pool.fetchrow(
            "SELECT value FROM kv WHERE namespace = $1 AND key = $2", namespace, key
        )
        return (False, None) if row is None else (True, row["value"])

    @_wrap_errors
    async def kv_set(self, namespace: str, key: str, value: Any, *, now: datetime) -> None:
        await self.pool.execute(
            """INSERT INTO kv (namespace, key, value, updated_at) VALUES ($1, $2, $3, $4)
               ON CONFLICT (namespace, key) DO UPDATE
               SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at""",
            namespace,
            key,
            value,
            now,
        )

    @_wrap_errors
    async def kv_delete(self, namespace: str, key: str) -> bool:
        done = await self.pool.fetchval(
            "DELETE FROM kv WHERE namespace = $1 AND key = $2 RETURNING 1", namespace, key
        )
        return done is not None

    @_wrap_errors
    async def kv_keys(self, namespace: str, prefix: str = "") -> list[str]:
        rows = await self.pool.fetch(
            "SELECT key FROM kv WHERE namespace = $1 AND starts_with(key, $2) ORDER BY key",
            namespace,
            prefix,
        )
        return [r["key"] for r in rows]
