"""``kflow runner --run <id>``: advance one run by one segment, then exit.

The entry point of a segment Pod (the pod executor). It loads the run from PostgreSQL,
takes the lease with a new fencing epoch (``--steal``: even from a holder the operator
knows is dead), replays the handler to its next suspension or its end, records the
outcome, prints it as one JSON line, and exits. While it runs, each step record is
announced on the store's progress channel (PostgreSQL ``NOTIFY``) so the operator can
mirror it into the WorkflowRun's status. Exit codes:

====  =====================================================================
0     the segment ran and its outcome is recorded (Completed, Waiting, Failed, Blocked...)
2     bad settings
3     another executor holds the run's lease: nothing was done
4     the store failed (unreachable, timed out, lease lost mid-way): state is intact
5     no such run
====  =====================================================================
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from typing import TextIO

from kflow._engine import RUNNING_AFTER, Engine
from kflow._errors import LeaseHeld, RunNotFound, TransientError
from kflow._store import Store
from kflow._store.progress import Progressor
from kflow._workflow import Registry
from kflow.settings import StoreSettings

__all__ = ["EXIT_LEASE_HELD", "EXIT_NO_RUN", "EXIT_STORE", "run_once"]

EXIT_LEASE_HELD, EXIT_STORE, EXIT_NO_RUN = 3, 4, 5


async def run_once(
    settings: StoreSettings,
    run_id: uuid.UUID,
    out: TextIO = sys.stdout,
    *,
    steal: bool = False,
) -> int:
    """One segment of ``run_id``; the exit code (see the module docstring)."""

    def report(**fields: object) -> None:
        print(json.dumps({"run": str(run_id), **fields}), file=out, flush=True)

    try:
        store = await Store.open(
            settings.database_dsn(),
            schema=settings.schema_name,
            timeout=settings.db_timeout.total_seconds(),
            max_size=4,
            migrate=False,  # the operator owns the schema: runners need no DDL rights
        )
    except TransientError as exc:
        report(error=str(exc))
        return EXIT_STORE
    progress = Progressor(store)
    engine = Engine(
        store, Registry.from_modules(settings.workflow_modules), lease_ttl=settings.lease_ttl,
        record_running_after=RUNNING_AFTER,
    )  # fmt: skip
    engine.subscribe(lambda run_id, _record: progress.touch(run_id))
    try:
        outcome = await engine.run_segment(run_id, steal=steal)
    except LeaseHeld as exc:
        report(error=str(exc))
        return EXIT_LEASE_HELD
    except RunNotFound as exc:
        report(error=str(exc))
        return EXIT_NO_RUN
    except TransientError as exc:
        report(error=f"{type(exc).__name__}: {exc}")
        return EXIT_STORE
    finally:
        await progress.flush()
        await engine.close()
        await store.close()
    report(
        status=outcome.status.value,
        ready_at=outcome.ready_at.isoformat() if outcome.ready_at else None,
        waiting_event=outcome.waiting_event,
        error=outcome.error,
    )
    return 0


def main(run: str, *, steal: bool = False) -> int:
    from pydantic import ValidationError

    from kflow._serde import describe_validation_error

    try:
        settings = StoreSettings()
        run_id = uuid.UUID(run)
    except ValidationError as exc:  # field names and messages only: never the DSN's value
        print(f"kflow runner: bad settings: {describe_validation_error(exc)}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"kflow runner: bad settings: --run: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(run_once(settings, run_id, steal=steal))
