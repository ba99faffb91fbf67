"""DBOS's equivalent of the step benchmark, run in its own process (DBOS is a singleton).

    python bench/dbos_steps.py DSN STEPS RUNS STEPS_PER_RUN

Prints two figures as JSON: sequential no-op steps per second in one workflow, and steps
per second over RUNS concurrent workflows of STEPS_PER_RUN steps each.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid

from dbos import DBOS, DBOSConfig


@DBOS.step()
async def noop() -> None:
    return None


@DBOS.workflow()
async def steps(n: int) -> int:
    for _ in range(n):
        await noop()
    return n


async def main(dsn: str, n: int, runs: int, per_run: int) -> None:
    config: DBOSConfig = {
        "name": "kflow-bench",
        "system_database_url": dsn,
        "dbos_system_schema": f"dbos_bench_{uuid.uuid4().hex[:8]}",
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()
    try:
        await steps(10)  # warm up
        start = time.perf_counter()
        await steps(n)
        sequential = n / (time.perf_counter() - start)
        start = time.perf_counter()
        await asyncio.gather(*(steps(per_run) for _ in range(runs)))
        concurrent = runs * per_run / (time.perf_counter() - start)
    finally:
        DBOS.destroy()
    print(json.dumps({"sequential": sequential, "concurrent": concurrent}))


if __name__ == "__main__":
    dsn, n, runs, per_run = sys.argv[1], *map(int, sys.argv[2:5])
    asyncio.run(main(dsn, n, runs, per_run))
