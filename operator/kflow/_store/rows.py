"""Rows to records, and the two statements on every step's path, for the `Store`."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any, TypeVar

import asyncpg

from kflow._models import (
    AuthContext,
    RunRecord,
    RunStatus,
    StepKind,
    StepState,
    StepStatus,
    SuspendKind,
)

__all__ = [
    "CONSUME_EVENT",
    "SNAPSHOT",
    "WRITE_STEP",
    "run_from_row",
    "step_from_json",
    "step_from_row",
]

T = TypeVar("T")


def run_from_row(row: asyncpg.Record) -> RunRecord:
    return _record(
        RunRecord,
        row,
        status=RunStatus(row["status"]),
        auth=AuthContext.model_validate(row["auth"] or {}),
        timeout_seconds=row["timeout_s"],
        suspend_kind=SuspendKind(row["suspend_kind"]) if row["suspend_kind"] else None,
    )


def step_from_row(row: asyncpg.Record) -> StepState:
    return _record(StepState, row, kind=StepKind(row["kind"]), status=StepStatus(row["status"]))


def _record(cls: type[T], row: asyncpg.Record, **converted: Any) -> T:
    """A dataclass from the row's same-named columns, plus the converted fields."""
    names = [f.name for f in dataclasses.fields(cls) if f.name not in converted]  # type: ignore[arg-type]
    return cls(**{name: row[name] for name in names}, **converted)


WRITE_STEP = """
WITH lease AS (SELECT run_id FROM runs WHERE run_id = $1 AND lease_epoch = $2 FOR SHARE)
INSERT INTO steps AS s (run_id, key, name, kind, status, attempts, result, error,
                        started_at, completed_at, wake_at, compensation, seq)
SELECT run_id, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14 FROM lease
ON CONFLICT (run_id, key) DO UPDATE SET
    status = EXCLUDED.status, attempts = EXCLUDED.attempts, result = EXCLUDED.result,
    error = EXCLUDED.error, started_at = COALESCE(s.started_at, EXCLUDED.started_at),
    completed_at = EXCLUDED.completed_at, wake_at = EXCLUDED.wake_at,
    compensation = EXCLUDED.compensation, seq = EXCLUDED.seq
RETURNING 1
"""

CONSUME_EVENT = """
WITH lease AS (SELECT run_id FROM runs WHERE run_id = $1 AND lease_epoch = $2 FOR SHARE),
ev AS (
    UPDATE events SET consumed_by = $4, consumed_at = $5
    WHERE id = (SELECT e.id FROM events e
                WHERE e.run_id = $1 AND e.name = $3 AND e.consumed_by IS NULL
                  AND ($7::bigint IS NULL OR e.id = $7)
                  AND EXISTS (SELECT 1 FROM lease)
                ORDER BY e.id LIMIT 1 FOR UPDATE SKIP LOCKED)
    RETURNING payload
),
rec AS (
    INSERT INTO steps AS s (run_id, key, name, kind, status, attempts, result,
                            started_at, completed_at, seq)
    SELECT $1, $4, $3, 'event', 'completed', 1, ev.payload, $5, $5, $6 FROM ev
    ON CONFLICT (run_id, key) DO UPDATE SET status = 'completed', result = EXCLUDED.result,
        completed_at = EXCLUDED.completed_at, seq = EXCLUDED.seq
    RETURNING 1
)
SELECT EXISTS (SELECT 1 FROM lease) AS leased, EXISTS (SELECT 1 FROM rec) AS found,
       (SELECT payload FROM ev) AS payload
"""


SNAPSHOT = """
SELECT r.*,
       (SELECT count(*) FROM steps s WHERE s.run_id = r.run_id) AS step_count,
       (SELECT coalesce(json_agg(t ORDER BY t.seq NULLS LAST, t.started_at, t.key), '[]')
          FROM (SELECT * FROM steps s WHERE s.run_id = r.run_id
                ORDER BY s.seq DESC NULLS FIRST, s.started_at DESC, s.key DESC
                LIMIT $2) t) AS last_steps,
       (SELECT coalesce(json_agg(json_build_object(
                   'id', e.id, 'name', e.name, 'consumed_by', e.consumed_by,
                   'rejected', e.rejected, 'consumed_at', e.consumed_at,
                   'received_at', e.received_at) ORDER BY e.id), '[]')
          FROM events e WHERE e.run_id = r.run_id) AS inbox
FROM runs r WHERE r.run_id = $1
"""

_TIMES = ("started_at", "completed_at", "wake_at")


def step_from_json(item: dict[str, Any]) -> StepState:
    """A step from ``json_agg`` of a steps row (timestamps arrive as ISO strings)."""
    fields = {k: v for k, v in item.items() if k != "run_id"}
    for name in _TIMES:
        if fields[name] is not None:
            fields[name] = datetime.fromisoformat(fields[name])
    fields["kind"], fields["status"] = StepKind(fields["kind"]), StepStatus(fields["status"])
    return StepState(**fields)
