"""A worker process for crash tests: runs one segment of a run, and with ``CRASH_AT`` set
kills itself with SIGKILL between two steps or inside a step.

Each step function counts its calls in a table of the test's schema, outside the engine,
so the test can tell how often each really ran.

    python -m tests.integration.crash_worker DSN SCHEMA RUN_ID
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from datetime import timedelta

import asyncpg

from kflow import Engine, Registry, Store, WorkflowContext, workflow

COUNTS_TABLE = "crash_counts"


def crash_at() -> str:
    return os.environ.get("CRASH_AT", "")


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


async def count(dsn: str, schema: str, step: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            f'INSERT INTO "{schema}".{COUNTS_TABLE} (step, n) VALUES ($1, 1) '
            f"ON CONFLICT (step) DO UPDATE SET n = {COUNTS_TABLE}.n + 1",
            step,
        )
    finally:
        await conn.close()
    return step


@workflow(name="crashy", steps=["a", "b", "c", "d"])
async def crashy(ctx: WorkflowContext, where: list[str]) -> list[str]:
    dsn, schema = where
    done = [await ctx.step("a", count, dsn, schema, "a")]
    done.append(await ctx.step("b", count, dsn, schema, "b"))
    if crash_at() == "between":
        die()

    async def c() -> str:
        await count(dsn, schema, "c")
        if crash_at() == "inside":
            die()
        return "c"

    done.append(await ctx.step("c", c))
    done.append(await ctx.step("d", count, dsn, schema, "d"))
    return done


async def main(dsn: str, schema: str, run_id: str) -> None:
    store = await Store.open(dsn, schema=schema, migrate=False)
    engine = Engine(store, Registry(crashy), lease_ttl=timedelta(seconds=1))
    try:
        outcome = await engine.run_segment(uuid.UUID(run_id))
        print(outcome.status)
    finally:
        await engine.close()
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
