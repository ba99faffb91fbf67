"""Step overhead: kflow's engine against raw PostgreSQL commits and DBOS, in one run.

    .venv/bin/python bench/step_overhead.py [--dsn DSN] [--steps 2000] [--runs 100]

Measures, on the same database and in the same process run:

- sequential: N no-op steps in one run through ``Engine.run_segment``, against N
  single-row INSERT commits from a raw asyncpg loop on one connection;
- concurrent: R runs x 10 no-op steps advanced at once, against R tasks x 10 commits on a
  raw asyncpg pool of the same size as the store's;
- sequential, typed sync steps: the first shape with a synchronous step function that
  returns a pydantic model (it runs in a thread, and its result is validated into its
  declared type), against the same raw commits;
- DBOS: the same two shapes with ``@DBOS.step`` (in a subprocess; skipped if dbos is not
  installed).

Each figure is the median of ``--repeat`` rounds. Without ``--dsn`` a throw-away
PostgreSQL is started (``fsync`` on, as in production).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
from pydantic import BaseModel

from kflow import Engine, Registry, Store, WorkflowContext, WorkflowDefinition, workflow
from kflow.dev.postgres import LocalPostgres

POOL = 10


async def noop() -> None:
    return None


@workflow(name="bench-steps", steps=["noop"])
async def many_steps(ctx: WorkflowContext, n: int) -> int:
    for _ in range(n):
        await ctx.step("noop", noop)
    return n


class Reading(BaseModel):
    sensor: str
    value: float


def read() -> Reading:
    return Reading(sensor="s-1", value=1.5)


@workflow(name="bench-typed-sync-steps", steps=["read"])
async def typed_sync_steps(ctx: WorkflowContext, n: int) -> int:
    for _ in range(n):
        await ctx.step("read", read)
    return n


async def raw_sequential(dsn: str, n: int) -> float:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_raw (run uuid, key text, result jsonb)"
        )
        run = uuid.uuid4()
        start = time.perf_counter()
        for i in range(n):
            await conn.execute(
                "INSERT INTO bench_raw VALUES ($1, $2, $3)", run, f"noop#{i}", "null"
            )
        return n / (time.perf_counter() - start)
    finally:
        await conn.close()


async def _no_reset(conn: asyncpg.Connection) -> None:
    """Like the store's pool: no RESET round trip on release, so the baseline is fair."""


async def raw_concurrent(dsn: str, runs: int, per_run: int) -> float:
    pool = await asyncpg.create_pool(dsn, min_size=POOL, max_size=POOL, reset=_no_reset)
    assert pool is not None

    async def one_run() -> None:
        run = uuid.uuid4()
        for i in range(per_run):
            await pool.execute(
                "INSERT INTO bench_raw VALUES ($1, $2, $3)", run, f"noop#{i}", "null"
            )

    try:
        start = time.perf_counter()
        await asyncio.gather(*(one_run() for _ in range(runs)))
        return runs * per_run / (time.perf_counter() - start)
    finally:
        await pool.close()


async def engine_sequential(
    engine: Engine, n: int, workflow: WorkflowDefinition = many_steps
) -> float:
    run = await engine.start(workflow, n)
    start = time.perf_counter()
    outcome = await engine.run_segment(run.run_id)
    elapsed = time.perf_counter() - start
    assert outcome.output == n, outcome
    return n / elapsed


async def engine_concurrent(engine: Engine, runs: int, per_run: int) -> float:
    created = [await engine.start(many_steps, per_run) for _ in range(runs)]
    start = time.perf_counter()
    outcomes = await asyncio.gather(*(engine.run_segment(r.run_id) for r in created))
    elapsed = time.perf_counter() - start
    assert all(o.output == per_run for o in outcomes)
    return runs * per_run / elapsed


def dbos_figures(dsn: str, n: int, runs: int, per_run: int) -> dict[str, float] | None:
    try:
        import dbos  # noqa: F401
    except ImportError:
        return None
    script = Path(__file__).with_name("dbos_steps.py")
    out = subprocess.run(
        [sys.executable, str(script), dsn, str(n), str(runs), str(per_run)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


async def median(rounds: int, measure: Callable[[], Awaitable[float]]) -> float:
    return statistics.median([await measure() for _ in range(rounds)])


async def bench(dsn: str, args: argparse.Namespace) -> None:
    store = await Store.open(dsn, schema=f"kflow_bench_{uuid.uuid4().hex[:8]}", max_size=POOL)
    engine = Engine(store, Registry(many_steps, typed_sync_steps))
    try:
        await engine_sequential(engine, 100)  # warm up connections and caches
        await raw_sequential(dsn, 100)
        seq_engine = await median(args.repeat, lambda: engine_sequential(engine, args.steps))
        seq_raw = await median(args.repeat, lambda: raw_sequential(dsn, args.steps))
        typed_engine = await median(
            args.repeat, lambda: engine_sequential(engine, args.steps, typed_sync_steps)
        )
        par_engine = await median(
            args.repeat, lambda: engine_concurrent(engine, args.runs, args.per_run)
        )
        par_raw = await median(args.repeat, lambda: raw_concurrent(dsn, args.runs, args.per_run))
    finally:
        await engine.close()
        await store.drop()
        await store.close()
    dbos = None if args.no_dbos else dbos_figures(dsn, args.steps, args.runs, args.per_run)

    rows = [
        (
            f"sequential: {args.steps} steps, 1 run",
            seq_engine,
            seq_raw,
            dbos and dbos["sequential"],
        ),
        (f"sequential: {args.steps} typed sync steps", typed_engine, seq_raw, None),
        (
            f"concurrent: {args.runs} runs x {args.per_run} steps, pool {POOL}",
            par_engine,
            par_raw,
            dbos and dbos["concurrent"],
        ),
    ]
    columns = ("kflow/s", "raw/s", "kflow/raw", "DBOS/s", "DBOS/raw")
    print(f"\n{'scenario':44} " + " ".join(f"{c:>9}" for c in columns))
    for name, ours, raw, theirs in rows:
        dbos_cols = f"{theirs:9.0f} {theirs / raw:9.2f}" if theirs else f"{'-':>9} {'-':>9}"
        print(f"{name:44} {ours:9.0f} {raw:9.0f} {ours / raw:9.2f} {dbos_cols}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dsn", help="PostgreSQL to use (default: a throw-away server)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--per-run", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-dbos", action="store_true")
    args = parser.parse_args()
    if args.dsn:
        asyncio.run(bench(args.dsn, args))
        return
    with LocalPostgres() as pg:
        asyncio.run(bench(pg.dsn, args))


if __name__ == "__main__":
    main()
